package queue_test

import (
	"context"
	"testing"
	"time"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

// TestRecipientQuota: two replicas count into one log per mailbox; a
// message that would go over the limit is not counted and learns when
// enough earlier recipients leave the window; a released reservation
// frees its room; the quota frees up as the oldest sends leave the window.
func TestRecipientQuota(t *testing.T) {
	srv := redistest.Start(t)
	clk := newClock()
	a := queue.NewLimiter(srv.Client(t), clk.Now)
	b := queue.NewLimiter(srv.Client(t), clk.Now)
	ctx := context.Background()
	const window = 24 * time.Hour
	reserve := func(l *queue.Limiter, mailbox, id string, n, limit int) time.Duration {
		t.Helper()
		d, err := l.ReserveRecipients(ctx, mailbox, id, n, limit, window)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	freesIn := func(l *queue.Limiter, mailbox string) time.Duration {
		t.Helper()
		d, err := l.QuotaFreesIn(ctx, mailbox, window)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if d := freesIn(a, "box@contoso.com"); d != 0 {
		t.Fatalf("nothing counted: frees in %v, want 0", d)
	}
	if d := reserve(a, "box@contoso.com", "m1", 2, 4); d != 0 {
		t.Fatalf("m1 refused for %v", d)
	}
	clk.Add(time.Hour)
	if d := reserve(b, "Box@Contoso.com", "m2", 1, 4); d != 0 {
		t.Fatalf("m2 refused for %v", d)
	}
	if d := freesIn(b, "box@contoso.com"); d != 23*time.Hour {
		t.Fatalf("frees in %v, want 23h (the first send leaves the window)", d)
	}
	// 3 counted, limit 4: two more fit only once m1's two leave (23 h).
	if d := reserve(a, "box@contoso.com", "m3", 2, 4); d != 23*time.Hour {
		t.Fatalf("m3 over the limit: wait %v, want 23h", d)
	}
	if d := reserve(a, "box@contoso.com", "m4", 1, 4); d != 0 {
		t.Fatalf("m4 fits: refused for %v", d)
	}
	if err := a.ReleaseRecipients(ctx, "box@contoso.com", "m4", 1); err != nil {
		t.Fatal(err)
	}
	if d := reserve(a, "box@contoso.com", "m5", 1, 4); d != 0 {
		t.Fatalf("m5 after m4 was released: refused for %v", d)
	}
	if d := reserve(a, "other@contoso.com", "m6", 4, 4); d != 0 {
		t.Fatalf("another mailbox: refused for %v", d)
	}
	if d := reserve(a, "box@contoso.com", "big", 9, 4); d != 0 {
		t.Fatalf("a message over the whole limit is left to the upstream: refused for %v", d)
	}
	if d := reserve(a, "box@contoso.com", "m7", 1, 0); d != 0 {
		t.Fatalf("no limit: refused for %v", d)
	}
	clk.Add(23 * time.Hour)
	if d := freesIn(a, "box@contoso.com"); d != time.Hour {
		t.Fatalf("after the first left: %v, want 1h", d)
	}
}
