package relay

import (
	"strings"
	"testing"
	"time"

	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
)

// graphEnv is a relay whose apps send through Graph, retrying after half a
// second.
func newGraphOutcomeEnv(t *testing.T) *exchangeEnv {
	t.Helper()
	return newExchangeEnv(t, 1, func(o *Options) {
		for i := range o.Apps {
			o.Apps[i].Via = "graph"
		}
		o.Queue.BackoffBase = Duration(500 * time.Millisecond)
	})
}

// copies counts the messages Exchange recorded with Message-ID msgID.
func copies(s *sim.Sim, msgID string) int {
	n := 0
	for _, r := range s.Received() {
		if r.MessageID == msgID {
			n++
		}
	}
	return n
}

// TestGraphAmbiguousFailureNoDuplicate: sendMail sends the message and
// then answers 504; the retry finds it in Sent Items, and Exchange has one
// copy.
func TestGraphAmbiguousFailureNoDuplicate(t *testing.T) {
	e := newGraphOutcomeEnv(t)
	e.sim.SetFault(sim.Fault{GraphAfterSend: "504"})
	id := e.submit(t, 0, "billing@contoso.com", "a@example.org", exchangeMessage(1, "billing@contoso.com"))
	waitFor(t, 15*time.Second, "the ambiguous message delivered", func() bool { return e.get(t, id).State == queue.Delivered })
	m := e.get(t, id)
	if n := copies(e.sim, "<m1@test>"); n != 1 {
		t.Fatalf("Exchange has %d copies, want 1", n)
	}
	if m.Attempts != 2 || !strings.Contains(m.LastError, "Sent Items") {
		t.Errorf("attempts %d, last reply %q: want a failed attempt, then one that found it in Sent Items", m.Attempts, m.LastError)
	}
}

// TestGraphPlainFailureRetried: a 500 that did not send is retried, and
// the message arrives once.
func TestGraphPlainFailureRetried(t *testing.T) {
	e := newGraphOutcomeEnv(t)
	e.sim.SetFault(sim.Fault{GraphFail: "500"})
	id := e.submit(t, 0, "billing@contoso.com", "a@example.org", exchangeMessage(2, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the first attempt failed", func() bool { return e.get(t, id).Attempts >= 1 })
	e.sim.SetFault(sim.Fault{})
	waitFor(t, 15*time.Second, "the message delivered", func() bool { return e.get(t, id).State == queue.Delivered })
	if n := copies(e.sim, "<m2@test>"); n != 1 {
		t.Fatalf("Exchange has %d copies, want 1", n)
	}
	if m := e.get(t, id); !strings.HasPrefix(m.LastError, "202") {
		t.Errorf("last reply %q, want the retry's 202", m.LastError)
	}
}

// TestGraphAcceptedWithRetryAfter: a 202 carrying Retry-After is a send:
// delivered by the first attempt (the one attempt counted), once.
func TestGraphAcceptedWithRetryAfter(t *testing.T) {
	e := newGraphOutcomeEnv(t)
	e.sim.SetFault(sim.Fault{GraphAcceptedRetryAfter: 30 * time.Second})
	id := e.submit(t, 0, "billing@contoso.com", "a@example.org", exchangeMessage(3, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the message delivered", func() bool { return e.get(t, id).State == queue.Delivered })
	time.Sleep(time.Second)
	if n := copies(e.sim, "<m3@test>"); n != 1 {
		t.Fatalf("Exchange has %d copies, want 1", n)
	}
	if m := e.get(t, id); m.Attempts != 1 {
		t.Errorf("%d attempts, want the first to deliver", m.Attempts)
	}
}

// TestGraphSendAsDeniedFailsTheMessage: Graph's 403 ErrorSendAsDenied (a
// From header the mailbox may not send as) fails that message, as SMTP's
// 554 5.2.252 does: dead-lettered after one attempt with Graph's reason,
// while the mailbox's breaker stays closed and its other mail goes.
// Counted as the mailbox's, three such messages opened its breaker and
// held all its mail.
func TestGraphSendAsDeniedFailsTheMessage(t *testing.T) {
	e := newGraphOutcomeEnv(t)
	var denied []string
	for n := range 4 {
		denied = append(denied, e.submit(t, 0, "billing@contoso.com", "a@example.org", exchangeMessage(10+n, "ceo@contoso.com")))
	}
	waitFor(t, 15*time.Second, "the denied messages settled", func() bool {
		for _, id := range denied {
			if e.get(t, id).State != queue.Dead {
				return false
			}
		}
		return true
	})
	for _, id := range denied {
		if m := e.get(t, id); m.Attempts != 1 || !strings.Contains(m.LastError, "ErrorSendAsDenied") {
			t.Errorf("%s: %d attempts, last reply %q; want one attempt refused with ErrorSendAsDenied", id, m.Attempts, m.LastError)
		}
	}
	ok := e.submit(t, 0, "billing@contoso.com", "a@example.org", exchangeMessage(20, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the mailbox's other message delivered", func() bool { return e.get(t, ok).State == queue.Delivered })
	for _, p := range e.breakerProblems(t) {
		t.Error(p)
	}
}
