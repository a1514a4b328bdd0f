package relay

import (
	"testing"
	"time"

	"holdfast/breaker"
	"holdfast/queue"
)

// TestOperatorHold: a credential breaker an operator holds keeps its
// mail held though the credential works and many probe intervals pass,
// while a trip is closed by the next probe; a reset releases the held
// mail at once.
func TestOperatorHold(t *testing.T) {
	e := newExchangeEnv(t, 2, func(o *Options) { o.Breakers.OpenInterval = Duration(200 * time.Millisecond) })
	set := e.relays[0].gate.set
	name := credentialBreaker("contoso")
	warm := e.submit(t, 0, "billing@contoso.com", "r@example.org", exchangeMessage(0, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the first delivery", func() bool { return e.get(t, warm).State == queue.Delivered })

	// A trip of a working credential: the next probe closes it.
	if err := set.Trip(t.Context(), name, "tripped by an operator"); err != nil {
		t.Fatal(err)
	}
	tripped := e.submit(t, 1, "billing@contoso.com", "r@example.org", exchangeMessage(1, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the tripped breaker's mail delivered after its probe", func() bool {
		return e.get(t, tripped).State == queue.Delivered
	})

	if err := set.Hold(t.Context(), name, "held by an operator"); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 3 {
		ids = append(ids, e.submit(t, i%2, "billing@contoso.com", "r@example.org", exchangeMessage(2+i, "billing@contoso.com")))
	}
	before := e.sim.ReceivedCount()
	time.Sleep(3 * time.Second) // 15 probe intervals, and a SIGHUP-like ask
	if _, err := e.relays[1].gate.set.ProbeNow(t.Context(), name); err == nil {
		t.Fatal("ProbeNow of a held breaker did not say it is held")
	}
	time.Sleep(500 * time.Millisecond)
	if n := e.sim.ReceivedCount(); n != before {
		t.Fatalf("%d messages delivered while the breaker was held", n-before)
	}
	st, err := set.Status(t.Context(), name)
	if err != nil || st.State != breaker.Open || !st.Held || !st.LastProbe.Before(time.Now().Add(-3*time.Second)) {
		t.Fatalf("held breaker: %+v %v, want open, held and not probed", st, err)
	}
	for _, id := range ids {
		if m := e.get(t, id); m.State != queue.Held {
			t.Fatalf("message %s %s while the breaker is held, want held", id, m.State)
		}
	}
	if err := set.Reset(t.Context(), name); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the held mail delivered after the reset", func() bool { return e.allDelivered(t, ids) })
}
