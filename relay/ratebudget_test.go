package relay

import (
	"testing"
	"time"

	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
)

// TestFailedOpenKeepsRateBudget: a send that fails before any message
// goes out (Exchange greets with 421; the same for a token refused or a
// throttled AUTH) gives back the send it counted in the mailbox's
// per-minute rate. Retries while Exchange is down would otherwise spend
// the mailbox's minute, and its mail wait for the window to slide once
// Exchange is back.
func TestFailedOpenKeepsRateBudget(t *testing.T) {
	e := newExchangeEnv(t, 1, func(o *Options) {
		o.Exchange.MessagesPerMinute = 3
		o.Queue.BackoffBase = Duration(100 * time.Millisecond)
		o.Queue.BackoffMax = Duration(200 * time.Millisecond)
	})
	e.sim.SetFault(sim.Fault{SMTPTransient: "421"})
	id := e.submit(t, 0, "billing@contoso.com", "a@example.org", exchangeMessage(1, "billing@contoso.com"))
	// Three failed attempts: as many sends as the mailbox's minute holds.
	waitFor(t, 20*time.Second, "three failed attempts", func() bool { return e.get(t, id).Attempts >= 3 })
	e.sim.SetFault(sim.Fault{})
	back := time.Now()
	waitFor(t, 90*time.Second, "the message delivered", func() bool { return e.get(t, id).State == queue.Delivered })
	wait := time.Since(back)
	t.Logf("Exchange back to the message delivered: %v", wait.Round(time.Millisecond))
	// The SMTP endpoint's dead-destination breaker, open after the three
	// failures, lets a test through within 10 s; the minute would end
	// about 60 s after the first failure.
	if wait > 30*time.Second {
		t.Errorf("delivered %v after Exchange came back, want within 30 s: the failed attempts spent the mailbox's minute", wait.Round(time.Millisecond))
	}
}
