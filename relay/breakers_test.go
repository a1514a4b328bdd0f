package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"holdfast/auth"
	"holdfast/breaker"
	"holdfast/queue"
)

// TestBreakerIncident: three relays share one Redis. The client secret
// expires mid-stream: the credential breaker opens, mail is held without
// spending attempts and Exchange sees no more AUTH; every relay keeps
// accepting. Rewriting the secret file closes the breaker with no
// restart, and every message is delivered exactly once.
func TestBreakerIncident(t *testing.T) {
	var hookMu sync.Mutex
	// What a webhook receiver sees: plain JSON.
	type transition struct {
		Type   string `json:"type"` // credential.expiring; none for a transition
		Level  string `json:"level"`
		ID     string `json:"id"`
		Name   string `json:"breaker"`
		To     string `json:"to"`
		Reason string `json:"reason"`
	}
	var hooks []transition
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var tr transition
		json.NewDecoder(r.Body).Decode(&tr)
		hookMu.Lock()
		hooks = append(hooks, tr)
		hookMu.Unlock()
	}))
	defer hook.Close()
	e := newExchangeEnv(t, 3, func(o *Options) {
		o.Breakers.WebhookURL = hook.URL
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
		e.submit(t, n%3, from, fmt.Sprintf("r%d@example.org", n), exchangeMessage(n, from))
	}
	for n := range 20 {
		send(n)
	}
	waitFor(t, 10*time.Second, "the first 20 delivered", func() bool { return e.sim.ReceivedCount() == 20 })

	// The secret expires; the cached tokens and connections go too, as
	// they would within the hour (idle connections close after 2 s).
	e.sim.ExpireSecret(simTenant, simClientID)
	time.Sleep(2500 * time.Millisecond)
	for _, r := range e.relays {
		r.exchange.creds["contoso"].Invalidate()
	}
	for n := 20; n < 40; n++ {
		send(n) // every relay keeps answering 250
	}
	for _, r := range e.relays {
		waitFor(t, 5*time.Second, "the breaker open on every relay", func() bool {
			st, err := r.gate.set.Status(ctx, credentialBreaker("contoso"))
			return err == nil && st.State == breaker.Open
		})
	}
	waitFor(t, 10*time.Second, "the new mail held", func() bool {
		st, _ := e.f.queue.Stats(ctx)
		return st.Total.Held == 20 && st.Total.Leased == 0
	})
	// From now until the rotation, nothing may reach Entra or Exchange
	// but a probe, and none is due within the 30 s open interval.
	before := e.sim.Counters().Clients[simClientID]
	time.Sleep(2 * time.Second)
	during := e.sim.Counters().Clients[simClientID]
	if got := during.TokenRequests - before.TokenRequests; got != 0 {
		t.Errorf("%d token requests under an open breaker", got)
	}
	if got := during.SMTPAuthAttempts - before.SMTPAuthAttempts; got != 0 {
		t.Errorf("%d SMTP AUTH attempts under an open breaker", got)
	}
	if during.TokenErrors > 3 {
		t.Errorf("%d failed token requests before the breaker opened, want at most 3", during.TokenErrors)
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
	waitFor(t, 15*time.Second, "all 40 delivered after rotation", func() bool { return e.sim.ReceivedCount() >= 40 })
	t.Logf("rotation to all delivered: %v", time.Since(start).Round(time.Millisecond))
	if n, _ := e.receivedOnce(t); n != 40 {
		t.Errorf("%d distinct messages delivered, want 40", n)
	}
	// The fleet posts each transition once, from the relay whose script
	// made it: open, then closed, each with its own event id.
	waitFor(t, 5*time.Second, "the webhook calls", func() bool {
		hookMu.Lock()
		defer hookMu.Unlock()
		return len(hooks) >= 2
	})
	time.Sleep(time.Second) // room for a copy to show
	hookMu.Lock()
	defer hookMu.Unlock()
	opened, closed, expired := 0, 0, 0
	ids := map[string]bool{}
	for _, h := range hooks {
		if h.ID == "" || ids[h.ID] {
			t.Errorf("webhook event id %q missing or repeated", h.ID)
		}
		ids[h.ID] = true
		if h.Type == "credential.expiring" {
			// Entra said the secret expired: one notice for the fleet.
			if h.Level == auth.LevelExpired {
				expired++
			}
			continue
		}
		if h.Name != credentialBreaker("contoso") {
			t.Errorf("webhook for %q", h.Name)
		}
		switch h.To {
		case "open":
			opened++
			if !strings.Contains(h.Reason, "AADSTS7000222") {
				t.Errorf("open without the reason: %+v", h)
			}
		case "closed":
			closed++
		}
	}
	if opened != 1 || closed != 1 || expired != 1 {
		t.Errorf("webhook saw %d opens, %d closes and %d expired notices from 3 relays, want exactly one of each", opened, closed, expired)
	}
}

// TestProbeNotRunKeepsInterval: a probe that stops before asking
// Microsoft anything, because Redis does not answer, is no failure of the
// credential. The breaker's open interval is not doubled (up to 5 min of
// held mail after a moment without Redis), and the probe is tried again
// within seconds.
func TestProbeNotRunKeepsInterval(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	ctx := context.Background()
	e.submit(t, 0, "billing@contoso.com", "a@example.org", exchangeMessage(1, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the first message delivered", func() bool { return e.sim.ReceivedCount() == 1 })
	r := e.relays[0]
	name := credentialBreaker("contoso")
	if err := r.gate.set.Trip(ctx, name, "operator test"); err != nil {
		t.Fatal(err)
	}
	tripped, err := r.gate.set.Status(ctx, name)
	if err != nil || tripped.State != breaker.Open {
		t.Fatalf("after the trip: %+v %v", tripped, err)
	}
	// The list of routes becomes unreadable: the probe cannot find the
	// routes it would test.
	rdb := e.f.redis.Client(t)
	if err := rdb.Rename(ctx, "hf:routes", "hf:routes.saved").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, "hf:routes", "not a set", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := r.gate.probeNow(ctx, name); err != nil {
		t.Fatal(err)
	}
	var st breaker.Status
	waitFor(t, 10*time.Second, "the probe run", func() bool {
		st, err = r.gate.set.Status(ctx, name)
		return err == nil && !st.LastProbe.IsZero()
	})
	if st.State != breaker.Open || st.Interval != tripped.Interval {
		t.Errorf("after a probe that could not run: %s, interval %v; want open, interval %v as before", st.State, st.Interval, tripped.Interval)
	}
	if err := rdb.Del(ctx, "hf:routes").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Rename(ctx, "hf:routes.saved", "hf:routes").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "the breaker closed by the probe tried again", func() bool {
		st, err = r.gate.set.Status(ctx, name)
		return err == nil && st.State == breaker.Closed
	})
}

// TestMailboxProbesAskedAgain: after a credential's breaker closed, the
// open mailbox breakers are probed at once; a request Redis did not take
// is asked again, not dropped until the mailboxes' open interval ends.
func TestMailboxProbesAskedAgain(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	ctx := context.Background()
	r := e.relays[0]
	name := mailboxBreaker("billing@contoso.com")
	if err := r.gate.set.Trip(ctx, name, "operator test"); err != nil {
		t.Fatal(err)
	}
	id := e.submit(t, 0, "billing@contoso.com", "a@example.org", exchangeMessage(1, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the message held", func() bool { return e.get(t, id).State == queue.Held })
	list, err := r.gate.set.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A gate of its own, so that the relay's probe loop does not take
	// the request first.
	g := &gate{set: r.gate.set, log: discardLogger(), mailboxesDue: true}
	failed, cancel := context.WithCancel(ctx)
	cancel()
	g.probeMailboxesNow(failed, list)
	if len(g.redos) != 1 {
		t.Fatal("a request Redis did not take was dropped")
	}
	g.redo(ctx) // as the probe loop does each second
	if len(g.redos) != 0 {
		t.Error("the request is still due after Redis took it")
	}
	// The relay's probe loop runs the probe; the interval is 30 s.
	waitFor(t, 10*time.Second, "the held message delivered by the mailbox's probe", func() bool {
		return e.get(t, id).State == queue.Delivered
	})
}
