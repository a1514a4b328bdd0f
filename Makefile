# Holdfast developer tasks. "make run" starts a local relay; "make test" runs
# every test. Both install redis-server first if it is missing and we can.

GO            ?= go
VERSION       := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS       := -X main.version=$(VERSION)
# staticcheck 2026.2.2; bump it when a new Go release needs a newer one.
STATICCHECK   := honnef.co/go/tools/cmd/staticcheck@v0.8.2
FUZZTIME      ?= 60s
ENSURE_REDIS  := deploy/local/ensure-redis.sh

.PHONY: build run stop test test-cluster test-faults lint bench bench-compare fuzz clean

## build: compile bin/holdfast, stamped with the git version
build:
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/holdfast ./cmd/holdfast

## run: start a development Redis (127.0.0.1:6390) and the relay in the foreground
run:
	@$(ENSURE_REDIS)
	@deploy/local/run.sh

## stop: stop the development Redis that "make run" started
stop:
	@deploy/local/stop.sh

## test: run every test with the race detector, in random order
test:
	@$(ENSURE_REDIS)
	$(GO) test -race -shuffle=on -count=1 ./...

## test-cluster: run the Redis Cluster tests of the queue
test-cluster:
	@$(ENSURE_REDIS)
	$(GO) test -race -count=1 -run Cluster ./queue/...

## test-faults: the fault suite (cmd/holdfast/faults_test.go, about 5 minutes):
## relays killed with SIGKILL under load, Redis killed, hung and down, upstream
## faults, a stalled mailbox, a Redis Cluster failover. Each case logs a table
## of figures. FAULTS selects cases by name (a go test -run pattern).
FAULTS        ?= ^TestFault
test-faults:
	@$(ENSURE_REDIS)
	$(GO) test -tags faults -count=1 -v -timeout 20m -run '$(FAULTS)' ./cmd/holdfast/

## lint: go vet, gofmt and staticcheck; any finding fails
lint: bin/staticcheck
	$(GO) vet ./...
	@files="$$(gofmt -l .)"; if [ -n "$$files" ]; then \
		echo "gofmt -l: these files need formatting (run gofmt -w):"; echo "$$files"; exit 1; fi
	bin/staticcheck ./...

bin/staticcheck:
	GOBIN=$(CURDIR)/bin $(GO) install $(STATICCHECK)

## bench: the queue, SMTP ingress and end-to-end benchmarks (Go, 3 runs each); the
## incident report (3 runs of about 25 s: two relays, the simulator's secret expiring
## mid-way and rotated: upstream requests wasted after the expiry, ms from the
## rotation to the first delivery and to the backlog drained); then the ingress
## load test: holdfast serve loaded by hfload, 20 sessions, 2 KB messages, 3 rounds,
## with peak RSS from /usr/bin/time -v
bench: build
	@$(ENSURE_REDIS)
	$(GO) build -o bin/hfload ./cmd/hfload
	$(GO) test -run '^$$' -bench . -benchtime 20000x -count 3 -benchmem ./queue/
	$(GO) test -run '^$$' -bench SMTPIngress -benchtime 20000x -count 3 -benchmem ./relay/
	$(GO) test -run '^$$' -bench EndToEnd -benchtime 5000x -count 3 ./relay/
	$(GO) test -run '^$$' -bench Incident -benchtime 1x -count 3 ./cmd/holdfast/
	deploy/bench/ingress.sh

## bench-compare: Holdfast and a private Postfix instance side by side, with the
## same load tool (hfload) and AUTH PLAIN: ingress, end to end, peak RSS with
## 100,000 queued, against the targets (deploy/bench/compare.sh, about 10
## minutes; run as root: it installs postfix, sasl2-bin and libsasl2-modules)
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
