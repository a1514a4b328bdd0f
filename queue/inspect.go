package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// RouteStats counts one route's messages by state.
type RouteStats struct {
	Route      string
	Ready      int64
	Scheduled  int64
	Leased     int64
	Held       int64
	Dead       int64
	Oldest     time.Time // submit time of the oldest message not yet delivered or dead
	HoldReason string    // set while the route is held
}

// Stats is the whole queue's counts: per route, and their totals (whose
// Route is empty and Oldest is the oldest of all).
type Stats struct {
	Routes []RouteStats
	Total  RouteStats
}

// OldestAge is how long the oldest waiting message has waited, zero when
// none waits.
func (s RouteStats) OldestAge(now time.Time) time.Duration {
	if s.Oldest.IsZero() {
		return 0
	}
	return now.Sub(s.Oldest)
}

// Stats counts messages by state for every route, in one pipelined round
// trip (one per cluster node on Redis Cluster).
func (q *Queue) Stats(ctx context.Context) (Stats, error) {
	routes, err := q.Routes(ctx)
	if err != nil {
		return Stats{}, err
	}
	now := q.opts.Now().UnixMilli()
	pipe := q.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(routes))
	for i, r := range routes {
		rk := keysFor(r)
		// EVAL rather than EVALSHA: a pipeline cannot fall back on NOSCRIPT.
		cmds[i] = statsScript.Eval(ctx, pipe, []string{rk.due, rk.leased, rk.dead, rk.live, rk.hold}, now)
	}
	if len(routes) > 0 {
		// Errors are read per command below.
		_, _ = pipe.Exec(ctx)
	}
	var st Stats
	for i, r := range routes {
		res, err := cmds[i].Slice()
		if err != nil {
			return Stats{}, fmt.Errorf("stats of %s: %w", r, err)
		}
		rs := RouteStats{
			Route:     r,
			Ready:     res[0].(int64),
			Scheduled: res[1].(int64),
			Leased:    res[2].(int64),
			Held:      res[3].(int64),
			Dead:      res[4].(int64),
			Oldest:    fromMillis(res[5].(int64)),
		}
		if len(res) > 6 {
			rs.HoldReason, _ = res[6].(string)
		}
		st.Routes = append(st.Routes, rs)
		t := &st.Total
		t.Ready += rs.Ready
		t.Scheduled += rs.Scheduled
		t.Leased += rs.Leased
		t.Held += rs.Held
		t.Dead += rs.Dead
		if !rs.Oldest.IsZero() && (t.Oldest.IsZero() || rs.Oldest.Before(t.Oldest)) {
			t.Oldest = rs.Oldest
		}
	}
	return st, nil
}

// messageFields are the fields Get reads, in the order it reads them.
var messageFields = []any{fRoute, fApp, fFrom, fTo, fSize, fState, fSubmit,
	fExpire, fAttempts, fLastErr, fUpdated, fDoneAt, fReason, fLeaseEnd, fIdemKey}

// Get returns a message without its body.
func (q *Queue) Get(ctx context.Context, id string) (*Message, error) {
	if !ValidID(id) {
		return nil, fmt.Errorf("get %s: %w", id, ErrNotFound)
	}
	args := append([]any{routeKeyPrefix(id[:tagLen]), id}, messageFields...)
	f, err := getScript.Run(ctx, q.rdb, []string{msgKey(id)}, args...).Slice()
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", id, err)
	}
	if len(f) == 0 {
		return nil, fmt.Errorf("get %s: %w", id, ErrNotFound)
	}
	s := func(i int) string {
		if i >= len(f) {
			return ""
		}
		v, _ := f[i].(string)
		return v
	}
	m := &Message{
		ID:             id,
		Route:          s(0),
		App:            s(1),
		From:           s(2),
		To:             splitRcpts(s(3)),
		Size:           int(atoi(s(4))),
		Submitted:      fromMillis(atoi(s(6))),
		Expires:        fromMillis(atoi(s(7))),
		Attempts:       int(atoi(s(8))),
		LastError:      s(9),
		Updated:        fromMillis(atoi(s(10))),
		Done:           fromMillis(atoi(s(11))),
		Reason:         s(12),
		IdempotencyKey: s(14),
	}
	due, hold := s(15), s(16)
	switch s(5) {
	case stLeased:
		m.State = Leased
		m.LeaseEnd = fromMillis(atoi(s(13)))
	case stDelivered:
		m.State = Delivered
	case stDead:
		m.State = Dead
	default:
		m.Due = fromMillis(atoi(due))
		switch {
		case hold != "":
			m.State = Held
			m.HoldReason = hold
		case m.Due.After(q.opts.Now()):
			m.State = Scheduled
		default:
			m.State = Ready
		}
	}
	return m, nil
}

// List returns up to limit messages of a route in the given state, without
// their bodies, skipping the first offset. Ready, scheduled and held
// messages come in due order, leased ones by lease deadline, dead ones
// newest first.
func (q *Queue) List(ctx context.Context, route string, state State, offset, limit int) ([]*Message, error) {
	rk := keysFor(route)
	now := fmt.Sprint(q.opts.Now().UnixMilli())
	held, err := q.rdb.Exists(ctx, rk.hold).Result()
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", route, err)
	}
	page := &redis.ZRangeBy{Offset: int64(offset), Count: int64(limit)}
	var ids []string
	switch state {
	case Ready, Scheduled:
		if held == 1 {
			return nil, nil
		}
		page.Min, page.Max = "-inf", now
		if state == Scheduled {
			page.Min, page.Max = "("+now, "+inf"
		}
		ids, err = q.rdb.ZRangeByScore(ctx, rk.due, page).Result()
	case Held:
		if held == 0 {
			return nil, nil
		}
		ids, err = q.rdb.ZRange(ctx, rk.due, int64(offset), int64(offset+limit-1)).Result()
	case Leased:
		ids, err = q.rdb.ZRange(ctx, rk.leased, int64(offset), int64(offset+limit-1)).Result()
	case Dead:
		ids, err = q.rdb.ZRevRange(ctx, rk.dead, int64(offset), int64(offset+limit-1)).Result()
	default:
		return nil, fmt.Errorf("list %s: messages cannot be listed by state %q", route, state)
	}
	if err != nil {
		return nil, fmt.Errorf("list %s %s: %w", route, state, err)
	}
	out := make([]*Message, 0, len(ids))
	for _, id := range ids {
		m, err := q.Get(ctx, id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// Requeue moves a dead letter back to the queue, due now, with a fresh
// queue lifetime and its attempt history kept.
func (q *Queue) Requeue(ctx context.Context, id string) error {
	m, err := q.Get(ctx, id)
	if err != nil {
		return fmt.Errorf("requeue: %w", err)
	}
	now := q.opts.Now()
	rk := keysFor(m.Route)
	ok, err := requeueScript.Run(ctx, q.rdb, []string{msgKey(id), rk.due, rk.dead, rk.live},
		id, now.UnixMilli(), now.Add(q.opts.Lifetime).UnixMilli()).Int()
	if err != nil {
		return fmt.Errorf("requeue %s: %w", id, err)
	}
	if ok == 0 {
		return fmt.Errorf("%s is %s, not dead: only dead letters can be requeued", id, m.State)
	}
	return q.markDue(ctx, m.Route)
}

// Delete removes a message in any state. A leased message's worker will
// find its lease lost when it reports.
func (q *Queue) Delete(ctx context.Context, id string) error {
	m, err := q.Get(ctx, id)
	if err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	rk := keysFor(m.Route)
	n, err := deleteScript.Run(ctx, q.rdb, []string{msgKey(id), rk.due, rk.leased, rk.dead, rk.live}, id).Int()
	if err != nil {
		return fmt.Errorf("delete %s: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("delete %s: %w", id, ErrNotFound)
	}
	return nil
}

// Flush makes every scheduled message of the route due now, ignoring its
// backoff, and returns how many it moved. Held routes stay held.
func (q *Queue) Flush(ctx context.Context, route string) (int, error) {
	n, err := flushScript.Run(ctx, q.rdb, []string{keysFor(route).due}, q.opts.Now().UnixMilli()).Int()
	if err != nil {
		return 0, fmt.Errorf("flush %s: %w", route, err)
	}
	return n, q.markDue(ctx, route)
}

// HoldRoute holds a route: none of its messages are leased, none spends an
// attempt, and their backoff stops growing, until ReleaseRoute. Messages
// already leased finish their attempt. Holding a held route updates the
// reason and keeps the time the hold started, from which ReleaseRoute
// credits held time (see Options.HeldGrace).
func (q *Queue) HoldRoute(ctx context.Context, route, reason string) error {
	if reason == "" {
		reason = "held"
	}
	if err := q.registerRoute(ctx, route); err != nil {
		return err
	}
	rk := keysFor(route)
	if err := holdScript.Run(ctx, q.rdb, []string{rk.hold, rk.held}, reason, q.opts.Now().UnixMilli()).Err(); err != nil {
		return fmt.Errorf("hold %s: %w", route, err)
	}
	return nil
}

// ReleaseRoute ends a route's hold. Its messages become leasable at their
// due times, and each one's lifetime is extended by the time it spent held
// (since the hold started or since it was submitted, whichever is later),
// up to Options.HeldGrace. Releasing a route that is not held does
// nothing.
//
// It updates every waiting or leased message of the route in one atomic
// step, which blocks Redis for roughly half a second on a route of
// 100,000 messages.
func (q *Queue) ReleaseRoute(ctx context.Context, route string) error {
	rk := keysFor(route)
	err := releaseScript.Run(ctx, q.rdb, []string{rk.live, rk.hold, rk.held},
		q.opts.Now().UnixMilli(), q.opts.HeldGrace.Milliseconds(), msgKeyPrefix(rk.tag)).Err()
	if err != nil {
		return fmt.Errorf("release %s: %w", route, err)
	}
	// Due again: the index held it HeldRecheck away.
	return q.markDue(ctx, route)
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
