package auth

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// secretsEntra answers a token for the secrets in good, AADSTS7000222 for
// those in expired and AADSTS7000215 for any other, and records the
// secrets it was sent.
type secretsEntra struct {
	mu            sync.Mutex
	good, expired map[string]bool
	sent          []string
}

func (s *secretsEntra) handle(t testing.TB) func(w http.ResponseWriter, _ *http.Request, form url.Values) {
	return func(w http.ResponseWriter, _ *http.Request, form url.Values) {
		sec := form.Get("client_secret")
		s.mu.Lock()
		s.sent = append(s.sent, sec)
		good, expired := s.good[sec], s.expired[sec]
		s.mu.Unlock()
		switch {
		case good:
			writeToken(w, "token-for-"+sec, 3600, "")
		case expired:
			writeFixture(t, w, http.StatusUnauthorized, "aadsts7000222")
		default:
			writeFixture(t, w, http.StatusUnauthorized, "aadsts7000215")
		}
	}
}

func (s *secretsEntra) set(good, expired []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.good, s.expired = map[string]bool{}, map[string]bool{}
	for _, g := range good {
		s.good[g] = true
	}
	for _, e := range expired {
		s.expired[e] = true
	}
	s.sent = nil
}

func (s *secretsEntra) tried() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.sent...)
}

// TestSecretFiles: with two secrets the one with the latest configured
// expiry is sent first; when Entra says it expired, the other is tried
// in the same Token call and stays in use; when every secret is refused,
// the last refusal is returned; a directory of secret files counts its
// files, not its hidden entries.
func TestSecretFiles(t *testing.T) {
	dir := t.TempDir()
	oldFile := writeFile(t, dir, "old", "Old-secret\n")
	newFile := writeFile(t, dir, "new", "New-secret\n")
	se := &secretsEntra{}
	se.set([]string{"Old-secret", "New-secret"}, nil)
	f := newFakeEntra(t, se.handle(t))
	now := time.Now()
	var switched []string
	c := secretCredential(t, f, "", func(o *CredentialOptions) {
		o.ClientSecretFiles = []string{oldFile, newFile}
		o.SecretExpires = map[string]time.Time{oldFile: now.Add(24 * time.Hour), newFile: now.Add(180 * 24 * time.Hour)}
		o.OnSecretInUse = func(name string) { switched = append(switched, name) }
	})
	ctx := context.Background()
	if _, err := c.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if got := se.tried(); len(got) != 1 || got[0] != "New-secret" {
		t.Fatalf("sent %v, want the later-expiring New-secret first", got)
	}
	infos := c.Secrets()
	if len(infos) != 2 || infos[0].Hint != "New" || !infos[0].InUse || infos[1].Hint != "Old" || infos[1].InUse ||
		!infos[1].ExpiresAt.Equal(now.Add(24*time.Hour)) {
		t.Fatalf("Secrets() = %+v", infos)
	}
	if hint, _ := c.InUse(); hint != "New" {
		t.Fatalf("InUse hint %q, want New", hint)
	}

	// The new one expires: the old one is tried at once, and kept.
	se.set([]string{"Old-secret"}, []string{"New-secret"})
	c.Invalidate()
	if _, err := c.Token(ctx); err != nil {
		t.Fatalf("Token with one secret expired: %v", err)
	}
	if got := se.tried(); len(got) != 2 || got[0] != "New-secret" || got[1] != "Old-secret" {
		t.Fatalf("sent %v, want New-secret then Old-secret", got)
	}
	oldFP := c.Fingerprint()
	c.Invalidate()
	if _, err := c.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if got := se.tried(); len(got) != 3 || got[2] != "Old-secret" {
		t.Fatalf("sent %v, want Old-secret, the one in use, tried first", got)
	}
	if hint, _ := c.InUse(); hint != "Old" || c.Fingerprint() != oldFP {
		t.Fatalf("in use %q (%s), want Old", hint, c.Fingerprint())
	}
	if len(switched) != 1 || switched[0] != "crm" {
		t.Fatalf("OnSecretInUse calls %v, want one for crm", switched)
	}

	// Both refused: the refusal of the one in use (Old), with its
	// fingerprint, which the breaker knows as the working one.
	se.set(nil, []string{"Old-secret"})
	c.Invalidate()
	_, err := c.Token(ctx)
	var te *TokenError
	if !errors.As(err, &te) {
		t.Fatalf("every secret refused: %v, want a TokenError", err)
	}
	if te.AADSTS != AADSTSSecretExpired || te.Fingerprint != oldFP || len(se.tried()) != 2 {
		t.Fatalf("every secret refused: %v (fingerprint %s, want %s) after %v", err, te.Fingerprint, oldFP, se.tried())
	}

	// A directory: its hidden entries (a Kubernetes volume's ..data) do not count.
	sdir := filepath.Join(dir, "secrets")
	if err := os.MkdirAll(filepath.Join(sdir, "..data"), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, sdir, "a", "Aaa-secret")
	writeFile(t, sdir, "b", "Bbb-secret")
	writeFile(t, sdir, ".hidden", "Hid-secret")
	se.set([]string{"Bbb-secret"}, nil)
	d := secretCredential(t, f, "", func(o *CredentialOptions) { o.ClientSecretFiles = []string{sdir} })
	if _, err := d.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if got := se.tried(); len(got) != 2 || got[0] != "Aaa-secret" || got[1] != "Bbb-secret" {
		t.Fatalf("directory: sent %v, want Aaa-secret then Bbb-secret (name order, no hidden file)", got)
	}
	if len(d.Secrets()) != 2 {
		t.Fatalf("directory: %+v", d.Secrets())
	}
	// Known dates first, the latest first; then the others in the order given.
	undated := writeFile(t, dir, "undated", "Und-secret")
	early := writeFile(t, dir, "early", "Ear-secret")
	late := writeFile(t, dir, "late", "Lat-secret")
	se.set(nil, nil)
	o := secretCredential(t, f, "", func(o *CredentialOptions) {
		o.ClientSecretFiles = []string{undated, early, late}
		o.SecretExpires = map[string]time.Time{early: now.Add(time.Hour), late: now.Add(48 * time.Hour)}
	})
	if _, err := o.Token(ctx); err == nil {
		t.Fatal("no secret is good: no error")
	}
	if got := se.tried(); len(got) != 3 || got[0] != "Lat-secret" || got[1] != "Ear-secret" || got[2] != "Und-secret" {
		t.Fatalf("order %v, want Lat, Ear, then the undated Und", got)
	}
	for _, bad := range [][]string{{filepath.Join(dir, "missing")}, {t.TempDir()}} {
		if _, err := NewCredential(CredentialOptions{Tenant: testTenant, ClientID: testClientID, ClientSecretFiles: bad}); err == nil {
			t.Errorf("client_secret_files %v: no error", bad)
		}
	}
	if _, err := NewCredential(CredentialOptions{Tenant: testTenant, ClientID: testClientID,
		ClientSecretFile: oldFile, ClientSecretFiles: []string{newFile}}); err == nil {
		t.Error("client_secret_file with client_secret_files: no error")
	}
}

// TestSecretDatesFromGraph: Graph's end dates order the secrets before
// the configured ones: the secret Graph gives the latest date is tried
// first from the next token request on, and stays first after a reload
// of unchanged files; a hint two secrets share is ignored.
func TestSecretDatesFromGraph(t *testing.T) {
	dir := t.TempDir()
	a := writeFile(t, dir, "a", "Aaa-secret")
	b := writeFile(t, dir, "b", "Bbb-secret")
	se := &secretsEntra{}
	se.set([]string{"Aaa-secret", "Bbb-secret"}, nil)
	f := newFakeEntra(t, se.handle(t))
	now := time.Now()
	c := secretCredential(t, f, "", func(o *CredentialOptions) {
		o.ClientSecretFiles = []string{a, b}
		o.SecretExpires = map[string]time.Time{a: now.Add(30 * 24 * time.Hour)} // b undated
	})
	ctx := context.Background()
	if _, err := c.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if got := se.tried(); len(got) != 1 || got[0] != "Aaa-secret" {
		t.Fatalf("before Graph: sent %v, want Aaa-secret (the dated one)", got)
	}
	if c.SetSecretDates(map[string]time.Time{"Aaa": now.Add(30 * 24 * time.Hour)}) {
		t.Fatal("no later date, yet the secret tried first changed")
	}
	if !c.SetSecretDates(map[string]time.Time{"Aaa": now.Add(30 * 24 * time.Hour), "Bbb": now.Add(200 * 24 * time.Hour)}) {
		t.Fatal("Graph's later date for Bbb did not make it first")
	}
	se.set([]string{"Aaa-secret", "Bbb-secret"}, nil)
	c.Invalidate()
	if _, err := c.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if got := se.tried(); len(got) != 1 || got[0] != "Bbb-secret" {
		t.Fatalf("after Graph: sent %v, want Bbb-secret", got)
	}
	if hint, _ := c.InUse(); hint != "Bbb" {
		t.Fatalf("in use %q, want Bbb", hint)
	}
	// A reload of changed files keeps Graph's dates.
	replaceFile(t, a, "Aaa-secret\n")
	if changed, err := c.Reload(); err != nil || !changed {
		t.Fatalf("reload: %v, %v", changed, err)
	}
	if hint, _ := c.InUse(); hint != "Bbb" {
		t.Fatalf("after a reload: in use %q, want Bbb", hint)
	}
	// Entra refuses the later one (not propagated yet, say): the other is
	// used, and Graph's dates read again do not make the refused one
	// first again at once.
	se.set([]string{"Aaa-secret"}, nil)
	c.Invalidate()
	if _, err := c.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if hint, _ := c.InUse(); hint != "Aaa" {
		t.Fatalf("after Bbb was refused: in use %q, want Aaa", hint)
	}
	if c.SetSecretDates(map[string]time.Time{"Aaa": now.Add(30 * 24 * time.Hour), "Bbb": now.Add(200 * 24 * time.Hour)}) {
		t.Fatal("a secret refused just now was preferred again")
	}
	// Two secrets with one hint: Graph's dates cannot tell them apart.
	x := writeFile(t, dir, "x", "Same-1")
	y := writeFile(t, dir, "y", "Same-2")
	d := secretCredential(t, f, "", func(o *CredentialOptions) { o.ClientSecretFiles = []string{x, y} })
	if d.SetSecretDates(map[string]time.Time{"Sam": now.Add(time.Hour)}) {
		t.Fatal("a shared hint's date was used")
	}
}

// TestPreferredDuringFetch: a secret preferred while a token request with
// the previous one is under way is the one the next Token call sends, and
// the request under way, answered late, does not make the previous one
// the secret in use again. A rotation checks the new secret this way.
func TestPreferredDuringFetch(t *testing.T) {
	dir := t.TempDir()
	a := writeFile(t, dir, "a", "Aaa-secret")
	b := writeFile(t, dir, "b", "Bbb-secret")
	se := &secretsEntra{}
	se.set([]string{"Aaa-secret", "Bbb-secret"}, nil)
	f, arrived, released := holdSecret(t, se, "Aaa-secret")
	now := time.Now()
	c := secretCredential(t, f, "", func(o *CredentialOptions) {
		o.ClientSecretFiles = []string{a, b}
		o.SecretExpires = map[string]time.Time{a: now.Add(30 * 24 * time.Hour)}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer released()

	wg.Go(func() { _, _ = c.Token(ctx) }) // sends Aaa-secret, answered late
	<-arrived
	if !c.SetSecretDates(map[string]time.Time{"Aaa": now.Add(30 * 24 * time.Hour), "Bbb": now.Add(200 * 24 * time.Hour)}) {
		t.Fatal("Graph's later date for Bbb did not make it first")
	}
	c.Invalidate()
	type result struct {
		access string
		err    error
	}
	second := make(chan result, 1)
	wg.Go(func() {
		tok, err := c.Token(ctx)
		r := result{err: err}
		if tok != nil {
			r.access = tok.AccessToken
		}
		second <- r
	})
	var got result
	select {
	case got = <-second:
	case <-time.After(5 * time.Second):
		// It waits for the request under way: let that one answer.
		released()
		got = <-second
	}
	released()
	wg.Wait()
	if got.err != nil || got.access != "token-for-Bbb-secret" {
		t.Errorf("Token after Bbb was preferred: %q, %v; want a token for Bbb-secret", got.access, got.err)
	}
	if hint, _ := c.InUse(); hint != "Bbb" {
		t.Errorf("in use %q after the late answer for Aaa, want Bbb", hint)
	}
}

// holdSecret is a fake token endpoint answering as se does, that holds
// each request sending secret until released is called; arrived is closed
// when the first one comes. released also runs at the test's cleanup,
// before the server closes, so that a failed test does not hang.
func holdSecret(t *testing.T, se *secretsEntra, secret string) (f *fakeEntra, arrived chan struct{}, released func()) {
	arrived, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	f = newFakeEntra(t, func(w http.ResponseWriter, r *http.Request, form url.Values) {
		if form.Get("client_secret") == secret {
			once.Do(func() { close(arrived) })
			<-release
		}
		se.handle(t)(w, r, form)
	})
	released = sync.OnceFunc(func() { close(release) })
	t.Cleanup(released)
	return f, arrived, released
}

// TestExpiredWhilePropagating: Entra at times answers AADSTS7000222 for a
// new secret it has not propagated yet. A secret whose file was written
// within the propagation window is not marked expired for it (no
// ExpiredAt, no OnSecretExpired); one written before is, at once.
func TestExpiredWhilePropagating(t *testing.T) {
	dir := t.TempDir()
	file := writeFile(t, dir, "secret", "New-secret\n")
	se := &secretsEntra{}
	se.set(nil, []string{"New-secret"})
	f := newFakeEntra(t, se.handle(t))
	var told int
	c := secretCredential(t, f, "", func(o *CredentialOptions) {
		o.ClientSecretFile = file
		o.PropagationWindow = time.Minute
		o.OnSecretExpired = func(string) { told++ }
	})
	ctx := context.Background()
	_, err := c.Token(ctx)
	var te *TokenError
	if !errors.As(err, &te) || !te.SecretExpired() {
		t.Fatalf("Token: %v, want AADSTS7000222", err)
	}
	if infos := c.Secrets(); len(infos) != 1 || !infos[0].ExpiredAt.IsZero() || told != 0 {
		t.Fatalf("a secret written just now, refused as expired: %+v, %d calls of OnSecretExpired; want it not marked", infos, told)
	}

	// The same file, written two minutes ago: past the window.
	old := time.Now().Add(-2 * time.Minute)
	if err := os.Chtimes(file, old, old); err != nil {
		t.Fatal(err)
	}
	c = secretCredential(t, f, "", func(o *CredentialOptions) {
		o.ClientSecretFile = file
		o.PropagationWindow = time.Minute
		o.OnSecretExpired = func(string) { told++ }
	})
	if _, err := c.Token(ctx); err == nil {
		t.Fatal("Token: no error")
	}
	if infos := c.Secrets(); len(infos) != 1 || infos[0].ExpiredAt.IsZero() || told != 1 {
		t.Fatalf("a secret written before the window, refused as expired: %+v, %d calls of OnSecretExpired; want it marked once", infos, told)
	}
}

// TestWaitForFetchInFlight: a caller that stopped waiting leaves its
// token request running; Wait returns only once it has ended and called
// OnIssued, or when its own ctx ends first.
func TestWaitForFetchInFlight(t *testing.T) {
	dir := t.TempDir()
	file := writeFile(t, dir, "secret", "Good-secret\n")
	se := &secretsEntra{}
	se.set([]string{"Good-secret"}, nil)
	f, arrived, release := holdSecret(t, se, "Good-secret")
	var issued atomic.Int64
	c := secretCredential(t, f, file, func(o *CredentialOptions) {
		o.OnIssued = func(string, string) { issued.Add(1) }
	})
	if err := c.Wait(t.Context()); err != nil {
		t.Fatalf("Wait with nothing in flight: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	got := make(chan error, 1)
	go func() {
		_, err := c.Token(ctx)
		got <- err
	}()
	<-arrived
	cancel()
	if err := <-got; !errors.Is(err, context.Canceled) {
		t.Fatalf("Token after its ctx ended: %v", err)
	}
	short, stop := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer stop()
	if err := c.Wait(short); err == nil {
		t.Fatal("Wait returned while the request was still in flight")
	}
	release()
	if err := c.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	if issued.Load() != 1 {
		t.Fatalf("Wait returned before the request called OnIssued (%d calls)", issued.Load())
	}
}
