package queue_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

// TestAuthThrottleWindow: the count blocks at the threshold, per IP and
// per user separately, and the block ends with the window.
func TestAuthThrottleWindow(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	th := queue.NewAuthThrottle(srv.Client(t), 3, 300*time.Millisecond)
	for range 3 {
		if b, err := th.Blocked(ctx, "192.0.2.1", "crm"); b != nil || err != nil {
			t.Fatalf("blocked before the threshold: %+v %v", b, err)
		}
		if err := th.Failed(ctx, "192.0.2.1", "crm"); err != nil {
			t.Fatal(err)
		}
	}
	b, err := th.Blocked(ctx, "192.0.2.1", "")
	if err != nil || b == nil || b.Kind != "ip" || b.Until <= 0 || b.Until > 300*time.Millisecond {
		t.Fatalf("after 3 failures: %+v %v, want an ip block with time left", b, err)
	}
	if b, _ := th.Blocked(ctx, "192.0.2.2", "crm"); b == nil || b.Kind != "user" {
		t.Fatalf("the user from another IP: %+v, want a user block", b)
	}
	if b, _ := th.Blocked(ctx, "192.0.2.2", "web"); b != nil {
		t.Fatalf("another IP and user: %+v, want none", b)
	}
	time.Sleep(400 * time.Millisecond)
	if b, _ := th.Blocked(ctx, "192.0.2.1", "crm"); b != nil {
		t.Fatalf("after the window: %+v, want none", b)
	}
}

// TestAuthThrottleAttemptsAtOnce: attempts counted before their check let
// exactly Max through, however many come at once, and a success takes
// back only its own count.
func TestAuthThrottleAttemptsAtOnce(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	th := queue.NewAuthThrottle(srv.Client(t), 10, time.Minute)
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for range 40 {
		wg.Go(func() {
			b, err := th.Attempt(ctx, "192.0.2.9", "")
			if err != nil {
				t.Error(err)
			}
			if b == nil {
				allowed.Add(1)
			}
		})
	}
	wg.Wait()
	if n := allowed.Load(); n != 10 {
		t.Fatalf("%d of 40 attempts at once allowed, want 10", n)
	}
	if b, _ := th.Attempt(ctx, "192.0.2.10", ""); b != nil {
		t.Fatal("another IP is blocked")
	}
	if err := th.Succeeded(ctx, "192.0.2.10", ""); err != nil {
		t.Fatal(err)
	}
	if b, _ := th.Blocked(ctx, "192.0.2.9", ""); b == nil {
		t.Fatal("another IP's success cleared the block")
	}
}

// TestAuthThrottleKnownIP: guesses from other addresses block a user
// name, but not for an IP that authenticated as that user: otherwise
// anyone who knows an application's user name could lock it out. The
// known IP stays under its own count, and a new IP is refused.
func TestAuthThrottleKnownIP(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	th := queue.NewAuthThrottle(srv.Client(t), 3, time.Minute)
	const app, user = "192.0.2.10", "crm"
	if b, err := th.Attempt(ctx, app, user); b != nil || err != nil {
		t.Fatalf("first attempt: %+v %v", b, err)
	}
	if err := th.Succeeded(ctx, app, user); err != nil {
		t.Fatal(err)
	}
	if known, err := th.Known(ctx, app, user); known || err != nil {
		t.Fatalf("known after Succeeded alone: %v %v; only Remember records", known, err)
	}
	if err := th.Remember(ctx, app, user); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := th.Failed(ctx, fmt.Sprintf("198.51.100.%d", i), user); err != nil {
			t.Fatal(err)
		}
	}
	if b, _ := th.Blocked(ctx, "198.51.100.99", user); b == nil || b.Kind != "user" {
		t.Fatalf("a new IP for the guessed user: %+v, want a user block", b)
	}
	if b, _ := th.Attempt(ctx, "198.51.100.99", user); b == nil || b.Kind != "user" {
		t.Fatalf("an attempt from a new IP: %+v, want a user block", b)
	}
	if b, err := th.Blocked(ctx, app, user); b != nil || err != nil {
		t.Fatalf("the application's own IP: %+v %v, want no block", b, err)
	}
	if b, err := th.Attempt(ctx, app, user); b != nil || err != nil {
		t.Fatalf("an attempt from the application's IP: %+v %v, want none", b, err)
	}
	if err := th.Succeeded(ctx, app, user); err != nil {
		t.Fatal(err)
	}
	// The known IP failing keeps its own count.
	for range 3 {
		if err := th.Failed(ctx, app, user); err != nil {
			t.Fatal(err)
		}
	}
	if b, _ := th.Blocked(ctx, app, user); b == nil || b.Kind != "ip" {
		t.Fatalf("the known IP after 3 failures of its own: %+v, want an ip block", b)
	}
}
