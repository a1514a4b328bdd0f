package queue

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// registerEvery is how long a process trusts that a route it registered
// is still in the route set: PruneRoutes may remove it meanwhile, and the
// next enqueue after this long registers it again.
const registerEvery = time.Minute

// PruneRoutes removes from the route set every route that has had no
// message at all (none live, leased, dead or in a move not finished) at
// each call for at least
// idle, with what is left of its hold. It returns the routes removed.
//
// A route is first seen empty at one call and removed at a later one, so
// calls must come more often than idle. A message enqueued while its
// route is being removed puts the route back: PruneRoutes checks the
// route again after removing it, and a process re-registers a route
// within registerEvery (the dispatcher finds its mail by then).
func (q *Queue) PruneRoutes(ctx context.Context, idle time.Duration) ([]string, error) {
	routes, err := q.rdb.SMembers(ctx, routesKey).Result()
	if err != nil {
		return nil, fmt.Errorf("prune routes: %w", err)
	}
	now := q.opts.Now()
	since, err := q.rdb.ZRangeWithScores(ctx, idleRoutesKey, 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("prune routes: %w", err)
	}
	emptySince := make(map[string]int64, len(since))
	for _, z := range since {
		emptySince[z.Member.(string)] = int64(z.Score)
	}
	counts := make([]*redis.IntCmd, len(routes))
	_, err = q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, r := range routes {
			rk := keysFor(r)
			counts[i] = p.Exists(ctx, rk.live, rk.leased, rk.dead, rk.due, rk.moving)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("prune routes: %w", err)
	}
	var pruned []string
	for i, r := range routes {
		first, seen := emptySince[r]
		delete(emptySince, r)
		switch {
		case counts[i].Val() > 0:
			if seen {
				err = q.rdb.ZRem(ctx, idleRoutesKey, r).Err()
			}
		case !seen:
			// With Redis full too: pruning frees memory.
			err = q.add(ctx, idleRoutesKey, strconv.FormatInt(now.UnixMilli(), 10), r)
		case now.Sub(time.UnixMilli(first)) >= idle:
			var gone bool
			if gone, err = q.prune(ctx, r); gone {
				pruned = append(pruned, r)
			}
		}
		if err != nil {
			return pruned, fmt.Errorf("prune route %s: %w", r, err)
		}
	}
	for r := range emptySince {
		// Pruned by another replica, or never in the set.
		if err := q.rdb.ZRem(ctx, idleRoutesKey, r).Err(); err != nil {
			return pruned, fmt.Errorf("prune routes: %w", err)
		}
	}
	return pruned, nil
}

// prune removes one empty route and reports whether it was still empty.
func (q *Queue) prune(ctx context.Context, route string) (bool, error) {
	rk := keysFor(route)
	keys := []string{rk.due, rk.leased, rk.dead, rk.live, rk.moving, rk.hold, rk.held, rk.fence}
	if !q.cluster() {
		keys = append(keys, rk.seq, dueSeqKey, dueIndexKey, dueDirtyKey)
	}
	n, err := pruneScript.Run(ctx, q.rdb, keys, route).Int()
	if err != nil || n == 0 {
		return false, err
	}
	if err := q.rdb.SRem(ctx, routesKey, route).Err(); err != nil {
		return false, err
	}
	if err := q.rdb.ZRem(ctx, idleRoutesKey, route).Err(); err != nil {
		return false, err
	}
	if !q.cluster() {
		// The change log keeps a route only while it exists.
		if err := q.rdb.ZRem(ctx, changesKey, route).Err(); err != nil {
			return false, err
		}
	}
	q.mu.Lock()
	delete(q.routes, route)
	q.mu.Unlock()
	// A message enqueued meanwhile by a process that had the route
	// registered: put the route back.
	if n, err := q.rdb.Exists(ctx, rk.live).Result(); err != nil || n > 0 {
		if err == nil {
			err = q.add(ctx, routesKey, "", route)
		}
		if err == nil {
			// Its change may have left the log with the route.
			q.logChange(ctx, route)
		}
		return false, err
	}
	return true, nil
}
