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

// TestSettleSetsAmbiguous: a lease marked ambiguous sets the flag in the
// script that ends it (retry, defer and dead letter), and only then: an
// acked message, or another in the same lease, is not flagged. Running
// the settle again, as after a lost reply, keeps the flag.
func TestSettleSetsAmbiguous(t *testing.T) {
	q, _, _ := newQueue(t)
	ctx := context.Background()
	ids := make([]string, 5)
	for i := range ids {
		ids[i] = enqueue(t, q, msg("r", i+1))
	}
	res := lease(t, q, "r", 5, time.Minute)
	if len(res.Leases) != 5 {
		t.Fatalf("leased %d", len(res.Leases))
	}
	byID := map[string]*queue.Lease{}
	for _, l := range res.Leases {
		byID[l.ID] = l
	}
	for _, i := range []int{0, 1, 2, 3} {
		byID[ids[i]].SetAmbiguous()
	}
	if _, err := q.Retry(ctx, byID[ids[0]], "504"); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Retry(ctx, byID[ids[0]], "504"); err != nil {
		t.Fatalf("retry run again: %v", err)
	}
	if _, err := q.Defer(ctx, byID[ids[1]], time.Minute, "shutdown"); err != nil {
		t.Fatal(err)
	}
	if err := q.Fail(ctx, byID[ids[2]], "550"); err != nil {
		t.Fatal(err)
	}
	if err := q.Ack(ctx, byID[ids[3]], "250"); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Retry(ctx, byID[ids[4]], "451"); err != nil {
		t.Fatal(err)
	}
	for i, want := range []bool{true, true, true, false, false} {
		amb, err := q.Ambiguous(ctx, ids[i])
		if err != nil || amb != want {
			t.Errorf("message %d: ambiguous=%v err=%v, want %v", i, amb, err, want)
		}
	}
}

// TestExpiredLeaseAmbiguous: a lease that ran out (its worker was killed
// during a send) leaves the message flagged: the send may have reached
// the upstream, whose answer nobody read, so the next attempt first asks
// whether the message went out. A message handed back by its worker is
// not flagged.
func TestExpiredLeaseAmbiguous(t *testing.T) {
	q, clk, _ := newQueue(t)
	ctx := context.Background()
	killed := enqueue(t, q, msg("r", 1))
	if got := lease(t, q, "r", 1, time.Minute); len(got.Leases) != 1 || got.Leases[0].ID != killed {
		t.Fatalf("leased %+v", got.Leases)
	}
	clk.Add(2 * time.Minute)
	back := enqueue(t, q, msg("r", 2))
	res := lease(t, q, "r", 2, time.Minute)
	if len(res.Leases) != 2 {
		t.Fatalf("leased %d after the first lease ran out, want 2", len(res.Leases))
	}
	for _, l := range res.Leases {
		if _, err := q.Retry(ctx, l, "451"); err != nil {
			t.Fatal(err)
		}
	}
	for id, want := range map[string]bool{killed: true, back: false} {
		if amb, err := q.Ambiguous(ctx, id); err != nil || amb != want {
			t.Errorf("message %s: ambiguous=%v err=%v, want %v", id, amb, err, want)
		}
	}
}
