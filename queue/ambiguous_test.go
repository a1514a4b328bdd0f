package queue_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"holdfast/queue"
)

// TestAmbiguousFlag: the flag survives a retry and a new lease, is kept
// per message, and is not created for a message that is gone.
func TestAmbiguousFlag(t *testing.T) {
	q, clk, _ := newQueue(t)
	ctx := context.Background()
	a := enqueue(t, q, msg("r", 1))
	b := enqueue(t, q, msg("r", 2))
	for _, id := range []string{a, b} {
		if amb, err := q.Ambiguous(ctx, id); err != nil || amb {
			t.Fatalf("new message %s ambiguous=%v err=%v", id, amb, err)
		}
	}
	res := lease(t, q, "r", 2, time.Minute)
	if len(res.Leases) != 2 {
		t.Fatalf("leased %d", len(res.Leases))
	}
	if err := q.MarkAmbiguous(ctx, a); err != nil {
		t.Fatal(err)
	}
	for _, l := range res.Leases {
		if _, err := q.Retry(ctx, l, "500"); err != nil {
			t.Fatal(err)
		}
	}
	clk.Add(time.Hour)
	if got := lease(t, q, "r", 2, time.Minute); len(got.Leases) != 2 {
		t.Fatalf("leased %d after retry", len(got.Leases))
	}
	if amb, err := q.Ambiguous(ctx, a); err != nil || !amb {
		t.Fatalf("marked message: ambiguous=%v err=%v", amb, err)
	}
	if amb, err := q.Ambiguous(ctx, b); err != nil || amb {
		t.Fatalf("other message: ambiguous=%v err=%v", amb, err)
	}
	if err := q.Delete(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := q.MarkAmbiguous(ctx, b); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("marking a deleted message: %v, want ErrNotFound", err)
	}
	if amb, _ := q.Ambiguous(ctx, b); amb {
		t.Fatal("a deleted message came back ambiguous")
	}
}
