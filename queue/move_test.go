package queue_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"holdfast/queue"
)

// TestMoveRoute: the mail waiting on a route (held here, as the route of
// a credential that no longer works) moves to another route, whole and
// once, where it is delivered; a message being sent stays, and a
// delivered one cannot move.
func TestMoveRoute(t *testing.T) {
	q, _, _ := newQueue(t)
	ctx := context.Background()
	const from, to = "app:old:billing@contoso.com", "app:new:billing@contoso.com"
	var ids []string
	for n := range 5 {
		ids = append(ids, enqueue(t, q, msg(from, n)))
	}
	sending := lease(t, q, from, 1, time.Minute).Leases[0]
	delivered := lease(t, q, from, 1, time.Minute).Leases[0]
	if err := q.Ack(ctx, delivered, "250 2.0.0 OK"); err != nil {
		t.Fatal(err)
	}
	if err := q.HoldRoute(ctx, from, "breaker cred:old open"); err != nil {
		t.Fatal(err)
	}
	var want []string // the bodies of the messages waiting
	marked := false
	for n, id := range ids {
		if id == sending.ID || id == delivered.ID {
			continue
		}
		want = append(want, string(msg(from, n).Body))
		if !marked {
			if err := q.MarkAmbiguous(ctx, id); err != nil {
				t.Fatal(err)
			}
			marked = true
		}
	}

	if _, err := q.Move(ctx, delivered.ID, to); !errors.Is(err, queue.ErrNotMovable) {
		t.Errorf("move of a delivered message: %v, want ErrNotMovable", err)
	}
	n, err := q.MoveRoute(ctx, from, to, 100)
	if err != nil || n != 3 {
		t.Fatalf("MoveRoute: %d, %v; want 3 moved", n, err)
	}
	if n, err := q.MoveRoute(ctx, from, to, 100); err != nil || n != 0 {
		t.Fatalf("MoveRoute again: %d, %v; want nothing left to move", n, err)
	}
	st, err := q.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range st.Routes {
		switch r.Route {
		case from:
			if r.Ready+r.Scheduled+r.Held != 0 || r.Leased != 1 {
				t.Errorf("%s after the move: %+v, want the one being sent alone", from, r)
			}
		case to:
			if r.Ready != 3 {
				t.Errorf("%s after the move: %+v, want 3 ready", to, r)
			}
		}
	}
	res := lease(t, q, to, 10, time.Minute)
	var bodies []string
	ambiguous := 0
	for _, l := range res.Leases {
		bodies = append(bodies, string(l.Body))
		if len(l.To) != 2 || l.From != "billing@contoso.com" || l.App != "crm" {
			t.Errorf("moved message %+v lost its envelope", l.Message)
		}
		if amb, err := q.Ambiguous(ctx, l.ID); err != nil {
			t.Fatal(err)
		} else if amb {
			ambiguous++
		}
	}
	slices.Sort(bodies)
	slices.Sort(want)
	if !slices.Equal(bodies, want) {
		t.Errorf("bodies on %s: %q, want %q", to, bodies, want)
	}
	if ambiguous != 1 {
		t.Errorf("%d moved messages marked ambiguous, want 1: an earlier attempt may have sent it", ambiguous)
	}
	if m := get(t, q, sending.ID); m.State != queue.Leased || m.Route != from {
		t.Errorf("the message being sent is %s on %s, want leased on %s", m.State, m.Route, from)
	}
}

// TestMoveFinishesHalfWay: a move that stopped after taking its message
// out of the old route (the process killed, or the new route refusing
// the store) is finished by the next MoveRoute of the route: stored once
// on the new route, gone from the old.
func TestMoveFinishesHalfWay(t *testing.T) {
	q, clk, srv := newQueue(t)
	ctx := context.Background()
	const from, to = "app:old:billing@contoso.com", "app:new:billing@contoso.com"
	id := enqueue(t, q, msg(from, 1))
	// The new route refuses the store: Redis runs no script that stores.
	full := queue.New(srv.Client(t), queue.Options{Now: clk.Now, MaxPerRoute: 1})
	enqueue(t, full, msg(to, 9))
	if _, err := full.Move(ctx, id, to); !errors.Is(err, queue.ErrRouteFull) {
		t.Fatalf("move to a full route: %v, want ErrRouteFull", err)
	}
	if res := lease(t, q, from, 10, time.Minute); len(res.Leases) != 0 {
		t.Fatalf("a message taken out for a move was leased on its old route")
	}
	n, err := q.MoveRoute(ctx, from, to, 100)
	if err != nil || n != 1 {
		t.Fatalf("MoveRoute after the half-way move: %d, %v; want 1", n, err)
	}
	if _, err := q.Get(ctx, id); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("the old message after the move: %v, want gone", err)
	}
	if n, err := q.MoveRoute(ctx, from, to, 100); err != nil || n != 0 {
		t.Errorf("MoveRoute again: %d, %v; want 0", n, err)
	}
	if res := lease(t, q, to, 10, time.Minute); len(res.Leases) != 2 {
		t.Errorf("%d messages on %s, want the one there before and the moved one", len(res.Leases), to)
	}
}
