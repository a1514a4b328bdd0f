package relay

import (
	"strings"
	"testing"
	"time"

	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
)

// fillQuota delivers two messages from noreply@ (through relays 0 and
// then the last one), submits a third, and waits until it is deferred
// with a LastError containing reason. It returns when the first was
// delivered and the third message.
func fillQuota(t *testing.T, e *exchangeEnv, reason string) (firstAt time.Time, over *queue.Message) {
	t.Helper()
	from, last := "noreply@contoso.com", len(e.relays)-1
	first := e.submit(t, 0, from, "a@example.org", exchangeMessage(1, from))
	waitFor(t, 10*time.Second, "the first message delivered", func() bool { return e.get(t, first).State == queue.Delivered })
	firstAt = e.get(t, first).Done
	second := e.submit(t, last, from, "b@example.org", exchangeMessage(2, from))
	waitFor(t, 10*time.Second, "the second message delivered", func() bool { return e.get(t, second).State == queue.Delivered })
	id := e.submit(t, last, from, "c@example.org", exchangeMessage(3, from))
	waitFor(t, 10*time.Second, "the third message deferred", func() bool {
		m := e.get(t, id)
		return m.State == queue.Scheduled && strings.Contains(m.LastError, reason)
	})
	return firstAt, e.get(t, id)
}

// checkQuotaWait checks that the message over quota was charged no
// attempt, is due when the first send leaves the 24-hour window, and that
// Exchange has the first two messages only.
func checkQuotaWait(t *testing.T, e *exchangeEnv, firstAt time.Time, m *queue.Message) {
	t.Helper()
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
}

// TestExchangeRecipientQuotaDefers: once a mailbox has sent to its quota
// of recipients, Exchange answers 554 5.2.0 SubmissionQuotaExceeded. The
// message is neither dead-lettered nor charged an attempt: it waits until
// the oldest recipients Holdfast counted for that mailbox leave the
// 24-hour window.
func TestExchangeRecipientQuotaDefers(t *testing.T) {
	e := newExchangeEnvSim(t, 1, func(c *sim.Config) { c.RecipientQuota = 2 }, nil)
	firstAt, m := fillQuota(t, e, "SubmissionQuotaExceeded")
	checkQuotaWait(t, e, firstAt, m)
}

// TestExchangeRecipientQuotaCountedFleetWide: with Holdfast's own limit
// below Exchange's, two replicas share one count; the message that would
// go over it waits, uncharged, until the first send leaves the window,
// and Exchange never refuses one. Another mailbox has its own count.
func TestExchangeRecipientQuotaCountedFleetWide(t *testing.T) {
	e := newExchangeEnv(t, 2, func(o *Options) { o.Exchange.RecipientsPerDay = 2 })
	firstAt, m := fillQuota(t, e, "recipients of the last 24 hours")
	checkQuotaWait(t, e, firstAt, m)
	other := e.submit(t, 0, "billing@contoso.com", "d@example.org", exchangeMessage(4, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "another mailbox's message delivered", func() bool { return e.get(t, other).State == queue.Delivered })
}

// TestExchangeQuotaReplyHoldsMailbox: Exchange's quota reply is a timed
// hold of the mailbox, and the same refusal repeated draws its penalty
// (550 5.2.25x). After the first 554 5.2.0 SubmissionQuotaExceeded, the
// mailbox's other mail is not tried: it waits, no attempt spent, while
// another mailbox's mail goes out.
func TestExchangeQuotaReplyHoldsMailbox(t *testing.T) {
	e := newExchangeEnvSim(t, 1, func(c *sim.Config) { c.RecipientQuota = 2 }, nil)
	fillQuota(t, e, "SubmissionQuotaExceeded")
	var held, others []string
	for n := 4; n < 9; n++ {
		held = append(held, e.submit(t, 0, "noreply@contoso.com", "d@example.org", exchangeMessage(n, "noreply@contoso.com")))
	}
	for n := 9; n < 11; n++ {
		others = append(others, e.submit(t, 0, "billing@contoso.com", "e@example.org", exchangeMessage(n, "billing@contoso.com")))
	}
	waitFor(t, 10*time.Second, "another mailbox's mail delivered", func() bool { return e.allDelivered(t, others) })
	time.Sleep(time.Second)
	refused := 0
	for _, line := range strings.Split(e.logs.String(), "\n") {
		if strings.Contains(line, `msg="delivery failed"`) && strings.Contains(line, "SubmissionQuotaExceeded") {
			refused++
		}
	}
	if refused != 1 {
		t.Errorf("%d sends refused for the quota, want only the first", refused)
	}
	e.assertHeldUnspent(t, held, "")
}

// TestExchangePenaltyHoldsMailbox: 550 5.2.251 "Sender throttled" is
// Exchange's block of a mailbox that repeated an error; sending more
// while blocked repeats it again. After the first, the mailbox's other
// mail waits untried, no attempt spent.
func TestExchangePenaltyHoldsMailbox(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	from := "noreply@contoso.com"
	first := e.blockedFirst(t, from)
	if m := e.get(t, first); m.Attempts != 0 || time.Until(m.Due) < 25*time.Minute {
		t.Errorf("the refused message: %d attempts, due in %v; want none, and about 30 minutes", m.Attempts, time.Until(m.Due))
	}
	var held []string
	for n := 2; n < 5; n++ {
		held = append(held, e.submit(t, 0, from, "b@example.org", exchangeMessage(n, from)))
	}
	time.Sleep(2 * time.Second)
	if n := e.sim.Counters().Clients[simClientID].SMTPRefusedByFault; n != 1 {
		t.Errorf("%d submissions refused, want only the first", n)
	}
	for _, id := range held {
		if m := e.get(t, id); m.State == queue.Delivered || m.State == queue.Dead || m.Attempts != 0 || m.LastError != "" {
			t.Errorf("%s: %s with %d attempts (%q), want waiting untried", id, m.State, m.Attempts, m.LastError)
		}
	}
}
