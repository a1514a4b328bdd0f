package relay

import (
	"strings"
	"testing"
	"time"

	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
)

// TestExchangeRecipientQuotaDefers: once a mailbox has sent to its quota
// of recipients, Exchange answers 554 5.2.0 SubmissionQuotaExceeded. The
// message is neither dead-lettered nor charged an attempt: it waits until
// the oldest recipients Holdfast counted for that mailbox leave the
// 24-hour window.
func TestExchangeRecipientQuotaDefers(t *testing.T) {
	e := newExchangeEnvSim(t, 1, func(c *sim.Config) { c.RecipientQuota = 2 }, nil)
	from := "noreply@contoso.com"
	first := e.submit(t, 0, from, "a@example.org", exchangeMessage(1, from))
	waitFor(t, 10*time.Second, "the first message delivered", func() bool { return e.get(t, first).State == queue.Delivered })
	firstAt := e.get(t, first).Done
	time.Sleep(50 * time.Millisecond)
	second := e.submit(t, 0, from, "b@example.org", exchangeMessage(2, from))
	waitFor(t, 10*time.Second, "the second message delivered", func() bool { return e.get(t, second).State == queue.Delivered })

	over := e.submit(t, 0, from, "c@example.org", exchangeMessage(3, from))
	waitFor(t, 10*time.Second, "the message over quota deferred", func() bool {
		m := e.get(t, over)
		return m.State == queue.Scheduled && strings.Contains(m.LastError, "SubmissionQuotaExceeded")
	})
	m := e.get(t, over)
	if m.Attempts != 0 {
		t.Errorf("%d attempts charged, want 0", m.Attempts)
	}
	// Due when the first message's recipient leaves the window, not after
	// a fixed delay.
	want := firstAt.Add(24 * time.Hour)
	if d := m.Due.Sub(want); d < -time.Second || d > time.Second {
		t.Errorf("due %v, want %v (the first send + 24 h), off by %v", m.Due, want, d)
	}
	if n := e.sim.ReceivedCount(); n != 2 {
		t.Errorf("Exchange has %d messages, want 2", n)
	}
}

// TestExchangeRecipientQuotaCountedFleetWide: with Holdfast's own limit
// below Exchange's, the message that would go over it waits, uncharged,
// until the first send leaves the window, and Exchange never refuses one.
func TestExchangeRecipientQuotaCountedFleetWide(t *testing.T) {
	e := newExchangeEnv(t, 2, func(o *Options) { o.Exchange.RecipientsPerDay = 2 })
	from := "noreply@contoso.com"
	first := e.submit(t, 0, from, "a@example.org", exchangeMessage(1, from))
	waitFor(t, 10*time.Second, "the first message delivered", func() bool { return e.get(t, first).State == queue.Delivered })
	firstAt := e.get(t, first).Done
	second := e.submit(t, 1, from, "b@example.org", exchangeMessage(2, from))
	waitFor(t, 10*time.Second, "the second message delivered", func() bool { return e.get(t, second).State == queue.Delivered })

	over := e.submit(t, 1, from, "c@example.org", exchangeMessage(3, from))
	waitFor(t, 10*time.Second, "the message over the limit deferred", func() bool {
		m := e.get(t, over)
		return m.State == queue.Scheduled && strings.Contains(m.LastError, "recipients of the last 24 hours")
	})
	m := e.get(t, over)
	if m.Attempts != 0 {
		t.Errorf("%d attempts charged, want 0", m.Attempts)
	}
	want := firstAt.Add(24 * time.Hour)
	if d := m.Due.Sub(want); d < -time.Second || d > time.Second {
		t.Errorf("due %v, want %v (the first send + 24 h), off by %v", m.Due, want, d)
	}
	if n := e.sim.ReceivedCount(); n != 2 {
		t.Errorf("Exchange has %d messages, want 2", n)
	}
	// Another mailbox has its own count.
	other := e.submit(t, 0, "billing@contoso.com", "d@example.org", exchangeMessage(4, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "another mailbox's message delivered", func() bool { return e.get(t, other).State == queue.Delivered })
}
