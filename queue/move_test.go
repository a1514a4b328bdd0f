package queue_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

// TestMoveRoute: the mail waiting on a route (held here, as the route of
// a credential that no longer works) moves to another route, whole and
// once, where it is delivered; a message being sent stays, and a
// delivered one cannot move.
func TestMoveRoute(t *testing.T) {
	q, _, _ := newQueue(t)
	ctx := context.Background()
	const from, to = "app:old:billing@contoso.com", "app:new:billing@contoso.com"
	var ids []string
	for n := range 5 {
		ids = append(ids, enqueue(t, q, msg(from, n)))
	}
	sending := lease(t, q, from, 1, time.Minute).Leases[0]
	delivered := lease(t, q, from, 1, time.Minute).Leases[0]
	if err := q.Ack(ctx, delivered, "250 2.0.0 OK"); err != nil {
		t.Fatal(err)
	}
	if err := q.HoldRoute(ctx, from, "breaker cred:old open"); err != nil {
		t.Fatal(err)
	}
	var want []string // the bodies of the messages waiting
	marked := false
	for n, id := range ids {
		if id == sending.ID || id == delivered.ID {
			continue
		}
		want = append(want, string(msg(from, n).Body))
		if !marked {
			if err := q.MarkAmbiguous(ctx, id); err != nil {
				t.Fatal(err)
			}
			marked = true
		}
	}

	if _, err := q.Move(ctx, delivered.ID, to); !errors.Is(err, queue.ErrNotMovable) {
		t.Errorf("move of a delivered message: %v, want ErrNotMovable", err)
	}
	n, err := q.MoveRoute(ctx, from, to, 100)
	if err != nil || n.To != 3 || n.Total() != 3 {
		t.Fatalf("MoveRoute: %+v, %v; want 3 moved", n, err)
	}
	if n, err := q.MoveRoute(ctx, from, to, 100); err != nil || n.Total() != 0 {
		t.Fatalf("MoveRoute again: %+v, %v; want nothing left to move", n, err)
	}
	st, err := q.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range st.Routes {
		switch r.Route {
		case from:
			if r.Ready+r.Scheduled+r.Held != 0 || r.Leased != 1 {
				t.Errorf("%s after the move: %+v, want the one being sent alone", from, r)
			}
		case to:
			if r.Ready != 3 {
				t.Errorf("%s after the move: %+v, want 3 ready", to, r)
			}
		}
	}
	res := lease(t, q, to, 10, time.Minute)
	var bodies []string
	ambiguous := 0
	for _, l := range res.Leases {
		bodies = append(bodies, string(l.Body))
		if len(l.To) != 2 || l.From != "billing@contoso.com" || l.App != "crm" {
			t.Errorf("moved message %+v lost its envelope", l.Message)
		}
		if amb, err := q.Ambiguous(ctx, l.ID); err != nil {
			t.Fatal(err)
		} else if amb {
			ambiguous++
		}
	}
	slices.Sort(bodies)
	slices.Sort(want)
	if !slices.Equal(bodies, want) {
		t.Errorf("bodies on %s: %q, want %q", to, bodies, want)
	}
	if ambiguous != 1 {
		t.Errorf("%d moved messages marked ambiguous, want 1: an earlier attempt may have sent it", ambiguous)
	}
	if m := get(t, q, sending.ID); m.State != queue.Leased || m.Route != from {
		t.Errorf("the message being sent is %s on %s, want leased on %s", m.State, m.Route, from)
	}
}

// TestMoveFinishesHalfWay: a move that stopped after taking its message
// out of the old route (the process killed, or the new route refusing
// the store) is finished by the next MoveRoute of the route: stored once
// on the new route, gone from the old.
func TestMoveFinishesHalfWay(t *testing.T) {
	q, clk, srv := newQueue(t)
	ctx := context.Background()
	const from, to = "app:old:billing@contoso.com", "app:new:billing@contoso.com"
	id := enqueue(t, q, msg(from, 1))
	sum := q.NewSummarizer(func(string) string { return "all" })
	moving := func() int64 {
		t.Helper()
		s, err := sum.Summarize(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return s.Groups["all"].Moving
	}
	if n := moving(); n != 0 {
		t.Fatalf("summary before the move: %d moving", n)
	}
	// The new route refuses the store: Redis runs no script that stores.
	full := queue.New(srv.Client(t), queue.Options{Now: clk.Now, MaxPerRoute: 1})
	enqueue(t, full, msg(to, 9))
	if _, err := full.Move(ctx, id, to); !errors.Is(err, queue.ErrRouteFull) {
		t.Fatalf("move to a full route: %v, want ErrRouteFull", err)
	}
	if res := lease(t, q, from, 10, time.Minute); len(res.Leases) != 0 {
		t.Fatalf("a message taken out for a move was leased on its old route")
	}
	if m := get(t, q, id); m.State != queue.Moving || m.Route != from {
		t.Errorf("the message of the cut move is %s on %s, want moving on %s", m.State, m.Route, from)
	}
	st, err := q.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Total.Moving != 1 || !slices.ContainsFunc(st.Routes, func(r queue.RouteStats) bool { return r.Route == from && r.Moving == 1 }) {
		t.Errorf("stats after the cut move: %+v, want %s with 1 moving", st, from)
	}
	if n := moving(); n != 1 {
		t.Errorf("summary after the cut move: %d moving, want 1", n)
	}
	n, err := q.MoveRoute(ctx, from, to, 100)
	if err != nil || n.To != 1 || n.Total() != 1 {
		t.Fatalf("MoveRoute after the half-way move: %+v, %v; want 1", n, err)
	}
	if _, err := q.Get(ctx, id); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("the old message after the move: %v, want gone", err)
	}
	if n := moving(); n != 0 {
		t.Errorf("summary after the move finished: %d moving, want 0", n)
	}
	if n, err := q.MoveRoute(ctx, from, to, 100); err != nil || n.Total() != 0 {
		t.Errorf("MoveRoute again: %+v, %v; want 0", n, err)
	}
	if res := lease(t, q, to, 10, time.Minute); len(res.Leases) != 2 {
		t.Errorf("%d messages on %s, want the one there before and the moved one", len(res.Leases), to)
	}
}

// TestMoveKeepsIdempotencyKey: a message moves with its application's
// idempotency key, so that the application's retry under that key is
// answered with the moved message, as it was before the move, whether
// the retry goes to the old route or the new one, and whether it came
// before the move or after it; a key the application used since for
// another envelope on the new route, or one forgotten already, is not
// carried.
// It runs on a single server and on Redis Cluster, where the two routes
// are in different slots.
func TestMoveKeepsIdempotencyKey(t *testing.T) { singleAndCluster(t, testMoveKeepsIdempotencyKey) }

func testMoveKeepsIdempotencyKey(t *testing.T, rdb redis.UniversalClient) {
	q := queue.New(rdb, queue.Options{Now: newClock().Now})
	ctx := context.Background()
	const from, to = "app:old:billing@contoso.com", "app:new:billing@contoso.com"
	keyed := func(route string, n int, key, print string) queue.Submission {
		m := msg(route, n)
		m.IdempotencyKey, m.Fingerprint = key, print
		return m
	}
	retried := enqueue(t, q, keyed(from, 1, "retried-after", "fp1"))
	early := enqueue(t, q, keyed(from, 2, "retried-before", "fp2"))
	// The application sent "retried-before" again after its credential
	// changed, before the move: it is on the new route already.
	onNew := enqueue(t, q, keyed(to, 2, "retried-before", "fp2"))
	enqueue(t, q, keyed(from, 3, "reused", "fp3"))
	enqueue(t, q, keyed(to, 4, "reused", "another envelope"))
	enqueue(t, q, keyed(from, 5, "forgotten", "fp5"))
	if err := rdb.Del(ctx, queue.IdemKey(from, "forgotten")).Err(); err != nil {
		t.Fatal(err)
	}

	if n, err := q.MoveRoute(ctx, from, to, 100); err != nil || n.To != 4 || n.Total() != 4 {
		t.Fatalf("MoveRoute: %+v, %v; want 4 moved", n, err)
	}
	if _, err := q.Get(ctx, early); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("the first copy of a message sent again on the new route: %v, want gone from the old", err)
	}
	res := lease(t, q, to, 10, time.Minute)
	byKey := map[string][]string{}
	for _, l := range res.Leases {
		m := get(t, q, l.ID)
		byKey[m.IdempotencyKey] = append(byKey[m.IdempotencyKey], l.ID)
	}
	if got := len(res.Leases); got != 5 {
		t.Errorf("%d messages on %s after the move, want 5 (%v)", got, to, byKey)
	}
	if ids := byKey["retried-before"]; len(ids) != 1 || ids[0] != onNew {
		t.Errorf("messages under retried-before on %s: %v, want only %s, sent there before the move", to, ids, onNew)
	}
	moved := byKey["retried-after"]
	if len(moved) != 1 {
		t.Fatalf("messages under retried-after on %s: %v, want the moved one alone", to, moved)
	}
	if ids := byKey["reused"]; len(ids) != 1 {
		t.Errorf("messages under reused on %s: %v, want one: the key is the other envelope's there", to, ids)
	}
	if ids := byKey["forgotten"]; len(ids) != 0 {
		t.Errorf("messages under forgotten on %s: %v, want none: the key was forgotten before the move", to, ids)
	}

	for _, route := range []string{to, from} {
		id, dup, err := q.Enqueue(ctx, keyed(route, 1, "retried-after", "fp1"))
		if err != nil || !dup || id != moved[0] {
			t.Errorf("retry on %s after the move: %s, dup %v, %v; want %s, the moved message, as a duplicate (it was %s before)",
				route, id, dup, err, moved[0], retried)
		}
	}
	if id, dup, err := q.Enqueue(ctx, keyed(from, 2, "retried-before", "fp2")); err != nil || !dup || id != onNew {
		t.Errorf("retry on %s of the message sent again before the move: %s, dup %v, %v; want %s", from, id, dup, err, onNew)
	}
}

// cutMove takes message id out of its route for a move to route to that
// stops half-way: to refuses the store, being full.
func cutMove(t *testing.T, clk *clock, srv *redistest.Server, id, to string) {
	t.Helper()
	full := queue.New(srv.Client(t), queue.Options{Now: clk.Now, MaxPerRoute: 1})
	if st, err := full.Stats(context.Background()); err != nil {
		t.Fatal(err)
	} else if !slices.ContainsFunc(st.Routes, func(r queue.RouteStats) bool { return r.Route == to && r.Undelivered() > 0 }) {
		enqueue(t, full, msg(to, 99))
	}
	if _, err := full.Move(context.Background(), id, to); !errors.Is(err, queue.ErrRouteFull) {
		t.Fatalf("move to a full route: %v, want ErrRouteFull", err)
	}
}

// TestMovingSetPruned: an entry of a route's moving set whose message is
// gone (deleted by an operator, or lost) neither stays nor stops the next
// move of the route from moving the mail still waiting there; and a
// route with nothing but a move to finish is not pruned from the route
// set, which would hide it from queue stats and drain.
func TestMovingSetPruned(t *testing.T) {
	q, clk, srv := newQueue(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	const from, to = "app:old:billing@contoso.com", "app:new:billing@contoso.com"
	deleted := enqueue(t, q, msg(from, 1))
	lost := enqueue(t, q, msg(from, 2))
	waiting := []string{enqueue(t, q, msg(from, 3)), enqueue(t, q, msg(from, 4))}
	cutMove(t, clk, srv, deleted, to)
	cutMove(t, clk, srv, lost, to)
	if err := q.Delete(ctx, deleted); err != nil {
		t.Fatal(err)
	}
	if ids, err := rdb.SMembers(ctx, queue.MovingKey(from)).Result(); err != nil {
		t.Fatal(err)
	} else if slices.Contains(ids, deleted) {
		t.Errorf("moving set of %s after the delete of %s: %v, want it gone", from, deleted, ids)
	}
	// Lost as Redis may lose a write: the hash alone.
	if err := rdb.Del(ctx, queue.MessageKey(lost)).Err(); err != nil {
		t.Fatal(err)
	}

	n, err := q.MoveRoute(ctx, from, to, 100)
	if err != nil || n.To != len(waiting) || n.Total() != len(waiting) {
		t.Errorf("MoveRoute past the moving set's entries without message: %+v, %v; want the %d waiting moved", n, err, len(waiting))
	}
	if ids, err := rdb.SMembers(ctx, queue.MovingKey(from)).Result(); err != nil || len(ids) != 0 {
		t.Errorf("moving set of %s after the move: %v, %v; want empty", from, ids, err)
	}

	// A route whose only message waits in its moving set stays a route.
	const other = "app:old:sales@contoso.com"
	stuck := enqueue(t, q, msg(other, 5))
	cutMove(t, clk, srv, stuck, to)
	for range 2 {
		if _, err := q.PruneRoutes(ctx, time.Hour); err != nil {
			t.Fatal(err)
		}
		clk.Add(2 * time.Hour)
	}
	if routes, err := q.Routes(ctx); err != nil || !slices.Contains(routes, other) {
		t.Errorf("routes after pruning: %v, %v; want %s, whose message waits for its move to finish", routes, err, other)
	}
	if n, err := q.MoveRoute(ctx, other, to, 100); err != nil || n.To != 1 {
		t.Errorf("MoveRoute of %s: %+v, %v; want its message moved", other, n, err)
	}
}

// failScript fails every run of the script of hash sha while on is set.
type failScript struct {
	sha string
	on  *atomic.Bool
}

func (h failScript) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h failScript) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h failScript) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if a := cmd.Args(); h.on.Load() && len(a) > 1 && fmt.Sprint(a[1]) == h.sha {
			err := errors.New("connection reset by peer")
			cmd.SetErr(err)
			return err
		}
		return next(ctx, cmd)
	}
}

// TestMoveCutThenElsewhere: a move cut after its copy was stored on the
// new route, before the message left the old one, then run again to a
// third route, finishes where the copy is, whether the message carries
// the application's key or not: the message is stored once in all. A
// message whose cut move stored no copy goes where it is now sent.
func TestMoveCutThenElsewhere(t *testing.T) {
	srv := redistest.Start(t)
	clk := newClock()
	rdb := srv.Client(t)
	var cut atomic.Bool
	rdb.AddHook(failScript{sha: queue.MoveDoneHash, on: &cut})
	q := queue.New(rdb, queue.Options{Now: clk.Now})
	ctx := context.Background()
	const from, first, second = "app:old:billing@contoso.com", "app:first:billing@contoso.com", "app:second:billing@contoso.com"

	keyed := msg(from, 1)
	keyed.IdempotencyKey = "order-1"
	ids := []string{enqueue(t, q, keyed), enqueue(t, q, msg(from, 2))}
	cut.Store(true)
	for _, id := range ids {
		if _, err := q.Move(ctx, id, first); err == nil {
			t.Fatalf("move of %s with its deletion failing: no error", id)
		}
	}
	cut.Store(false)
	n, err := q.MoveRoute(ctx, from, second, 100)
	if err != nil || n.To != 0 || n.Earlier[first] != 2 || n.Total() != 2 {
		t.Fatalf("MoveRoute to %s after the cut moves: %+v, %v; want 2 finished on %s", second, n, err, first)
	}
	count := func(route string) int {
		t.Helper()
		return len(lease(t, q, route, 10, time.Minute).Leases)
	}
	if a, b, c := count(from), count(first), count(second); a != 0 || b != 2 || c != 0 {
		t.Errorf("after the moves: %d on the old route, %d on %s, %d on %s; want the 2 copies of the cut moves alone", a, b, first, c, second)
	}

	// A cut before the copy is stored: nothing on the first route, and
	// the second move takes it.
	id := enqueue(t, q, msg(from, 3))
	full := queue.New(rdb, queue.Options{Now: clk.Now, MaxPerRoute: 1})
	const third = "app:third:billing@contoso.com"
	enqueue(t, full, msg(third, 9))
	if _, err := full.Move(ctx, id, third); !errors.Is(err, queue.ErrRouteFull) {
		t.Fatalf("move to a full route: %v, want ErrRouteFull", err)
	}
	if n, err := q.MoveRoute(ctx, from, second, 100); err != nil || n.To != 1 || n.Total() != 1 {
		t.Fatalf("MoveRoute after a move cut before its store: %+v, %v; want 1 moved to %s", n, err, second)
	}
	if c := count(second); c != 1 {
		t.Errorf("%d messages on %s after the second move, want the one the cut move did not store", c, second)
	}
}

// TestMoveBackKeepsMessage: a message moved with its application's
// idempotency key to another route, and moved back within the key's
// lifetime (the new credential did not work either), arrives back on its
// first route: the key there names the message it was moved as, which is
// the one being moved now, not a copy of it already stored. Moved once
// more, it goes on as well; after each move the application's retry on
// the route the message is on is answered with it. It runs on a single
// server and on Redis Cluster.
func TestMoveBackKeepsMessage(t *testing.T) { singleAndCluster(t, testMoveBackKeepsMessage) }

func testMoveBackKeepsMessage(t *testing.T, rdb redis.UniversalClient) {
	q := queue.New(rdb, queue.Options{Now: newClock().Now})
	ctx := context.Background()
	const a, b, c = "app:old:billing@contoso.com", "app:new:billing@contoso.com", "app:third:billing@contoso.com"
	m := msg(a, 1)
	m.IdempotencyKey, m.Fingerprint = "order-17", "fp17"
	enqueue(t, q, m)
	for i, hop := range [][2]string{{a, b}, {b, a}, {a, c}, {c, a}} {
		if n, err := q.MoveRoute(ctx, hop[0], hop[1], 100); err != nil || n.To != 1 || n.Total() != 1 {
			t.Fatalf("move %d, %s to %s: %+v, %v; want 1 moved", i+1, hop[0], hop[1], n, err)
		}
		st, err := q.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var found []string
		for _, r := range st.Routes {
			for range r.Undelivered() + r.Moving {
				found = append(found, r.Route)
			}
		}
		if len(found) != 1 || found[0] != hop[1] {
			t.Fatalf("after move %d, %s to %s: messages on %v, want the one message on %s", i+1, hop[0], hop[1], found, hop[1])
		}
		retry := m
		retry.Route = hop[1]
		id, dup, err := q.Enqueue(ctx, retry)
		if err != nil || !dup {
			t.Fatalf("retry on %s after move %d: %s, dup %v, %v; want a duplicate", hop[1], i+1, id, dup, err)
		}
		if got := get(t, q, id); got.Route != hop[1] {
			t.Errorf("retry on %s after move %d answered with %s, on %s; want the message on %s", hop[1], i+1, id, got.Route, hop[1])
		}
	}
}

// singleAndCluster runs test on a single server and on Redis Cluster,
// where two routes are in different slots.
func singleAndCluster(t *testing.T, test func(*testing.T, redis.UniversalClient)) {
	t.Run("Single", func(t *testing.T) { test(t, redistest.Start(t).Client(t)) })
	t.Run("Cluster", func(t *testing.T) { test(t, redistest.StartCluster(t, 3).Client(t)) })
}

// TestMoveConcurrentRuns: two moves of one route at once, to two routes
// or to the same one, the second run while the first has taken the
// message out and not yet stored its copy, leave the message on one
// route alone, and together report it moved once. It runs on a single
// server and on Redis Cluster.
func TestMoveConcurrentRuns(t *testing.T) {
	singleAndCluster(t, func(t *testing.T, rdb redis.UniversalClient) {
		const from, t1, t2 = "app:old:billing@contoso.com", "app:first:billing@contoso.com", "app:second:billing@contoso.com"
		testMoveConcurrentRuns(t, rdb, from, t1, t2)
		testMoveConcurrentRuns(t, rdb, from+".same", t1+".same", t1+".same")
	})
}

func testMoveConcurrentRuns(t *testing.T, rdb redis.UniversalClient, from, t1, t2 string) {
	ctx := context.Background()
	clk := newClock()
	a := queue.New(rdb, queue.Options{Now: clk.Now})
	b := queue.New(rdb, queue.Options{Now: clk.Now})
	enqueue(t, a, msg(from, 1))
	paused, resume := make(chan struct{}), make(chan struct{})
	queue.SetMoveHook(a, func(string) { close(paused); <-resume })
	type result struct {
		n   queue.Moved
		err error
	}
	done := make(chan result)
	go func() {
		n, err := a.MoveRoute(ctx, from, t1, 100)
		done <- result{n, err}
	}()
	<-paused
	nb, errB := b.MoveRoute(ctx, from, t2, 100)
	var locked *queue.MoveLockedError
	if !errors.As(errB, &locked) || !errors.Is(errB, queue.ErrMoveLocked) || locked.Route != from || locked.Left <= 0 {
		t.Errorf("a second move of %s while one runs: %v; want a MoveLockedError naming the route and the lock's time left", from, errB)
	}
	close(resume)
	ra := <-done
	if ra.err != nil {
		t.Fatalf("the first move: %v", ra.err)
	}
	on := map[string]int{}
	st, err := a.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range st.Routes {
		on[r.Route] = int(r.Undelivered() + r.Moving)
	}
	copies := on[t1] + on[t2]
	if t1 == t2 {
		copies = on[t1]
	}
	if on[from] != 0 || copies != 1 || ra.n.Total()+nb.Total() != 1 {
		t.Errorf("after two moves at once to %s and %s: %d on %s, %d on %s, %d on %s; reported moved %d and %d (second: %v); want the one message on one route, moved once",
			t1, t2, on[from], from, on[t1], t1, on[t2], t2, ra.n.Total(), nb.Total(), errB)
	}
}

// TestMoveLockLapsed: a move that hangs, after taking a message out,
// longer than its lock of the route lasts, lets another move of the
// route take over; when it wakes it stores nothing and deletes nothing,
// and the message is on the second move's route alone. It runs on a
// single server and on Redis Cluster.
func TestMoveLockLapsed(t *testing.T) { singleAndCluster(t, testMoveLockLapsed) }

func testMoveLockLapsed(t *testing.T, rdb redis.UniversalClient) {
	ctx := context.Background()
	clk := newClock()
	const from, t1, t2 = "app:old:billing@contoso.com", "app:first:billing@contoso.com", "app:second:billing@contoso.com"
	a := queue.New(rdb, queue.Options{Now: clk.Now})
	b := queue.New(rdb, queue.Options{Now: clk.Now})
	queue.SetMoveLockTTL(a, 300*time.Millisecond)
	id := enqueue(t, a, msg(from, 1))
	paused, resume := make(chan struct{}), make(chan struct{})
	queue.SetMoveHook(a, func(string) { close(paused); <-resume })
	done := make(chan error)
	go func() {
		_, err := a.Move(ctx, id, t1)
		done <- err
	}()
	<-paused
	if _, err := b.Move(ctx, id, t2); !errors.Is(err, queue.ErrMoveLocked) {
		t.Errorf("a move of %s while another holds its lock: %v, want ErrMoveLocked", id, err)
	}
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		n, err := rdb.Exists(ctx, queue.MoveLockKey(from)).Result()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("the hung move's lock did not lapse")
		}
	}
	nb, err := b.MoveRoute(ctx, from, t2, 100)
	if err != nil || nb.To != 1 || nb.Total() != 1 {
		t.Fatalf("a move of %s after the first one's lock lapsed: %+v, %v; want 1 moved to %s", from, nb, err, t2)
	}
	close(resume)
	if err := <-done; !errors.Is(err, queue.ErrMoveLockLost) {
		t.Errorf("the hung move, woken after another took over: %v, want ErrMoveLockLost", err)
	}
	on := map[string]int64{}
	st, err := a.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range st.Routes {
		on[r.Route] = r.Undelivered() + r.Moving
	}
	if on[from] != 0 || on[t1] != 0 || on[t2] != 1 {
		t.Errorf("after the hung move woke: %d on %s, %d on %s, %d on %s; want the message on %s alone",
			on[from], from, on[t1], t1, on[t2], t2, t2)
	}
	if n, err := rdb.Exists(ctx, queue.MoveLockKey(from)).Result(); err != nil || n != 0 {
		t.Errorf("the route's move lock after both moves ended: %d, %v; want it released", n, err)
	}
}
