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
