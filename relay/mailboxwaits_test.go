package relay

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
)

// addRelay starts one more relay of e's fleet, under a name of its own,
// as a pod that a rollout or a crash replaced.
func (e *exchangeEnv) addRelay(t *testing.T) int {
	t.Helper()
	o := e.opts
	o.Replica = fmt.Sprintf("relay-%d", len(e.relays)+1)
	e.relays = append(e.relays, runRelay(t, o, e.log))
	return len(e.relays) - 1
}

// TestPenaltyHoldsMailboxAcrossFleet: Exchange's block of a mailbox
// (550 5.2.251 "Sender throttled") is drawn again by every send while it
// lasts. Once one relay of the fleet is refused, no relay tries the
// mailbox until the block ends: not the others, and not one started
// after the refusal.
func TestPenaltyHoldsMailboxAcrossFleet(t *testing.T) {
	e := newExchangeEnv(t, 2, nil)
	e.sim.SetFault(sim.Fault{SMTPDataRefusal: "sender_throttled"})
	from := "noreply@contoso.com"
	first := e.submit(t, 0, from, "a@example.org", exchangeMessage(1, from))
	waitFor(t, 10*time.Second, "the first message refused", func() bool { return strings.Contains(e.get(t, first).LastError, "5.2.251") })
	late := e.addRelay(t)

	var held []string
	for n := 2; n < 8; n++ {
		held = append(held, e.submit(t, n%(late+1), from, fmt.Sprintf("r%d@example.org", n), exchangeMessage(n, from)))
	}
	// Each relay polls every 50 ms and looks at once after an enqueue.
	time.Sleep(2 * time.Second)
	if n := e.sim.Counters().Clients[simClientID].SMTPRefusedByFault; n != 1 {
		t.Errorf("%d submissions refused, want only the first: the others waited", n)
	}
	e.assertHeldUnspent(t, held, "")
}

// TestGraphThrottleHoldsMailboxAcrossFleet: Graph's 429 for one mailbox
// holds that mailbox's Graph mail on every relay of the fleet, a relay
// started meanwhile included, for the Retry-After; the other mailboxes'
// mail goes on, and the held mail goes out when the wait ends.
func TestGraphThrottleHoldsMailboxAcrossFleet(t *testing.T) {
	const throttle = 6 * time.Second
	e := newExchangeEnv(t, 2, sendByGraphAs(3))
	e.sim.SetFault(sim.Fault{GraphThrottle: throttle, GraphThrottleMailbox: "box1@contoso.com"})
	first := e.submit(t, 0, "box1@contoso.com", "r@example.org", exchangeMessage(0, "box1@contoso.com"))
	waitFor(t, 5*time.Second, "box1's message throttled", func() bool { return strings.Contains(e.get(t, first).LastError, "429") })
	throttledAt := time.Now()
	late := e.addRelay(t)

	busy := []string{first}
	var others []string
	for n := 1; n <= 6; n++ {
		relay := n % (late + 1)
		busy = append(busy, e.submit(t, relay, "box1@contoso.com", fmt.Sprintf("r%d@example.org", n), exchangeMessage(n, "box1@contoso.com")))
		from := fmt.Sprintf("box%d@contoso.com", n%2+2)
		others = append(others, e.submit(t, relay, from, fmt.Sprintf("o%d@example.org", n), exchangeMessage(100+n, from)))
	}
	waitFor(t, 5*time.Second, "the other mailboxes' mail delivered", func() bool { return e.allDelivered(t, others) })
	time.Sleep(500 * time.Millisecond)
	if n := e.sim.Counters().Clients[simClientID].GraphThrottledByFault; n != 1 {
		t.Errorf("%d sends throttled, want only the first: box1's other mail waited on every relay", n)
	}
	e.assertHeldUnspent(t, busy[1:], "")

	e.sim.SetFault(sim.Fault{})
	waitFor(t, throttle+5*time.Second, "box1's mail delivered after its Retry-After", func() bool { return e.allDelivered(t, busy) })
	if took := time.Since(throttledAt); took < throttle-time.Second {
		t.Errorf("box1's mail delivered %v after its 429, within its Retry-After of %v", took, throttle)
	}
	for _, id := range busy {
		if m := e.get(t, id); m.State != queue.Delivered {
			t.Errorf("%s: %s", id, m.State)
		}
	}
}
