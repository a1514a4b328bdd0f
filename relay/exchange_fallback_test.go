package relay

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"holdfast/breaker"
	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
)

// TestGraphFallback: an app with fallback: graph, on two relays. SMTP
// AUTH is disabled for billing@ (535 5.7.139): its mail goes by Graph,
// each message once, none spent, held or dead, and its mailbox breaker
// never counts the refusal; noreply@ still sends by SMTP, and the
// decision is made once, by the first send that met the refusal. After
// exchange.fallback_recheck, with SMTP AUTH back, billing@ sends by SMTP
// again. An app registration without Mail.Send does not fall back: the
// mailbox is held as before, and nothing goes by Graph.
func TestGraphFallback(t *testing.T) {
	const recheck = 2 * time.Second
	e := newExchangeEnv(t, 2, func(o *Options) {
		o.Exchange.FallbackRecheck = Duration(recheck)
		o.Queue.BackoffBase = Duration(100 * time.Millisecond)
		o.Queue.BackoffMax = Duration(400 * time.Millisecond)
		for i := range o.Apps {
			o.Apps[i].Fallback = "graph"
			o.Apps[i].SenderMailboxes["alice@contoso.com"] = "alice@contoso.com"
		}
	})
	e.sim.DisableSMTPAuth("billing@contoso.com", true)
	const n = 6
	var ids []string
	for i := range n {
		from := "billing@contoso.com"
		if i%2 == 1 {
			from = "noreply@contoso.com"
		}
		ids = append(ids, e.submit(t, i%2, from, "x@example.org", exchangeMessage(i, from)))
	}
	delivered := func(ids ...string) func() bool {
		return func() bool {
			return e.allDelivered(t, ids)
		}
	}
	waitFor(t, 15*time.Second, "every message delivered", delivered(ids...))
	via := map[string]string{}
	count := map[string]int{}
	for _, r := range e.sim.Received() {
		via[r.MessageID] = r.Mailbox + " " + r.Via
		count[r.MessageID]++
	}
	for i, id := range ids {
		mid := fmt.Sprintf("<m%d@test>", i)
		want := "billing@contoso.com graph"
		if i%2 == 1 {
			want = "noreply@contoso.com smtp"
		}
		if via[mid] != want || count[mid] != 1 {
			t.Errorf("%s: sent as %q %d times, want %q once", mid, via[mid], count[mid], want)
		}
		if m := e.get(t, id); m.Attempts != 1 {
			t.Errorf("%s: %d attempts spent, want 1 (the delivery)", mid, m.Attempts)
		}
	}
	set := e.relays[0].gate.set
	st, err := set.Status(t.Context(), mailboxBreaker("billing@contoso.com"))
	if err != nil {
		t.Fatal(err)
	}
	if st.State != breaker.Closed || st.Failures != 0 || st.Generation != 0 {
		t.Errorf("billing's breaker: %+v, want closed with no failure counted", st)
	}
	if got := strings.Count(e.logs.String(), "its mail goes by Graph (fallback: graph)"); got != 1 {
		t.Errorf("the fallback was decided %d times, want once", got)
	}
	// The status page lists the route, and the app's transports.
	page, err := (&opsStatus{s: e.relays[1]}).Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(page.GraphFallbacks) != 1 || page.GraphFallbacks[0].Route != appRoute("contoso", "billing@contoso.com") ||
		len(page.Transports) == 0 || page.Transports[0].Fallback != "graph" {
		t.Errorf("status: transports %+v, fallbacks %+v; want crm with fallback graph, and billing's route", page.Transports, page.GraphFallbacks)
	}

	// SMTP AUTH is back; after the recheck the route tries SMTP again.
	e.sim.DisableSMTPAuth("billing@contoso.com", false)
	time.Sleep(recheck + 200*time.Millisecond)
	id := e.submit(t, 0, "billing@contoso.com", "x@example.org", exchangeMessage(10, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the message after the recheck", delivered(id))
	for _, r := range e.sim.Received() {
		if r.MessageID == "<m10@test>" && r.Via != "smtp" {
			t.Errorf("after the recheck, billing@ sent by %s, want smtp", r.Via)
		}
	}

}

// TestGraphFallbackNeedsMailSend: an app registration without the
// Mail.Send application permission does not fall back: SMTP AUTH disabled
// holds the mailbox as before, nothing goes by Graph, and a log line says
// what is missing.
func TestGraphFallbackNeedsMailSend(t *testing.T) {
	e := newExchangeEnvSim(t, 1, func(c *sim.Config) {
		c.Tenants[0].Apps[0].GraphRoles = []string{"Application.Read.All"}
	}, func(o *Options) {
		o.Queue.BackoffBase = Duration(100 * time.Millisecond)
		o.Queue.BackoffMax = Duration(400 * time.Millisecond)
		for i := range o.Apps {
			o.Apps[i].Fallback = "graph"
		}
	})
	e.sim.DisableSMTPAuth("billing@contoso.com", true)
	id := e.submit(t, 0, "billing@contoso.com", "x@example.org", exchangeMessage(1, "billing@contoso.com"))
	set := e.relays[0].gate.set
	waitFor(t, 15*time.Second, "billing's mailbox breaker open", func() bool {
		st, err := set.Status(t.Context(), mailboxBreaker("billing@contoso.com"))
		return err == nil && st.State == breaker.Open
	})
	if m := e.get(t, id); m.State == queue.Delivered || m.State == queue.Dead {
		t.Errorf("the message is %s, want held", m.State)
	}
	if got := len(e.sim.Received()); got != 0 {
		t.Errorf("%d messages sent without Mail.Send, want 0", got)
	}
	if !strings.Contains(e.logs.String(), "fallback: graph needs the Mail.Send application permission") {
		t.Error("no log line says the app lacks Mail.Send")
	}
}

// TestGraphThrottleHoldsFallbackMailbox: a route that fallback: graph
// sends by Graph is held on Graph's 429 as a route that goes by Graph
// alone: the mailbox's other mail waits for the Retry-After on every
// relay, those started meanwhile included, instead of each message
// drawing a 429 of its own. The wait spends nothing, and the mail goes
// out once it ends.
func TestGraphThrottleHoldsFallbackMailbox(t *testing.T) {
	const throttle = 6 * time.Second
	const from = "billing@contoso.com"
	e := newExchangeEnv(t, 1, func(o *Options) {
		for i := range o.Apps {
			o.Apps[i].Fallback = "graph"
		}
	})
	e.sim.DisableSMTPAuth(from, true)
	first := e.submit(t, 0, from, "x@example.org", exchangeMessage(0, from))
	waitFor(t, 15*time.Second, "the first message delivered by Graph", func() bool { return e.allDelivered(t, []string{first}) })

	e.sim.SetFault(sim.Fault{GraphThrottle: throttle, GraphThrottleMailbox: from})
	busy := []string{e.submit(t, 0, from, "r1@example.org", exchangeMessage(1, from))}
	waitFor(t, 5*time.Second, "the second message throttled", func() bool { return strings.Contains(e.get(t, busy[0]).LastError, "429") })
	throttledAt := time.Now()
	// Relays started after the fallback and the 429 learn both from Redis.
	e.addRelay(t)
	last := e.addRelay(t)
	for n := 2; n < 8; n++ {
		busy = append(busy, e.submit(t, n%(last+1), from, fmt.Sprintf("r%d@example.org", n), exchangeMessage(n, from)))
	}
	// Each relay polls every 50 ms and looks at once after an enqueue.
	time.Sleep(2 * time.Second)
	e.assertGraphThrottleHeld(t, busy, throttle, throttledAt)
	for _, r := range e.sim.Received() {
		if r.Mailbox == from && r.Via != "graph" {
			t.Errorf("%s sent by %s, want graph", r.MessageID, r.Via)
		}
	}
}
