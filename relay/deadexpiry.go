package relay

import (
	"context"
	"log/slog"
	"time"
)

// deadExpiryEvery is how often a relay deletes the dead letters older
// than queue.dead_retention.
const deadExpiryEvery = 10 * time.Minute

// deadExpirer is the part of the queue that expireDeadLoop uses.
type deadExpirer interface {
	ExpireDead(ctx context.Context, age, every time.Duration) (int, error)
}

// expireDeadLoop deletes the dead letters older than retention at start
// and every interval, until ctx ends. Every relay runs it; one pass an
// interval, by whichever relay claims it, counts for the fleet.
func expireDeadLoop(ctx context.Context, q deadExpirer, retention, interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		n, err := q.ExpireDead(ctx, retention, interval)
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("cannot delete the dead letters past queue.dead_retention", "err", err)
		case n > 0:
			log.Info("deleted dead letters past queue.dead_retention", "messages", n, "retention", retention)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
