package relay

import (
	"sync"
	"testing"
	"time"

	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
)

// simClock is a settable clock for the simulator alone: moving it ages the
// relay's cached token in Exchange's eyes only.
type simClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *simClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *simClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// metricSum is the sum of a metric family's samples on relay i.
func (e *exchangeEnv) metricSum(t *testing.T, i int, name string, match map[string]string) float64 {
	t.Helper()
	fams, err := e.relays[i].reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	samples:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if v, ok := match[l.GetName()]; ok && v != l.GetValue() {
					continue samples
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// TestExchangeTokenExpiringSoonRetriedWithNewToken: Exchange refuses the
// relay's cached token with 501 5.5.127 because it expires soon; the relay
// fetches a new token and authenticates again at once, so the message is
// delivered on its first attempt and the breaker never counts a failure.
func TestExchangeTokenExpiringSoonRetriedWithNewToken(t *testing.T) {
	clk := &simClock{t: time.Now()}
	e := newExchangeEnvSim(t, 1, func(c *sim.Config) {
		c.Now = clk.Now
		c.Seed = 14
		c.ExpiringTokenMargin = 35 * time.Minute
	}, nil)

	first := e.submit(t, 0, "noreply@contoso.com", "a@example.org", exchangeMessage(1, "noreply@contoso.com"))
	waitFor(t, 10*time.Second, "the first message", func() bool { return e.sim.ReceivedCount() == 1 })
	if c := e.sim.Counters().Clients[simClientID]; c.SMTPAuthFailures != 0 {
		t.Fatalf("%d AUTH failures with a new token", c.SMTPAuthFailures)
	}

	// Every lifetime the simulator draws is 60 to 90 minutes: 56 minutes
	// on, the cached token has 4 to 34 left for Exchange, within its
	// 35-minute margin, while a new one has at least 60 and the relay's
	// clock says the cached one is new.
	clk.Add(56 * time.Minute)
	second := e.submit(t, 0, "billing@contoso.com", "b@example.org", exchangeMessage(2, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the second message", func() bool { return e.sim.ReceivedCount() == 2 })

	c := e.sim.Counters().Clients[simClientID]
	if c.SMTPAuthFailures != 1 {
		t.Errorf("%d AUTH failures, want 1 (the stale token, once)", c.SMTPAuthFailures)
	}
	if n := c.TokenRequests - c.GraphTokenRequests; n != 2 {
		t.Errorf("%d token requests, want 2 (the first, then one new token)", n)
	}
	for _, id := range []string{first, second} {
		m := e.get(t, id)
		if m.State != queue.Delivered || m.Attempts != 1 {
			t.Errorf("%s: state %s after %d attempts, want delivered on the first", id, m.State, m.Attempts)
		}
	}
	if n := e.metricSum(t, 0, "holdfast_breaker_transitions_total", nil); n != 0 {
		t.Errorf("%v breaker transitions, want none", n)
	}
	if n := e.metricSum(t, 0, "holdfast_deliveries_total", map[string]string{"outcome": "retried"}); n != 0 {
		t.Errorf("%v retried deliveries, want none", n)
	}
	if n := e.metricSum(t, 0, "holdfast_upstream_auth_total", map[string]string{"result": "error"}); n != 1 {
		t.Errorf("upstream_auth_total{result=error} = %v, want 1", n)
	}
}
