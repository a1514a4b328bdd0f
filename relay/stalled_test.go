package relay

import (
	"strings"
	"testing"
	"time"

	"holdfast/cmd/o365sim/sim"
)

// TestStalledSendsFreeTheirWorkers: a mailbox whose sends hang after
// DATA (each until the 60 s data timeout) takes as many workers as it has
// connections, here all three. Each send still running after
// stalledAfter gives its worker to the other mailboxes, whose mail goes
// at once instead of after the data timeout; the stalled mailbox gets no
// more deliveries than its connections meanwhile.
func TestStalledSendsFreeTheirWorkers(t *testing.T) {
	e := newExchangeEnv(t, 1, func(o *Options) {
		o.Delivery.Workers = 3
		o.Delivery.stalledAfter = 500 * time.Millisecond
		o.Exchange.DataTimeout = Duration(time.Minute)
	})
	// The stalled sessions end when the simulator closes; close it before
	// the relay stops.
	defer e.sim.Close()
	e.sim.SetFault(sim.Fault{SMTPStallMailbox: "billing@contoso.com"})
	for n := range 3 {
		e.submit(t, 0, "billing@contoso.com", "x@example.org", exchangeMessage(n, "billing@contoso.com"))
	}
	waitFor(t, 10*time.Second, "the stalled mailbox's three sends under way", func() bool {
		st, err := e.f.queue.Stats(t.Context())
		return err == nil && st.Total.Leased == 3
	})
	start := time.Now()
	var ids []string
	for n := range 10 {
		ids = append(ids, e.submit(t, 0, "noreply@contoso.com", "x@example.org", exchangeMessage(10+n, "noreply@contoso.com")))
	}
	waitFor(t, 15*time.Second, "the other mailbox's mail delivered", func() bool { return e.allDelivered(t, ids) })
	t.Logf("the other mailbox's 10 messages delivered %v after they were submitted", time.Since(start).Round(time.Millisecond))
	if got := e.sim.ReceivedCount(); got != 10 {
		t.Errorf("Exchange received %d messages, want the other mailbox's 10", got)
	}
	st, err := e.f.queue.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Total.Leased != 3 {
		t.Errorf("%d messages leased, want the stalled mailbox's 3 (no more than its connections)", st.Total.Leased)
	}
	if !strings.Contains(e.logs.String(), "send still running") {
		t.Errorf("no warning about the stalled sends")
	}
}
