package sim

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

const (
	tenantID  = "0f9e8d7c-6b5a-4f3e-9d2c-1b0a9f8e7d6c"
	appID     = "11111111-2222-4333-8444-555555555555"
	appSecret = "Abc8Q~secret-value"
	otherApp  = "99999999-2222-4333-8444-555555555555"
	alice     = "alice@contoso.com"
	bob       = "bob@contoso.com"
	carol     = "carol@contoso.com"
)

// clock is a settable clock for the simulator.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fixture is a started simulator with one tenant: app may send as alice
// and carol (whose SMTP AUTH is off), otherApp as every mailbox.
type fixture struct {
	*Sim
	clock *clock
	http  *http.Client
}

func newFixture(t *testing.T, edit ...func(*Config)) *fixture {
	t.Helper()
	clk := &clock{t: time.Now().Truncate(time.Second)}
	cfg := Config{
		Now: clk.Now,
		Tenants: []Tenant{{
			ID: tenantID,
			Apps: []App{
				{ClientID: appID, Secrets: []Secret{{Value: appSecret, DisplayName: "holdfast"}}, SendAsMailboxes: []string{alice, carol}},
				{ClientID: otherApp, Secrets: []Secret{{Value: "other-secret"}}, SendAsMailboxes: []string{"*"}},
			},
			Mailboxes: []Mailbox{{Address: alice}, {Address: bob}, {Address: carol, SMTPAuthDisabled: true}},
		}},
	}
	for _, e := range edit {
		e(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &fixture{
		Sim:   s,
		clock: clk,
		http: &http.Client{
			Timeout:   10 * time.Second,
			Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.RootCAs()}},
		},
	}
}

func (f *fixture) ctx() context.Context {
	return context.WithValue(context.Background(), oauth2.HTTPClient, f.http)
}

// ccConfig is a client-credentials configuration as Holdfast builds it.
func (f *fixture) ccConfig(clientID, secret, scope string) *clientcredentials.Config {
	return &clientcredentials.Config{
		ClientID:     clientID,
		ClientSecret: secret,
		TokenURL:     f.TokenURL(tenantID),
		Scopes:       []string{scope},
		AuthStyle:    oauth2.AuthStyleInParams,
	}
}

// appToken fetches an app-only token with the app's secret.
func (f *fixture) appToken(t *testing.T, clientID, secret, scope string) string {
	t.Helper()
	tok, err := f.ccConfig(clientID, secret, scope).Token(f.ctx())
	if err != nil {
		t.Fatalf("token: %v", err)
	}
	return tok.AccessToken
}

// postToken posts a raw token request and decodes the JSON answer.
func (f *fixture) postToken(t *testing.T, tenant string, form url.Values) (*http.Response, map[string]any) {
	t.Helper()
	resp, err := f.http.PostForm(f.TokenURL(tenant), form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if len(body) > 0 {
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatalf("token answer %d is not JSON: %s", resp.StatusCode, body)
		}
	}
	return resp, m
}

// retrieveError returns err as an *oauth2.RetrieveError, or fails.
func retrieveError(t *testing.T, err error) *oauth2.RetrieveError {
	t.Helper()
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		t.Fatalf("error %v is not a RetrieveError", err)
	}
	return re
}

// claimsOf decodes a JWT's claims without checking it.
func claimsOf(t *testing.T, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", tok)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// xoauth2 is a SASL XOAUTH2 client. With noIR it waits for the server's
// 334 before sending its response. An unexpected challenge is answered
// with an empty response, never (nil, nil).
type xoauth2 struct {
	user, token string
	noIR        bool
	sent        bool
}

func (x *xoauth2) resp() []byte {
	return []byte("user=" + x.user + "\x01auth=Bearer " + x.token + "\x01\x01")
}

func (x *xoauth2) Start() (string, []byte, error) {
	if x.noIR {
		return "XOAUTH2", nil, nil
	}
	x.sent = true
	return "XOAUTH2", x.resp(), nil
}

func (x *xoauth2) Next(challenge []byte) ([]byte, error) {
	if !x.sent {
		x.sent = true
		return x.resp(), nil
	}
	return []byte{}, nil
}

// dialTLS connects to the simulator's SMTP and runs STARTTLS.
func (f *fixture) dialTLS(t *testing.T) *smtp.Client {
	t.Helper()
	c, err := smtp.DialStartTLS(f.SMTPAddr(), &tls.Config{RootCAs: f.RootCAs()})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// wantSMTPError checks that err is an SMTP reply with this code, enhanced
// code and text.
func wantSMTPError(t *testing.T, err error, code int, enh smtp.EnhancedCode, msg string) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("got %v, want SMTP error %d %v %s", err, code, enh, msg)
	}
	if se.Code != code || se.EnhancedCode != enh || se.Message != msg {
		t.Fatalf("got %d %v %q, want %d %v %q", se.Code, se.EnhancedCode, se.Message, code, enh, msg)
	}
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestNewRejectsNonLoopback(t *testing.T) {
	if _, err := New(Config{SMTPAddr: "0.0.0.0:2587"}); err == nil {
		t.Fatal("New accepted a non-loopback listen address")
	}
}

func newFormRequest(u string, form url.Values) (*http.Request, error) {
	r, err := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return r, nil
}
