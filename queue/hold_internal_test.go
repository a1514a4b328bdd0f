package queue

import (
	"context"
	"testing"
	"time"

	"holdfast/queue/redistest"
)

// TestHoldWithoutStart: a hold set before hold starts were recorded gets
// its start at the first lease that sees it, and counts from there.
func TestHoldWithoutStart(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	now := time.Date(2026, 2, 14, 11, 30, 0, 0, time.UTC)
	q := New(rdb, Options{Now: func() time.Time { return now }})
	id, _, err := q.Enqueue(ctx, Submission{Route: "crm", From: "a@example.com", To: []string{"b@example.org"}, Body: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	rk := keysFor("crm")
	if err := rdb.Set(ctx, rk.hold, "breaker open", 0).Err(); err != nil {
		t.Fatal(err)
	}
	now = now.Add(24 * time.Hour)
	if res, err := q.Lease(ctx, "crm", 1, time.Minute); err != nil || !res.Held {
		t.Fatalf("lease: %+v %v", res, err)
	}
	if got, err := rdb.Get(ctx, rk.held).Int64(); err != nil || got != now.UnixMilli() {
		t.Fatalf("hold start after lease: %d %v, want %d", got, err, now.UnixMilli())
	}
	now = now.Add(24 * time.Hour)
	if err := q.ReleaseRoute(ctx, "crm"); err != nil {
		t.Fatal(err)
	}
	m, err := q.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if want := now.Add(-2 * 24 * time.Hour).Add(q.opts.Lifetime + 24*time.Hour); !m.Expires.Equal(want) {
		t.Fatalf("expires %v, want %v (one day credited)", m.Expires, want)
	}
	if n, err := rdb.Exists(ctx, rk.hold, rk.held).Result(); err != nil || n != 0 {
		t.Fatalf("hold keys left after release: %d %v", n, err)
	}
}
