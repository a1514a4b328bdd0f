package queue_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"holdfast/queue"
)

// TestRouteCap: past Options.MaxPerRoute live messages, a route's next
// store is refused whole with ErrRouteFull, while other routes, and the
// retry of a stored idempotency key, are taken; one message leaving makes
// room for one.
func TestRouteCap(t *testing.T) {
	q, _ := newQueueWith(t, queue.Options{MaxPerRoute: 3})
	ctx := context.Background()
	keyed := msg("crm", 0)
	keyed.IdempotencyKey = "order-1"
	first := enqueue(t, q, keyed)
	for i := 1; i < 3; i++ {
		enqueue(t, q, msg("crm", i))
	}
	id, dup, err := q.Enqueue(ctx, msg("crm", 3))
	if !errors.Is(err, queue.ErrRouteFull) || id != "" || dup {
		t.Fatalf("4th message of a route capped at 3: id %q dup %v err %v; want ErrRouteFull and no id", id, dup, err)
	}
	if again, dup, err := q.Enqueue(ctx, keyed); err != nil || !dup || again != first {
		t.Fatalf("retry of a stored key on a full route: id %q dup %v err %v; want %s, a duplicate", again, dup, err, first)
	}
	enqueue(t, q, msg("web", 0))
	st, err := q.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Total.Ready != 4 {
		t.Fatalf("%d messages ready after the refusal, want crm's 3 and web's 1", st.Total.Ready)
	}

	// Leased messages still count; a delivered one leaves room for one.
	res := lease(t, q, "crm", 1, time.Minute)
	if _, _, err := q.Enqueue(ctx, msg("crm", 4)); !errors.Is(err, queue.ErrRouteFull) {
		t.Fatalf("store with a message leased: %v, want ErrRouteFull", err)
	}
	if err := q.Ack(ctx, res.Leases[0], "250 2.0.0 OK"); err != nil {
		t.Fatal(err)
	}
	enqueue(t, q, msg("crm", 5))
	if _, _, err := q.Enqueue(ctx, msg("crm", 6)); !errors.Is(err, queue.ErrRouteFull) {
		t.Fatalf("store past the cap again: %v, want ErrRouteFull", err)
	}
}
