package queue_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

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

// BenchmarkReserveRecipients: one reservation against a mailbox that sent
// to none or to 9,000 recipients in the window (Exchange's quota is
// 10,000 a day). Its cost must not grow with what the mailbox sent.
func BenchmarkReserveRecipients(b *testing.B) {
	for _, sent := range []int{0, 9000} {
		b.Run(fmt.Sprintf("sent=%d", sent), func(b *testing.B) {
			srv := redistest.Start(b)
			clk := newClock()
			l := queue.NewLimiter(srv.Client(b), clk.Now)
			ctx := context.Background()
			for i := range sent {
				if _, err := l.ReserveRecipients(ctx, "box@contoso.com", fmt.Sprintf("old%d", i), 1, 10_000, 24*time.Hour); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for i := range b.N {
				id := fmt.Sprintf("m%d", i)
				if _, err := l.ReserveRecipients(ctx, "box@contoso.com", id, 1, 1_000_000, 24*time.Hour); err != nil {
					b.Fatal(err)
				}
				if err := l.ReleaseRecipients(ctx, "box@contoso.com", id, 1); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestRecipientQuotaTotal: the count a reservation reads follows the
// members leaving the window and released ones, and a log written
// without its running total (as before the total was kept) is summed.
func TestRecipientQuotaTotal(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	clk := newClock()
	l := queue.NewLimiter(rdb, clk.Now)
	ctx := context.Background()
	const window = time.Hour
	reserve := func(id string, n int) time.Duration {
		t.Helper()
		d, err := l.ReserveRecipients(ctx, "box@contoso.com", id, n, 10, window)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	// A log of 7 recipients with no total.
	now := clk.Now().UnixMilli()
	if err := rdb.ZAdd(ctx, "hf:rcpt:box@contoso.com",
		redis.Z{Score: float64(now - 50*60*1000), Member: "a:4"},
		redis.Z{Score: float64(now - 10*60*1000), Member: "b:3"}).Err(); err != nil {
		t.Fatal(err)
	}
	if d := reserve("c", 4); d != 10*time.Minute {
		t.Fatalf("7 counted, 4 more over 10: wait %v, want 10m (a's 4 leave then)", d)
	}
	if d := reserve("c", 3); d != 0 {
		t.Fatalf("7 counted, 3 more fit: refused for %v", d)
	}
	clk.Add(10 * time.Minute) // a's 4 leave: 6 counted
	if d := reserve("d", 4); d != 0 {
		t.Fatalf("6 counted, 4 more fit: refused for %v", d)
	}
	if err := l.ReleaseRecipients(ctx, "box@contoso.com", "d", 4); err != nil {
		t.Fatal(err)
	}
	if err := l.ReleaseRecipients(ctx, "box@contoso.com", "d", 4); err != nil { // twice: no effect
		t.Fatal(err)
	}
	if d := reserve("e", 5); d == 0 {
		t.Fatal("6 counted after the release, 5 more went over 10")
	}
	if d := reserve("e", 4); d != 0 {
		t.Fatalf("6 counted after the release, 4 more fit: refused for %v", d)
	}
}
