package queue_test

import (
	"context"
	"testing"
	"time"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

// TestRecipientQuotaFreesIn: two replicas count into one log per mailbox;
// the quota frees up when the oldest counted send leaves the window.
func TestRecipientQuotaFreesIn(t *testing.T) {
	srv := redistest.Start(t)
	clk := newClock()
	a := queue.NewLimiter(srv.Client(t), clk.Now)
	b := queue.NewLimiter(srv.Client(t), clk.Now)
	ctx := context.Background()
	const window = 24 * time.Hour
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
	if err := a.CountRecipients(ctx, "box@contoso.com", "m1", 2, window); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Hour)
	if err := b.CountRecipients(ctx, "Box@Contoso.com", "m2", 1, window); err != nil {
		t.Fatal(err)
	}
	if d := freesIn(b, "box@contoso.com"); d != 23*time.Hour {
		t.Fatalf("frees in %v, want 23h (the first send leaves the window)", d)
	}
	if d := freesIn(a, "other@contoso.com"); d != 0 {
		t.Fatalf("another mailbox: %v", d)
	}
	clk.Add(23 * time.Hour)
	if d := freesIn(a, "box@contoso.com"); d != time.Hour {
		t.Fatalf("after the first left: %v, want 1h", d)
	}
}
