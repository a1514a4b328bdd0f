package auth

import (
	"context"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"holdfast/cmd/o365sim/sim"
)

// simCredential starts the simulator with app and returns a Credential
// of it, using secret (or the certificate files when secret is empty).
func simCredential(t *testing.T, app sim.App, secret, certFile, keyFile string) (*Credential, *sim.Sim) {
	t.Helper()
	s, err := sim.New(sim.Config{Tenants: []sim.Tenant{{ID: testTenant, Apps: []sim.App{app}}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	o := CredentialOptions{Tenant: testTenant, ClientID: app.ClientID, Authority: s.AuthorityURL(),
		HTTPClient: NewHTTPClient(&tls.Config{RootCAs: s.RootCAs()})}
	if secret != "" {
		o.ClientSecretFile = writeFile(t, t.TempDir(), "secret", secret+"\n")
	} else {
		o.CertFile, o.KeyFile = certFile, keyFile
	}
	c, err := NewCredential(o)
	if err != nil {
		t.Fatal(err)
	}
	return c, s
}

func TestAppCredentialsMatchesTheSecretInUse(t *testing.T) {
	inUse := time.Now().Add(20 * 24 * time.Hour).UTC().Truncate(time.Second)
	newer := inUse.Add(180 * 24 * time.Hour)
	c, s := simCredential(t, sim.App{ClientID: testClientID, Secrets: []sim.Secret{
		{Value: "Abc~in-use", ExpiresAt: inUse, KeyID: "11111111-1111-4111-8111-111111111111"},
		{Value: "Xyz~newer", ExpiresAt: newer, DisplayName: "next"},
	}}, "Abc~in-use", "", "")
	list, err := c.AppCredentials(context.Background(), s.GraphURL())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Fatalf("%d credentials: %+v", len(list), list)
	}
	a, b := list[0], list[1]
	if a.Kind != "secret" || a.Hint != "Abc" || !a.End.Equal(inUse) || !a.InUse || a.KeyID != "11111111-1111-4111-8111-111111111111" || a.Start.IsZero() {
		t.Fatalf("in use: %+v", a)
	}
	if b.Hint != "Xyz" || !b.End.Equal(newer) || b.InUse || b.DisplayName != "next" {
		t.Fatalf("newer: %+v", b)
	}
	if hint, thumb := c.InUse(); hint != "Abc" || thumb != "" {
		t.Fatalf("InUse %q %q", hint, thumb)
	}
}

// TestAppCredentialsSharedHint: a hint is a secret's first three
// characters, so two secrets can share it. The expired one is not the
// one in use: the token of this very read was made with it.
func TestAppCredentialsSharedHint(t *testing.T) {
	expired := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	valid := time.Now().Add(180 * 24 * time.Hour).UTC().Truncate(time.Second)
	c, s := simCredential(t, sim.App{ClientID: testClientID, Secrets: []sim.Secret{
		{Value: "fle~expired-secret", ExpiresAt: expired, DisplayName: "old"},
		{Value: "fle~rotated-secret", ExpiresAt: valid, DisplayName: "new"},
	}}, "fle~rotated-secret", "", "")
	list, err := c.AppCredentials(context.Background(), s.GraphURL())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Fatalf("%d credentials: %+v", len(list), list)
	}
	for _, a := range list {
		if a.Hint != "fle" {
			t.Fatalf("hint %q, want fle: %+v", a.Hint, a)
		}
		if want := a.DisplayName == "new"; a.InUse != want {
			t.Errorf("%s (ends %v): in use %v, want %v", a.DisplayName, a.End, a.InUse, want)
		}
	}
}

// TestSecretDatesSharedHint: of secrets sharing a hint the latest date
// counts, whatever Graph's order; certificates have no hint.
func TestSecretDatesSharedHint(t *testing.T) {
	early, late := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, list := range [][]AppCredential{
		{{Kind: "secret", Hint: "abc", End: late}, {Kind: "secret", Hint: "abc", End: early}},
		{{Kind: "secret", Hint: "abc", End: early}, {Kind: "secret", Hint: "abc", End: late}},
	} {
		list = append(list, AppCredential{Kind: "certificate", Thumbprint: "AA", End: late},
			AppCredential{Kind: "secret", Hint: "xyz", End: early})
		got := SecretDates(list)
		if len(got) != 2 || !got["abc"].Equal(late) || !got["xyz"].Equal(early) {
			t.Errorf("SecretDates(%+v) = %v, want abc %v and xyz %v", list, got, late, early)
		}
	}
}

func TestAppCredentialsMatchesTheCertificateByThumbprint(t *testing.T) {
	key := testKey(t, 0)
	notAfter := time.Now().Add(40 * 24 * time.Hour).UTC().Truncate(time.Second)
	cert := testCert(t, key, notAfter)
	other := testCert(t, testKey(t, 1), notAfter.Add(time.Hour))
	dir := t.TempDir()
	certFile, keyFile := writeFile(t, dir, "cert.pem", certPEM(cert)), writeFile(t, dir, "key.pem", pkcs8PEM(t, key))
	c, s := simCredential(t, sim.App{ClientID: testClientID,
		CertificatesPEM: [][]byte{[]byte(certPEM(other)), []byte(certPEM(cert))}}, "", certFile, keyFile)
	list, err := c.AppCredentials(context.Background(), s.GraphURL())
	if err != nil {
		t.Fatal(err)
	}
	sum := sha1.Sum(cert.Raw)
	want := strings.ToUpper(hex.EncodeToString(sum[:]))
	var used []AppCredential
	for _, ac := range list {
		if ac.Kind != "certificate" {
			t.Fatalf("kind %q", ac.Kind)
		}
		if ac.InUse {
			used = append(used, ac)
		}
	}
	if len(list) != 2 || len(used) != 1 || used[0].Thumbprint != want || !used[0].End.Equal(notAfter) {
		t.Fatalf("list %+v, want %s in use", list, want)
	}
}

func TestAppCredentialsForbidden(t *testing.T) {
	c, s := simCredential(t, sim.App{ClientID: testClientID, GraphRoles: []string{"Mail.Send"},
		Secrets: []sim.Secret{{Value: "Abc~secret"}}}, "Abc~secret", "", "")
	_, err := c.AppCredentials(context.Background(), s.GraphURL())
	var ge *GraphError
	if !errors.As(err, &ge) || !ge.Forbidden() || ge.Code != "Authorization_RequestDenied" {
		t.Fatalf("err %v", err)
	}
	if !strings.Contains(ge.MissingPermission(), "Application.Read.All") {
		t.Fatalf("missing permission %q", ge.MissingPermission())
	}

	// A credential Entra refuses gets the token error.
	s.ExpireSecret(testTenant, testClientID)
	_, err = c.AppCredentials(context.Background(), s.GraphURL())
	var te *TokenError
	if !errors.As(err, &te) || !te.SecretExpired() {
		t.Fatalf("expired secret: %v", err)
	}
}

func TestThumbprintHex(t *testing.T) {
	raw := sha1.Sum([]byte("certificate"))
	hx := strings.ToUpper(hex.EncodeToString(raw[:]))
	for _, in := range []string{
		hx,
		strings.ToLower(hx),
		base64.StdEncoding.EncodeToString(raw[:]),
		base64.StdEncoding.EncodeToString([]byte(hx)),
	} {
		if got := thumbprintHex(in); got != hx {
			t.Errorf("thumbprintHex(%q) = %q, want %q", in, got, hx)
		}
	}
}
