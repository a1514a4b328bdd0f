package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

// fakeWorkers stands in for a running relay: it delivers route's mail,
// dead-lettering messages to "unknown@…", until ctx ends.
func fakeWorkers(ctx context.Context, q *queue.Queue, route string) {
	for ctx.Err() == nil {
		res, err := q.Lease(ctx, route, 10, time.Minute)
		if err != nil {
			return
		}
		for _, l := range res.Leases {
			if strings.HasPrefix(l.To[0], "unknown@") {
				q.Fail(ctx, l, "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found")
			} else {
				q.Ack(ctx, l, "250 2.0.0 OK")
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestQueueDrain(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfig(t, srv.Addr())
	q := queue.New(srv.Client(t), queue.Options{})
	ctx := t.Context()
	enqueue := func(route, rcpt string) {
		t.Helper()
		if _, _, err := q.Enqueue(ctx, queue.Submission{Route: route, App: route, From: "a@contoso.com", To: []string{rcpt}, Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	enqueue("crm", "a@example.org")
	enqueue("crm", "b@example.org")
	enqueue("crm", "unknown@example.org")
	// One of crm's messages already failed once and waits for its backoff:
	// drain must not wait for it.
	l, err := q.Lease(ctx, "crm", 1, time.Minute)
	if err != nil || len(l.Leases) != 1 {
		t.Fatal(err)
	}
	if _, err := q.Retry(ctx, l.Leases[0], "421 4.3.2 Service not active"); err != nil {
		t.Fatal(err)
	}
	enqueue("web", "c@example.org")
	enqueue("web", "d@example.org")
	if err := q.HoldRoute(ctx, "web", "breaker app:web open (invalid_client AADSTS7000222)"); err != nil {
		t.Fatal(err)
	}

	// The workers start once drain has counted the queue.
	startWorkers := func(routes ...string) (stop func()) {
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			time.Sleep(300 * time.Millisecond)
			for _, r := range routes[1:] {
				go fakeWorkers(wctx, q, r)
			}
			fakeWorkers(wctx, q, routes[0])
		}()
		return func() { cancel(); <-done }
	}
	stop := startWorkers("crm", "web")

	r := runCmd(t, "queue", "drain", "--config", cfg, "--timeout", "10s")
	if r.code != exitError {
		t.Fatalf("drain with held mail: exit %d, want %d\n%s%s", r.code, exitError, r.stdout, r.stderr)
	}
	for _, want := range []string{
		"2 delivered, 2 held, 1 failed",
		"2 messages held: route web held (breaker app:web open (invalid_client AADSTS7000222))",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("drain output lacks %q:\n%s", want, r.stdout)
		}
	}

	stop()

	// Only crm: everything there is done.
	enqueue("crm", "e@example.org")
	defer startWorkers("crm")()
	r = runCmd(t, "queue", "drain", "--config", cfg, "--route", "crm", "--timeout", "10s")
	if r.code != exitOK || !strings.Contains(r.stdout, "1 delivered, 0 held, 0 failed") {
		t.Fatalf("drain of crm: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

func TestQueueDrainWithoutRelay(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfig(t, srv.Addr())
	q := queue.New(srv.Client(t), queue.Options{})
	if _, _, err := q.Enqueue(t.Context(), queue.Submission{Route: "crm", App: "crm", From: "a@contoso.com", To: []string{"b@example.org"}, Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	r := runCmd(t, "queue", "drain", "--config", cfg, "--timeout", "1s")
	if r.code != exitError || !strings.Contains(r.stdout, "1 messages still waiting after 1s: is a relay running") {
		t.Fatalf("drain with no relay: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
