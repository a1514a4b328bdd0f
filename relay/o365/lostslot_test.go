package o365_test

import (
	"context"
	"testing"
	"time"

	"holdfast/relay/o365"
)

// waitLost waits until n of the sender's connections hold a slot taken
// for lost (the reaper's renewal found it expired), and fails the test
// when they do not within 10 s. It may run outside the test's goroutine.
func waitLost(t *testing.T, s *o365.SMTPSender, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.LostSlots() < n {
		if time.Now().After(deadline) {
			t.Errorf("%d connections' slots taken for lost after 10 s, want %d", s.LostSlots(), n)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLostSlotGrantRefused: a grant's connection whose slot expired while
// the grant waited for its send (another relay may hold the slot now) is
// not used: the send closes it and goes on a connection with a slot of
// its own.
func TestLostSlotGrantRefused(t *testing.T) {
	limits := &lostLimits{}
	k, p, s := newSinkSenderEdit(t, func(o *o365.SMTPOptions) {
		o.Limits = limits
		o.IdleTimeout = 2 * time.Second // the reaper looks every second
	})
	ctx := context.Background()
	if _, err := s.Send(ctx, sinkMessage(0, "a@example.org")); err != nil {
		t.Fatal(err)
	}
	grants, _, err := s.Reserve(ctx, "box@contoso.com", 1)
	if err != nil || len(grants) != 1 {
		t.Fatalf("reserve: %d grants, %v", len(grants), err)
	}
	limits.lost.Store(true)
	waitLost(t, s, 1)
	if _, err := s.Send(o365.WithGrant(ctx, grants[0]), sinkMessage(1, "a@example.org")); err != nil {
		t.Fatal(err)
	}
	if got := p.conns.Load(); got != 2 {
		t.Errorf("%d connections opened, want 2: the granted connection whose slot was lost was used", got)
	}
	if got := limits.acquired.Load(); got != 2 {
		t.Errorf("%d slots taken, want 2", got)
	}
	if got := k.received(); len(got) != 2 {
		t.Errorf("%d messages received, want 2", len(got))
	}
}
