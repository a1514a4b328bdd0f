package relay

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"holdfast/breaker"
	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
)

// TestGraphOnlyRotation: an app that sends by Graph, in a tenant with
// SMTP AUTH disabled for every mailbox (a common set-up for Graph
// senders). The secret expires and the credential's breaker opens; after
// the rotation, the breaker's probe tests the credential the way its
// mail goes, by Graph, and closes at once: the held mail is delivered
// within seconds, and no mailbox's breaker counts a failure for the
// SMTP AUTH the mail never uses.
func TestGraphOnlyRotation(t *testing.T) {
	const boxes = 5
	e := newExchangeEnvSim(t, 2, func(c *sim.Config) {
		for i := range c.Tenants[0].Mailboxes {
			c.Tenants[0].Mailboxes[i].SMTPAuthDisabled = true
		}
	}, sendByGraphAs(boxes))
	ctx := context.Background()
	send := func(n int) {
		from := fmt.Sprintf("box%d@contoso.com", n%boxes+1)
		e.submit(t, n%2, from, fmt.Sprintf("r%d@example.org", n), exchangeMessage(n, from))
	}
	for n := range 10 {
		send(n)
	}
	waitFor(t, 10*time.Second, "the first 10 delivered", func() bool { return e.sim.ReceivedCount() == 10 })

	e.sim.ExpireSecret(simTenant, simClientID)
	for _, r := range e.relays {
		r.exchange.graphCreds["contoso"].Invalidate()
		r.exchange.creds["contoso"].Invalidate()
	}
	for n := 10; n < 20; n++ {
		send(n)
	}
	brk := credentialBreaker("contoso")
	waitFor(t, 10*time.Second, "the credential breaker open", func() bool {
		st, err := e.relays[0].gate.set.Status(ctx, brk)
		return err == nil && st.State == breaker.Open
	})

	const rotated = "rotated-secret~graph"
	e.sim.RotateSecret(simTenant, simClientID, rotated)
	writeFile(t, e.secretFile, rotated+"\n")
	start := time.Now()
	waitFor(t, 10*time.Second, "all 20 delivered after the rotation", func() bool { return e.sim.ReceivedCount() >= 20 })
	t.Logf("rotation to all delivered: %v", time.Since(start).Round(time.Millisecond))
	if _, via := e.receivedOnce(t); len(via) != 1 || !via["graph"] {
		t.Errorf("the mail went by %v, want Graph only", via)
	}
	for m := 1; m <= boxes; m++ {
		name := mailboxBreaker(fmt.Sprintf("box%d@contoso.com", m))
		st, err := e.relays[0].gate.set.Status(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != breaker.Closed || st.Failures != 0 {
			t.Errorf("%s: %s with %d failures (%s), want closed with none", name, st.State, st.Failures, st.Reason)
		}
	}
}

// TestProbeSkipsSMTPAuthOff: the only mail held by an expired secret is
// for mailboxes with SMTP AUTH off. After the rotation, the credential's
// probe meets 535 5.7.139 at each; that says nothing of the credential,
// so the probe tests it with a token and the breaker closes at once.
// The mail is then tried, fails on its mailboxes' own account, and
// waits; none bounces.
func TestProbeSkipsSMTPAuthOff(t *testing.T) {
	off := map[string]bool{"box1@contoso.com": true, "box2@contoso.com": true, "box3@contoso.com": true}
	e := newExchangeEnvSim(t, 1, func(c *sim.Config) {
		for i, m := range c.Tenants[0].Mailboxes {
			c.Tenants[0].Mailboxes[i].SMTPAuthDisabled = off[m.Address]
		}
	}, func(o *Options) {
		for i := range o.Apps {
			o.Apps[i].SenderMailboxes = map[string]string{}
			for m := 1; m <= 4; m++ {
				addr := fmt.Sprintf("box%d@contoso.com", m)
				o.Apps[i].SenderMailboxes[addr] = addr
			}
		}
	})
	ctx := context.Background()
	// A message for a mailbox that works proves the secret first.
	first := e.submit(t, 0, "box4@contoso.com", "r@example.org", exchangeMessage(0, "box4@contoso.com"))
	waitFor(t, 10*time.Second, "the first message delivered", func() bool { return e.allDelivered(t, []string{first}) })

	e.sim.ExpireSecret(simTenant, simClientID)
	e.relays[0].exchange.creds["contoso"].Invalidate()
	// The credential's breaker opens before any of the three mailboxes
	// is tried, as it would on a refusal elsewhere in the fleet.
	brk := credentialBreaker("contoso")
	if err := e.relays[0].gate.set.Trip(ctx, brk, "invalid_client AADSTS7000222"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the credential breaker open", func() bool {
		st, err := e.relays[0].gate.set.Status(ctx, brk)
		return err == nil && st.State == breaker.Open
	})
	var ids []string
	for n := 1; n <= 3; n++ {
		from := fmt.Sprintf("box%d@contoso.com", n)
		ids = append(ids, e.submit(t, 0, from, fmt.Sprintf("r%d@example.org", n), exchangeMessage(n, from)))
	}

	const rotated = "rotated-secret~smtpoff"
	e.sim.RotateSecret(simTenant, simClientID, rotated)
	writeFile(t, e.secretFile, rotated+"\n")
	start := time.Now()
	waitFor(t, 5*time.Second, "the credential breaker closed after the rotation", func() bool {
		st, err := e.relays[0].gate.set.Status(ctx, brk)
		return err == nil && st.State == breaker.Closed
	})
	t.Logf("rotation to the breaker closed: %v", time.Since(start).Round(time.Millisecond))
	waitFor(t, 10*time.Second, "each message tried, and refused on its mailbox's account", func() bool {
		for _, id := range ids {
			if !strings.Contains(e.get(t, id).LastError, "mailbox: 535 5.7.139") {
				return false
			}
		}
		return true
	})
	for _, id := range ids {
		if m := e.get(t, id); m.State == queue.Dead || m.State == queue.Delivered {
			t.Errorf("%s %s (%q), want held", id, m.State, m.Reason)
		}
	}
}

// TestGraphRefusedMailboxStaysOpen: a mailbox whose Graph sends are
// refused (403, no permission for it) opens its own breaker, whose
// probes do not pass on a token alone: it stays open, with its interval
// growing, instead of closing and reopening every interval, each time
// with more refused sends. Each probe sends one held message by Graph as
// its trial: one refused request a probe, and no attempt spent.
func TestGraphRefusedMailboxStaysOpen(t *testing.T) {
	e := newExchangeEnvSim(t, 1, func(c *sim.Config) {
		c.Tenants[0].Apps[0].SendAsMailboxes = []string{"box1@contoso.com"}
	}, func(o *Options) {
		o.Breakers.OpenInterval = Duration(time.Second)
		o.Breakers.MaxInterval = Duration(8 * time.Second)
		o.Queue.BackoffBase = Duration(200 * time.Millisecond)
		for i := range o.Apps {
			o.Apps[i].Via = "graph"
			o.Apps[i].SenderMailboxes = map[string]string{"box2@contoso.com": "box2@contoso.com"}
		}
	})
	var ids []string
	for n := range 10 {
		ids = append(ids, e.submit(t, 0, "box2@contoso.com", fmt.Sprintf("r%d@example.org", n), exchangeMessage(n, "box2@contoso.com")))
	}
	ctx := context.Background()
	name := mailboxBreaker("box2@contoso.com")
	waitFor(t, 10*time.Second, "the mailbox's breaker open", func() bool {
		st, err := e.relays[0].gate.set.Status(ctx, name)
		return err == nil && st.State == breaker.Open
	})
	before := e.sim.Counters().Clients[simClientID].GraphRequests
	time.Sleep(12 * time.Second)
	refused := e.sim.Counters().Clients[simClientID].GraphRequests - before
	logs := e.logs.String()
	opened, probed := strings.Count(logs, `msg="breaker open" component=breaker breaker=`+name), strings.Count(logs, `msg="breaker probed" component=breaker breaker=`+name)
	t.Logf("in 12 s: %d Graph requests, %d openings, %d probes", refused, opened, probed)
	if opened != 1 || refused != probed {
		t.Errorf("the breaker opened %d times and Graph got %d more requests in 12 s, want once and one for each of the %d probes", opened, refused, probed)
	}
	if probed < 2 {
		t.Errorf("%d probes in 12 s with a 1 s open interval", probed)
	}
	for _, id := range ids {
		if m := e.get(t, id); m.State != queue.Held || m.Attempts != 0 {
			t.Errorf("%s: %s with %d attempts (%s), want held with none", id, m.State, m.Attempts, m.LastError)
		}
	}
}

// TestGraphMailboxProbeWithSMTPAuthOff: an app that sends by Graph, in a
// tenant with SMTP AUTH off. Graph refuses one mailbox (403: it is not
// in the app's application access policy), whose breaker opens and holds
// its mail. Once the administrator adds the mailbox, the breaker's probe
// must see it: SMTP AUTH, which the mail never uses, answers 535 5.7.139
// whatever the policy says, so the probe sends one held message by Graph
// as the trial. The mail is then delivered, each message once, none
// dead.
func TestGraphMailboxProbeWithSMTPAuthOff(t *testing.T) {
	e := newExchangeEnvSim(t, 2, func(c *sim.Config) {
		c.Tenants[0].Apps[0].SendAsMailboxes = []string{"box1@contoso.com"}
		for i := range c.Tenants[0].Mailboxes {
			c.Tenants[0].Mailboxes[i].SMTPAuthDisabled = true
		}
	}, func(o *Options) {
		o.Breakers.OpenInterval = Duration(time.Second)
		o.Breakers.MaxInterval = Duration(2 * time.Second)
		o.Queue.BackoffBase = Duration(200 * time.Millisecond)
		for i := range o.Apps {
			o.Apps[i].Via = "graph"
			o.Apps[i].SenderMailboxes = map[string]string{"box1@contoso.com": "box1@contoso.com", "box2@contoso.com": "box2@contoso.com"}
		}
	})
	ctx := context.Background()
	var ids []string
	for n := range 6 {
		from := fmt.Sprintf("box%d@contoso.com", n%2+1)
		ids = append(ids, e.submit(t, n%2, from, fmt.Sprintf("r%d@example.org", n), exchangeMessage(n, from)))
	}
	name := mailboxBreaker("box2@contoso.com")
	waitFor(t, 10*time.Second, "box2's breaker open, box1's mail delivered", func() bool {
		st, err := e.relays[0].gate.set.Status(ctx, name)
		return err == nil && st.State == breaker.Open && e.sim.ReceivedCount() == 3
	})
	// A probe or two meets the mailbox still refused.
	time.Sleep(1500 * time.Millisecond)
	if !e.sim.SetSendAs(simTenant, simClientID, "box2@contoso.com", true) {
		t.Fatal("no such app in the simulator")
	}
	start := time.Now()
	waitFor(t, 10*time.Second, "box2's mail delivered once its breaker's probe passed", func() bool { return e.allDelivered(t, ids) })
	t.Logf("access granted to all delivered: %v", time.Since(start).Round(time.Millisecond))
	if distinct, via := e.receivedOnce(t); distinct != len(ids) || len(via) != 1 || !via["graph"] {
		t.Errorf("%d distinct messages by %v, want %d by Graph only", distinct, via, len(ids))
	}
	if st := e.breakerStatus(t, name); st.State != breaker.Closed {
		t.Errorf("%s %s (%s), want closed", name, st.State, st.Reason)
	}
}

// TestGraphTrialPassesOverRefusedMessage: the trial a Graph mailbox's
// probe sends is refused for the message's own reason (a From header the
// mailbox may not send as: 403 ErrorSendAsDenied, permanent). That says
// nothing of the mailbox: the message is dead-lettered, as any delivery
// would leave it, and the probe tries the next held message, which is
// delivered and closes the breaker. SMTP AUTH is off, so no probe but a
// send can tell.
func TestGraphTrialPassesOverRefusedMessage(t *testing.T) {
	e := newExchangeEnvSim(t, 1, func(c *sim.Config) {
		for i := range c.Tenants[0].Mailboxes {
			c.Tenants[0].Mailboxes[i].SMTPAuthDisabled = true
		}
	}, func(o *Options) {
		o.Breakers.OpenInterval = Duration(time.Second)
		for i := range o.Apps {
			o.Apps[i].Via = "graph"
			o.Apps[i].SenderMailboxes = map[string]string{"box2@contoso.com": "box2@contoso.com"}
		}
	})
	ctx := context.Background()
	name := mailboxBreaker("box2@contoso.com")
	if err := e.relays[0].gate.set.Trip(ctx, name, "tripped by an operator"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the relay to see the breaker open", func() bool {
		return e.relays[0].gate.set.Cached(name).State == breaker.Open
	})
	// Held before the mail arrives, as the reconciling would hold it once
	// it knows the route: the messages then wait in the order they came,
	// the first in line the one Graph refuses.
	if err := e.relays[0].queue.HoldRoute(ctx, "app:contoso:box2@contoso.com", "breaker "+name+" open"); err != nil {
		t.Fatal(err)
	}
	refused := e.submit(t, 0, "box2@contoso.com", "r0@example.org", exchangeMessage(0, "carol@contoso.com"))
	var ids []string
	for n := 1; n <= 3; n++ {
		ids = append(ids, e.submit(t, 0, "box2@contoso.com", fmt.Sprintf("r%d@example.org", n), exchangeMessage(n, "box2@contoso.com")))
	}
	waitFor(t, 10*time.Second, "the held mail delivered after the probe", func() bool { return e.allDelivered(t, ids) })
	if m := e.get(t, refused); m.State != queue.Dead || !strings.Contains(m.Reason, "ErrorSendAsDenied") {
		t.Errorf("the refused message: %s (%q), want dead for ErrorSendAsDenied", m.State, m.Reason)
	}
	if !strings.Contains(e.logs.String(), "trial message refused on its own account; trying another") {
		t.Error("the probe did not try the refused message first")
	}
	if st := e.breakerStatus(t, name); st.State != breaker.Closed {
		t.Errorf("%s: %s (%s), want closed", name, st.State, st.Reason)
	}
	if distinct, _ := e.receivedOnce(t); distinct != len(ids) {
		t.Errorf("%d distinct messages received, want %d", distinct, len(ids))
	}
}
