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

// durability runs the Redis durability check again every interval while
// the relay runs. Under strict, a Redis found not durable (AOF off,
// appendfsync no, an evicting maxmemory-policy) makes the relay not ready:
// ingress refuses new mail with a temporary failure, held and queued mail
// stay where they are, and delivery goes on.
type durability struct {
	rdb      redis.UniversalClient
	strict   bool
	interval time.Duration
	log      *slog.Logger

	mu      sync.Mutex
	problem string // why Redis is not durable; "" when it is, or not strict
	last    string // the warnings of the last run, to log changes once
}

// errNotDurable is why ingress refuses mail while Redis is not durable
// under strict.
var errNotDurable = errors.New("redis is not durable")

// err returns why Redis is not durable under strict, or nil.
func (d *durability) err() error {
	if d == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.problem == "" {
		return nil
	}
	return fmt.Errorf("%w: %s", errNotDurable, d.problem)
}

// set records the result of a check run that started out durable.
func (d *durability) set(warnings []string) {
	joined := strings.Join(warnings, "; ")
	d.mu.Lock()
	changed := joined != d.last
	d.last = joined
	if d.strict {
		d.problem = joined
	}
	d.mu.Unlock()
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

// run checks every interval until ctx ends. A check that cannot reach
// Redis changes nothing: /readyz reports that on its own.
func (d *durability) run(ctx context.Context) {
	t := time.NewTicker(d.interval)
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
		if err != nil {
			if ctx.Err() == nil {
				d.log.Warn("redis durability: check failed", "err", err)
			}
			continue
		}
		d.set(warnings)
	}
}
