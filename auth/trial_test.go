package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"holdfast/queue/redistest"
)

// trialEntra answers token requests with a token, or with AADSTS7000215
// while refuse is set, and holds each request until released while hold
// is set.
type trialEntra struct {
	*fakeEntra
	refuse, hold atomic.Bool
	arrived      chan struct{} // one value per request that arrives
	mu           sync.Mutex
	release      chan struct{}
}

func newTrialEntra(t *testing.T) *trialEntra {
	e := &trialEntra{arrived: make(chan struct{}, 16), release: make(chan struct{})}
	e.fakeEntra = newFakeEntra(t, func(w http.ResponseWriter, r *http.Request, form url.Values) {
		e.arrived <- struct{}{}
		if e.hold.Load() {
			e.mu.Lock()
			release := e.release
			e.mu.Unlock()
			<-release
		}
		if e.refuse.Load() {
			writeFixture(t, w, http.StatusUnauthorized, "aadsts7000215")
			return
		}
		writeToken(w, "token-"+form.Get("scope"), 3600, "")
	})
	// Run before the server closes: a test that failed holding requests
	// lets them answer, so that it ends rather than hangs.
	t.Cleanup(func() { e.hold.Store(false); e.releaseAll() })
	return e
}

// releaseAll lets the held requests answer, and holds the next ones.
func (e *trialEntra) releaseAll() {
	e.mu.Lock()
	close(e.release)
	e.release = make(chan struct{})
	e.mu.Unlock()
}

// arrivals counts the requests that arrive within d.
func (e *trialEntra) arrivals(d time.Duration) int {
	n := 0
	deadline := time.After(d)
	for {
		select {
		case <-e.arrived:
			n++
		case <-deadline:
			return n
		}
	}
}

// arrival waits up to d for a request to arrive.
func (e *trialEntra) arrival(d time.Duration) bool {
	select {
	case <-e.arrived:
		return true
	case <-time.After(d):
		return false
	}
}

// waitTrial waits up to 10 s for n requests to wait for c's trial.
func waitTrial(t *testing.T, c *Credential, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		waiting := 0
		if c.trial != nil {
			waiting = c.trial.waiting
		}
		c.mu.Unlock()
		if waiting >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d requests wait for the trial after 10 s, want %d", waiting, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestTrialSharesRefusal: a credential whose secret has not got a token
// yet sends one request at a time; when Entra refuses the client, a
// request for another scope made meanwhile returns that refusal without
// sending the secret again. Once the secret got a token, requests for two
// scopes run side by side; after Entra refuses it, one at a time again.
func TestTrialSharesRefusal(t *testing.T) {
	e := newTrialEntra(t)
	c := secretCredential(t, e.fakeEntra, writeFile(t, t.TempDir(), "secret", "deleted-secret"), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// both asks for an Exchange token and then, while that request is
	// held at Entra, a Graph token. It returns how many more requests
	// arrived within 300 ms (always when side by side is true, waiting up
	// to 5 s for one), then releases them and returns the errors.
	both := func(sideBySide bool) (more int, exchange, graph error) {
		t.Helper()
		e.hold.Store(true)
		defer e.hold.Store(false)
		c.Invalidate()
		var wg sync.WaitGroup
		defer wg.Wait()
		wg.Go(func() { _, exchange = c.Token(ctx) })
		if !e.arrival(5 * time.Second) {
			t.Fatal("the Exchange token request did not arrive")
		}
		wg.Go(func() { _, graph = c.redeem(ctx, c.log, []string{GraphScope}, nil) })
		if sideBySide && e.arrival(5*time.Second) {
			more++
		}
		if !sideBySide {
			waitTrial(t, c, 1)
		}
		more += e.arrivals(300 * time.Millisecond)
		e.releaseAll()
		wg.Wait()
		return more, exchange, graph
	}
	refused := func(what string, err error) {
		t.Helper()
		var te *TokenError
		if !errors.As(err, &te) || !te.SecretUnknown() {
			t.Errorf("%s: %v, want the AADSTS7000215 refusal", what, err)
		}
	}

	// At start, with a secret Entra does not know.
	e.refuse.Store(true)
	more, exchange, graph := both(false)
	if more != 0 {
		t.Errorf("%d more requests arrived while the first was under way, want none", more)
	}
	refused("Exchange token", exchange)
	refused("Graph token", graph)
	if got := e.requests(); got != 1 {
		t.Errorf("%d token requests for two scopes with a refused secret, want 1", got)
	}

	// A secret that got a token: side by side.
	e.refuse.Store(false)
	if _, err := c.Token(ctx); err != nil {
		t.Fatal(err)
	}
	<-e.arrived
	more, exchange, graph = both(true)
	if more != 1 {
		t.Errorf("%d more requests while the first was under way with a secret that got a token, want 1 (side by side)", more)
	}
	if exchange != nil || graph != nil {
		t.Fatalf("with a secret that works: %v, %v", exchange, graph)
	}

	// Entra refuses it now: one at a time again, the refusal shared.
	e.refuse.Store(true)
	c.Invalidate()
	if _, err := c.Token(ctx); err == nil {
		t.Fatal("a token with a refused secret")
	}
	<-e.arrived
	before := e.requests()
	more, exchange, graph = both(false)
	if more != 0 {
		t.Errorf("%d more requests arrived while the first after the refusal was under way, want none", more)
	}
	refused("Exchange token after the refusal", exchange)
	refused("Graph token after the refusal", graph)
	if got := e.requests() - before; got != 1 {
		t.Errorf("%d token requests for two scopes after the refusal, want 1", got)
	}
}

// TestTrialDelegated: 50 delegated mailboxes refresh their tokens at once
// with the credential's secret, as a relay's deliveries do at start. With
// a secret Entra does not know, Entra sees one request and every mailbox
// gets its refusal. When the first refresh fails for another reason
// (503), or proves the secret, the others run side by side.
func TestTrialDelegated(t *testing.T) {
	const mailboxes = 50
	rdb := redistest.Start(t).Client(t)
	var refuse, unavailable atomic.Bool
	var inFlight, most atomic.Int64
	// hold, when not nil, holds the first request until closed.
	var holdMu sync.Mutex
	var hold chan struct{}
	f := newFakeEntra(t, func(w http.ResponseWriter, r *http.Request, form url.Values) {
		holdMu.Lock()
		h := hold
		hold = nil
		holdMu.Unlock()
		if h != nil {
			<-h
		}
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		time.Sleep(20 * time.Millisecond)
		if unavailable.Load() {
			writeFixture(t, w, http.StatusServiceUnavailable, "unavailable503")
			return
		}
		if refuse.Load() {
			writeFixture(t, w, http.StatusUnauthorized, "aadsts7000215")
			return
		}
		writeToken(w, "at-"+form.Get("refresh_token"), 3599, form.Get("refresh_token")+"-next")
	})
	g := newGrantStore(t, rdb, testGrantKey)
	var boxes []string
	for i := range mailboxes {
		box := fmt.Sprintf("box%d@contoso.com", i)
		if err := g.Put(t.Context(), box, "crm", "rt-"+box); err != nil {
			t.Fatal(err)
		}
		boxes = append(boxes, box)
	}
	// refreshAll refreshes every mailbox's token at once with a new
	// credential, as a relay starting, and returns the errors. The first
	// request is held at Entra until all the others wait for it.
	refreshAll := func(secret string) []error {
		cred := secretCredential(t, f, writeFile(t, t.TempDir(), "secret", secret), nil)
		release := make(chan struct{})
		holdMu.Lock()
		hold = release
		holdMu.Unlock()
		released := sync.OnceFunc(func() { close(release) })
		t.Cleanup(released) // a failed wait below must not leave it held
		defer released()
		errs := make([]error, len(boxes))
		var wg sync.WaitGroup
		for i, box := range boxes {
			src := g.TokenSource(cred, box)
			wg.Go(func() { _, errs[i] = src.Token(t.Context()) })
		}
		waitTrial(t, cred, len(boxes)-1)
		released()
		wg.Wait()
		return errs
	}

	refuse.Store(true)
	for i, err := range refreshAll("deleted-secret") {
		var te *TokenError
		if !errors.As(err, &te) || !te.SecretUnknown() {
			t.Errorf("%s: %v, want the AADSTS7000215 refusal", boxes[i], err)
		}
	}
	if got := f.requests(); got != 1 {
		t.Errorf("%d token requests for %d mailboxes with a secret Entra does not know, want 1", got, mailboxes)
	}

	// The endpoint failing for a reason of its own: the refreshes that
	// waited for the first go side by side, not one after another.
	refuse.Store(false)
	unavailable.Store(true)
	most.Store(0)
	before := f.requests()
	for i, err := range refreshAll("good-secret") {
		if err == nil {
			t.Errorf("%s: a token from an endpoint answering 503", boxes[i])
		}
	}
	if got := f.requests() - before; got != mailboxes {
		t.Errorf("%d token requests for %d mailboxes with the endpoint failing, want one each", got, mailboxes)
	}
	if most.Load() < 2 {
		t.Errorf("at most %d refresh at a time after the first failed with 503, want the others side by side", most.Load())
	}

	unavailable.Store(false)
	most.Store(0)
	before = f.requests()
	for i, err := range refreshAll("good-secret") {
		if err != nil {
			t.Errorf("%s: %v", boxes[i], err)
		}
	}
	if got := f.requests() - before; got != mailboxes {
		t.Errorf("%d token requests for %d mailboxes with a good secret, want one each", got, mailboxes)
	}
	if most.Load() < 2 {
		t.Errorf("at most %d refresh at a time with a secret that got a token, want them side by side", most.Load())
	}
	t.Logf("refreshes at a time with a good secret: at most %d", most.Load())
}

// TestTrialPreferredSecret: with two secret files, Graph's later date
// makes the second secret the one tried first. It has never got a token,
// and Entra does not know it yet: requests for two scopes made at once
// send it once, not once each, before falling back to the first.
func TestTrialPreferredSecret(t *testing.T) {
	dir := t.TempDir()
	a := writeFile(t, dir, "a", "Aaa-secret")
	b := writeFile(t, dir, "b", "Bbb-secret")
	se := &secretsEntra{}
	se.set([]string{"Aaa-secret"}, nil)
	f, arrived, released := holdSecret(t, se, "Bbb-secret")
	now := time.Now()
	c := secretCredential(t, f, "", func(o *CredentialOptions) { o.ClientSecretFiles = []string{a, b} })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if !c.SetSecretDates(map[string]time.Time{"Aaa": now.Add(10 * 24 * time.Hour), "Bbb": now.Add(200 * 24 * time.Hour)}) {
		t.Fatal("Graph's later date for Bbb did not make it first")
	}
	c.Invalidate()
	var wg sync.WaitGroup
	var exchange, graph error
	wg.Go(func() { _, exchange = c.Token(ctx) })
	<-arrived
	wg.Go(func() { _, graph = c.redeem(ctx, c.log, []string{GraphScope}, nil) })
	waitTrial(t, c, 1)
	released()
	wg.Wait()
	if exchange != nil || graph != nil {
		t.Fatalf("tokens: %v, %v; want both from Aaa-secret after Bbb-secret was refused", exchange, graph)
	}
	sentB := 0
	for _, s := range se.tried() {
		if s == "Bbb-secret" {
			sentB++
		}
	}
	if sentB != 1 {
		t.Errorf("Bbb-secret sent %d times for two scopes asked at once, want 1 (sent: %v)", sentB, se.tried())
	}
}
