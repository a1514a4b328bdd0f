package breaker

import (
	"context"
	"time"
)

// Watch re-reads every breaker's record each Poll until ctx ends, so that
// OnTransition fires on this replica for transitions made by others. A
// replica starts from "closed, generation 0": a breaker already open when
// Watch starts is reported once as a transition to open.
func (s *Set) Watch(ctx context.Context) {
	t := time.NewTicker(s.o.Poll)
	defer t.Stop()
	for {
		if _, err := s.List(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("breaker watch", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
