package queue_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"holdfast/queue"
)

// deadLetter enqueues n messages on route and fails each for good.
func deadLetter(t *testing.T, q *queue.Queue, route string, n int) []string {
	t.Helper()
	ctx := context.Background()
	var ids []string
	for i := range n {
		ids = append(ids, enqueue(t, q, msg(route, i)))
	}
	res := lease(t, q, route, n, time.Minute)
	if len(res.Leases) != n {
		t.Fatalf("leased %d of %d", len(res.Leases), n)
	}
	for _, l := range res.Leases {
		if err := q.Fail(ctx, l, "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found"); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

func TestExpireDead(t *testing.T) {
	q, clk, _ := newQueue(t)
	ctx := context.Background()
	old := deadLetter(t, q, "crm", 3)
	many := deadLetter(t, q, "bulk", 1203) // more than one batch
	clk.Add(20 * 24 * time.Hour)
	recent := deadLetter(t, q, "crm", 2)
	requeued := old[0]
	if err := q.Requeue(ctx, requeued); err != nil {
		t.Fatal(err)
	}
	live := enqueue(t, q, msg("crm", 9))
	clk.Add(11 * 24 * time.Hour)

	n, err := q.ExpireDead(ctx, 30*24*time.Hour, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := 2 + len(many); n != want {
		t.Fatalf("expired %d dead letters, want %d", n, want)
	}
	for _, id := range append(old[1:], many[0], many[len(many)-1]) {
		if _, err := q.Get(ctx, id); !errors.Is(err, queue.ErrNotFound) {
			t.Fatalf("dead letter %s after its retention: %v, want not found", id, err)
		}
	}
	for _, id := range recent {
		if m := get(t, q, id); m.State != queue.Dead {
			t.Fatalf("recent dead letter %s: %s", id, m.State)
		}
	}
	for _, id := range []string{requeued, live} {
		if m := get(t, q, id); m.State != queue.Ready {
			t.Fatalf("waiting message %s: %s, want ready", id, m.State)
		}
	}
	st, err := q.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Total.Dead != int64(len(recent)) || st.Total.Ready != 2 {
		t.Fatalf("stats after expiry: %+v, want %d dead and 2 ready", st.Total, len(recent))
	}
	if n, err := q.ExpireDead(ctx, 30*24*time.Hour, 0); err != nil || n != 0 {
		t.Fatalf("second run: %d %v, want 0", n, err)
	}
	// The route with nothing left is pruned as any empty route is.
	if _, err := q.PruneRoutes(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	clk.Add(2 * time.Hour)
	if p, err := q.PruneRoutes(ctx, time.Hour); err != nil || len(p) != 1 || p[0] != "bulk" {
		t.Fatalf("pruned %v %v, want [bulk]", p, err)
	}
	if _, err := q.ExpireDead(ctx, 0, 0); err == nil {
		t.Fatal("an age of 0 was taken")
	}
}

// TestExpireDeadOncePerInterval: a pass counts for the fleet for its
// interval; another process's pass within it deletes nothing.
func TestExpireDeadOncePerInterval(t *testing.T) {
	q, clk, srv := newQueue(t)
	other := queue.New(srv.Client(t), queue.Options{Now: clk.Now})
	ctx := context.Background()
	first := deadLetter(t, q, "crm", 1)
	clk.Add(31 * 24 * time.Hour)
	if n, err := q.ExpireDead(ctx, 30*24*time.Hour, time.Hour); err != nil || n != 1 {
		t.Fatalf("first pass: %d %v, want 1", n, err)
	}
	second := deadLetter(t, other, "crm", 1)
	clk.Add(31 * 24 * time.Hour)
	if n, err := other.ExpireDead(ctx, 30*24*time.Hour, time.Hour); err != nil || n != 0 {
		t.Fatalf("another process's pass within the hour: %d %v, want 0", n, err)
	}
	if m := get(t, q, second[0]); m.State != queue.Dead {
		t.Fatalf("dead letter %s after a skipped pass: %s", second[0], m.State)
	}
	if _, err := q.Get(ctx, first[0]); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("the first pass's letter: %v", err)
	}
}

// TestIdempotencyKeyOutlivesDelete: a retry with the key of a message an
// operator deleted gets that message's id as a duplicate, and stores
// nothing: the deleted mail does not come back.
func TestIdempotencyKeyOutlivesDelete(t *testing.T) {
	q, _, _ := newQueue(t)
	ctx := context.Background()
	m := msg("crm", 1)
	m.IdempotencyKey = "order-1234"
	id := enqueue(t, q, m)
	if err := q.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	again, dup, err := q.Enqueue(ctx, m)
	if err != nil || !dup || again != id {
		t.Fatalf("retry after delete: %s %v %v, want %s as a duplicate", again, dup, err, id)
	}
	if st, err := q.Stats(ctx); err != nil || st.Total.Ready != 0 {
		t.Fatalf("stats after the retry: %+v %v, want nothing stored", st.Total, err)
	}
}
