# Holdfast developer tasks. "make run" starts a local relay; "make test" runs
# every test. Both install redis-server first if it is missing and we can.

GO            ?= go
VERSION       := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS       := -X main.version=$(VERSION)
# staticcheck 2026.2.2; bump it when a new Go release needs a newer one.
STATICCHECK   := honnef.co/go/tools/cmd/staticcheck@v0.8.2
FUZZTIME      ?= 30s
ENSURE_REDIS  := deploy/local/ensure-redis.sh

.PHONY: build run stop test test-cluster lint bench fuzz clean

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

## lint: go vet, gofmt and staticcheck; any finding fails
lint: bin/staticcheck
	$(GO) vet ./...
	@files="$$(gofmt -l .)"; if [ -n "$$files" ]; then \
		echo "gofmt -l: these files need formatting (run gofmt -w):"; echo "$$files"; exit 1; fi
	bin/staticcheck ./...

bin/staticcheck:
	GOBIN=$(CURDIR)/bin $(GO) install $(STATICCHECK)

## bench: the queue, SMTP ingress and end-to-end benchmarks (Go, 3 runs each); the
## delivery scale benchmarks (1, 100 and 10,000 mailboxes; one busy route beside
## 10,000 idle ones; a held backlog released by 1, 2 and 3 replicas; a dead SMTP
## endpoint's connection attempts per probe interval); the
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
	$(GO) test -run '^$$' -bench 'DeliveryRoutes|BusyRoute|HeldRelease|DeadUpstream' -benchtime 1x -count 3 ./relay/
	$(GO) test -run '^$$' -bench Incident -benchtime 1x -count 3 ./cmd/holdfast/
	deploy/bench/ingress.sh

## fuzz: run each fuzz target for FUZZTIME (default 30s)
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
