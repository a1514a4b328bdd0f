package relay

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// followFailover makes a cluster client re-read the cluster's slot map
// soon after a command fails on the network. Without it, go-redis keeps
// sending a dead master's slots to its address after a replica has taken
// them over, and the relay neither stores nor delivers mail for those
// slots until it restarts. A client that is not a cluster client is
// returned as it is.
func followFailover(c redis.UniversalClient) redis.UniversalClient {
	if cc, ok := c.(*redis.ClusterClient); ok {
		cc.AddHook(&failoverHook{reload: func() { cc.ReloadState(context.Background()) }})
	}
	return c
}

// failoverReloadEvery bounds how often a failing cluster asks for a new
// slot map.
const failoverReloadEvery = time.Second

// failoverHook asks for a reload of the slot map (go-redis does it in the
// background) after a network error, at most once per
// failoverReloadEvery.
type failoverHook struct {
	reload func()
	mu     sync.Mutex
	last   time.Time
}

func (h *failoverHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *failoverHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.check(err)
		return err
	}
}

func (h *failoverHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		h.check(err)
		return err
	}
}

func (h *failoverHook) check(err error) {
	var ne net.Error
	if err == nil || !errors.As(err, &ne) {
		return
	}
	h.mu.Lock()
	due := time.Since(h.last) >= failoverReloadEvery
	if due {
		h.last = time.Now()
	}
	h.mu.Unlock()
	if due {
		h.reload()
	}
}
