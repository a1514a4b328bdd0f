package relay

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"holdfast/cmd/o365sim/sim"
)

// TestDeadGraphEndpointLeasesNothing: while Graph's breaker is open (503s)
// or Graph throttles the mailbox with a Retry-After (429), a replica
// leases none of the messages of an app that sends by Graph, but for the
// one test of a half-open breaker; once Graph answers again, every
// message goes out within about one probe interval.
func TestDeadGraphEndpointLeasesNothing(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault sim.Fault // the probe interval below is 1s
	}{
		{"503", sim.Fault{GraphFail: "503"}},
		// Graph's Retry-After is the probe interval, so that the last
		// suspension ends within it.
		{"429 Retry-After", sim.Fault{GraphThrottle: time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const probe, workers = time.Second, 8
			e := newExchangeEnv(t, 1, func(o *Options) {
				for i := range o.Apps {
					o.Apps[i].Via = "graph"
				}
				o.Exchange.DeadDestinationProbe = Duration(probe)
				o.Queue.BackoffBase = Duration(time.Second)
				o.Delivery.Workers = workers
			})
			e.sim.SetFault(tc.fault)

			const n = 30
			for i := range n {
				e.submit(t, 0, "billing@contoso.com", fmt.Sprintf("r%d@example.org", i), exchangeMessage(i, "billing@contoso.com"))
			}
			const dead = 3 * time.Second
			time.Sleep(dead)
			requests := e.sim.Counters().Clients[simClientID].GraphRequests
			handedBack := strings.Count(e.logs.String(), "endpoint paused; message handed back")
			// Leased and handed back untried: at most the messages of
			// the poll that saw the breaker open, while the first
			// failures were in flight.
			if limit := 8; handedBack > limit {
				t.Errorf("%d messages leased and handed back untried in %v of a dead Graph endpoint (%d Graph requests), want at most %d",
					handedBack, dead, requests, limit)
			}
			// The workers' first sends are in flight together before
			// 3 failures open the breaker; then one test per probe
			// interval. A 429's Retry-After holds the mailbox, not the
			// breaker: when it ends, each worker may try once more.
			limit := workers + int(dead/probe) + 1
			if tc.fault.GraphThrottle > 0 {
				limit = workers * int(dead/tc.fault.GraphThrottle+1)
			}
			if requests > limit {
				t.Errorf("%d Graph requests in %v of a dead endpoint, want at most %d", requests, dead, limit)
			}

			e.sim.SetFault(sim.Fault{})
			back := time.Now()
			waitFor(t, 10*time.Second, "every message delivered", func() bool { return e.sim.ReceivedCount() >= n })
			took := time.Since(back)
			t.Logf("Graph dead for %v: %d Graph requests, %d messages handed back untried; all %d delivered %v after it returned",
				dead, requests, handedBack, n, took.Round(time.Millisecond))
			if took > probe+time.Second+500*time.Millisecond {
				t.Errorf("delivered %v after Graph returned, want within about one probe interval (%v) plus the backoff of the messages that failed before the breaker opened", took, probe)
			}
		})
	}
}

// TestGraphThrottledMailboxLeavesOthers: Graph throttles each app and
// mailbox apart (429 ApplicationThrottled, "MailboxConcurrency"). One
// busy mailbox's 429 makes that mailbox wait its Retry-After, with no
// further request for it and no attempt spent, while the other
// mailboxes' mail goes out at once.
func TestGraphThrottledMailboxLeavesOthers(t *testing.T) {
	const throttle = 8 * time.Second
	e := newExchangeEnv(t, 1, func(o *Options) {
		sendByGraphAs(4)(o)
		o.Exchange.DeadDestinationProbe = Duration(time.Second)
	})
	e.sim.SetFault(sim.Fault{GraphThrottle: throttle, GraphThrottleMailbox: "box1@contoso.com"})
	// Graph requests of their own (the expiry monitor's) are not sends.
	waitFor(t, 5*time.Second, "the expiry monitor's read of the app by Graph", func() bool {
		return strings.Contains(e.logs.String(), `msg="credential expiry checked" component=expiry credential=contoso`)
	})
	before := e.sim.Counters().Clients[simClientID].GraphRequests
	first := e.submit(t, 0, "box1@contoso.com", "r@example.org", exchangeMessage(0, "box1@contoso.com"))
	waitFor(t, 5*time.Second, "box1's message throttled", func() bool { return strings.Contains(e.get(t, first).LastError, "429") })
	throttledAt := time.Now()

	var others, busy []string
	for n := 1; n <= 6; n++ {
		from := fmt.Sprintf("box%d@contoso.com", n%3+2)
		others = append(others, e.submit(t, 0, from, fmt.Sprintf("r%d@example.org", n), exchangeMessage(n, from)))
	}
	for n := 7; n <= 9; n++ {
		busy = append(busy, e.submit(t, 0, "box1@contoso.com", fmt.Sprintf("r%d@example.org", n), exchangeMessage(n, "box1@contoso.com")))
	}
	waitFor(t, 3*time.Second, "the other mailboxes' mail delivered", func() bool { return e.allDelivered(t, others) })
	t.Logf("the other mailboxes' mail delivered %v after box1's 429", time.Since(throttledAt).Round(time.Millisecond))
	time.Sleep(time.Second)
	if n, want := e.sim.Counters().Clients[simClientID].GraphRequests-before, len(others)+1; n != want {
		t.Errorf("%d Graph requests, want %d: the others' and box1's one 429", n, want)
	}
	e.assertHeldUnspent(t, append([]string{first}, busy...), "")

	e.sim.SetFault(sim.Fault{})
	all := append([]string{first}, busy...)
	waitFor(t, throttle+3*time.Second, "box1's mail delivered after its Retry-After", func() bool { return e.allDelivered(t, all) })
	if took := time.Since(throttledAt); took < throttle-time.Second {
		t.Errorf("box1's mail delivered %v after its 429, within its Retry-After of %v", took, throttle)
	}
	if distinct, _ := e.receivedOnce(t); distinct != len(others)+len(all) {
		t.Errorf("%d distinct messages received, want %d", distinct, len(others)+len(all))
	}
}
