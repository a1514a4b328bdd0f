package queue_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

// TestConnectionSlotsAcrossReplicas: two limiters on separate clients (two
// replicas) never hold more than the limit between them.
func TestConnectionSlotsAcrossReplicas(t *testing.T) {
	srv := redistest.Start(t)
	clk := newClock()
	a := queue.NewLimiter(srv.Client(t), clk.Now)
	b := queue.NewLimiter(srv.Client(t), clk.Now)
	ctx := context.Background()
	var held atomic.Int32
	var slots []*queue.Slot
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := a
			if i%2 == 1 {
				l = b
			}
			s, err := l.AcquireConn(ctx, "alice@contoso.com", 3, time.Minute)
			if err != nil {
				t.Error(err)
				return
			}
			if s != nil {
				held.Add(1)
				mu.Lock()
				slots = append(slots, s)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if held.Load() != 3 {
		t.Fatalf("%d slots held, want 3", held.Load())
	}
	if s, _ := a.AcquireConn(ctx, "bob@contoso.com", 3, time.Minute); s == nil {
		t.Fatal("another mailbox was limited too")
	}
	if err := b.Release(ctx, slots[0]); err != nil {
		t.Fatal(err)
	}
	if s, _ := a.AcquireConn(ctx, "alice@contoso.com", 3, time.Minute); s == nil {
		t.Fatal("a released slot was not free")
	}
	// A replica that dies keeps nothing: unrenewed slots expire.
	clk.Add(30 * time.Second)
	if err := a.Renew(ctx, slots[1], time.Minute); err != nil {
		t.Fatal(err)
	}
	clk.Add(31 * time.Second)
	got := 0
	for range 3 {
		if s, _ := b.AcquireConn(ctx, "alice@contoso.com", 3, time.Minute); s != nil {
			got++
		}
	}
	if got != 2 {
		t.Fatalf("after expiry %d slots free, want 2 (one was renewed)", got)
	}
	// A lapsed slot, taken by another replica meanwhile, cannot be renewed.
	if err := a.Renew(ctx, slots[0], time.Minute); !errors.Is(err, queue.ErrSlotLost) {
		t.Fatalf("renewing an expired, freed slot: %v, want ErrSlotLost", err)
	}
}

func TestSendRateAcrossReplicas(t *testing.T) {
	srv := redistest.Start(t)
	clk := newClock()
	a := queue.NewLimiter(srv.Client(t), clk.Now)
	b := queue.NewLimiter(srv.Client(t), clk.Now)
	ctx := context.Background()
	sent := 0
	for i := range 40 {
		l := a
		if i%2 == 1 {
			l = b
		}
		wait, err := l.TakeSend(ctx, "alice@contoso.com", 30, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if wait == 0 {
			sent++
		} else if wait != time.Minute {
			t.Fatalf("wait %v, want a minute (all sends at the same instant)", wait)
		}
	}
	if sent != 30 {
		t.Fatalf("%d sends allowed in one minute, want 30", sent)
	}
	clk.Add(time.Minute + time.Millisecond)
	if wait, _ := b.TakeSend(ctx, "alice@contoso.com", 30, time.Minute); wait != 0 {
		t.Fatalf("after the window: wait %v", wait)
	}
}

// TestHoldMailbox: a wait one replica records holds the sends of that
// kind on every replica, and only them, until it ends; a shorter wait
// does not cut a longer one short, and the key goes with the last wait.
func TestHoldMailbox(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	clk := newClock()
	a := queue.NewLimiter(rdb, clk.Now)
	b := queue.NewLimiter(srv.Client(t), clk.Now)
	ctx := context.Background()
	const box = "alice@contoso.com"

	if first, err := a.HoldMailbox(ctx, box, "blocked", 30*time.Minute); err != nil || !first {
		t.Fatalf("HoldMailbox = %v, %v; want a new wait", first, err)
	}
	if first, err := b.HoldMailbox(ctx, box, "blocked", time.Minute); err != nil || first {
		t.Fatalf("HoldMailbox of a waiting kind = %v, %v; want false", first, err)
	}
	token, wait, err := b.ReserveSend(ctx, box, 30, time.Minute, "blocked")
	if err != nil || token != "" || wait != 30*time.Minute {
		t.Fatalf("ReserveSend of a blocked mailbox = %q, %v, %v; want a 30-minute wait, the longer one", token, wait, err)
	}
	if token, wait, err := b.ReserveSend(ctx, box, 30, time.Minute, "graph"); err != nil || token == "" || wait != 0 {
		t.Fatalf("ReserveSend held only by another kind = %q, %v, %v; want sent", token, wait, err)
	}
	if wait, err := b.TakeSend(ctx, box, 30, time.Minute); err != nil || wait != 0 {
		t.Fatalf("TakeSend held by nothing = %v, %v; want sent", wait, err)
	}
	if wait, err := b.TakeSend(ctx, "bob@contoso.com", 30, time.Minute); err != nil || wait != 0 {
		t.Fatalf("another mailbox = %v, %v", wait, err)
	}

	if _, err := a.HoldMailbox(ctx, box, "graph", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, wait, _ := b.ReserveSend(ctx, box, 30, time.Minute, "graph"); wait != 10*time.Second {
		t.Fatalf("graph wait %v, want 10s", wait)
	}
	if _, wait, _ := b.ReserveSend(ctx, box, 30, time.Minute, "graph", "blocked"); wait != 30*time.Minute {
		t.Fatalf("both kinds: wait %v, want the longer, 30m", wait)
	}
	keys, _ := rdb.Keys(ctx, "hf:{lim:"+box+"}:waits").Result()
	if len(keys) != 1 {
		t.Fatalf("waits keys %v", keys)
	}
	if ttl := rdb.PTTL(ctx, keys[0]).Val(); ttl < 29*time.Minute || ttl > 30*time.Minute {
		t.Errorf("the waits key lives %v, want until the last wait ends (30m)", ttl)
	}

	waits, err := b.MailboxWaits(ctx, []string{"bob@contoso.com", box})
	want := []queue.MailboxWait{
		{Mailbox: box, Kind: "blocked", Until: clk.Now().Add(30 * time.Minute)},
		{Mailbox: box, Kind: "graph", Until: clk.Now().Add(10 * time.Second)},
	}
	same := func(a, b queue.MailboxWait) bool {
		return a.Mailbox == b.Mailbox && a.Kind == b.Kind && a.Until.Equal(b.Until)
	}
	if err != nil || len(waits) != 2 || !same(waits[0], want[0]) || !same(waits[1], want[1]) {
		t.Fatalf("MailboxWaits = %+v, %v; want %+v", waits, err, want)
	}
	clk.Add(10 * time.Second)
	if waits, _ := b.MailboxWaits(ctx, []string{box}); len(waits) != 1 || waits[0].Kind != "blocked" {
		t.Fatalf("MailboxWaits after the graph wait = %+v; want the block alone", waits)
	}

	clk.Add(30*time.Minute + time.Millisecond)
	if waits, err := b.MailboxWaits(ctx, []string{box}); err != nil || len(waits) != 0 {
		t.Fatalf("MailboxWaits after every wait = %+v, %v", waits, err)
	}
	if token, wait, err := b.ReserveSend(ctx, box, 30, time.Minute, "graph", "blocked"); err != nil || token == "" || wait != 0 {
		t.Fatalf("after the waits = %q, %v, %v; want sent", token, wait, err)
	}
	if first, _ := a.HoldMailbox(ctx, box, "blocked", time.Second); !first {
		t.Error("a wait after the last ended is not new")
	}
	if first, err := a.HoldMailbox(ctx, box, "blocked", 0); first || err != nil {
		t.Errorf("a wait of 0 = %v, %v; want nothing recorded", first, err)
	}
}

// TestEndMailboxWaits: an operator's end of a mailbox's waits removes
// every kind of them at once, returns those that had not ended, and
// leaves other mailboxes waiting; the mailbox's sends go on.
func TestEndMailboxWaits(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	clk := newClock()
	l := queue.NewLimiter(rdb, clk.Now)
	ctx := context.Background()
	const box, other, idle = "alice@contoso.com", "bob@contoso.com", "carol@contoso.com"
	for _, h := range []struct {
		mailbox, kind string
		d             time.Duration
	}{{box, "blocked", 30 * time.Minute}, {box, "graph", 10 * time.Second}, {box, "old", time.Second}, {other, "blocked", time.Hour}} {
		if _, err := l.HoldMailbox(ctx, h.mailbox, h.kind, h.d); err != nil {
			t.Fatal(err)
		}
	}
	clk.Add(2 * time.Second) // the "old" wait ends

	ended, err := l.EndMailboxWaits(ctx, []string{box, idle})
	want := []queue.MailboxWait{
		{Mailbox: box, Kind: "blocked", Until: clk.Now().Add(30*time.Minute - 2*time.Second)},
		{Mailbox: box, Kind: "graph", Until: clk.Now().Add(8 * time.Second)},
	}
	if err != nil || len(ended) != len(want) {
		t.Fatalf("EndMailboxWaits = %+v, %v; want %+v", ended, err, want)
	}
	for i := range want {
		if ended[i].Mailbox != want[i].Mailbox || ended[i].Kind != want[i].Kind || !ended[i].Until.Equal(want[i].Until) {
			t.Fatalf("EndMailboxWaits = %+v; want %+v", ended, want)
		}
	}
	if n := rdb.Exists(ctx, "hf:{lim:"+box+"}:waits").Val(); n != 0 {
		t.Error("the ended mailbox's waits key is still there")
	}
	if waits, err := l.MailboxWaits(ctx, []string{box, other}); err != nil || len(waits) != 1 || waits[0].Mailbox != other {
		t.Fatalf("MailboxWaits after the end = %+v, %v; want bob's alone", waits, err)
	}
	if token, wait, err := l.ReserveSend(ctx, box, 30, time.Minute, "blocked", "graph"); err != nil || token == "" || wait != 0 {
		t.Fatalf("ReserveSend after the end = %q, %v, %v; want sent", token, wait, err)
	}
	if ended, err := l.EndMailboxWaits(ctx, []string{box}); err != nil || len(ended) != 0 {
		t.Fatalf("a second end = %+v, %v; want nothing ended", ended, err)
	}
	if ended, err := l.EndMailboxWaits(ctx, nil); err != nil || len(ended) != 0 {
		t.Fatalf("an end of no mailbox = %+v, %v", ended, err)
	}
}

// TestWaitRecheck: a limiter that rechecks the waits answers a send held
// by a mailbox's wait with at most the recheck, so that its caller asks
// again and finds a wait an operator ended; a shorter wait is answered
// whole, and a wait of the send rate is not cut.
func TestWaitRecheck(t *testing.T) {
	srv := redistest.Start(t)
	clk := newClock()
	l := queue.NewLimiter(srv.Client(t), clk.Now).WithWaitRecheck(2 * time.Second)
	ctx := context.Background()
	const box = "alice@contoso.com"
	if _, err := l.HoldMailbox(ctx, box, "blocked", 30*time.Minute); err != nil {
		t.Fatal(err)
	}
	if token, wait, err := l.ReserveSend(ctx, box, 30, time.Minute, "blocked"); err != nil || token != "" || wait != 2*time.Second {
		t.Fatalf("ReserveSend of a blocked mailbox = %q, %v, %v; want the 2s recheck", token, wait, err)
	}
	if _, err := l.HoldMailbox(ctx, box, "graph", time.Second); err != nil {
		t.Fatal(err)
	}
	if _, wait, err := l.ReserveSend(ctx, box, 30, time.Minute, "graph"); err != nil || wait != time.Second {
		t.Fatalf("a wait shorter than the recheck = %v, %v; want it whole, 1s", wait, err)
	}
	if ended, err := l.EndMailboxWaits(ctx, []string{box}); err != nil || len(ended) != 2 {
		t.Fatalf("EndMailboxWaits = %+v, %v", ended, err)
	}
	if token, wait, err := l.ReserveSend(ctx, box, 1, time.Minute, "blocked"); err != nil || token == "" || wait != 0 {
		t.Fatalf("ReserveSend after the end = %q, %v, %v; want sent", token, wait, err)
	}
	if _, wait, err := l.ReserveSend(ctx, box, 1, time.Minute, "blocked"); err != nil || wait != time.Minute {
		t.Fatalf("a send past the rate = %v, %v; want the rate's wait, 1m, not the recheck", wait, err)
	}
}
