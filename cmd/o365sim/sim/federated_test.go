package sim

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"
)

const (
	fedApp     = "44444444-2222-4333-8444-555555555555"
	fedIssuer  = "https://oidc.aks.example/issuer/0001"
	fedSubject = "system:serviceaccount:mail:holdfast"
)

// kubeToken is a service-account token as the kubelet projects it; the
// simulator does not check its signature.
func kubeToken(iss, sub, aud string, exp time.Time) string {
	h, _ := json.Marshal(map[string]string{"alg": "RS256", "kid": "sa-key"})
	c, _ := json.Marshal(map[string]any{"iss": iss, "sub": sub, "aud": []string{aud},
		"iat": exp.Add(-time.Hour).Unix(), "nbf": exp.Add(-time.Hour).Unix(), "exp": exp.Unix()})
	return b64.EncodeToString(h) + "." + b64.EncodeToString(c) + "." + b64.EncodeToString([]byte("signature"))
}

func withFederatedApp(c *Config) {
	c.Tenants[0].Apps = append(c.Tenants[0].Apps, App{
		ClientID:             fedApp,
		FederatedCredentials: []FederatedCredential{{Issuer: fedIssuer, Subject: fedSubject}},
		SendAsMailboxes:      []string{"*"},
	})
}

func TestFederatedCredential(t *testing.T) {
	f := newFixture(t, withFederatedApp)
	now := f.clock.Now()
	form := func(jwt string) url.Values {
		return url.Values{"grant_type": {"client_credentials"}, "client_id": {fedApp}, "scope": {outlookScope},
			"client_assertion_type": {assertionType}, "client_assertion": {jwt}}
	}
	resp, body := f.postToken(t, tenantID, form(kubeToken(fedIssuer, fedSubject, federatedAudience, now.Add(time.Hour))))
	if resp.StatusCode != 200 || body["access_token"] == nil {
		t.Fatalf("status %d: %v", resp.StatusCode, body)
	}
	if c := claimsOf(t, body["access_token"].(string)); c["appid"] != fedApp {
		t.Fatalf("claims %v", c)
	}
	for _, tc := range []struct {
		name   string
		jwt    string
		status int
		code   int
		text   string
	}{
		{"issuer", kubeToken("https://other.example", fedSubject, federatedAudience, now.Add(time.Hour)), 400, 700211,
			"No matching federated identity record found for presented assertion issuer 'https://other.example'." + fedDocs},
		{"subject", kubeToken(fedIssuer, "system:serviceaccount:mail:other", federatedAudience, now.Add(time.Hour)), 400, 700213,
			"No matching federated identity record found for presented assertion subject 'system:serviceaccount:mail:other'." + fedDocs},
		{"audience", kubeToken(fedIssuer, fedSubject, "api://other", now.Add(time.Hour)), 400, 700212,
			"No matching federated identity record found for presented assertion audience 'api://other'." + fedDocs},
		{"expired", kubeToken(fedIssuer, fedSubject, federatedAudience, now), 401, 700024,
			""},
	} {
		resp, body := f.postToken(t, tenantID, form(tc.jwt))
		if resp.StatusCode != tc.status {
			t.Errorf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.status)
		}
		checkAADError(t, body, "invalid_client", tc.code, tc.text)
		if d, _ := body["error_description"].(string); tc.code == 700024 && !strings.HasPrefix(d, "AADSTS700024: Client assertion is not within its valid time range.") {
			t.Errorf("expired: %s", d)
		}
	}
}

func TestFederatedCredentialNeedsIssuerAndSubject(t *testing.T) {
	_, err := New(Config{Tenants: []Tenant{{ID: tenantID, Apps: []App{{ClientID: fedApp,
		FederatedCredentials: []FederatedCredential{{Issuer: fedIssuer}}}}}}})
	if err == nil || !strings.Contains(err.Error(), "issuer and a subject") {
		t.Fatalf("err = %v", err)
	}
}
