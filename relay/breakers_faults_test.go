package relay

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"holdfast/breaker"
	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
)

// neverTripsCase is one upstream fault that is not an auth failure.
type neverTripsCase struct {
	name  string
	fault sim.Fault
	// graph sends through Graph sendMail instead of SMTP.
	graph bool
	// unknownRcpt sends to recipients Exchange rejects with 550 5.1.1;
	// the mail is dead-lettered at once and there is no fault to clear.
	unknownRcpt bool
	// permanent faults dead-letter each message at its first attempt,
	// with the reply in its Reason; once the fault clears, a new
	// message is delivered.
	permanent bool
	// clearWithin bounds the wait for the mail to be delivered once the
	// fault clears (default 8 s): a throttled reply with no Retry-After
	// holds the mailbox for its class's delay.
	clearWithin time.Duration
	// lastErr is what each message's LastError (Reason, for 550) holds
	// once the fault has failed it: its class and the upstream's code.
	lastErr []string
	// throttled faults spend no attempt; seen then counts the failures
	// from the simulator's counters instead of the messages' attempts.
	throttled bool
	seen      func(c sim.Counters) int
}

// TestBreakerNeverTrips: failures that are not the credential's or the
// mailbox's fault (DESIGN.md, "Error classes": throttled, transient,
// permanent) never count on a breaker, however many there are in a row.
// For each fault, more messages than the breaker threshold fail at least
// threshold+1 times between them; every breaker stays closed with no
// failure counted, no route is held, and once the fault clears the mail
// is delivered exactly once. A control case shows that the same checks
// see a breaker that does trip.
func TestBreakerNeverTrips(t *testing.T) {
	threshold := breaker.DefaultOptions().Threshold
	const messages = 5
	if messages <= threshold {
		t.Fatalf("%d messages do not exceed the threshold of %d", messages, threshold)
	}
	tokenErrors := func(c sim.Counters) int { return c.Clients[simClientID].TokenErrors }
	graphRequests := func(c sim.Counters) int { return c.Clients[simClientID].GraphRequests }
	smtpRefused := func(c sim.Counters) int { return c.Clients[simClientID].SMTPRefusedByFault }
	cases := []neverTripsCase{
		{name: "550 5.1.1 unknown recipient", unknownRcpt: true, lastErr: []string{"permanent: 550 every recipient was rejected"}},
		{name: "550 5.7.60 sender not permitted", fault: sim.Fault{SMTPMailRefusal: "sender_not_permitted"}, permanent: true,
			lastErr: []string{"permanent: 550 5.7.60"}},
		{name: "432 sender thread limit", fault: sim.Fault{SMTPDataRefusal: "thread_limit"}, throttled: true, seen: smtpRefused,
			lastErr: []string{"throttled: 432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"}, clearWithin: 45 * time.Second},
		{name: "SMTP 421", fault: sim.Fault{SMTPTransient: "421"}, lastErr: []string{"transient: 421 4.3.2"}},
		{name: "SMTP 451", fault: sim.Fault{SMTPTransient: "451"}, lastErr: []string{"transient: 451 4.7.0"}},
		{name: "SMTP timeout after the message", fault: sim.Fault{SMTPStall: "data"}, lastErr: []string{"transient: BDAT LAST", "i/o timeout"}},
		{name: "SMTP no greeting", fault: sim.Fault{SMTPStall: "greeting"}, lastErr: []string{"transient: no greeting, EHLO or STARTTLS reply"}},
		{name: "SMTP connection refused", fault: sim.Fault{SMTPDown: true}, lastErr: []string{"transient: connect to", "connection refused"}},
		{name: "token 429", fault: sim.Fault{TokenThrottle: time.Second}, lastErr: []string{"throttled: 429"}, throttled: true, seen: tokenErrors},
		{name: "token 503", fault: sim.Fault{TokenUnavailable: true}, lastErr: []string{"transient: 503 temporarily_unavailable AADSTS90033"}},
		{name: "Graph 429", fault: sim.Fault{GraphThrottle: time.Second}, graph: true, lastErr: []string{"throttled: 429 ApplicationThrottled"}, throttled: true, seen: graphRequests},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			testNeverTrips(t, tc, threshold, messages)
			t.Logf("took %v", time.Since(start).Round(time.Millisecond))
		})
	}

	// Control: a wrong client secret (401 invalid_client, AADSTS7000215)
	// is a credential failure, and the checks above see its breaker open
	// and its route held.
	// The secret that works got a token first, so the breaker's record
	// names it: a wrong secret written after it is not stale material and
	// still counts. Entra no longer takes the secret that worked (deleted
	// at once): while it did, the relay would send with it as a bridge
	// for the propagation window (auth/bridge.go).
	t.Run("control: wrong secret trips", func(t *testing.T) {
		e := newNeverTripsEnv(t, neverTripsCase{})
		// A token request, not a delivery: an SMTP connection left open by
		// a delivery would go on sending with its earlier AUTH.
		if _, err := e.relays[0].exchange.creds["contoso"].Token(t.Context()); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the secret that works recorded", func() bool {
			st, err := e.relays[0].gate.set.Status(context.Background(), credentialBreaker("contoso"))
			return err == nil && st.GoodFingerprint != ""
		})
		e.sim.RotateSecret(simTenant, simClientID, "another-secret~1")
		writeFile(t, e.secretFile, "not-the-secret~0\n")
		if err := e.relays[0].Reload(); err != nil {
			t.Fatal(err)
		}
		for i := range messages {
			e.submit(t, 0, "billing@contoso.com", fmt.Sprintf("r%d@example.org", i), exchangeMessage(i, "billing@contoso.com"))
		}
		ctx := context.Background()
		waitFor(t, 10*time.Second, "the credential breaker open", func() bool {
			st, err := e.relays[0].gate.set.Status(ctx, credentialBreaker("contoso"))
			return err == nil && st.State == breaker.Open
		})
		waitFor(t, 5*time.Second, "the route held", func() bool {
			return len(e.routeProblems(t)) > 0
		})
		if p := e.breakerProblems(t); len(p) == 0 {
			t.Error("the breaker checks did not see the open breaker")
		}
	})
}

// TestDisabledAppHoldsMail: an app registration disabled in Entra gets
// 400 unauthorized_client AADSTS7000112 for every token. That is the
// credential's failure: its breaker opens, the mail is held, not
// bounced, and once the app is enabled again the breaker's probe closes
// it and every message is delivered once.
func TestDisabledAppHoldsMail(t *testing.T) {
	e := newExchangeEnv(t, 1, func(o *Options) {
		o.Queue.BackoffBase = Duration(100 * time.Millisecond)
		o.Queue.BackoffMax = Duration(400 * time.Millisecond)
		o.Breakers.OpenInterval = Duration(time.Second)
	})
	ctx := context.Background()
	e.sim.DisableApp(simTenant, simClientID, true)
	// The token the relay got at start stops working too, as it would by
	// expiring: the relay must ask Entra for a new one. (SMTP sessions
	// that authenticated before would go on sending.)
	e.sim.RevokeAppTokens(simTenant, simClientID)
	var ids []string
	for i := 1; i <= 5; i++ {
		ids = append(ids, e.submit(t, 0, "billing@contoso.com", fmt.Sprintf("r%d@example.org", i), exchangeMessage(i, "billing@contoso.com")))
	}
	brk := credentialBreaker("contoso")
	waitFor(t, 10*time.Second, "the credential breaker open", func() bool {
		st, err := e.relays[0].gate.set.Status(ctx, brk)
		return err == nil && st.State == breaker.Open
	})
	st, _ := e.relays[0].gate.set.Status(ctx, brk)
	if !strings.Contains(st.Reason, "AADSTS7000112") {
		t.Errorf("breaker reason %q does not name AADSTS7000112", st.Reason)
	}
	for _, id := range ids {
		if m := e.get(t, id); m.State == queue.Dead || m.State == queue.Delivered {
			t.Errorf("%s %s while the app is disabled (%q)", id, m.State, m.Reason)
		}
	}

	e.sim.DisableApp(simTenant, simClientID, false)
	waitFor(t, 20*time.Second, "every message delivered once the app is enabled", func() bool {
		return e.allDelivered(t, ids)
	})
	if n, _ := e.receivedOnce(t); n != len(ids) {
		t.Errorf("%d distinct messages delivered, want %d", n, len(ids))
	}
}

// newNeverTripsEnv starts one relay against the simulator, with retries a
// few hundred milliseconds apart, SMTP timeouts of a second or less and,
// for tc.graph, the app on Graph.
func newNeverTripsEnv(t *testing.T, tc neverTripsCase) *exchangeEnv {
	t.Helper()
	return newExchangeEnv(t, 1, func(o *Options) {
		o.Queue.BackoffBase = Duration(100 * time.Millisecond)
		o.Queue.BackoffMax = Duration(400 * time.Millisecond)
		o.Exchange.ConnectTimeout = Duration(time.Second)
		o.Exchange.CommandTimeout = Duration(time.Second)
		o.Exchange.DataTimeout = Duration(300 * time.Millisecond)
		// Faults of the endpoint itself must still fail messages often
		// enough to show that they never trip an auth breaker.
		o.Exchange.DeadDestinationProbe = Duration(100 * time.Millisecond)
		for i := range o.Apps {
			if tc.graph {
				o.Apps[i].Via = "graph"
			}
		}
	})
}

func testNeverTrips(t *testing.T, tc neverTripsCase, threshold, messages int) {
	e := newNeverTripsEnv(t, tc)
	e.sim.SetFault(tc.fault)

	ids := make([]string, messages)
	for i := range ids {
		rcpt := fmt.Sprintf("r%d@example.org", i)
		if tc.unknownRcpt {
			rcpt = fmt.Sprintf("unknown-%d@example.org", i)
		}
		ids[i] = e.submit(t, 0, "billing@contoso.com", rcpt, exchangeMessage(i, "billing@contoso.com"))
	}

	// Wait for at least threshold+1 failures caused by the fault, and for
	// every message to have failed by it at least once.
	var heldSeen []string
	failures := 0
	waitFor(t, 8*time.Second, fmt.Sprintf("%d failures by the fault", threshold+1), func() bool {
		attempts, failedAll := 0, true
		for _, id := range ids {
			m := e.get(t, id)
			if m.State == queue.Held {
				heldSeen = append(heldSeen, fmt.Sprintf("%s: %s", id, m.HoldReason))
			}
			attempts += m.Attempts
			text := m.LastError
			if tc.unknownRcpt || tc.permanent {
				text = m.Reason
			}
			for _, want := range tc.lastErr {
				if !strings.Contains(text, want) {
					failedAll = false
				}
			}
		}
		failures = attempts
		if tc.throttled {
			failures = tc.seen(e.sim.Counters())
		}
		// Held mail would never fail by the fault again: stop and report.
		return len(heldSeen) > 0 || failedAll && failures >= threshold+1
	})
	if len(heldSeen) > 0 {
		t.Errorf("mail was held under a fault that is not an auth failure: %v", heldSeen)
	}

	t.Logf("%d failures by the fault", failures)

	// The checks the issue asks for, while the fault is still on (a
	// delivery afterwards would reset a count).
	for _, p := range e.breakerProblems(t) {
		t.Error(p)
	}
	for _, p := range e.routeProblems(t) {
		t.Error(p)
	}
	if strings.Contains(e.logs.String(), `msg="breaker open"`) {
		t.Error("a breaker transition to open was logged")
	}
	for _, id := range ids {
		m := e.get(t, id)
		switch {
		case tc.unknownRcpt:
			if m.State != queue.Dead || m.Attempts != 1 || !strings.Contains(m.Reason, "550 5.1.1") {
				t.Errorf("%s: %s after %d attempts (%q); want dead once with the 550 5.1.1 reply", id, m.State, m.Attempts, m.Reason)
			}
		case tc.permanent:
			if m.State != queue.Dead || m.Attempts != 1 {
				t.Errorf("%s: %s after %d attempts (%q); want dead once", id, m.State, m.Attempts, m.Reason)
			}
		case m.State == queue.Dead:
			t.Errorf("%s dead-lettered by a fault that is not permanent: %q", id, m.Reason)
		case tc.throttled && m.Attempts != 0:
			t.Errorf("%s: a throttled failure spent %d attempts", id, m.Attempts)
		}
	}
	if n := e.sim.ReceivedCount(); n != 0 {
		t.Errorf("%d messages reached Exchange while it failed them", n)
	}

	e.sim.SetFault(sim.Fault{})
	if tc.unknownRcpt || tc.permanent {
		// The route still delivers.
		ids = append(ids[:0], e.submit(t, 0, "billing@contoso.com", "known@example.org", exchangeMessage(messages, "billing@contoso.com")))
	}
	within := 8 * time.Second
	if tc.clearWithin > 0 {
		within = tc.clearWithin
	}
	waitFor(t, within, "the mail delivered after the fault cleared", func() bool {
		return e.allDelivered(t, ids)
	})
	n, via := e.receivedOnce(t)
	if n != len(ids) {
		t.Errorf("%d distinct messages delivered, want %d", n, len(ids))
	}
	if want := map[bool]string{false: "smtp", true: "graph"}[tc.graph]; len(via) != 1 || !via[want] {
		t.Errorf("the mail went by %v, want %s only", via, want)
	}
	if tc.throttled {
		for _, id := range ids {
			if m := e.get(t, id); m.Attempts != 1 {
				t.Errorf("%s: %d attempts, want only the delivery's", id, m.Attempts)
			}
		}
	}
	for _, p := range e.breakerProblems(t) {
		t.Error(p)
	}
}

// breakerProblems describes every breaker the fleet knows that is not
// closed or has failures counted, including the route's own two breakers,
// which may not have a record yet (then they are closed).
func (e *exchangeEnv) breakerProblems(t *testing.T) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	for i, r := range e.relays {
		set := r.gate.set
		list, err := set.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{credentialBreaker("contoso"), mailboxBreaker("billing@contoso.com")} {
			if slices.ContainsFunc(list, func(st breaker.Status) bool { return st.Name == name }) {
				continue
			}
			st, err := set.Status(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			list = append(list, st)
		}
		for _, st := range list {
			if st.State != breaker.Closed || st.Failures != 0 {
				out = append(out, fmt.Sprintf("relay %d: breaker %s is %s with %d failures (%s)", i, st.Name, st.State, st.Failures, st.Reason))
			}
		}
	}
	return out
}

// routeProblems describes every held route.
func (e *exchangeEnv) routeProblems(t *testing.T) []string {
	t.Helper()
	ctx := context.Background()
	st, err := e.f.queue.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	if st.Total.Held != 0 {
		out = append(out, fmt.Sprintf("%d messages held", st.Total.Held))
	}
	for _, rs := range st.Routes {
		reason, held, err := e.f.queue.RouteHold(ctx, rs.Route)
		if err != nil {
			t.Fatal(err)
		}
		if held || rs.HoldReason != "" {
			out = append(out, fmt.Sprintf("route %s held: %q", rs.Route, reason+rs.HoldReason))
		}
	}
	return out
}
