package relay

import (
	"context"
	"time"
)

// backoff spaces the tries of something that waits for Redis to answer
// again: the first wait is next, then each is twice the one before, up
// to max.
type backoff struct{ next, max time.Duration }

// wait sleeps for the current delay, or until ctx ends, and doubles the
// delay for the next time.
func (b *backoff) wait(ctx context.Context) {
	t := time.NewTimer(b.next)
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	t.Stop()
	b.next = min(2*b.next, b.max)
}
