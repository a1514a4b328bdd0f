package auth

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	secretV1 = "Qx8Q~v1.secret-value-AAAAAAAAAAAAAAAAAAAA"
	secretV2 = "Zr4Q~v2.secret-value-BBBBBBBBBBBBBBBBBBBB"
)

// secretHandler issues a token named after the secret it was sent, and
// answers 401 AADSTS7000215 for any other secret.
func secretHandler(t testing.TB, lifetime int) func(http.ResponseWriter, *http.Request, url.Values) {
	return func(w http.ResponseWriter, r *http.Request, form url.Values) {
		switch form.Get("client_secret") {
		case secretV1:
			writeToken(w, "at-for-v1", lifetime, "")
		case secretV2:
			writeToken(w, "at-for-v2", lifetime, "")
		default:
			writeFixture(t, w, http.StatusUnauthorized, "aadsts7000215")
		}
	}
}

func TestTokenClientCredentialsRequest(t *testing.T) {
	f := newFakeEntra(t, secretHandler(t, 3599))
	c := secretCredential(t, f, writeFile(t, t.TempDir(), "secret", secretV1+"\n"), nil)

	tok, err := c.Token(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken != "at-for-v1" || tok.TokenType != "Bearer" {
		t.Fatalf("token = %q %q", tok.TokenType, tok.AccessToken)
	}
	form := f.lastForm()
	want := url.Values{
		"grant_type":    {"client_credentials"},
		"client_id":     {testClientID},
		"client_secret": {secretV1},
		"scope":         {DefaultScope},
	}
	if form.Encode() != want.Encode() {
		t.Errorf("form = %v, want %v", form, want)
	}
	if f.auth[0] != "" {
		t.Errorf("Authorization header sent: the secret must go in the form only")
	}
	if c.TokenURL() != f.tokenURL() {
		t.Errorf("TokenURL = %s, want %s", c.TokenURL(), f.tokenURL())
	}
}

func TestTokenConcurrentCallersShareOneRequest(t *testing.T) {
	release := make(chan struct{})
	f := newFakeEntra(t, func(w http.ResponseWriter, r *http.Request, form url.Values) {
		<-release
		writeToken(w, "at-shared", 3599, "")
	})
	c := secretCredential(t, f, writeFile(t, t.TempDir(), "secret", secretV1), nil)

	const callers = 64
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for range callers {
		wg.Go(func() {
			tok, err := c.Token(t.Context())
			if err == nil && tok.AccessToken != "at-shared" {
				err = errors.New("wrong token " + tok.AccessToken)
			}
			errs <- err
		})
	}
	time.Sleep(50 * time.Millisecond) // let the callers pile up on the fetch
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for range 10 {
		if _, err := c.Token(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.requests(); n != 1 {
		t.Fatalf("%d token requests for one token lifetime, want 1", n)
	}
}

func TestTokenRefreshesRefreshBeforeExpiry(t *testing.T) {
	clock := newFakeClock()
	f := newFakeEntra(t, secretHandler(t, 3600))
	c := secretCredential(t, f, writeFile(t, t.TempDir(), "secret", secretV1), func(o *CredentialOptions) {
		o.Now = clock.Now
	})
	ctx := t.Context()
	tok, err := c.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := clock.Now().Add(time.Hour); !tok.Expiry.Equal(want) {
		t.Fatalf("expiry = %v, want %v (from expires_in and the injected clock)", tok.Expiry, want)
	}
	clock.Add(49*time.Minute + 59*time.Second)
	if _, err := c.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if n := f.requests(); n != 1 {
		t.Fatalf("%d requests at 10m01s before expiry, want 1 (cached)", n)
	}
	clock.Add(time.Second)
	if _, err := c.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if n := f.requests(); n != 2 {
		t.Fatalf("%d requests at 10m before expiry, want 2 (refreshed)", n)
	}
}

func TestTokenShortLifetimeRefreshesHalfWay(t *testing.T) {
	clock := newFakeClock()
	f := newFakeEntra(t, secretHandler(t, 240)) // shorter than 2 × RefreshBefore
	c := secretCredential(t, f, writeFile(t, t.TempDir(), "secret", secretV1), func(o *CredentialOptions) {
		o.Now = clock.Now
	})
	for range 3 {
		if _, err := c.Token(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	clock.Add(119 * time.Second)
	if _, err := c.Token(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := f.requests(); n != 1 {
		t.Fatalf("%d requests before half the lifetime, want 1", n)
	}
	clock.Add(time.Second)
	if _, err := c.Token(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := f.requests(); n != 2 {
		t.Fatalf("%d requests at half the lifetime, want 2", n)
	}
}

func TestInvalidateForcesNewRequest(t *testing.T) {
	f := newFakeEntra(t, secretHandler(t, 3599))
	c := secretCredential(t, f, writeFile(t, t.TempDir(), "secret", secretV1), nil)
	for range 3 {
		if _, err := c.Token(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	c.Invalidate()
	if _, err := c.Token(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := f.requests(); n != 2 {
		t.Fatalf("%d requests, want 2", n)
	}
}

func TestErrorsAreNotCached(t *testing.T) {
	f := newFakeEntra(t, func(w http.ResponseWriter, r *http.Request, form url.Values) {
		writeFixture(t, w, http.StatusUnauthorized, "aadsts7000222")
	})
	c := secretCredential(t, f, writeFile(t, t.TempDir(), "secret", secretV1), nil)
	for i := 1; i <= 3; i++ {
		_, err := c.Token(t.Context())
		var te *TokenError
		if !errors.As(err, &te) {
			t.Fatalf("error %T %v, want *TokenError", err, err)
		}
		if !te.SecretExpired() {
			t.Fatalf("SecretExpired() = false for %v", te)
		}
		if n := f.requests(); n != i {
			t.Fatalf("after %d calls: %d requests, want %d (one each, no auth-style retry)", i, n, i)
		}
	}
}

func TestReloadPicksUpRotatedSecret(t *testing.T) {
	f := newFakeEntra(t, secretHandler(t, 3599))
	path := writeFile(t, t.TempDir(), "secret", secretV1)
	var changed []string
	c := secretCredential(t, f, path, func(o *CredentialOptions) {
		o.OnChange = func(name string) { changed = append(changed, name) }
	})
	if tok, err := c.Token(t.Context()); err != nil || tok.AccessToken != "at-for-v1" {
		t.Fatalf("token %v, %v", tok, err)
	}
	if ch, err := c.Reload(); err != nil || ch {
		t.Fatalf("Reload of unchanged file = %v, %v; want false, nil", ch, err)
	}
	replaceFile(t, path, secretV2+"\n")
	ch, err := c.Reload()
	if err != nil || !ch {
		t.Fatalf("Reload = %v, %v; want true, nil", ch, err)
	}
	if len(changed) != 1 || changed[0] != "crm" {
		t.Fatalf("OnChange calls = %q, want [crm]", changed)
	}
	tok, err := c.Token(t.Context())
	if err != nil || tok.AccessToken != "at-for-v2" {
		t.Fatalf("token after reload %v, %v; want at-for-v2", tok, err)
	}
	if got := f.lastForm().Get("client_secret"); got != secretV2 {
		t.Fatal("the request after reload did not use the new secret")
	}

	// A broken file keeps the loaded secret.
	replaceFile(t, path, "  \n")
	if _, err := c.Reload(); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("Reload of empty file: %v; want an error naming %s", err, path)
	}
	c.Invalidate()
	if tok, err := c.Token(t.Context()); err != nil || tok.AccessToken != "at-for-v2" {
		t.Fatalf("token after failed reload %v, %v", tok, err)
	}
	if len(changed) != 1 {
		t.Fatalf("OnChange called for a failed reload")
	}
}

func TestWatchPicksUpRotationWithinInterval(t *testing.T) {
	f := newFakeEntra(t, secretHandler(t, 3599))
	path := writeFile(t, t.TempDir(), "secret", secretV1)
	changed := make(chan string, 4)
	c := secretCredential(t, f, path, func(o *CredentialOptions) {
		o.ReloadInterval = 50 * time.Millisecond
		o.OnChange = func(name string) { changed <- name }
	})
	if _, err := c.Token(t.Context()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { c.Watch(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	// Same size as the old secret: detection is by content.
	replaceFile(t, path, strings.Replace(secretV1, "v1", "v3", 1))
	select {
	case <-changed:
	case <-time.After(10 * 50 * time.Millisecond):
		t.Fatal("Watch did not see the rotation within 10 intervals")
	}
	replaceFile(t, path, secretV2)
	select {
	case name := <-changed:
		if name != "crm" {
			t.Fatalf("OnChange(%q)", name)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Watch did not see the second rotation")
	}
	tok, err := c.Token(t.Context())
	if err != nil || tok.AccessToken != "at-for-v2" {
		t.Fatalf("token after rotation %v, %v", tok, err)
	}
}

func TestTokenWaitRespectsCallerContext(t *testing.T) {
	release := make(chan struct{})
	f := newFakeEntra(t, func(w http.ResponseWriter, r *http.Request, form url.Values) {
		<-release
		writeToken(w, "at-late", 3599, "")
	})
	c := secretCredential(t, f, writeFile(t, t.TempDir(), "secret", secretV1), nil)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Millisecond)
	defer cancel()
	if _, err := c.Token(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	// The shared fetch was not cancelled with the caller: it completes and
	// serves the next caller without a second request.
	close(release)
	tok, err := c.Token(t.Context())
	if err != nil || tok.AccessToken != "at-late" {
		t.Fatalf("token %v, %v", tok, err)
	}
	if n := f.requests(); n != 1 {
		t.Fatalf("%d requests, want 1", n)
	}
}

func TestTransportErrorIsWrappedNotTokenError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c, err := NewCredential(CredentialOptions{
		Tenant:           testTenant,
		ClientID:         testClientID,
		Authority:        "https://" + addr,
		ClientSecretFile: writeFile(t, t.TempDir(), "secret", secretV1),
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Token(t.Context())
	var te *TokenError
	if err == nil || errors.As(err, &te) {
		t.Fatalf("err = %v, want a wrapped transport error", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) {
		t.Fatalf("err = %v does not wrap the *net.OpError", err)
	}
	if strings.Contains(err.Error(), secretV1) {
		t.Fatal("error contains the secret")
	}
}

func TestNewCredentialErrors(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, dir, "secret", secretV1)
	empty := writeFile(t, dir, "empty", "\n\n")
	missing := dir + "/missing"
	base := func() CredentialOptions {
		return CredentialOptions{Tenant: testTenant, ClientID: testClientID, ClientSecretFile: good}
	}
	tests := []struct {
		name string
		mod  func(*CredentialOptions)
		want string
	}{
		{"missing tenant", func(o *CredentialOptions) { o.Tenant = "" }, "tenant is required"},
		{"bad tenant", func(o *CredentialOptions) { o.Tenant = "a/b" }, "tenant"},
		{"missing client id", func(o *CredentialOptions) { o.ClientID = "" }, "client_id is required"},
		{"no secret or cert", func(o *CredentialOptions) { o.ClientSecretFile = "" }, "one of client_secret_file and cert_file"},
		{"secret and cert", func(o *CredentialOptions) { o.CertFile = good }, "mutually exclusive"},
		{"missing file", func(o *CredentialOptions) { o.ClientSecretFile = missing }, missing + " does not exist"},
		{"empty file", func(o *CredentialOptions) { o.ClientSecretFile = empty }, empty + " is empty"},
		{"bad authority", func(o *CredentialOptions) { o.Authority = "login.example" }, "authority"},
		{"cert not PEM", func(o *CredentialOptions) { o.ClientSecretFile, o.CertFile = "", good }, good + " holds no PEM CERTIFICATE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := base()
			tt.mod(&o)
			_, err := NewCredential(o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
	c, err := NewCredential(base())
	if err != nil {
		t.Fatal(err)
	}
	if c.TokenURL() != "https://login.microsoftonline.com/"+testTenant+"/oauth2/v2.0/token" {
		t.Errorf("default token URL = %s", c.TokenURL())
	}
	if _, ok := c.Expiry(); ok {
		t.Error("Expiry known for a client secret")
	}
}
