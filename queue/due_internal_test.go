package queue

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"holdfast/queue/redistest"
)

func submitTo(t *testing.T, q *Queue, route string) string {
	t.Helper()
	id, _, err := q.Enqueue(context.Background(), Submission{Route: route, From: "a@example.com", To: []string{"b@example.org"}, Body: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func dueNow(t *testing.T, q *Queue) ([]string, time.Time) {
	t.Helper()
	routes, next, err := q.DueRoutes(context.Background(), 1000)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(routes)
	return routes, next
}

// TestDueIndex: only routes with mail due now (or a lease to reclaim) are
// due; idle routes cost nothing; a held route is not due until released.
func TestDueIndex(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	now := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	q := New(rdb, Options{Now: func() time.Time { return now }, BackoffBase: time.Minute})

	// 50 routes that had mail, all delivered: idle.
	for i := range 50 {
		route := "idle" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		submitTo(t, q, route)
		res, err := q.Lease(ctx, route, 1, time.Minute)
		if err != nil || len(res.Leases) != 1 {
			t.Fatalf("lease %s: %+v %v", route, res, err)
		}
		if err := q.Ack(ctx, res.Leases[0], "250 ok"); err != nil {
			t.Fatal(err)
		}
		// The entry stays at the lease deadline until a lease finds the
		// route empty.
		now = now.Add(time.Minute + time.Millisecond)
		if _, err := q.Lease(ctx, route, 1, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if got, next := dueNow(t, q); len(got) != 0 || !next.IsZero() {
		t.Fatalf("idle routes due: %v next %v", got, next)
	}

	submitTo(t, q, "busy")
	if got, _ := dueNow(t, q); !slices.Equal(got, []string{"busy"}) {
		t.Fatalf("due after enqueue: %v", got)
	}
	res, err := q.Lease(ctx, "busy", 10, time.Minute)
	if err != nil || len(res.Leases) != 1 {
		t.Fatalf("lease busy: %+v %v", res, err)
	}
	// Leased: not due until its lease deadline, then due (to reclaim it).
	if got, next := dueNow(t, q); len(got) != 0 || !next.Equal(now.Add(time.Minute)) {
		t.Fatalf("due while leased: %v next %v", got, next)
	}
	// Handed back for later: due at once (dirty), and a lease moves the
	// entry to the retry time.
	if _, err := q.Retry(ctx, res.Leases[0], "421 try later"); err != nil {
		t.Fatal(err)
	}
	if got, _ := dueNow(t, q); !slices.Equal(got, []string{"busy"}) {
		t.Fatalf("due after retry: %v", got)
	}
	if res, err := q.Lease(ctx, "busy", 10, time.Minute); err != nil || len(res.Leases) != 0 {
		t.Fatalf("lease before backoff: %+v %v", res, err)
	}
	got, next := dueNow(t, q)
	if len(got) != 0 || next.IsZero() || !next.After(now) {
		t.Fatalf("due during backoff: %v next %v", got, next)
	}
	now = next
	if got, _ := dueNow(t, q); !slices.Equal(got, []string{"busy"}) {
		t.Fatalf("due after backoff: %v", got)
	}

	// Held: a lease finds it held and the entry moves HeldRecheck away.
	if err := q.HoldRoute(ctx, "busy", "breaker open"); err != nil {
		t.Fatal(err)
	}
	if res, err := q.Lease(ctx, "busy", 10, time.Minute); err != nil || !res.Held {
		t.Fatalf("lease held: %+v %v", res, err)
	}
	if got, next := dueNow(t, q); len(got) != 0 || !next.Equal(now.Add(q.opts.HeldRecheck)) {
		t.Fatalf("held route due: %v next %v", got, next)
	}
	if err := q.ReleaseRoute(ctx, "busy"); err != nil {
		t.Fatal(err)
	}
	if got, _ := dueNow(t, q); !slices.Equal(got, []string{"busy"}) {
		t.Fatalf("due after release: %v", got)
	}
}

// TestDueIndexStaleUpdate: an index update from an earlier lease does not
// overwrite a later lease's.
func TestDueIndexStaleUpdate(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	q := New(rdb, Options{})
	if err := q.index(ctx, "r", 5, 1000); err != nil {
		t.Fatal(err)
	}
	if err := q.index(ctx, "r", 4, -1); err != nil {
		t.Fatal(err)
	}
	if s, err := rdb.ZScore(ctx, dueIndexKey, "r").Result(); err != nil || s != 1000 {
		t.Fatalf("entry after a stale update: %v %v", s, err)
	}
}

// TestSweepDue: a route whose mark was lost (the process stopped between
// storing and marking) is found by SweepDue.
func TestSweepDue(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	q := New(rdb, Options{})
	submitTo(t, q, "lost")
	submitTo(t, q, "kept")
	if _, err := q.Lease(ctx, "kept", 10, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Del(ctx, dueDirtyKey).Err(); err != nil {
		t.Fatal(err)
	}
	if got, _ := dueNow(t, q); len(got) != 0 {
		t.Fatalf("due before the sweep: %v", got)
	}
	n, err := q.SweepDue(ctx)
	if err != nil || n != 1 {
		t.Fatalf("sweep: %d %v, want 1", n, err)
	}
	if got, _ := dueNow(t, q); !slices.Equal(got, []string{"lost"}) {
		t.Fatalf("due after the sweep: %v", got)
	}
}

// TestSweepDueStaleEntry: a route whose index entry is an hour ahead of
// its ready message (the entry of a lease whose messages were since
// settled, and a mark lost after a new message) is found by SweepDue; a
// held route, whose entry is its recheck, is not.
func TestSweepDueStaleEntry(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	q := New(rdb, Options{})
	later := float64(time.Now().Add(time.Hour).UnixMilli())
	for _, r := range []string{"stale", "held"} {
		submitTo(t, q, r)
		if err := rdb.ZAdd(ctx, dueIndexKey, redis.Z{Score: later, Member: r}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.HoldRoute(ctx, "held", "breaker open"); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Del(ctx, dueDirtyKey).Err(); err != nil {
		t.Fatal(err)
	}
	if got, _ := dueNow(t, q); len(got) != 0 {
		t.Fatalf("due before the sweep: %v", got)
	}
	n, err := q.SweepDue(ctx)
	if err != nil || n != 1 {
		t.Fatalf("sweep: %d %v, want 1", n, err)
	}
	if got, _ := dueNow(t, q); !slices.Equal(got, []string{"stale"}) {
		t.Fatalf("due after the sweep: %v", got)
	}
}

// TestSweepDueLeavesMarkedRoutes: a route already marked dirty is due at
// the next pass, whatever its entry says: a route whose mailbox waits
// (the dispatcher leaves it alone, and its mark stays) is not a lost
// mark, and the sweep neither counts it nor marks it again.
func TestSweepDueLeavesMarkedRoutes(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	q := New(rdb, Options{})
	later := float64(time.Now().Add(time.Hour).UnixMilli())
	submitTo(t, q, "waiting")
	submitTo(t, q, "new")
	if err := rdb.ZAdd(ctx, dueIndexKey, redis.Z{Score: later, Member: "waiting"}).Err(); err != nil {
		t.Fatal(err)
	}
	n, err := q.SweepDue(ctx)
	if err != nil || n != 0 {
		t.Fatalf("sweep of routes marked dirty: %d %v, want 0", n, err)
	}
	got, _ := dueNow(t, q)
	slices.Sort(got)
	if !slices.Equal(got, []string{"new", "waiting"}) {
		t.Fatalf("due after the sweep: %v, want both", got)
	}
}

// TestUnmarkedRouteIsDue: a route this process changed but could not
// mark due is returned by DueRoutes until a Lease of it ran.
func TestUnmarkedRouteIsDue(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	q := New(rdb, Options{})
	submitTo(t, q, "r")
	if err := rdb.Del(ctx, dueDirtyKey).Err(); err != nil {
		t.Fatal(err)
	}
	q.mu.Lock()
	q.unmarked["r"] = true
	q.mu.Unlock()
	for range 2 {
		if got, _ := dueNow(t, q); !slices.Equal(got, []string{"r"}) {
			t.Fatalf("due: %v, want r until it is leased", got)
		}
	}
	if _, err := q.Lease(ctx, "r", 10, time.Minute); err != nil {
		t.Fatal(err)
	}
	if got, _ := dueNow(t, q); len(got) != 0 {
		t.Fatalf("due after the lease: %v", got)
	}
}

// TestLeaseRerun: the lease script run again with the same token, as
// go-redis does after a read timeout, leases nothing more and returns the
// same messages; a settle run again counts its attempt once.
func TestLeaseRerun(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	q := New(rdb, Options{})
	for range 3 {
		submitTo(t, q, "crm")
	}
	first, err := q.lease(ctx, "crm", 2, time.Minute, "tok1", nil, "", false)
	if err != nil || len(first.Leases) != 2 {
		t.Fatalf("lease: %+v %v", first, err)
	}
	again, err := q.lease(ctx, "crm", 2, time.Minute, "tok1", nil, "", false)
	if err != nil {
		t.Fatal(err)
	}
	ids := func(r LeaseResult) []string {
		var out []string
		for _, l := range r.Leases {
			out = append(out, l.ID)
		}
		slices.Sort(out)
		return out
	}
	if !slices.Equal(ids(first), ids(again)) {
		t.Fatalf("re-run leased %v, first run %v", ids(again), ids(first))
	}
	st, err := q.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Total.Leased != 2 || st.Total.Ready != 1 {
		t.Fatalf("after the re-run: %+v", st)
	}

	l := first.Leases[0]
	twin := *l
	if _, err := q.Retry(ctx, l, "421 busy"); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Retry(ctx, &twin, "421 busy"); err != nil {
		t.Fatalf("settle re-run: %v", err)
	}
	m, err := q.Get(ctx, l.ID)
	if err != nil {
		t.Fatal(err)
	}
	if m.Attempts != 1 {
		t.Fatalf("attempts after a settle re-run: %d, want 1", m.Attempts)
	}

	// An ack with the next lease, called again for the same lease (as
	// after a reply lost to a Redis hang or failover), acks once and
	// returns the same lease: the next lease's token follows from the
	// acked one's.
	acked := first.Leases[1]
	twin = *acked
	next, err := q.AckNext(ctx, acked, "250 OK", 1, time.Minute)
	if err != nil || len(next.Leases) != 1 {
		t.Fatalf("ack and lease: %+v %v", next, err)
	}
	again, err = q.AckNext(ctx, &twin, "250 OK", 1, time.Minute)
	if err != nil || !slices.Equal(ids(next), ids(again)) {
		t.Fatalf("ack and lease called again: %v %v, first call %v", ids(again), err, ids(next))
	}
	if again.Leases[0].token != next.Leases[0].token {
		t.Fatalf("ack and lease called again: lease token %s, first call %s", again.Leases[0].token, next.Leases[0].token)
	}
	if st, err = q.Stats(ctx); err != nil || st.Total.Leased != 1 {
		t.Fatalf("after the second call: %+v %v; want only the message the ack's lease took leased", st, err)
	}
	if m, err = q.Get(ctx, acked.ID); err != nil || m.State != Delivered || m.Attempts != 1 {
		t.Fatalf("acked message after the re-run: %+v %v; want delivered after 1 attempt", m, err)
	}
}

// TestAckNextSharedToken: the messages of one lease share its token; each
// one's ack takes a lease of its own, not the one an ack of another took.
func TestAckNextSharedToken(t *testing.T) {
	ctx := context.Background()
	q := New(redistest.Start(t).Client(t), Options{})
	for range 4 {
		submitTo(t, q, "crm")
	}
	first, err := q.Lease(ctx, "crm", 2, time.Minute)
	if err != nil || len(first.Leases) != 2 {
		t.Fatalf("lease: %+v %v", first, err)
	}
	var next []string
	for _, l := range first.Leases {
		res, err := q.AckNext(ctx, l, "250 OK", 1, time.Minute)
		if err != nil || len(res.Leases) != 1 {
			t.Fatalf("ack of %s and lease: %+v %v", l.ID, res, err)
		}
		next = append(next, res.Leases[0].ID)
	}
	if next[0] == next[1] {
		t.Fatalf("both acks returned the lease of %s", next[0])
	}
	if st, err := q.Stats(ctx); err != nil || st.Total.Leased != 2 || st.Total.Ready != 0 {
		t.Fatalf("after both acks: %+v %v; want 2 leased, none ready", st, err)
	}
}

// TestWithdraw: a withdrawn message is deleted if it was stored and not
// leased; a withdrawn id that was not stored yet is not stored by an
// Enqueue that runs later; a message a worker leased first is not
// touched.
func TestWithdraw(t *testing.T) {
	ctx := context.Background()
	q := New(redistest.Start(t).Client(t), Options{})
	sub := Submission{Route: "crm", From: "a@example.com", To: []string{"b@example.org"}, Body: []byte("x")}

	// Stored, then withdrawn.
	id := submitTo(t, q, "crm")
	if err := q.Withdraw(ctx, "crm", id); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Get(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("withdrawn stored message: %v, want ErrNotFound", err)
	}

	// Withdrawn before the store runs: the store, run as Enqueue does
	// with the same id, stores nothing.
	rk := keysFor("crm")
	late := newID(rk.tag, time.Now())
	if err := q.Withdraw(ctx, "crm", late); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	res, err := enqueueScript.Run(ctx, q.rdb, []string{msgKey(late), rk.due, rk.live, withdrawnKey(late)},
		late, sub.Route, "", sub.From, sub.To[0], sub.Body, now.UnixMilli(), now.Add(time.Hour).UnixMilli(), 0, "", "").Slice()
	if err != nil || res[1].(int64) != 2 {
		t.Fatalf("store after the withdrawal: %v %v; want it refused as withdrawn", res, err)
	}
	if _, err := q.Get(ctx, late); !errors.Is(err, ErrNotFound) {
		t.Fatalf("message stored after its withdrawal: %v", err)
	}

	// Leased first: too late, and the message stays.
	leased := submitTo(t, q, "crm")
	if res, err := q.Lease(ctx, "crm", 1, time.Minute); err != nil || len(res.Leases) != 1 || res.Leases[0].ID != leased {
		t.Fatalf("lease: %+v %v", res, err)
	}
	if err := q.Withdraw(ctx, "crm", leased); !errors.Is(err, ErrTooLate) {
		t.Fatalf("withdrawal of a leased message: %v, want ErrTooLate", err)
	}
	if m, err := q.Get(ctx, leased); err != nil || m.State != Leased {
		t.Fatalf("leased message after a refused withdrawal: %+v %v", m, err)
	}
	if st, err := q.Stats(ctx); err != nil || st.Total.Ready != 0 || st.Total.Leased != 1 {
		t.Fatalf("stats: %+v %v; want only the leased message", st, err)
	}
}

// TestLeaseOrphanReleased: a Lease that fails on a hung Redis runs when
// Redis continues, leasing a message no worker knows of. The route's next
// Lease hands it back without spending an attempt and leases it, instead
// of leaving it to wait for the lease to run out.
func TestLeaseOrphanReleased(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = rdb.Close() })
	// A clock that moves on at every reading, as a busy machine's does
	// between two steps of one Lease.
	var ms atomic.Int64
	base := time.Now()
	q := New(rdb, Options{Now: func() time.Time { return base.Add(time.Duration(ms.Add(1)) * time.Millisecond) }})
	id := submitTo(t, q, "crm")
	if _, err := q.Lease(ctx, "other", 1, time.Minute); err != nil { // loads the script
		t.Fatal(err)
	}
	srv.Pause(t)
	tctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := q.Lease(tctx, "crm", 1, time.Hour)
	cancel()
	if err == nil {
		t.Fatal("a lease on a hung Redis succeeded")
	}
	srv.Resume(t)
	waitUntil := time.Now().Add(5 * time.Second)
	for {
		m, err := q.Get(ctx, id)
		if err == nil && m.State == Leased {
			break // the failed lease ran when Redis continued
		}
		if time.Now().After(waitUntil) {
			t.Fatalf("the failed lease never ran: %+v %v", m, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	routes, _, err := q.DueRoutes(ctx, 10)
	if err != nil || !slices.Contains(routes, "crm") {
		t.Fatalf("due routes %v (%v), want crm, whose failed lease is to be handed back", routes, err)
	}
	res, err := q.Lease(ctx, "crm", 1, time.Minute)
	if err != nil || len(res.Leases) != 1 || res.Leases[0].ID != id {
		t.Fatalf("lease after the failed one: %+v %v; want %s", res, err, id)
	}
	if a := res.Leases[0].Attempts; a != 0 {
		t.Fatalf("attempts %d after a failed lease handed back, want 0", a)
	}
}
