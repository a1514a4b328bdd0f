package queue

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"
)

// Fence is what a hold or release of a route was decided on: the
// generation of each breaker record read, by breaker name. A route keeps
// the newest generation applied per breaker, and refuses a hold or release
// that carries an older one (ErrStaleFence). A nil Fence is never stale.
type Fence map[string]int64

// ErrStaleFence is returned by HoldRouteAt and ReleaseRouteAt when a newer
// hold or release of the route was decided on newer breaker records.
var ErrStaleFence = errors.New("stale breaker generation")

// releaseStep is how many live messages one step of a release scans: a
// step's script stays well under 50 ms.
const releaseStep = 250

func (f Fence) args() []any {
	var out []any
	for _, k := range slices.Sorted(maps.Keys(f)) {
		out = append(out, k, f[k])
	}
	return out
}

// HoldRoute holds a route with no fence; see HoldRouteAt.
func (q *Queue) HoldRoute(ctx context.Context, route, reason string) error {
	_, err := q.HoldRouteAt(ctx, route, reason, nil)
	return err
}

// HoldRouteAt holds a route: none of its messages are leased, none spends
// an attempt, and their backoff stops growing, until ReleaseRouteAt.
// Messages already leased finish their attempt. Holding a held route
// updates the reason and keeps the time the hold started, from which a
// release credits held time (see Options.HeldGrace). It reports whether
// the route was newly held, and returns ErrStaleFence when fence is older
// than one already applied to the route.
func (q *Queue) HoldRouteAt(ctx context.Context, route, reason string, fence Fence) (bool, error) {
	if reason == "" {
		reason = "held"
	}
	if err := q.registerRoute(ctx, route); err != nil {
		return false, err
	}
	rk := keysFor(route)
	args := append([]any{reason, q.opts.Now().UnixMilli()}, fence.args()...)
	n, err := holdScript.Run(ctx, q.rdb, []string{rk.hold, rk.held, rk.fence}, args...).Int()
	switch {
	case err != nil:
		return false, fmt.Errorf("hold %s: %w", route, err)
	case n < 0:
		return false, fmt.Errorf("hold %s: %w", route, ErrStaleFence)
	}
	// The metrics count the route again within SummaryRefresh should
	// the change log miss it.
	q.logChange(ctx, route)
	return n == 1, nil
}

// ReleaseRoute releases a route with no fence; see ReleaseRouteAt.
func (q *Queue) ReleaseRoute(ctx context.Context, route string) error {
	return q.ReleaseRouteAt(ctx, route, nil)
}

// ReleaseRouteAt ends a route's hold. Its messages become leasable at
// their due times, and each one's lifetime is extended by the time it
// spent held (since the hold started or since it was submitted, whichever
// is later), up to Options.HeldGrace. Releasing a route that is not held
// does nothing.
//
// The messages are credited in steps of a few hundred, one short
// script each, so that releasing a route of a million messages never
// blocks Redis for long; the route stays held until the last step. A hold
// with a newer fence stops the release between steps (ErrStaleFence); an
// interrupted release can simply be repeated.
func (q *Queue) ReleaseRouteAt(ctx context.Context, route string, fence Fence) error {
	_, err := q.releaseSteps(ctx, route, fence, nil)
	return err
}

// releaseSteps runs a release step by step, calling each (when not nil)
// with the time each step's round trip took. It returns how many messages
// were credited.
func (q *Queue) releaseSteps(ctx context.Context, route string, fence Fence, each func(time.Duration)) (int64, error) {
	rk := keysFor(route)
	keys := []string{rk.live, rk.hold, rk.held, rk.fence}
	now := q.opts.Now().UnixMilli()
	cursor := "0"
	var total int64
	for {
		args := append([]any{now, q.opts.HeldGrace.Milliseconds(), msgKeyPrefix(rk.tag), cursor, releaseStep}, fence.args()...)
		start := time.Now()
		res, err := releaseChunkScript.Run(ctx, q.rdb, keys, args...).Slice()
		if err != nil {
			return total, fmt.Errorf("release %s: %w", route, err)
		}
		if each != nil {
			each(time.Since(start))
		}
		status, _ := res[0].(int64)
		cursor, _ = res[1].(string)
		n, _ := res[2].(int64)
		total += n
		switch status {
		case 1:
			q.logChange(ctx, route)
			// Due again: the due-route index held it HeldRecheck away.
			// The release is done; a mark that cannot be written keeps
			// the route for this process's DueRoutes instead of failing
			// it (nobody would release it again).
			q.markOrKeep(ctx, route)
			return total, nil
		case -1:
			return total, fmt.Errorf("release %s: %w", route, ErrStaleFence)
		}
	}
}

// RouteHold returns the route's hold reason and whether it is held.
func (q *Queue) RouteHold(ctx context.Context, route string) (string, bool, error) {
	reason, err := q.rdb.Get(ctx, keysFor(route).hold).Result()
	if errors.Is(err, redis.Nil) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("hold state of %s: %w", route, err)
	}
	return reason, true, nil
}

// HeldRoutes reports the hold reason of each of routes that is held, in
// one round trip: a route not held is left out.
func (q *Queue) HeldRoutes(ctx context.Context, routes []string) (map[string]string, error) {
	cmds := make([]*redis.StringCmd, len(routes))
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, r := range routes {
			cmds[i] = p.Get(ctx, keysFor(r).hold)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("hold state of routes: %w", err)
	}
	out := make(map[string]string, len(routes))
	for i, r := range routes {
		reason, err := cmds[i].Result()
		switch {
		case errors.Is(err, redis.Nil):
		case err != nil:
			return nil, fmt.Errorf("hold state of %s: %w", r, err)
		default:
			out[r] = reason
		}
	}
	return out, nil
}
