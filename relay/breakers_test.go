package relay

import (
	"context"
	"fmt"
	"testing"
	"time"

	"holdfast/breaker"
	"holdfast/queue"
)

// TestBreakerIncident: two relays share one Redis. The client secret
// expires mid-stream: the credential breaker opens, mail is held without
// spending attempts and Exchange sees no more AUTH; both relays keep
// accepting. Rewriting the secret file closes the breaker with no
// restart, and every message is delivered exactly once.
func TestBreakerIncident(t *testing.T) {
	e := newExchangeEnv(t, 2, func(o *Options) {
		for i := range o.Apps {
			o.Apps[i].SenderMailboxes = map[string]string{}
			for m := 1; m <= 5; m++ {
				addr := fmt.Sprintf("box%d@contoso.com", m)
				o.Apps[i].SenderMailboxes[addr] = addr
			}
		}
	})
	ctx := context.Background()
	send := func(n int) {
		from := fmt.Sprintf("box%d@contoso.com", n%5+1)
		e.submit(t, n%2, from, fmt.Sprintf("r%d@example.org", n), exchangeMessage(n, from))
	}
	for n := range 20 {
		send(n)
	}
	waitFor(t, 10*time.Second, "the first 20 delivered", func() bool { return len(e.sim.Received()) == 20 })

	// The secret expires; the cached tokens and connections go too, as
	// they would within the hour (idle connections close after 2 s).
	e.sim.ExpireSecret(simTenant, simClientID)
	time.Sleep(2500 * time.Millisecond)
	for _, r := range e.relays {
		r.exchange.creds["contoso"].Invalidate()
	}
	before := e.sim.Counters().Clients[simClientID]
	for n := 20; n < 40; n++ {
		send(n) // both relays keep answering 250
	}
	for _, r := range e.relays {
		waitFor(t, 5*time.Second, "the breaker open on both relays", func() bool {
			st, err := r.gate.set.Status(ctx, credentialBreaker("contoso"))
			return err == nil && st.State == breaker.Open
		})
	}
	waitFor(t, 10*time.Second, "the new mail held", func() bool {
		st, _ := e.f.queue.Stats(ctx)
		return st.Total.Held == 20 && st.Total.Leased == 0
	})
	time.Sleep(2 * time.Second)
	during := e.sim.Counters().Clients[simClientID]
	if got := during.TokenRequests - before.TokenRequests; got > 3 {
		t.Errorf("%d token requests while the secret was expired, want at most 3 (the breaker stops them)", got)
	}
	if during.SMTPAuthAttempts != before.SMTPAuthAttempts {
		t.Errorf("%d SMTP AUTH attempts under an open breaker", during.SMTPAuthAttempts-before.SMTPAuthAttempts)
	}
	st, _ := e.f.queue.Stats(ctx)
	for _, r := range st.Routes {
		held, _ := e.f.queue.List(ctx, r.Route, queue.Held, 0, 100)
		for _, m := range held {
			if m.Attempts != 0 {
				t.Errorf("held message %s spent %d attempts", m.ID, m.Attempts)
			}
		}
	}
	if st.Total.Dead != 0 {
		t.Errorf("%d dead letters during an auth outage", st.Total.Dead)
	}

	// Rotation: the new secret in Entra and in the file.
	const rotated = "rotated-secret~42"
	e.sim.RotateSecret(simTenant, simClientID, rotated)
	writeFile(t, e.secretFile, rotated+"\n")
	start := time.Now()
	waitFor(t, 15*time.Second, "all 40 delivered after rotation", func() bool { return len(e.sim.Received()) >= 40 })
	t.Logf("rotation to all delivered: %v", time.Since(start).Round(time.Millisecond))
	seen := map[string]int{}
	for _, r := range e.sim.Received() {
		seen[r.MessageID]++
	}
	if len(seen) != 40 {
		t.Errorf("%d distinct messages delivered, want 40", len(seen))
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s delivered %d times", id, n)
		}
	}
}
