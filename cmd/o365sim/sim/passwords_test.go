package sim

import (
	"strings"
	"testing"
	"time"
)

// TestAddRemovePassword: an app that owns itself with
// Application.ReadWrite.OwnedBy adds a secret to itself, which Entra
// refuses AADSTS7000215 until it has propagated and accepts after; it
// removes the old secret, which is refused from then on. Another app's
// registration, or an app without the permission, gets 403.
func TestAddRemovePassword(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.Tenants[0].Apps[1].GraphRoles = []string{"Application.ReadWrite.OwnedBy"}
		c.Tenants[0].Apps[1].OwnsItself = true
		c.Tenants[0].Apps[1].Secrets[0].KeyID = "11111111-2222-4333-8444-555555555555"
		c.PasswordPropagation = 30 * time.Second
	})
	self := "/v1.0/applications(appId='" + otherApp + "')"
	tok := f.appToken(t, otherApp, "other-secret", graphScope)
	end := f.clock.Now().Add(180 * 24 * time.Hour).UTC().Truncate(time.Second)
	resp, m := f.graphDo(t, "POST", self+"/addPassword", tok, "application/json",
		[]byte(`{"passwordCredential":{"displayName":"holdfast","endDateTime":"`+end.Format(time.RFC3339)+`"}}`))
	secret, _ := m["secretText"].(string)
	if resp.StatusCode != 200 || len(secret) != 40 || m["hint"] != secret[:3] || m["endDateTime"] != end.Format(time.RFC3339) || m["keyId"] == "" {
		t.Fatalf("addPassword: %d %v", resp.StatusCode, m)
	}
	_, err := f.ccConfig(otherApp, secret, graphScope).Token(f.ctx())
	if err == nil || !strings.Contains(err.Error(), "AADSTS7000215") {
		t.Fatalf("a secret not propagated yet: %v, want AADSTS7000215", err)
	}
	f.clock.Add(31 * time.Second)
	f.appToken(t, otherApp, secret, graphScope)

	resp, _ = f.graphDo(t, "POST", self+"/removePassword", tok, "application/json", []byte(`{"keyId":"11111111-2222-4333-8444-555555555555"}`))
	if resp.StatusCode != 204 {
		t.Fatalf("removePassword: %d", resp.StatusCode)
	}
	if _, err := f.ccConfig(otherApp, "other-secret", graphScope).Token(f.ctx()); err == nil {
		t.Fatal("the removed secret still gets a token")
	}
	resp, m = f.graphDo(t, "POST", self+"/removePassword", tok, "application/json", []byte(`{"keyId":"11111111-2222-4333-8444-555555555555"}`))
	if code, _ := graphCode(m); resp.StatusCode != 400 || code != "Request_BadRequest" {
		t.Fatalf("removing it again: %d %s", resp.StatusCode, code)
	}

	// Another app's registration; an app without the permission.
	resp, m = f.graphDo(t, "POST", appPath[:len("/v1.0/applications(appId='"+appID+"')")]+"/addPassword", tok, "application/json", []byte(`{}`))
	if code, _ := graphCode(m); resp.StatusCode != 403 || code != "Authorization_RequestDenied" {
		t.Fatalf("on another app: %d %s", resp.StatusCode, code)
	}
	plain := f.appToken(t, appID, appSecret, graphScope)
	if resp, _ := f.graphDo(t, "POST", "/v1.0/applications(appId='"+appID+"')/addPassword", plain, "application/json", []byte(`{}`)); resp.StatusCode != 403 {
		t.Fatalf("without the permission: %d", resp.StatusCode)
	}
}
