package auth

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// federatedJWT builds a service-account style token; its signature is not
// checked by Holdfast, so it is a placeholder.
func federatedJWT(t testing.TB, sub string, exp time.Time) string {
	t.Helper()
	h, _ := json.Marshal(map[string]string{"alg": "RS256", "kid": "k8s"})
	c, _ := json.Marshal(map[string]any{
		"iss": "https://oidc.aks.example/issuer", "sub": sub, "aud": []string{FederatedAudience},
		"iat": exp.Add(-time.Hour).Unix(), "nbf": exp.Add(-time.Hour).Unix(), "exp": exp.Unix(),
	})
	return b64url.EncodeToString(h) + "." + b64url.EncodeToString(c) + ".c2lnbmF0dXJl"
}

func federatedCredential(t testing.TB, f *fakeEntra, file string, clock *fakeClock) *Credential {
	t.Helper()
	c, err := NewCredential(CredentialOptions{
		Name: "crm", Tenant: testTenant, ClientID: testClientID, Authority: f.srv.URL,
		ClientAssertionFile: file, HTTPClient: f.srv.Client(), Now: clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestFederatedAssertionSent(t *testing.T) {
	clock := newFakeClock()
	jwt1 := federatedJWT(t, "system:serviceaccount:mail:holdfast", clock.Now().Add(time.Hour))
	f := newFakeEntra(t, func(w http.ResponseWriter, _ *http.Request, form url.Values) {
		writeToken(w, "at-"+form.Get("client_assertion")[len(form.Get("client_assertion"))-4:], 3600, "")
	})
	file := writeFile(t, t.TempDir(), "token", jwt1+"\n")
	c := federatedCredential(t, f, file, clock)
	if _, err := c.Token(t.Context()); err != nil {
		t.Fatal(err)
	}
	form := f.lastForm()
	if form.Get("client_assertion") != jwt1 || form.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" ||
		form.Has("client_secret") || form.Get("grant_type") != "client_credentials" || form.Get("client_id") != testClientID {
		t.Fatalf("form %v", form)
	}
	if exp, ok := c.AssertionExpiry(); !ok || !exp.Equal(clock.Now().Add(time.Hour).Truncate(time.Second)) {
		t.Fatalf("assertion expiry %v %v", exp, ok)
	}

	// The kubelet rotates the file: Reload sends the new token next.
	jwt2 := federatedJWT(t, "system:serviceaccount:mail:holdfast", clock.Now().Add(2*time.Hour))
	replaceFile(t, file, jwt2)
	if changed, err := c.Reload(); err != nil || !changed {
		t.Fatalf("reload: changed %v, %v", changed, err)
	}
	if _, err := c.Token(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := f.lastForm().Get("client_assertion"); got != jwt2 {
		t.Fatal("the rotated assertion was not sent")
	}
}

func TestFederatedExpiredAssertionNotSent(t *testing.T) {
	clock := newFakeClock()
	exp := clock.Now().Add(time.Minute).Truncate(time.Second)
	f := newFakeEntra(t, func(w http.ResponseWriter, _ *http.Request, _ url.Values) { writeToken(w, "at", 3600, "") })
	file := writeFile(t, t.TempDir(), "token", federatedJWT(t, "sa", exp))
	c := federatedCredential(t, f, file, clock)
	clock.Add(time.Minute)
	_, err := c.Token(t.Context())
	var te *TokenError
	if !errors.As(err, &te) || te.Code != CodeInvalidClient {
		t.Fatalf("err = %v, want an invalid_client token error", err)
	}
	want := "the assertion in " + file + " expired at " + exp.UTC().Format(time.RFC3339)
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %q, want it to say %q", err, want)
	}
	if n := f.requests(); n != 0 {
		t.Fatalf("%d requests with an expired assertion, want 0", n)
	}
}

func TestFederatedOptions(t *testing.T) {
	dir := t.TempDir()
	secret := writeFile(t, dir, "secret", secretV1)
	token := writeFile(t, dir, "token", federatedJWT(t, "sa", time.Now().Add(time.Hour)))
	bad := writeFile(t, dir, "bad", "not a jwt")
	for _, tc := range []struct {
		name string
		o    CredentialOptions
		want string
	}{
		{"secret and assertion", CredentialOptions{ClientSecretFile: secret, ClientAssertionFile: token}, "mutually exclusive"},
		{"cert and assertion", CredentialOptions{CertFile: secret, ClientAssertionFile: token}, "mutually exclusive"},
		{"none", CredentialOptions{}, "client_assertion_file"},
		{"not a JWT", CredentialOptions{ClientAssertionFile: bad}, "does not hold a JWT"},
		{"missing", CredentialOptions{ClientAssertionFile: dir + "/nope"}, "does not exist"},
	} {
		tc.o.Tenant, tc.o.ClientID = testTenant, testClientID
		_, err := NewCredential(tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
}
