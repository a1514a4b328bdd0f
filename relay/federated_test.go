package relay

import (
	"encoding/base64"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"holdfast/auth"
	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
)

const (
	aksIssuer  = "https://oidc.aks.example/issuer/0001"
	aksSubject = "system:serviceaccount:mail:holdfast"
)

// serviceAccountToken is a projected service-account token for sub,
// expiring at exp. Neither Holdfast nor the simulator checks its
// signature.
func serviceAccountToken(sub string, exp time.Time) string {
	enc := base64.RawURLEncoding
	h, _ := json.Marshal(map[string]string{"alg": "RS256", "kid": "sa"})
	c, _ := json.Marshal(map[string]any{"iss": aksIssuer, "sub": sub, "aud": []string{auth.FederatedAudience},
		"iat": exp.Add(-time.Hour).Unix(), "nbf": exp.Add(-time.Hour).Unix(), "exp": exp.Unix()})
	return enc.EncodeToString(h) + "." + enc.EncodeToString(c) + "." + enc.EncodeToString([]byte("sig"))
}

// newFederatedEnv is a relay whose credential is the service-account token
// in the returned file, against a simulator whose app trusts aksIssuer
// and aksSubject.
func newFederatedEnv(t *testing.T, token string) (*exchangeEnv, string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "azure-identity-token")
	writeFile(t, file, token)
	e := newExchangeEnvSim(t, 1, func(c *sim.Config) {
		c.Tenants[0].Apps[0].Secrets = nil
		c.Tenants[0].Apps[0].FederatedCredentials = []sim.FederatedCredential{{Issuer: aksIssuer, Subject: aksSubject}}
	}, func(o *Options) {
		o.Credentials[0].ClientSecretFile = ""
		o.Credentials[0].ClientAssertionFile = file
		o.Breakers.Threshold = 1 // hold at the first credential failure
	})
	return e, file
}

// TestExchangeFederatedCredential: a wrong subject is a credential failure
// that holds the mail; the rotated token file is picked up without a
// restart and the held mail goes out on its first attempt.
func TestExchangeFederatedCredential(t *testing.T) {
	e, file := newFederatedEnv(t, serviceAccountToken("system:serviceaccount:mail:other", time.Now().Add(time.Hour)))
	id := e.submit(t, 0, "billing@contoso.com", "a@example.org", exchangeMessage(1, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the message held", func() bool { return e.get(t, id).State == queue.Held })
	if m := e.get(t, id); !strings.Contains(m.HoldReason+m.LastError, "AADSTS700213") {
		t.Errorf("hold reason %q, last error %q: want AADSTS700213", m.HoldReason, m.LastError)
	}

	writeFile(t, file, serviceAccountToken(aksSubject, time.Now().Add(time.Hour)))
	waitFor(t, 15*time.Second, "delivery with the rotated token", func() bool { return e.get(t, id).State == queue.Delivered })
	if m := e.get(t, id); m.Attempts != 1 {
		t.Errorf("attempts %d, want 1: the credential failure spent none", m.Attempts)
	}
	if r := e.sim.Received(); len(r) != 1 || r[0].TokenClientID != simClientID {
		t.Fatalf("received %+v", r)
	}
	assertNoSecretsLogged(t, e)
}

// TestExchangeFederatedAssertionExpired: an expired token file is not
// sent; the mail is held and the reason names the file and the time.
func TestExchangeFederatedAssertionExpired(t *testing.T) {
	exp := time.Now().Add(-time.Minute).Truncate(time.Second)
	e, file := newFederatedEnv(t, serviceAccountToken(aksSubject, exp))
	id := e.submit(t, 0, "billing@contoso.com", "a@example.org", exchangeMessage(1, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the message held", func() bool { return e.get(t, id).State == queue.Held })
	want := "the assertion in " + file + " expired at " + exp.UTC().Format(time.RFC3339)
	if m := e.get(t, id); !strings.Contains(m.HoldReason+" "+m.LastError, want) {
		t.Errorf("hold reason %q, last error %q: want %q", m.HoldReason, m.LastError, want)
	}
	if c := e.sim.Counters().Clients[simClientID]; c.TokenRequests-c.GraphTokenRequests != 0 {
		t.Errorf("%d SMTP token requests with an expired assertion, want 0", c.TokenRequests-c.GraphTokenRequests)
	}
}

func TestFederatedCredentialOptions(t *testing.T) {
	c := Credential{Name: "c", Tenant: "t", ClientID: "id", ClientSecretFile: "s", ClientAssertionFile: "a"}
	if err := c.validate("credentials[0]"); err == nil || !strings.Contains(err.Error(), "credentials[0].client_assertion_file") {
		t.Fatalf("secret and assertion: %v", err)
	}
	c.ClientSecretFile = ""
	if err := c.validate("credentials[0]"); err != nil {
		t.Fatalf("assertion alone: %v", err)
	}
}
