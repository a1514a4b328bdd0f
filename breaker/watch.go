package breaker

import (
	"context"
	"fmt"
	"slices"
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

// names returns the names in Redis and those this Set knows, sorted.
func (s *Set) names(ctx context.Context) ([]string, error) {
	names, err := s.rdb.SMembers(ctx, namesKey).Result()
	if err != nil {
		return nil, fmt.Errorf("breaker: list names: %w", err)
	}
	s.mu.Lock()
	for n := range s.brks {
		names = append(names, n)
	}
	s.mu.Unlock()
	slices.Sort(names)
	return slices.Compact(names), nil
}
