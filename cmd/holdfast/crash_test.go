package main

import (
	"context"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"holdfast/queue"
)

// TestKilledReplicas: during a run of 5,000 messages over 10 mailboxes,
// a replica (a real holdfast serve process) is killed with SIGKILL 10
// times and started again. Its connection slots free themselves within
// seconds and its leases are reclaimed, so delivery never stalls for more
// than 10 s, and every message is delivered.
func TestKilledReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("a fault test of about a minute")
	}
	const msgs, kills, maxStall = 5000, 10, 10 * time.Second
	f := startIncFleet(t, incFleetOptions{mailboxes: 10, lease: 5 * time.Second})
	ctx := context.Background()
	// The messages arrive over about 25 s, 40 every 200 ms.
	ids := make([]string, msgs)
	enqueued := make(chan error, 1)
	go func() {
		for i := range msgs {
			box := f.mailboxes[i%len(f.mailboxes)]
			id, _, err := f.q.Enqueue(ctx, queue.Submission{Route: "app:contoso:" + box, App: "crm",
				From: box, To: []string{"sink@example.org"}, Body: []byte(incMessage(i, box))})
			if err != nil {
				enqueued <- err
				return
			}
			ids[i] = id
			if i%40 == 39 {
				time.Sleep(200 * time.Millisecond)
			}
		}
		enqueued <- nil
	}()

	var (
		last     = 0
		progress = time.Now()
		stall    time.Duration
		killed   int
		nextKill = time.Now().Add(2 * time.Second)
		done     bool // every message enqueued
	)
	deadline := time.Now().Add(3 * time.Minute)
	for !done || f.delivered() < msgs || !allDelivered(t, f.q, ids) {
		if time.Now().After(deadline) {
			st, _ := f.q.Stats(ctx)
			t.Fatalf("%d of %d delivered after 3 minutes; queue %+v", f.delivered(), msgs, st.Total)
		}
		select {
		case err := <-enqueued:
			if err != nil {
				t.Fatal(err)
			}
			done = true
		default:
		}
		if n := f.delivered(); n != last {
			last, progress = n, time.Now()
		} else if s := time.Since(progress); s > stall {
			stall = s
		}
		if killed < kills && time.Now().After(nextKill) {
			i := killed % len(f.relays)
			r := f.relays[i]
			_ = r.cmd.Process.Signal(syscall.SIGKILL)
			<-r.exited
			r.stopOnce.Do(func() {}) // killed on purpose: no SIGTERM check
			f.relays[i] = startIncRelay(t, fmt.Sprintf("relay-%d", i+1), filepath.Join(f.dir, fmt.Sprintf("relay-%d.yaml", i+1)))
			killed++
			nextKill = time.Now().Add(2 * time.Second)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("%d messages, %d kills: longest stall %v, %d accepted by Exchange (duplicates from sends cut off by a kill: %d)",
		msgs, killed, stall.Round(10*time.Millisecond), f.delivered(), f.delivered()-msgs)
	if killed < kills {
		t.Errorf("only %d kills before the run ended; make the run longer", killed)
	}
	if stall > maxStall {
		t.Errorf("delivery stalled for %v, want at most %v", stall, maxStall)
	}
}

// allDelivered reports whether every message is delivered.
func allDelivered(t *testing.T, q *queue.Queue, ids []string) bool {
	t.Helper()
	for _, id := range ids {
		m, err := q.Get(context.Background(), id)
		if err != nil || m.State != queue.Delivered {
			return false
		}
	}
	return true
}
