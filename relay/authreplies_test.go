package relay

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"holdfast/auth"
	"holdfast/breaker"
	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
)

// Microsoft's auth replies that the unit tests of relay/o365 classify,
// here end to end: a real relay, the simulator and Redis. The rule
// (DESIGN.md, "Error classes"): an auth failure never bounces mail; a
// credential-class reply counts on cred:NAME, a mailbox-class one on
// mbx:ADDRESS; the mail is held with no attempt spent, and once the cause
// is fixed it is delivered exactly once.

// breakerStatus reads a breaker's record from Redis.
func (e *exchangeEnv) breakerStatus(t *testing.T, name string) breaker.Status {
	t.Helper()
	st, err := e.relays[0].gate.set.Status(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// waitBreakerOpen waits for a breaker to open and returns its record.
func (e *exchangeEnv) waitBreakerOpen(t *testing.T, name string, within time.Duration) breaker.Status {
	t.Helper()
	var st breaker.Status
	waitFor(t, within, name+" open", func() bool {
		st = e.breakerStatus(t, name)
		return st.State == breaker.Open
	})
	return st
}

// assertHeldUnspent fails the test for each message that is delivered,
// dead or has spent an attempt, or whose last error does not name want.
func (e *exchangeEnv) assertHeldUnspent(t *testing.T, ids []string, want string) {
	t.Helper()
	for _, id := range ids {
		m := e.get(t, id)
		if m.State == queue.Dead || m.State == queue.Delivered || m.Attempts != 0 {
			t.Errorf("%s: %s with %d attempts (reason %q, last error %q), want held with none spent", id, m.State, m.Attempts, m.Reason, m.LastError)
		}
		if want != "" && !strings.Contains(m.LastError+" "+m.HoldReason, want) {
			t.Errorf("%s: last error %q, hold reason %q: want %s named", id, m.LastError, m.HoldReason, want)
		}
	}
}

// submitN submits n messages from one sender and returns their ids.
func (e *exchangeEnv) submitN(t *testing.T, from string, first, n int) []string {
	t.Helper()
	var ids []string
	for i := first; i < first+n; i++ {
		ids = append(ids, e.submit(t, 0, from, fmt.Sprintf("r%d@example.org", i), exchangeMessage(i, from)))
	}
	return ids
}

// TestAuthReplyUnknownApp: the credential names a client id or a tenant
// Entra does not know. Both are credential-class
// replies (400 unauthorized_client AADSTS700016; 400 invalid_tenant
// AADSTS90002): the credential's breaker opens naming the code, the
// mailbox's breaker counts nothing, and the mail is held with no attempt
// spent, through the breaker's failing probes. There is no fix short of
// a configuration change and restart, so only the hold is checked.
func TestAuthReplyUnknownApp(t *testing.T) {
	cases := []struct {
		name, aadsts, oauth string
		change              func(c *Credential)
	}{
		{"AADSTS700016 unknown client id", "AADSTS700016", "unauthorized_client",
			func(c *Credential) { c.ClientID = "99999999-2222-3333-4444-555555555555" }},
		{"AADSTS90002 unknown tenant", "AADSTS90002", "invalid_tenant",
			func(c *Credential) { c.Tenant = "fabrikam.onmicrosoft.com" }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newExchangeEnv(t, 1, func(o *Options) {
				o.Breakers.OpenInterval = Duration(time.Second)
				o.Breakers.MaxInterval = Duration(2 * time.Second)
				tc.change(&o.Credentials[0])
			})
			start := time.Now()
			ids := e.submitN(t, "billing@contoso.com", 0, 4)
			brk := credentialBreaker("contoso")
			st := e.waitBreakerOpen(t, brk, 10*time.Second)
			t.Logf("%s open %v after the first submission: %q", brk, time.Since(start).Round(time.Millisecond), st.Reason)
			if !strings.Contains(st.Reason, tc.aadsts) || !strings.Contains(st.Reason, tc.oauth) {
				t.Errorf("%s reason %q, want %s %s named", brk, st.Reason, tc.oauth, tc.aadsts)
			}
			waitFor(t, 5*time.Second, "every message held", func() bool {
				for _, id := range ids {
					if e.get(t, id).State != queue.Held {
						return false
					}
				}
				return true
			})
			// Through probes that fail as the sends did.
			time.Sleep(3 * time.Second)
			if st := e.breakerStatus(t, brk); st.State != breaker.Open {
				t.Errorf("%s %s (%q) with nothing fixed, want open", brk, st.State, st.Reason)
			}
			if st := e.breakerStatus(t, mailboxBreaker("billing@contoso.com")); st.State != breaker.Closed || st.Failures != 0 {
				t.Errorf("the mailbox's breaker: %s with %d failures (%q), want closed with none", st.State, st.Failures, st.Reason)
			}
			e.assertHeldUnspent(t, ids, tc.aadsts)
			for _, id := range ids {
				if m := e.get(t, id); m.State != queue.Held {
					t.Errorf("%s: %s, want held", id, m.State)
				}
			}
			if n := e.sim.ReceivedCount(); n != 0 {
				t.Errorf("%d messages reached Exchange", n)
			}
			var asked, refused, auths int
			for _, c := range e.sim.Counters().Clients {
				asked, refused, auths = asked+c.TokenRequests, refused+c.TokenErrors, auths+c.SMTPAuthAttempts+c.GraphRequests
			}
			t.Logf("%d token requests, %d refused", asked, refused)
			if asked == 0 || refused != asked || auths != 0 {
				t.Errorf("%d token requests, %d refused, %d SMTP AUTH or Graph requests: want every token refused and nothing sent", asked, refused, auths)
			}
		})
	}
}

// aheadClock is a simulator clock running with the real one, which the
// test moves forward.
type aheadClock struct{ ahead atomic.Int64 }

func (c *aheadClock) now() time.Time { return time.Now().Add(time.Duration(c.ahead.Load())) }

func (c *aheadClock) advance(d time.Duration) { c.ahead.Add(int64(d)) }

// TestAuthReplyRefreshTokenInactive: a mailbox's delegated grant unused
// for 90 days (the simulator's clock moved on) gets 400 invalid_grant
// AADSTS700082. It is the mailbox's failure: its breaker opens, the
// credential's counts nothing, and the mail is held with no attempt
// spent. Once the mailbox consents again (a new refresh token stored),
// the operator's reset, or else the breaker's own probe, releases the
// mail, and each message is delivered once.
func TestAuthReplyRefreshTokenInactive(t *testing.T) {
	for _, fix := range []string{"reset", "probe"} {
		t.Run("fixed by "+fix, func(t *testing.T) { testRefreshTokenInactive(t, fix) })
	}
}

func testRefreshTokenInactive(t *testing.T, fix string) {
	clock := &aheadClock{}
	e := newExchangeEnvSim(t, 1, func(c *sim.Config) { c.Now = clock.now }, func(o *Options) {
		o.Breakers.OpenInterval = Duration(time.Second)
		o.Breakers.MaxInterval = Duration(2 * time.Second)
	})
	ctx := context.Background()
	const alice = "alice@contoso.com"
	rt := e.sim.IssueRefreshToken(simTenant, simClientID, alice)
	if err := e.relays[0].exchange.grants.Put(ctx, alice, "contoso", rt); err != nil {
		t.Fatal(err)
	}
	clock.advance(91 * 24 * time.Hour)
	start := time.Now()
	ids := e.submitN(t, alice, 0, 4)
	if m := e.get(t, ids[0]); m.Route != "mbx:contoso:"+alice {
		t.Fatalf("route %q, want the delegated one", m.Route)
	}
	brk := mailboxBreaker(alice)
	st := e.waitBreakerOpen(t, brk, 10*time.Second)
	t.Logf("%s open %v after the first submission: %q", brk, time.Since(start).Round(time.Millisecond), st.Reason)
	if !strings.Contains(st.Reason, "AADSTS700082") || !strings.Contains(st.Reason, "invalid_grant") {
		t.Errorf("%s reason %q, want invalid_grant AADSTS700082 named", brk, st.Reason)
	}
	waitFor(t, 5*time.Second, "every message held", func() bool {
		for _, id := range ids {
			if e.get(t, id).State != queue.Held {
				return false
			}
		}
		return true
	})
	e.assertHeldUnspent(t, ids, "AADSTS700082")
	if st := e.breakerStatus(t, credentialBreaker("contoso")); st.State != breaker.Closed || st.Failures != 0 {
		t.Errorf("the credential's breaker: %s with %d failures (%q), want closed with none", st.State, st.Failures, st.Reason)
	}
	if n := e.sim.ReceivedCount(); n != 0 {
		t.Fatalf("%d messages reached Exchange on an expired grant", n)
	}

	// The mailbox signs in again: a new grant, issued at the simulator's
	// time, is stored.
	rt2 := e.sim.IssueRefreshToken(simTenant, simClientID, alice)
	if err := e.relays[0].exchange.grants.Put(ctx, alice, "contoso", rt2); err != nil {
		t.Fatal(err)
	}
	if fix == "reset" {
		if err := e.relays[0].gate.set.Reset(ctx, brk); err != nil {
			t.Fatal(err)
		}
	}
	fixed := time.Now()
	waitFor(t, 10*time.Second, "the held mail delivered after the new grant", func() bool { return e.allDelivered(t, ids) })
	t.Logf("new grant (%s) to all delivered: %v", fix, time.Since(fixed).Round(time.Millisecond))
	if distinct, _ := e.receivedOnce(t); distinct != len(ids) {
		t.Errorf("%d distinct messages received, want %d", distinct, len(ids))
	}
	for _, r := range e.sim.Received() {
		if !r.Delegated || r.Mailbox != alice {
			t.Errorf("%s sent as %s, delegated %v", r.MessageID, r.Mailbox, r.Delegated)
		}
	}
	for _, id := range ids {
		if m := e.get(t, id); m.Attempts != 1 {
			t.Errorf("%s: %d attempts, want 1: the grant failures spent none", id, m.Attempts)
		}
	}
	if st := e.breakerStatus(t, brk); st.State != breaker.Closed {
		t.Errorf("%s %s (%q) after delivery, want closed", brk, st.State, st.Reason)
	}
}

// holdSMTPSessions opens n SMTP sessions authenticated as mailbox with
// the relay's own app-only token, as another client of the mailbox
// would, and returns a function closing them.
func (e *exchangeEnv) holdSMTPSessions(t *testing.T, mailbox string, n int) (closeAll func()) {
	t.Helper()
	tok, err := e.relays[0].exchange.creds["contoso"].Token(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var clients []*smtp.Client
	closeAll = func() {
		for _, c := range clients {
			c.Quit()
			c.Close()
		}
		clients = nil
	}
	t.Cleanup(closeAll)
	for range n {
		c, err := smtp.DialStartTLS(e.sim.SMTPAddr(), &tls.Config{RootCAs: e.sim.RootCAs()})
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		if err := c.Auth(auth.NewXOAUTH2Client(mailbox, tok.AccessToken)); err != nil {
			t.Fatalf("AUTH as %s: %v", mailbox, err)
		}
	}
	return closeAll
}

// TestAuthReplyConcurrentConnections: three SMTP sessions of a mailbox
// held open by another client make Exchange answer the relay's AUTH with
// 432 4.3.2 (concurrent connections limit). It is throttling, not an auth
// failure: the message waits, spending no attempt, and no breaker counts
// a failure. Once the other client's sessions close (and the operator
// flushes the wait), the message is delivered once.
func TestAuthReplyConcurrentConnections(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	ctx := context.Background()
	const box = "billing@contoso.com"
	closeAll := e.holdSMTPSessions(t, box, 3)
	start := time.Now()
	id := e.submit(t, 0, box, "a@example.org", exchangeMessage(1, box))
	waitFor(t, 10*time.Second, "the 432 deferred", func() bool {
		m := e.get(t, id)
		return m.State == queue.Scheduled && m.LastError != ""
	})
	m := e.get(t, id)
	t.Logf("deferred %v after submission: %q, due in %v", time.Since(start).Round(time.Millisecond), m.LastError, time.Until(m.Due).Round(time.Second))
	if m.Attempts != 0 || !strings.Contains(m.LastError, "432") || !strings.Contains(m.LastError, "throttled") {
		t.Errorf("after the 432: %d attempts, last error %q; want none spent, throttled 432", m.Attempts, m.LastError)
	}
	if n := e.sim.Counters().Mailboxes[box].MaxConcurrentSMTP; n != 4 {
		t.Errorf("the simulator saw at most %d sessions of %s, want the relay's as the 4th", n, box)
	}
	for _, name := range []string{credentialBreaker("contoso"), mailboxBreaker(box)} {
		if st := e.breakerStatus(t, name); st.State != breaker.Closed || st.Failures != 0 {
			t.Errorf("%s: %s with %d failures (%q), want closed with none", name, st.State, st.Failures, st.Reason)
		}
	}

	closeAll()
	if _, err := e.f.queue.Flush(ctx, m.Route); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	waitFor(t, 10*time.Second, "delivery once the sessions closed", func() bool { return e.allDelivered(t, []string{id}) })
	t.Logf("sessions closed to delivered: %v", time.Since(freed).Round(time.Millisecond))
	if distinct, _ := e.receivedOnce(t); distinct != 1 {
		t.Errorf("%d distinct messages received, want 1", distinct)
	}
	if m := e.get(t, id); m.Attempts != 1 {
		t.Errorf("%d attempts, want 1: the 432 spent none", m.Attempts)
	}
}

// TestDelegatedMailOfGraphAppGoesBySMTP: a delegated mailbox's mail,
// submitted by an app that sends by Graph, goes by SMTP with the grant's
// token. The grant's tokens are for SMTP.Send (auth.DelegatedScopes):
// sent to Graph, they were refused (401 "Invalid audience") on every
// try, and the mailbox's breaker held the mail for good, with nothing
// an operator could fix but the configuration. The app's own mailboxes
// still send by Graph.
//
// (A Graph 401 on a new app-only token cannot be produced: the
// simulator's Graph checks only a token's signature, lifetime and
// audience, all right on a new app-only token.)
func TestDelegatedMailOfGraphAppGoesBySMTP(t *testing.T) {
	e := newExchangeEnv(t, 1, func(o *Options) {
		o.Breakers.OpenInterval = Duration(time.Second)
		for i := range o.Apps {
			o.Apps[i].Via = "graph"
		}
	})
	ctx := context.Background()
	const alice = "alice@contoso.com"
	rt := e.sim.IssueRefreshToken(simTenant, simClientID, alice)
	if err := e.relays[0].exchange.grants.Put(ctx, alice, "contoso", rt); err != nil {
		t.Fatal(err)
	}
	ids := e.submitN(t, alice, 0, 4)
	if m := e.get(t, ids[0]); m.Route != "mbx:contoso:"+alice {
		t.Fatalf("route %q, want the delegated one", m.Route)
	}
	app := e.submit(t, 0, "billing@contoso.com", "r@example.org", exchangeMessage(9, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the delegated mail and the app's delivered", func() bool {
		return e.allDelivered(t, append([]string{app}, ids...))
	})
	for _, r := range e.sim.Received() {
		switch {
		case r.Mailbox == alice && (r.Via != "smtp" || !r.Delegated):
			t.Errorf("%s went by %s, delegated %v; want SMTP with the grant", r.MessageID, r.Via, r.Delegated)
		case r.Mailbox != alice && r.Via != "graph":
			t.Errorf("the app's own mail %s went by %s, want Graph", r.MessageID, r.Via)
		}
	}
	if distinct, _ := e.receivedOnce(t); distinct != len(ids)+1 {
		t.Errorf("%d distinct messages received, want %d", distinct, len(ids)+1)
	}
	for _, name := range []string{mailboxBreaker(alice), credentialBreaker("contoso")} {
		if st := e.breakerStatus(t, name); st.State != breaker.Closed || st.Failures != 0 {
			t.Errorf("%s: %s with %d failures (%q), want closed with none", name, st.State, st.Failures, st.Reason)
		}
	}
}
