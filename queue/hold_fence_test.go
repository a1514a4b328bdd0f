package queue_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"holdfast/queue"
)

// TestHoldFence: a release decided on an older breaker generation than
// the hold cannot undo it, nor can a hold decided on an older generation
// than a release re-hold the route; equal generations repeat.
func TestHoldFence(t *testing.T) {
	ctx := context.Background()
	q, _ := newQueueWith(t, queue.Options{})
	enqueue(t, q, msg("crm", 1))
	open5 := queue.Fence{"cred:contoso": 5, "mbx:a@contoso.com": 0}
	if fresh, err := q.HoldRouteAt(ctx, "crm", "breaker open", open5); err != nil || !fresh {
		t.Fatalf("hold at 5: %v %v", fresh, err)
	}
	if err := q.ReleaseRouteAt(ctx, "crm", queue.Fence{"cred:contoso": 4, "mbx:a@contoso.com": 0}); !errors.Is(err, queue.ErrStaleFence) {
		t.Fatalf("release at 4 after hold at 5: %v, want ErrStaleFence", err)
	}
	if _, held, _ := q.RouteHold(ctx, "crm"); !held {
		t.Fatal("a stale release undid the hold")
	}
	if fresh, err := q.HoldRouteAt(ctx, "crm", "again", open5); err != nil || fresh {
		t.Fatalf("repeated hold at 5: %v %v, want no error and not fresh", fresh, err)
	}
	if err := q.ReleaseRouteAt(ctx, "crm", queue.Fence{"cred:contoso": 6, "mbx:a@contoso.com": 0}); err != nil {
		t.Fatalf("release at 6: %v", err)
	}
	if _, held, _ := q.RouteHold(ctx, "crm"); held {
		t.Fatal("still held after the release at 6")
	}
	if _, err := q.HoldRouteAt(ctx, "crm", "late", open5); !errors.Is(err, queue.ErrStaleFence) {
		t.Fatalf("hold at 5 after release at 6: %v, want ErrStaleFence", err)
	}
	if _, held, _ := q.RouteHold(ctx, "crm"); held {
		t.Fatal("a stale hold re-held the route")
	}
	// The mailbox breaker opening later holds again.
	if fresh, err := q.HoldRouteAt(ctx, "crm", "mailbox", queue.Fence{"cred:contoso": 6, "mbx:a@contoso.com": 1}); err != nil || !fresh {
		t.Fatalf("hold at mbx 1: %v %v", fresh, err)
	}
	// No fence: operators and older callers.
	if err := q.ReleaseRoute(ctx, "crm"); err != nil {
		t.Fatal(err)
	}
	if _, held, _ := q.RouteHold(ctx, "crm"); held {
		t.Fatal("still held after an unfenced release")
	}
}

// TestReleaseInSteps: a route of more messages than one release step
// holds is released in several steps, each message credited once with
// its held time; a newer hold between steps stops the release, and a
// repeated release credits nothing twice.
func TestReleaseInSteps(t *testing.T) {
	ctx := context.Background()
	q, clk := newQueueWith(t, queue.Options{})
	const n = 2500
	ids := make([]string, n)
	for i := range n {
		ids[i] = enqueue(t, q, msg("crm", i))
	}
	before := map[string]time.Time{}
	for _, id := range ids {
		m, err := q.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		before[id] = m.Expires
	}
	if _, err := q.HoldRouteAt(ctx, "crm", "open", queue.Fence{"b": 1}); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Hour)
	steps, err := queue.ReleaseSteps(ctx, q, "crm", queue.Fence{"b": 2})
	if err != nil {
		t.Fatal(err)
	}
	if steps < 2 {
		t.Fatalf("released %d messages in %d step(s), want several", n, steps)
	}
	if _, held, _ := q.RouteHold(ctx, "crm"); held {
		t.Fatal("still held after the release")
	}
	for _, id := range ids {
		m, err := q.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if got := m.Expires.Sub(before[id]); got != time.Hour {
			t.Fatalf("%s credited %v, want 1h", id, got)
		}
	}
	// The same hold start again (a release interrupted, then repeated)
	// credits only what is new.
	if _, err := q.HoldRouteAt(ctx, "crm", "open", queue.Fence{"b": 3}); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Minute)
	if _, err := queue.ReleaseSteps(ctx, q, "crm", queue.Fence{"b": 4}); err != nil {
		t.Fatal(err)
	}
	m, err := q.Get(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Expires.Sub(before[ids[0]]); got != time.Hour+time.Minute {
		t.Fatalf("credited %v after two holds, want 1h1m", got)
	}
}

// TestReleaseStoppedByNewerHold: a hold with a newer generation between
// two steps of a release keeps the route held.
func TestReleaseStoppedByNewerHold(t *testing.T) {
	ctx := context.Background()
	q, clk := newQueueWith(t, queue.Options{})
	for i := range 2500 {
		enqueue(t, q, msg("crm", i))
	}
	if _, err := q.HoldRouteAt(ctx, "crm", "open", queue.Fence{"b": 1}); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Hour)
	err := queue.ReleaseStepsThen(ctx, q, "crm", queue.Fence{"b": 2}, func() {
		if _, err := q.HoldRouteAt(ctx, "crm", "open again", queue.Fence{"b": 3}); err != nil {
			t.Error(err)
		}
	})
	if !errors.Is(err, queue.ErrStaleFence) {
		t.Fatalf("release interrupted by a newer hold: %v, want ErrStaleFence", err)
	}
	if reason, held, _ := q.RouteHold(ctx, "crm"); !held || reason != "open again" {
		t.Fatalf("route held %v (%q), want held by the newer hold", held, reason)
	}
}

// TestPruneRoutes: a route with no message is pruned after it was seen
// empty for the idle time, with its hold; a route with mail is kept.
func TestPruneRoutes(t *testing.T) {
	ctx := context.Background()
	q, clk := newQueueWith(t, queue.Options{})
	enqueue(t, q, msg("busy", 1))
	id := enqueue(t, q, msg("idle", 1))
	if err := q.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	hold(t, q, "idle", "breaker open")
	prune := func() []string {
		t.Helper()
		p, err := q.PruneRoutes(ctx, 24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	if p := prune(); len(p) != 0 {
		t.Fatalf("pruned %v at first sight", p)
	}
	clk.Add(23 * time.Hour)
	if p := prune(); len(p) != 0 {
		t.Fatalf("pruned %v after 23 h", p)
	}
	clk.Add(time.Hour)
	if p := prune(); len(p) != 1 || p[0] != "idle" {
		t.Fatalf("pruned %v after a day, want [idle]", p)
	}
	routes, err := q.Routes(ctx)
	if err != nil || len(routes) != 1 || routes[0] != "busy" {
		t.Fatalf("routes after pruning: %v %v, want [busy]", routes, err)
	}
	if _, held, _ := q.RouteHold(ctx, "idle"); held {
		t.Fatal("the pruned route's hold was left behind")
	}
	// A route that gets mail again is not pruned at the next call, and
	// must be empty for a whole day again.
	enqueue(t, q, msg("busy", 2))
	clk.Add(48 * time.Hour)
	if p := prune(); len(p) != 0 {
		t.Fatalf("pruned %v", p)
	}
}
