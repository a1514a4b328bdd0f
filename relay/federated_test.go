package relay

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"holdfast/auth"
	"holdfast/breaker"
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
	e := federatedEnv(t, file, func(o *Options) {
		o.Breakers.Threshold = 1 // hold at the first credential failure
	})
	return e, file
}

// federatedEnv is one relay whose credential is the token in file,
// against a simulator whose app trusts aksIssuer and aksSubject; change,
// when set, edits the relay's options further.
func federatedEnv(t *testing.T, file string, change func(*Options)) *exchangeEnv {
	t.Helper()
	return newExchangeEnvSim(t, 1, func(c *sim.Config) {
		c.Tenants[0].Apps[0].Secrets = nil
		c.Tenants[0].Apps[0].FederatedCredentials = []sim.FederatedCredential{{Issuer: aksIssuer, Subject: aksSubject}}
	}, func(o *Options) {
		o.Credentials[0].ClientSecretFile = ""
		o.Credentials[0].ClientAssertionFile = file
		if change != nil {
			change(o)
		}
	})
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

// TestFederatedStaleRelay: two relays, each with its own token file, as
// pods on different nodes have. Relay 1's file expired (its kubelet has
// not rotated it yet) while relay 2's was rotated and works. Relay 1 is
// stale for the credential, as a relay left on an old secret is: it
// leaves the credential's mail to relay 2, and nothing waits for a
// retry's backoff.
func TestFederatedStaleRelay(t *testing.T) {
	dir := t.TempDir()
	old, fresh := filepath.Join(dir, "token-1"), filepath.Join(dir, "token-2")
	writeFile(t, old, serviceAccountToken(aksSubject, time.Now().Add(2*time.Second)))
	writeFile(t, fresh, serviceAccountToken(aksSubject, time.Now().Add(time.Hour)))
	// The kubelet wrote relay 2's file after relay 1's.
	if err := os.Chtimes(old, time.Now().Add(-time.Minute), time.Now().Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	e := federatedEnv(t, old, nil)
	ro := e.opts
	ro.Replica = "relay-2"
	ro.Credentials = slices.Clone(e.opts.Credentials)
	ro.Credentials[0].ClientAssertionFile = fresh
	e.relays = append(e.relays, runRelay(t, ro, e.log))

	first := e.submit(t, 1, "billing@contoso.com", "a@example.org", exchangeMessage(0, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "relay 2's first delivery", func() bool { return e.get(t, first).State == queue.Delivered })
	time.Sleep(2500 * time.Millisecond) // relay 1's assertion expires
	e.relays[0].exchange.creds["contoso"].Invalidate()

	var ids []string
	for n := 1; n <= 6; n++ {
		ids = append(ids, e.submit(t, n%2, "billing@contoso.com", fmt.Sprintf("r%d@example.org", n), exchangeMessage(n, "billing@contoso.com")))
	}
	waitFor(t, 10*time.Second, "every message delivered by relay 2", func() bool { return e.allDelivered(t, ids) })
	for _, id := range ids {
		if m := e.get(t, id); m.Attempts > 1 {
			t.Errorf("%s took %d attempts, want 1: relay 1's expired file spent one", id, m.Attempts)
		}
	}
	if st := e.breakerStatus(t, credentialBreaker("contoso")); st.State != breaker.Closed {
		t.Errorf("credential breaker %s, want closed", st.State)
	}
}
