package relay

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"holdfast/cmd/o365sim/sim"
)

// TestDeadGraphEndpointLeasesNothing: while Graph's breaker is open (503s)
// or Graph suspended the relay with a Retry-After (429), a replica leases
// none of the messages of an app that sends by Graph, but for the one test
// of a half-open breaker; once Graph answers again, every message goes out
// within about one probe interval.
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
			// interval. A Retry-After suspends the endpoint, not the
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
