package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
	// ReadySince is the earliest due time of a ready message: how long
	// the longest-waiting ready message has waited for a worker. Zero
	// when none is ready.
	ReadySince time.Time
	// Moving counts the messages taken out of the route by a move to
	// another that has not finished (see Move): no worker sends them,
	// and the next move of the route finishes them. Undelivered leaves
	// them out.
	Moving int64
}

// Stats is the whole queue's counts: per route, and their totals (whose
// Route is empty and Oldest is the oldest of all).
type Stats struct {
	Routes []RouteStats
	Total  RouteStats
}

// Undelivered is how many of the route's messages are not yet delivered
// or dead, the count that Options.MaxPerRoute bounds.
func (s RouteStats) Undelivered() int64 { return s.Ready + s.Scheduled + s.Leased + s.Held }

// Full reports whether the route holds max undelivered messages or more,
// so that Enqueue refuses its new ones; never with max 0, no bound.
func (s RouteStats) Full(max int) bool { return max > 0 && s.Undelivered() >= int64(max) }

// OldestAge is how long the oldest waiting message has waited, zero when
// none waits.
func (s RouteStats) OldestAge(now time.Time) time.Duration {
	if s.Oldest.IsZero() {
		return 0
	}
	return now.Sub(s.Oldest)
}

// statsBatch is how many routes one run of the stats script counts on a
// single Redis server: enough that a scrape over 10,000 routes costs a
// few dozen script runs, few enough that one run blocks Redis for about a
// millisecond. On Redis Cluster each route's keys live in their own slot,
// so every route is a run of its own.
const statsBatch = 250

// routeBatch is how many routes one run of a per-route script counts:
// statsBatch on a single server, 1 on Redis Cluster.
func (q *Queue) routeBatch() int {
	if q.cluster() {
		return 1
	}
	return statsBatch
}

// cluster reports whether the queue is on Redis Cluster, where a script
// may only touch keys of one slot.
func (q *Queue) cluster() bool {
	_, ok := q.rdb.(*redis.ClusterClient)
	return ok
}

// Stats counts messages by state for every route in one pipelined round
// trip (one per cluster node on Redis Cluster), after the one that lists
// the routes.
func (q *Queue) Stats(ctx context.Context) (Stats, error) {
	routes, err := q.Routes(ctx)
	if err != nil {
		return Stats{}, err
	}
	res, err := q.statsPipeline(ctx, routes, q.routeBatch(), q.opts.Now().UnixMilli(), false)
	if err != nil {
		return Stats{}, err
	}
	st := Stats{Routes: make([]RouteStats, 0, len(routes))}
	for i, r := range routes {
		v := res[i*statsFields : (i+1)*statsFields]
		num := func(j int) int64 { n, _ := v[j].(int64); return n }
		rs := RouteStats{
			Route:      r,
			Ready:      num(0),
			Scheduled:  num(1),
			Leased:     num(2),
			Held:       num(3),
			Dead:       num(4),
			Oldest:     fromMillis(num(5)),
			ReadySince: fromMillis(num(7)),
			Moving:     num(8),
		}
		rs.HoldReason, _ = v[6].(string)
		st.Routes = append(st.Routes, rs)
		t := &st.Total
		t.Ready += rs.Ready
		t.Scheduled += rs.Scheduled
		t.Leased += rs.Leased
		t.Held += rs.Held
		t.Dead += rs.Dead
		t.Moving += rs.Moving
		if !rs.Oldest.IsZero() && (t.Oldest.IsZero() || rs.Oldest.Before(t.Oldest)) {
			t.Oldest = rs.Oldest
		}
		if !rs.ReadySince.IsZero() && (t.ReadySince.IsZero() || rs.ReadySince.Before(t.ReadySince)) {
			t.ReadySince = rs.ReadySince
		}
	}
	return st, nil
}

// statsFields is how many values the stats script returns per route.
const statsFields = 9

// statsPipeline runs the stats script over the routes, batch routes per
// run, and returns its values in route order.
func (q *Queue) statsPipeline(ctx context.Context, routes []string, batch int, now int64, loaded bool) ([]any, error) {
	runs, err := q.routePipeline(ctx, routes, batch, statsScript, statsBatchScript, []any{now}, nil, loaded)
	if err != nil {
		return nil, fmt.Errorf("stats: %w", err)
	}
	out := make([]any, 0, statsFields*len(routes))
	for _, res := range runs {
		vals, ok := res.([]any)
		if !ok {
			return nil, fmt.Errorf("stats: a script returned %T", res)
		}
		out = append(out, vals...)
	}
	if len(out) != statsFields*len(routes) {
		return nil, fmt.Errorf("stats: %d values for %d routes", len(out), len(routes))
	}
	return out, nil
}

// routePipeline runs a per-route script over the routes in one pipeline
// and returns each run's reply. On a single server (batch > 1) batched
// runs once per batch routes, given head, then each route's key prefix
// (routeBase) followed by extra(i) for the i-th
// route; a sixth of the bytes of its six key names. On Redis Cluster
// (batch 1) single runs once per route with the route's due, leased,
// dead, live, hold and moving keys, given head then extra(i). It sends the
// scripts' SHA rather than their body, which would be most of the bytes
// of a pipeline over thousands of routes; when Redis does not know the
// script yet (a restart, a failover), it loads it and runs the pipeline
// once more.
func (q *Queue) routePipeline(ctx context.Context, routes []string, batch int, single, batched *redis.Script,
	head []any, extra func(i int) []any, loaded bool) ([]any, error) {
	if len(routes) == 0 {
		return nil, nil
	}
	more := func(i int) []any {
		if extra == nil {
			return nil
		}
		return extra(i)
	}
	pipe := q.rdb.Pipeline()
	var cmds []*redis.Cmd
	script := single
	for i := 0; i < len(routes); i += batch {
		part := routes[i:min(i+batch, len(routes))]
		if batch == 1 {
			rk := keysFor(part[0])
			cmds = append(cmds, single.EvalSha(ctx, pipe, []string{rk.due, rk.leased, rk.dead, rk.live, rk.hold, rk.moving},
				append(slices.Clip(head), more(i)...)...))
			continue
		}
		script = batched
		args := append(make([]any, 0, len(head)+2*len(part)), head...)
		for j, r := range part {
			args = append(args, routeBase(r))
			args = append(args, more(i+j)...)
		}
		cmds = append(cmds, batched.EvalSha(ctx, pipe, nil, args...))
	}
	// Errors are read per command below.
	_, _ = pipe.Exec(ctx)
	out := make([]any, 0, len(cmds))
	for i, c := range cmds {
		res, err := c.Result()
		if redis.HasErrorPrefix(err, "NOSCRIPT") && !loaded {
			if err := loadEverywhere(ctx, q.rdb, script); err != nil {
				return nil, fmt.Errorf("load script: %w", err)
			}
			return q.routePipeline(ctx, routes, batch, single, batched, head, extra, true)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", routes[i*batch], err)
		}
		out = append(out, res)
	}
	return out, nil
}

// loadEverywhere loads a script on every master of a cluster, or on the
// one server.
func loadEverywhere(ctx context.Context, rdb redis.UniversalClient, sc *redis.Script) error {
	if c, ok := rdb.(*redis.ClusterClient); ok {
		return c.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
			return sc.Load(ctx, n).Err()
		})
	}
	return sc.Load(ctx, rdb).Err()
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
	if ttl, ok := f[len(f)-1].(int64); ok && ttl > 0 {
		m.KeptUntil = q.opts.Now().Add(time.Duration(ttl) * time.Millisecond)
	}
	switch s(5) {
	case stLeased:
		m.State = Leased
		m.LeaseEnd = fromMillis(atoi(s(13)))
	case stDelivered:
		m.State = Delivered
	case stDead:
		m.State = Dead
	case stMoving:
		m.State = Moving
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
// newest first, those of a move not finished (Moving) in id order.
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
	case Moving:
		return q.listMoving(ctx, route, offset, limit)
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

// listMoving is List of the messages of a move not finished. The moving
// set has no order, and a move leaves few messages in it: it is read
// whole and its ids sorted. offset and limit count the messages listed,
// moving on route, as Stats counts them: an entry whose message is gone,
// or no longer moving there, takes no place in a page, so that a caller
// paging through them is not stopped by a page of such entries.
func (q *Queue) listMoving(ctx context.Context, route string, offset, limit int) ([]*Message, error) {
	ids, err := q.rdb.SMembers(ctx, keysFor(route).moving).Result()
	if err != nil {
		return nil, fmt.Errorf("list %s %s: %w", route, Moving, err)
	}
	slices.Sort(ids)
	var out []*Message
	for _, id := range ids {
		if len(out) >= limit {
			break
		}
		m, err := q.Get(ctx, id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if m.State != Moving || m.Route != route {
			continue
		}
		if offset > 0 {
			offset--
			continue
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
	q.logChange(ctx, m.Route)
	return q.markDue(ctx, m.Route)
}

// Delete removes a message in any state. A leased message's worker will
// find its lease lost when it reports. While a move of the message's
// route runs, a message it may take (waiting, or moving) stays, and
// Delete returns a *MoveLockedError: deleted, it could be moved all the
// same.
func (q *Queue) Delete(ctx context.Context, id string) error {
	m, err := q.Get(ctx, id)
	if err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	rk := keysFor(m.Route)
	res, err := deleteScript.Run(ctx, q.rdb, []string{msgKey(id), rk.due, rk.leased, rk.dead, rk.live, rk.moving, rk.moveLock}, id).Int64Slice()
	if err != nil {
		return fmt.Errorf("delete %s: %w", id, err)
	}
	switch res[0] {
	case 0:
		return fmt.Errorf("delete %s: %w", id, ErrNotFound)
	case 2:
		return fmt.Errorf("delete %s: %w", id, &MoveLockedError{Route: m.Route, Left: time.Duration(max(res[1], 0)) * time.Millisecond})
	}
	q.logChange(ctx, m.Route)
	return nil
}

// Flush makes every scheduled message of the route due now, ignoring its
// backoff, and returns how many it moved. Held routes stay held.
func (q *Queue) Flush(ctx context.Context, route string) (int, error) {
	n, err := flushScript.Run(ctx, q.rdb, []string{keysFor(route).due}, q.opts.Now().UnixMilli()).Int()
	if err != nil {
		return 0, fmt.Errorf("flush %s: %w", route, err)
	}
	if n > 0 {
		q.logChange(ctx, route)
	}
	return n, q.markDue(ctx, route)
}
