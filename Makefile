# Holdfast developer tasks. "make run" starts a local relay; "make test" runs
# every test. Both install redis-server first if it is missing and we can.

GO            ?= go
VERSION       := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS       := -X main.version=$(VERSION)
# staticcheck 2026.2.2; bump it when a new Go release needs a newer one.
STATICCHECK   := honnef.co/go/tools/cmd/staticcheck@v0.8.2
FUZZTIME      ?= 60s
ENSURE_REDIS  := deploy/local/ensure-redis.sh
ENSURE_CHROMIUM := deploy/local/ensure-chromium.sh
ENSURE_PROMTOOL := deploy/local/ensure-promtool.sh

.PHONY: help build run stop test test-cluster test-faults lint bench bench-compare fuzz clean demo

## help: list these targets with what each does
help:
	@awk '/^## [a-z-]+:/ { sub(/^## /, ""); print; next } /^## / { sub(/^## /, "    "); print }' Makefile

## build: compile bin/holdfast, stamped with the git version, the Exchange
## Online simulator bin/o365sim and the load tool bin/hfload
build:
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/holdfast ./cmd/holdfast
	$(GO) build -o bin/o365sim ./cmd/o365sim
	$(GO) build -o bin/hfload ./cmd/hfload

## run: start a development Redis (127.0.0.1:6390) and the relay in the foreground
run:
	@$(ENSURE_REDIS)
	@deploy/local/run.sh

## stop: stop the development Redis that "make run" started
stop:
	@deploy/local/stop.sh

## test: run every test with the race detector, in random order (the
## status page test drives headless chromium, installed when missing);
## cmd/holdfast alone takes about 8 minutes, near go test's default
## 10-minute limit on a busy machine, hence the 20-minute one
test:
	@$(ENSURE_REDIS)
	@$(ENSURE_CHROMIUM)
	@$(ENSURE_PROMTOOL)
	$(GO) test -race -shuffle=on -count=1 -timeout 20m ./...

## test-cluster: run the Redis Cluster tests of the queue
test-cluster:
	@$(ENSURE_REDIS)
	$(GO) test -race -count=1 -run Cluster ./queue/...

## test-faults: the fault suite (cmd/holdfast/faults_*_test.go, about 5.5 minutes):
## relays killed with SIGKILL under load, a replica killed mid-send with the
## default lease (about 40 s), Redis killed, hung and down, upstream faults, a
## stalled mailbox, a mailbox Exchange blocks, a Redis Cluster failover, a
## rotation that meets a hung Redis and killed relays (about 35 s), a rotation
## ahead of the expiry (about 45 s), the ways a secret file changes (about
## 20 s) and a rotation while Redis is down (about 20 s). Each case logs a
## table of figures. FAULTS selects cases by name (a go test -run pattern).
FAULTS        ?= ^TestFault
test-faults:
	@$(ENSURE_REDIS)
	$(GO) test -tags faults -count=1 -v -timeout 20m -run '$(FAULTS)' ./cmd/holdfast/

## lint: go vet, gofmt, staticcheck, and promtool on the alert rules and their
## unit tests; any finding fails
lint: bin/staticcheck
	$(GO) vet ./...
	@files="$$(gofmt -l .)"; if [ -n "$$files" ]; then \
		echo "gofmt -l: these files need formatting (run gofmt -w):"; echo "$$files"; exit 1; fi
	bin/staticcheck ./...
	@$(ENSURE_PROMTOOL)
	promtool check rules deploy/prometheus/holdfast.rules.yml
	cd deploy/prometheus && promtool test rules holdfast.rules.test.yml

bin/staticcheck:
	GOBIN=$(CURDIR)/bin $(GO) install $(STATICCHECK)

## bench: the Go benchmarks (3 runs each), the incident and the ingress load
## test, then a summary table: each figure's median, its target (set in
## cmd/hfbench/targets.go), pass or short; it fails when one falls short. About
## 2.5 minutes after the builds, measured on the shared 2-core machine:
##  - queue enqueue and lease+ack, 20,000 messages each: about 20 s;
##  - the release of a held route of 1,000,000 messages (slowest script in Redis),
##    3 runs: about 40 s;
##  - SMTP ingress in one process, 20,000 messages: about 20 s;
##  - end to end to the simulator, 5,000 messages: about 10 s;
##  - a scrape of /metrics' gauges over 100 and 10,000 routes (ms and Redis round
##    trips), the hot path's metrics alone (ns per message), and end to end with
##    metrics on and off side by side in one run (6 rounds): about 40 s;
##  - delivery at scale: 1, 100 and 10,000 mailboxes, one busy route beside 10,000
##    idle ones, a held backlog released by 1, 2 and 3 replicas, a dead SMTP
##    endpoint's connection attempts per probe interval, new sessions a second
##    to 200 mailboxes across a 20 ms round trip, the held set of 2,000 mailboxes
##    reconciled with Redis on loopback and 1 ms away: about 90 s;
##  - the incident (two relays, the secret expiring mid-way and rotated: upstream
##    requests wasted, ms from the rotation to the breaker closed, to the first
##    delivery and to the backlog drained), 3 runs of about 16 s: about 50 s;
##  - deploy/bench/ingress.sh: holdfast serve loaded by hfload, 20 sessions, 30,000
##    messages of 2 KB, 3 rounds, peak RSS from /usr/bin/time -v: about 25 s.
## The raw output is kept in var/bench.txt.
BENCH_OUT := var/bench.txt
bench: SHELL := /bin/bash
bench: .SHELLFLAGS := -o pipefail -c
bench: build
	@$(ENSURE_REDIS)
	@mkdir -p var && : >$(BENCH_OUT)
	$(GO) test -run '^$$' -bench 'Enqueue|LeaseAck' -benchtime 20000x -count 3 -benchmem ./queue/ | tee -a $(BENCH_OUT)
	$(GO) test -run '^$$' -bench ReleaseHugeRoute -benchtime 1x -count 3 ./queue/ | tee -a $(BENCH_OUT)
	$(GO) test -run '^$$' -bench SMTPIngress -benchtime 20000x -count 3 -benchmem ./relay/ | tee -a $(BENCH_OUT)
	$(GO) test -run '^$$' -bench EndToEnd -benchtime 5000x -count 3 ./relay/ | tee -a $(BENCH_OUT)
	$(GO) test -run '^$$' -bench Scrape -benchtime 20x -count 3 ./relay/ | tee -a $(BENCH_OUT)
	$(GO) test -run '^$$' -bench HotPathMetrics -benchtime 200000x -count 3 ./relay/ | tee -a $(BENCH_OUT)
	$(GO) test -run '^$$' -bench MetricsOverhead -benchtime 1x -v ./relay/ | tee -a $(BENCH_OUT)
	$(GO) test -run '^$$' -bench AcceptUnderGuessing -benchtime 1000x -count 3 ./relay/ | tee -a $(BENCH_OUT)
	$(GO) test -run '^$$' -bench 'DeliveryRoutes|BusyRoute|HeldRelease|DeadUpstream|NewSessions|ReconcileRoutes' -benchtime 1x -count 3 ./relay/ | tee -a $(BENCH_OUT)
	$(GO) test -run '^$$' -bench Incident -benchtime 1x -count 3 ./cmd/holdfast/ | tee -a $(BENCH_OUT)
	deploy/bench/ingress.sh | tee -a $(BENCH_OUT)
	@$(GO) run ./cmd/hfbench $(BENCH_OUT)

## demo: the February 2025 incident replayed against the simulator in about a
## minute and a half (two relays, a Redis of its own); ends with a table, fails
## on any loss
demo: build
	@$(ENSURE_REDIS)
	@$(GO) build -o bin/holdfast-demo ./cmd/holdfast-demo
	@bin/holdfast-demo --holdfast bin/holdfast

## bench-compare: Holdfast and a private Postfix instance side by side, with the
## same load tool (hfload) and AUTH PLAIN: ingress with delivery paused and with
## it running, end to end, peak RSS with 100,000 queued, against the targets
## (deploy/bench/compare.sh, 10 to 30 minutes by machine; run as root: it installs postfix,
## sasl2-bin and libsasl2-modules; with 4 or more CPUs the load runs on half of them)
bench-compare:
	@$(ENSURE_REDIS)
	deploy/bench/compare.sh

## fuzz: run each fuzz target for FUZZTIME (default 60s; 6 targets, about 7 minutes)
fuzz:
	@set -e; for file in $$(grep -rl --include='*_test.go' '^func Fuzz' .); do \
		dir=$$(dirname "$$file"); \
		for name in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$$file"); do \
			echo "== $$dir $$name"; \
			$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 5s "./$$dir"; \
		done; \
	done

## clean: remove build output (not var/, which holds the development Redis data)
clean:
	rm -rf bin
