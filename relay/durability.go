package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"holdfast/queue"
)

// durabilityCheckTimeout bounds one run of the durability check.
const durabilityCheckTimeout = 10 * time.Second

// uncheckedRetry is how often the check runs until it has passed once
// since the relay started.
const uncheckedRetry = time.Second

// durability runs the Redis durability check again every interval while
// the relay runs. Under strict, a Redis found not durable (AOF off,
// appendfsync no, an evicting maxmemory-policy) makes the relay not ready:
// ingress refuses new mail with a temporary failure, held and queued mail
// stay where they are, and delivery goes on. Until a check has passed
// once (Redis did not answer when the relay started), the relay is not
// ready either, and the check runs every uncheckedRetry.
type durability struct {
	rdb      redis.UniversalClient
	addrs    []string // as configured, for the log
	strict   bool
	interval time.Duration
	log      *slog.Logger

	mu      sync.Mutex
	checked bool               // a check has passed since the relay started
	problem string             // why Redis is not durable; "" when it is, or not strict
	last    string             // the warnings of the last run, to log changes once
	failed  string             // the error of the last failed check while unchecked, to log changes once
	memory  []queue.NodeMemory // as last read, for the metrics
}

// errNotDurable is why ingress refuses mail while Redis is not durable
// under strict.
var errNotDurable = errors.New("redis is not durable")

// errUnchecked is why ingress refuses mail until a check has passed.
var errUnchecked = errors.New("no check of redis has passed since the relay started")

// err returns why new mail is refused now: Redis unchecked, or not
// durable under strict; else nil.
func (d *durability) err() error {
	if d == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.checked {
		return fmt.Errorf("%w: %s", errUnchecked, d.failed)
	}
	if d.problem == "" {
		return nil
	}
	return fmt.Errorf("%w: %s", errNotDurable, d.problem)
}

// set records the result of a check run.
func (d *durability) set(warnings []string) {
	joined := strings.Join(warnings, "; ")
	d.mu.Lock()
	waited := !d.checked && d.failed != ""
	d.checked, d.failed = true, ""
	changed := joined != d.last
	d.last = joined
	if d.strict {
		d.problem = joined
	}
	d.mu.Unlock()
	if waited {
		d.log.Info("redis checked: the relay takes mail")
	}
	if !changed {
		return
	}
	switch {
	case joined == "":
		d.log.Info("redis durability: durable again")
	case d.strict:
		d.log.Error("redis durability: not durable; new mail is refused until it is fixed (redis.strict)", "problem", joined)
	default:
		d.log.Warn("redis durability: not durable", "problem", joined)
	}
}

// fail records a check that could not reach Redis. Once a check has
// passed, that changes nothing: /readyz reports it on its own.
func (d *durability) fail(err error) {
	msg := err.Error()
	d.mu.Lock()
	checked, news := d.checked, msg != d.failed
	if !checked {
		d.failed = msg
	}
	d.mu.Unlock()
	switch {
	case checked:
		d.log.Warn("redis durability: check failed", "err", err)
	case news:
		d.log.Error("cannot use redis; no mail is taken until it can, checked again every "+uncheckedRetry.String()+
			"; check that Redis runs and that redis.addrs reaches it",
			"addrs", d.addrs, "err", err)
	}
}

// due is how long until the next check.
func (d *durability) due() time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.checked {
		return uncheckedRetry
	}
	return d.interval
}

// run checks until ctx ends. With each check that passes it reads
// Redis's memory use for the metrics (New reads it after the first).
func (d *durability) run(ctx context.Context) {
	t := time.NewTimer(d.due())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, durabilityCheckTimeout)
		warnings, err := queue.CheckDurability(cctx, d.rdb, false)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			d.fail(err)
			d.mu.Lock()
			d.memory = nil // figures of before would hide a Redis filling up
			d.mu.Unlock()
		default:
			d.set(warnings)
			d.readMemory(ctx)
		}
		t.Reset(d.due())
	}
}

// readMemory reads Redis's memory use. A failed read keeps the figures
// of the last one out of the metrics: a stale figure would hide a Redis
// filling up.
func (d *durability) readMemory(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, durabilityCheckTimeout)
	mem, err := queue.MemoryUse(cctx, d.rdb)
	cancel()
	d.mu.Lock()
	d.memory = mem
	d.mu.Unlock()
	if err != nil && ctx.Err() == nil {
		d.log.Warn("cannot read redis's memory use", "err", err)
	}
}

// memoryUse returns Redis's memory use as last read; nil when the last
// read failed.
func (d *durability) memoryUse() []queue.NodeMemory {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.memory
}
