package auth

import (
	"bytes"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"holdfast/queue/redistest"
)

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestLogsHoldNoSecrets drives every path that logs, at debug level, and
// checks that no secret, assertion, access token or refresh token appears.
func TestLogsHoldNoSecrets(t *testing.T) {
	var buf syncBuffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))

	var mu sync.Mutex
	var secrets []string // everything sent or issued that must stay out of logs
	remember := func(s ...string) {
		mu.Lock()
		secrets = append(secrets, s...)
		mu.Unlock()
	}
	remember(secretV1, secretV2, rtInitial)
	n := 0
	f := newFakeEntra(t, func(w http.ResponseWriter, r *http.Request, form url.Values) {
		mu.Lock()
		n++
		i := n
		mu.Unlock()
		if a := form.Get("client_assertion"); a != "" {
			remember(a)
		}
		switch {
		case form.Get("client_secret") == secretV2:
			writeFixture(t, w, http.StatusUnauthorized, "aadsts7000222")
		case form.Get("refresh_token") == "1.AQ8Ae1x9-expired":
			writeFixture(t, w, http.StatusBadRequest, "aadsts700082")
		default:
			at := "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.access-" + string(rune('a'+i))
			rt := "1.AQ8Ae1x9-rotated-" + string(rune('a'+i))
			remember(at, rt)
			if form.Get("grant_type") == "refresh_token" {
				writeToken(w, at, 3599, rt)
			} else {
				writeToken(w, at, 3599, "")
			}
		}
	})
	ctx := t.Context()
	dir := t.TempDir()

	// Client secret: success, rotation to an expired secret, failure.
	secretFile := writeFile(t, dir, "secret", secretV1)
	cred := secretCredential(t, f, secretFile, func(o *CredentialOptions) { o.Logger = log })
	if _, err := cred.Token(ctx); err != nil {
		t.Fatal(err)
	}
	replaceFile(t, secretFile, secretV2)
	if _, err := cred.Reload(); err != nil {
		t.Fatal(err)
	}
	var te *TokenError
	if _, err := cred.Token(ctx); !errors.As(err, &te) {
		t.Fatalf("err = %v", err)
	}
	replaceFile(t, secretFile, secretV1)
	if _, err := cred.Reload(); err != nil {
		t.Fatal(err)
	}
	replaceFile(t, secretFile, "")
	if _, err := cred.Reload(); err == nil {
		t.Fatal("empty secret file reloaded")
	}
	replaceFile(t, secretFile, secretV1)

	// Certificate.
	certFile := writeFile(t, dir, "cert.pem", certPEM(testCert(t, testKey(t, 0), time.Now().Add(time.Hour))))
	keyFile := writeFile(t, dir, "key.pem", pkcs8PEM(t, testKey(t, 0)))
	certCred, err := NewCredential(CredentialOptions{
		Name: "crm-cert", Tenant: testTenant, ClientID: testClientID, Authority: f.srv.URL,
		CertFile: certFile, KeyFile: keyFile, HTTPClient: f.srv.Client(), Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := certCred.Token(ctx); err != nil {
		t.Fatal(err)
	}

	// Delegated: rotation, then an expired grant.
	g, err := NewGrantStore(redistest.Start(t).Client(t), testGrantKey, WithGrantLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Put(ctx, mailboxA, "crm", rtInitial); err != nil {
		t.Fatal(err)
	}
	src := g.TokenSource(cred, mailboxA)
	if _, err := src.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if err := g.Put(ctx, mailboxA, "crm", "1.AQ8Ae1x9-expired"); err != nil {
		t.Fatal(err)
	}
	remember("1.AQ8Ae1x9-expired")
	if _, err := src.Token(ctx); !errors.As(err, &te) {
		t.Fatalf("err = %v", err)
	}

	out := buf.String()
	for _, want := range []string{"level=DEBUG", "token issued", "client secret reloaded", "token request rejected", "AADSTS7000222", "refresh token rotated", "AADSTS700082"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q; the test would not see a leak there:\n%s", want, out)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(secrets) < 8 {
		t.Fatalf("only %d secrets collected", len(secrets))
	}
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Errorf("log contains a secret %.12q…", s)
		}
	}
}
