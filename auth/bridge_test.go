package auth

import (
	"errors"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// bridgeEntra issues tokens for the secrets it accepts now and refuses
// any other with AADSTS7000215; it records the secrets sent.
type bridgeEntra struct {
	mu     sync.Mutex
	accept map[string]bool
	sent   []string
}

func (b *bridgeEntra) set(accept ...string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.accept = map[string]bool{}
	for _, s := range accept {
		b.accept[s] = true
	}
}

// take returns the secrets sent since the last call.
func (b *bridgeEntra) take() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := b.sent
	b.sent = nil
	return out
}

func (b *bridgeEntra) handle(t testing.TB) func(http.ResponseWriter, *http.Request, url.Values) {
	return func(w http.ResponseWriter, r *http.Request, form url.Values) {
		s := form.Get("client_secret")
		b.mu.Lock()
		b.sent = append(b.sent, s)
		ok := b.accept[s]
		b.mu.Unlock()
		if ok {
			writeToken(w, "at-for-"+s[:6], 3599, "")
			return
		}
		writeFixture(t, w, http.StatusUnauthorized, "aadsts7000215")
	}
}

func sentAre(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: sent %d requests, want %d (%v)", what, len(got), len(want), want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: request %d sent the secret %.6s…, want %.6s…", what, i+1, got[i], want[i])
		}
	}
}

// TestBridgeWhilePropagating: the new secret is written into the file
// while the old one still works and Entra has not propagated the new one.
// The token comes from the old secret, sent after the new one, with
// neither OnIssued nor OnRefused told of the old one; once Entra takes the
// new secret the old one is not sent again. Past the propagation window,
// or once Entra refused the old secret, it is no longer tried.
func TestBridgeWhilePropagating(t *testing.T) {
	be := &bridgeEntra{}
	be.set(secretV1)
	f := newFakeEntra(t, be.handle(t))
	path := writeFile(t, t.TempDir(), "secret", secretV1+"\n")
	clock := newFakeClock()
	var issued, refused []string
	c := secretCredential(t, f, path, func(o *CredentialOptions) {
		o.PropagationWindow = time.Minute
		o.Now = clock.Now
		o.OnIssued = func(_, fp string) { issued = append(issued, fp) }
		o.OnRefused = func(_ string, te *TokenError) { refused = append(refused, te.Fingerprint) }
	})
	ctx := t.Context()
	if _, err := c.Token(ctx); err != nil {
		t.Fatal(err)
	}
	oldFP := c.Fingerprint()
	be.take()
	issued = nil

	be.set(secretV1) // the new secret is not propagated yet
	replaceFile(t, path, secretV2+"\n")
	if ch, err := c.Reload(); err != nil || !ch {
		t.Fatalf("Reload = %v, %v", ch, err)
	}
	newFP := c.Fingerprint()
	tok, err := c.Token(ctx)
	if err != nil || tok.AccessToken != "at-for-"+secretV1[:6] {
		t.Fatalf("Token while the new secret propagates: %v, %v; want the old secret's token", tok, err)
	}
	sentAre(t, "while propagating", be.take(), secretV2, secretV1)
	if len(issued) != 0 || len(refused) != 1 || refused[0] != newFP {
		t.Fatalf("OnIssued %v, OnRefused %v; want none, and the new secret's %s (the old one's is %s)", issued, refused, newFP, oldFP)
	}

	be.set(secretV1, secretV2) // propagated
	c.Invalidate()
	if tok, err := c.Token(ctx); err != nil || tok.AccessToken != "at-for-"+secretV2[:6] {
		t.Fatalf("Token once propagated: %v, %v", tok, err)
	}
	be.set(secretV1)
	c.Invalidate()
	if _, err := c.Token(ctx); err == nil {
		t.Fatal("Token: the old secret was sent again after the new one got a token")
	}
	sentAre(t, "after the new one worked", be.take(), secretV2, secretV2)

	// A third secret: the bridge is V2, once it got a token again, for a
	// minute.
	be.set(secretV2)
	c.Invalidate()
	if _, err := c.Token(ctx); err != nil {
		t.Fatal(err)
	}
	replaceFile(t, path, "third-secret-value-CCCCCCCCCCCC\n")
	if _, err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Token(ctx); err != nil {
		t.Fatalf("Token with the bridge: %v", err)
	}
	be.take()
	clock.Add(time.Minute)
	c.Invalidate()
	if _, err := c.Token(ctx); err == nil {
		t.Fatal("Token: the bridge was used past the propagation window")
	}
	sentAre(t, "past the window", be.take(), "third-secret-value-CCCCCCCCCCCC")
}

// TestNoBridgeAfterRefusal: the old secret expired or was deleted (the
// breaker's outage) before the new one was written: it is not sent
// after the new one, so a rotation after an outage sends one request per
// token as before; nor is a bridge refused once sent again.
func TestNoBridgeAfterRefusal(t *testing.T) {
	be := &bridgeEntra{}
	be.set(secretV1)
	f := newFakeEntra(t, be.handle(t))
	c, path := servedV1(t, f)
	ctx := t.Context()
	be.set() // the old secret deleted
	c.Invalidate()
	if _, err := c.Token(ctx); err == nil {
		t.Fatal("Token with a deleted secret: no error")
	}
	be.take()
	replaceFile(t, path, secretV2+"\n")
	if _, err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Token(ctx); err == nil {
		t.Fatal("Token: no error")
	}
	sentAre(t, "after the outage", be.take(), secretV2)

	// A bridge Entra refuses is dropped.
	be.set(secretV2)
	if _, err := c.Token(ctx); err != nil {
		t.Fatal(err)
	}
	be.set()
	replaceFile(t, path, "third-secret-value-CCCCCCCCCCCC\n")
	if _, err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	be.take()
	for range 2 {
		c.Invalidate()
		if _, err := c.Token(ctx); err == nil {
			t.Fatal("Token: no error")
		}
	}
	sentAre(t, "a refused bridge", be.take(), "third-secret-value-CCCCCCCCCCCC", secretV2, "third-secret-value-CCCCCCCCCCCC")
}

// TestBridgeAfterFetchInFlight: a token request with the old secret,
// under way as the file changes, gets its token after the reload; the
// new files still have the old secret as their bridge.
func TestBridgeAfterFetchInFlight(t *testing.T) {
	be, c, err := reloadDuringFetch(t, nil)
	ctx := t.Context()
	if err != nil {
		t.Fatalf("the request under way: %v", err)
	}
	be.take()
	if tok, err := c.Token(ctx); err != nil || tok.AccessToken != "at-for-"+secretV1[:6] {
		t.Fatalf("Token after the reload: %v, %v; want the old secret's token through the bridge", tok, err)
	}
	sentAre(t, "after the reload", be.take(), secretV2, secretV1)
}

// TestBridgedTokenEndsWithWindow: a token got with the previous secret is
// served from the cache until the propagation window ends, not for its
// whole lifetime: then the files' secret is sent again, and a wrong one
// is refused with no bridge left, so that the breaker learns of it.
func TestBridgedTokenEndsWithWindow(t *testing.T) {
	be := &bridgeEntra{}
	be.set(secretV1)
	f := newFakeEntra(t, be.handle(t))
	path := writeFile(t, t.TempDir(), "secret", secretV1+"\n")
	clock := newFakeClock()
	c := secretCredential(t, f, path, func(o *CredentialOptions) {
		o.PropagationWindow = 5 * time.Minute
		o.Now = clock.Now
	})
	ctx := t.Context()
	if _, err := c.Token(ctx); err != nil {
		t.Fatal(err)
	}
	replaceFile(t, path, "wrong-secret-value-DDDDDDDDDDDD\n")
	if _, err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	be.take()
	if tok, err := c.Token(ctx); err != nil || tok.AccessToken != "at-for-"+secretV1[:6] {
		t.Fatalf("Token within the window: %v, %v; want the old secret's token", tok, err)
	}
	sentAre(t, "within the window", be.take(), "wrong-secret-value-DDDDDDDDDDDD", secretV1)
	clock.Add(4 * time.Minute)
	if _, err := c.Token(ctx); err != nil {
		t.Fatalf("Token within the window, cached: %v", err)
	}
	sentAre(t, "cached within the window", be.take())
	clock.Add(time.Minute)
	if tok, err := c.Token(ctx); err == nil {
		t.Fatalf("Token at the window's end: %s, want the wrong secret's refusal", tok.AccessToken)
	}
	sentAre(t, "at the window's end", be.take(), "wrong-secret-value-DDDDDDDDDDDD")
}

// TestBridgeKeptThroughUnavailable: Entra refuses the new secret and
// answers the bridge's request with a 503, which says nothing of the old
// secret: the bridge is kept, and the next request gets its token. The
// 503 is what the request returns, not the new secret's refusal.
func TestBridgeKeptThroughUnavailable(t *testing.T) {
	be := &bridgeEntra{}
	be.set(secretV1)
	var unavailable atomic.Bool
	handle := be.handle(t)
	f := newFakeEntra(t, func(w http.ResponseWriter, r *http.Request, form url.Values) {
		if form.Get("client_secret") == secretV1 && unavailable.Swap(false) {
			be.mu.Lock()
			be.sent = append(be.sent, secretV1)
			be.mu.Unlock()
			writeFixture(t, w, http.StatusServiceUnavailable, "unavailable503")
			return
		}
		handle(w, r, form)
	})
	c, path := servedV1(t, f)
	ctx := t.Context()
	replaceFile(t, path, secretV2+"\n")
	if _, err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	be.take()
	unavailable.Store(true)
	_, err := c.Token(ctx)
	var te *TokenError
	if !errors.As(err, &te) || !te.Unavailable() {
		t.Fatalf("Token with the bridge unavailable: %v; want the 503", err)
	}
	if tok, err := c.Token(ctx); err != nil || tok.AccessToken != "at-for-"+secretV1[:6] {
		t.Fatalf("Token after the 503: %v, %v; want the old secret's token", tok, err)
	}
	sentAre(t, "through a 503", be.take(), secretV2, secretV1, secretV2, secretV1)
}

// TestNoBridgeAfterRefusalInFlight: Entra refuses the old secret (deleted)
// in answer to a request under way as the file changes: the new files get
// no bridge to it, and the next request sends the new secret alone.
func TestNoBridgeAfterRefusalInFlight(t *testing.T) {
	// The old secret deleted; the new one not propagated yet.
	be, c, err := reloadDuringFetch(t, func(be *bridgeEntra) { be.set() })
	ctx := t.Context()
	if err == nil {
		t.Fatal("the request under way with the deleted secret: no error")
	}
	if err := c.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	be.take()
	if _, err := c.Token(ctx); err == nil {
		t.Fatal("Token after the reload: no error")
	}
	sentAre(t, "after the reload", be.take(), secretV2)
}

// reloadDuringFetch gets a token with secretV1 from a bridgeEntra, then
// holds a token request sending it at Entra while the secret file
// changes to secretV2 and the credential reloads; it returns the error of
// that request once Entra answered it. before, when not nil, runs ahead
// of the held request.
func reloadDuringFetch(t *testing.T, before func(*bridgeEntra)) (*bridgeEntra, *Credential, error) {
	t.Helper()
	be := &bridgeEntra{}
	be.set(secretV1)
	arrived, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	var armed atomic.Bool
	handle := be.handle(t)
	f := newFakeEntra(t, func(w http.ResponseWriter, r *http.Request, form url.Values) {
		if form.Get("client_secret") == secretV1 && armed.Load() {
			once.Do(func() {
				close(arrived)
				<-release
			})
		}
		handle(w, r, form)
	})
	c, path := servedV1(t, f)
	ctx := t.Context()
	if before != nil {
		before(be)
	}
	c.Invalidate()
	armed.Store(true)
	done := make(chan error, 1)
	go func() {
		_, err := c.Token(ctx)
		done <- err
	}()
	<-arrived
	replaceFile(t, path, secretV2+"\n")
	if _, err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	close(release)
	return be, c, <-done
}

// servedV1 is a credential of a secret file holding secretV1, from f,
// with a propagation window of a minute, that got its first token: the
// secret to bridge from once the file changes. It returns the file too.
func servedV1(t *testing.T, f *fakeEntra) (*Credential, string) {
	t.Helper()
	path := writeFile(t, t.TempDir(), "secret", secretV1+"\n")
	c := secretCredential(t, f, path, func(o *CredentialOptions) { o.PropagationWindow = time.Minute })
	if _, err := c.Token(t.Context()); err != nil {
		t.Fatal(err)
	}
	return c, path
}
