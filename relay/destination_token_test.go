package relay

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"holdfast/cmd/o365sim/sim"
)

// TestTokenEndpointDownTenSeconds: the token endpoint answers 503 for 10 s
// while mail keeps coming and the cached token is gone. The replica asks
// it at most 3 times in those 10 s (its dead-destination breaker opens
// and its test is due a probe interval later), no auth breaker moves, and
// every message is delivered within one probe interval of the endpoint's
// return.
func TestTokenEndpointDownTenSeconds(t *testing.T) {
	const (
		probe  = 10 * time.Second
		outage = 10 * time.Second
	)
	e := newExchangeEnv(t, 1, func(o *Options) {
		o.Exchange.DeadDestinationProbe = Duration(probe)
		o.Queue.BackoffBase = Duration(200 * time.Millisecond)
		o.Queue.BackoffMax = Duration(time.Second)
		o.Delivery.Workers = 8
	})
	from := "billing@contoso.com"
	e.submit(t, 0, from, "warm@example.org", exchangeMessage(0, from))
	waitFor(t, 10*time.Second, "the first message delivered", func() bool { return e.sim.ReceivedCount() == 1 })
	// The token expires and the authenticated connections close (they
	// do after 2 s idle): the next message needs a new token.
	time.Sleep(2500 * time.Millisecond)
	for _, c := range e.relays[0].exchange.creds {
		c.Invalidate()
	}
	before := e.sim.Counters().Clients[simClientID]

	e.sim.SetFault(sim.Fault{TokenUnavailable: true})
	start := time.Now()
	// Mail keeps coming through the outage, the first a quarter second
	// after it starts, so that the breaker's test falls after it ends.
	var wg sync.WaitGroup
	sent := 1 // read after wg.Wait
	wg.Go(func() {
		for i := 1; time.Since(start) < outage-250*time.Millisecond; i++ {
			time.Sleep(250 * time.Millisecond)
			if _, err := e.trySubmit(0, from, fmt.Sprintf("r%d@example.org", i), exchangeMessage(i, from)); err != nil {
				t.Errorf("submission %d during the outage: %v", i, err)
				return
			}
			sent++
		}
	})
	wg.Wait()
	time.Sleep(time.Until(start.Add(outage)))
	during := e.sim.Counters().Clients[simClientID]
	e.sim.SetFault(sim.Fault{})
	back := time.Now()

	requests := during.TokenRequests - before.TokenRequests
	if requests > 3 {
		t.Errorf("%d token requests in %v of a 503 token endpoint, want at most 3", requests, outage)
	}
	if requests == 0 || e.sim.ReceivedCount() != 1 {
		t.Errorf("%d token requests and %d messages delivered during the outage: the mail did not need the token endpoint",
			requests, e.sim.ReceivedCount()-1)
	}
	waitFor(t, probe+5*time.Second, "every message delivered", func() bool { return e.sim.ReceivedCount() >= sent })
	took := time.Since(back)
	t.Logf("token endpoint at 503 for %v: %d token requests; all %d messages delivered %v after it returned",
		outage, requests, sent-1, took.Round(time.Millisecond))
	if took > probe {
		t.Errorf("delivered %v after the token endpoint returned, want within one probe interval (%v)", took, probe)
	}
	for _, p := range e.breakerProblems(t) {
		t.Error(p)
	}
	for _, p := range e.routeProblems(t) {
		t.Error(p)
	}
	if v := e.metricSum(t, 0, "holdfast_breaker_transitions_total", nil); v != 0 {
		t.Errorf("%v auth breaker transitions", v)
	}
	if strings.Contains(e.logs.String(), `msg="breaker open"`) {
		t.Error("an auth breaker opening was logged")
	}
	e.receivedOnce(t)
}
