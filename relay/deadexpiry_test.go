package relay

import (
	"context"
	"errors"
	"testing"
	"time"

	"holdfast/queue"
)

// deadLetterAt makes one dead letter on route, dead at the given time.
func deadLetterAt(t *testing.T, f *fixture, route string, at time.Time) string {
	t.Helper()
	ctx := context.Background()
	q := queue.New(f.redis.Client(t), queue.Options{Now: func() time.Time { return at }})
	id, _, err := q.Enqueue(ctx, queue.Submission{Route: route, App: "crm", From: "billing@contoso.com",
		To: []string{"nobody@example.org"}, Body: []byte("Subject: x\r\n\r\nx\r\n")})
	if err != nil {
		t.Fatal(err)
	}
	res, err := q.Lease(ctx, route, 1, time.Minute)
	if err != nil || len(res.Leases) != 1 {
		t.Fatalf("lease: %+v %v", res, err)
	}
	if err := q.Fail(ctx, res.Leases[0], "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found"); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestDeadRetention: a relay deletes the dead letters older than
// queue.dead_retention and keeps the others; with 0 it keeps them all.
func TestDeadRetention(t *testing.T) {
	f := newFixture(t)
	old := deadLetterAt(t, f, "crm", time.Now().Add(-31*24*time.Hour))
	recent := deadLetterAt(t, f, "crm", time.Now().Add(-29*24*time.Hour))

	o := f.opts
	o.Redis.Addrs = []string{f.redis.Addr()}
	o.Delivery.Sender = "off"
	o.Queue.DeadRetention = 0
	o.Queue.deadExpiryEvery = 50 * time.Millisecond
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	kept := runRelay(t, o, discardLogger())
	time.Sleep(300 * time.Millisecond)
	if _, err := f.queue.Get(context.Background(), old); err != nil {
		t.Fatalf("with dead_retention 0, the old dead letter: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := kept.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	o.Queue.DeadRetention = Duration(30 * 24 * time.Hour)
	runRelay(t, o, discardLogger())
	waitFor(t, 5*time.Second, "the dead letter past its retention deleted", func() bool {
		_, err := f.queue.Get(context.Background(), old)
		return errors.Is(err, queue.ErrNotFound)
	})
	if m, err := f.queue.Get(context.Background(), recent); err != nil || m.State != queue.Dead {
		t.Fatalf("the dead letter within its retention: %+v %v", m, err)
	}

	o.Queue.DeadRetention = -1
	if err := o.Validate(); err == nil {
		t.Fatal("a negative queue.dead_retention was taken")
	}
}
