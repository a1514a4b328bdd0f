package queue_test

import (
	"context"
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
