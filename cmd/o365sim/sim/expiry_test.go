package sim

import (
	"strings"
	"testing"
	"time"
)

const appPath = "/v1.0/applications(appId='" + appID + "')?$select=passwordCredentials,keyCredentials"

// passwordEnds returns each listed secret's endDateTime by hint.
func passwordEnds(t *testing.T, m map[string]any) map[string]string {
	t.Helper()
	out := map[string]string{}
	pcs, _ := m["passwordCredentials"].([]any)
	for _, p := range pcs {
		pc := p.(map[string]any)
		out[pc["hint"].(string)] = pc["endDateTime"].(string)
	}
	return out
}

func TestAdminMovesSecretEndAndAddsSecret(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.Tenants[0].Apps[0].Secrets[0].KeyID = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee" })
	tok := f.appToken(t, appID, appSecret, graphScope)
	end := f.clock.Now().Add(20 * 24 * time.Hour).UTC()

	status := f.admin(t, "POST", "/admin/secrets/end", map[string]any{"tenant": tenantID, "client_id": appID,
		"key_id": "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee", "end_date_time": end.Format(time.RFC3339)}, nil)
	if status != 204 {
		t.Fatalf("move end: %d", status)
	}
	var added map[string]string
	newEnd := end.Add(180 * 24 * time.Hour)
	status = f.admin(t, "POST", "/admin/secrets/add", map[string]any{"tenant": tenantID, "client_id": appID,
		"secret": "Qrs-next", "end_date_time": newEnd.Format(time.RFC3339), "display_name": "next"}, &added)
	if status != 200 || added["key_id"] == "" {
		t.Fatalf("add: %d %v", status, added)
	}
	_, m := f.graphDo(t, "GET", appPath, tok, "", nil)
	ends := passwordEnds(t, m)
	if len(ends) != 2 || ends["Abc"] != end.Format(time.RFC3339) || ends["Qrs"] != newEnd.Format(time.RFC3339) {
		t.Fatalf("passwordCredentials %v", m["passwordCredentials"])
	}
	// Both secrets work until their own end.
	f.appToken(t, appID, "Qrs-next", graphScope)
	f.clock.Add(21 * 24 * time.Hour)
	if _, err := f.ccConfig(appID, appSecret, graphScope).Token(f.ctx()); err == nil {
		t.Fatal("the moved secret still works past its end")
	}
	f.appToken(t, appID, "Qrs-next", graphScope)

	// By value, and the errors.
	if s := f.admin(t, "POST", "/admin/secrets/end", map[string]any{"tenant": tenantID, "client_id": appID, "secret": "Qrs-next", "end_date_time": ""}, nil); s != 204 {
		t.Fatalf("by value: %d", s)
	}
	for _, body := range []map[string]any{
		{"tenant": tenantID, "client_id": appID, "end_date_time": "2027-01-01T00:00:00Z"},
		{"tenant": tenantID, "client_id": appID, "secret": "Qrs-next", "end_date_time": "tomorrow"},
	} {
		if s := f.admin(t, "POST", "/admin/secrets/end", body, nil); s != 400 {
			t.Fatalf("%v: %d, want 400", body, s)
		}
	}
	if s := f.admin(t, "POST", "/admin/secrets/end", map[string]any{"tenant": tenantID, "client_id": appID, "secret": "nope"}, nil); s != 404 {
		t.Fatalf("unknown secret: %d", s)
	}
}

func TestGraphApplicationNeedsPermission(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.Tenants[0].Apps[0].GraphRoles = []string{"Mail.Send"}
		c.Tenants[0].Apps[1].GraphRoles = []string{"Application.ReadWrite.OwnedBy"}
		c.Tenants[0].Apps[1].OwnsItself = true
	})
	tok := f.appToken(t, appID, appSecret, graphScope)
	if roles := claimsOf(t, tok)["roles"].([]any); len(roles) != 1 || roles[0] != "Mail.Send" {
		t.Fatalf("roles %v", roles)
	}
	resp, m := f.graphDo(t, "GET", appPath, tok, "", nil)
	if code, msg := graphCode(m); resp.StatusCode != 403 || code != "Authorization_RequestDenied" || msg != "Insufficient privileges to complete the operation." {
		t.Fatalf("without Application.Read.All: %d %s %q", resp.StatusCode, code, msg)
	}

	// OwnedBy reads the app itself, and no other.
	other := f.appToken(t, otherApp, "other-secret", graphScope)
	if resp, m := f.graphDo(t, "GET", "/v1.0/applications(appId='"+otherApp+"')", other, "", nil); resp.StatusCode != 200 || m["appId"] != otherApp {
		t.Fatalf("OwnedBy on itself: %d %v", resp.StatusCode, m)
	}
	if resp, _ := f.graphDo(t, "GET", appPath, other, "", nil); resp.StatusCode != 403 {
		t.Fatalf("OwnedBy on another app: %d", resp.StatusCode)
	}

	// Granted at run time: tokens issued from then on carry the role.
	if s := f.admin(t, "POST", "/admin/apps/graph-roles", map[string]any{"tenant": tenantID, "client_id": appID, "roles": []string{"Application.Read.All"}}, nil); s != 204 {
		t.Fatalf("graph-roles: %d", s)
	}
	if resp, _ := f.graphDo(t, "GET", appPath, tok, "", nil); resp.StatusCode != 403 {
		t.Fatalf("old token: %d", resp.StatusCode)
	}
	tok = f.appToken(t, appID, appSecret, graphScope)
	if resp, m := f.graphDo(t, "GET", appPath, tok, "", nil); resp.StatusCode != 200 || len(passwordEnds(t, m)) != 1 {
		t.Fatalf("after the grant: %d %v", resp.StatusCode, m)
	}
	f.appToken(t, appID, appSecret, outlookScope)
	if c := f.Counters().Clients[appID]; c.TokenRequests != 3 || c.GraphTokenRequests != 2 {
		t.Fatalf("counters %+v, want 3 token requests, 2 of them for Graph", c)
	}
}

// TestAddedSecretPropagates: a secret added with a propagation delay is
// refused as Entra refuses an unknown one (AADSTS7000215) until the
// delay ends, then works; a bad delay is refused.
func TestAddedSecretPropagates(t *testing.T) {
	f := newFixture(t)
	if s := f.admin(t, "POST", "/admin/secrets/add", map[string]any{"tenant": tenantID, "client_id": appID,
		"secret": "Prop-new", "propagation": "20s"}, nil); s != 200 {
		t.Fatalf("add: %d", s)
	}
	_, err := f.ccConfig(appID, "Prop-new", graphScope).Token(f.ctx())
	if err == nil || !strings.Contains(err.Error(), "AADSTS7000215") {
		t.Fatalf("token with a secret still propagating: %v, want AADSTS7000215", err)
	}
	f.clock.Add(19 * time.Second)
	if _, err := f.ccConfig(appID, "Prop-new", graphScope).Token(f.ctx()); err == nil {
		t.Fatal("the secret works 1 s before its propagation ends")
	}
	f.clock.Add(time.Second)
	f.appToken(t, appID, "Prop-new", graphScope)
	f.appToken(t, appID, appSecret, graphScope) // the old one is untouched
	if s := f.admin(t, "POST", "/admin/secrets/add", map[string]any{"tenant": tenantID, "client_id": appID,
		"secret": "Prop-bad", "propagation": "soon"}, nil); s != 400 {
		t.Fatalf("bad propagation: %d, want 400", s)
	}
}

// TestSecretExpiresInFromStart: a secret given ExpiresIn ends that long
// after the simulator's start: Graph's passwordCredentials show that
// date (not 9999-12-31), and Entra refuses the secret from then on with
// AADSTS7000222.
func TestSecretExpiresInFromStart(t *testing.T) {
	const lifetime = 90 * 24 * time.Hour
	f := newFixture(t, func(c *Config) { c.Tenants[0].Apps[0].Secrets[0].ExpiresIn = lifetime })
	start := f.clock.Now().UTC()
	tok := f.appToken(t, appID, appSecret, graphScope)
	_, m := f.graphDo(t, "GET", appPath, tok, "", nil)
	pcs, _ := m["passwordCredentials"].([]any)
	if len(pcs) != 1 {
		t.Fatalf("passwordCredentials %v", m["passwordCredentials"])
	}
	pc := pcs[0].(map[string]any)
	if want := start.Add(lifetime).Format(time.RFC3339); pc["endDateTime"] != want || pc["startDateTime"] != start.Format(time.RFC3339) {
		t.Fatalf("passwordCredential %v, want startDateTime %s and endDateTime %s", pc, start.Format(time.RFC3339), want)
	}

	f.clock.Add(lifetime - time.Second)
	f.appToken(t, appID, appSecret, graphScope)
	f.clock.Add(time.Second)
	if _, err := f.ccConfig(appID, appSecret, graphScope).Token(f.ctx()); err == nil || !strings.Contains(err.Error(), "AADSTS7000222") {
		t.Fatalf("token at the secret's end: %v, want AADSTS7000222", err)
	}
}

// TestSecretExpiresInRefused: New refuses a negative ExpiresIn, and one
// given with ExpiresAt.
func TestSecretExpiresInRefused(t *testing.T) {
	for name, sec := range map[string]Secret{
		"negative":  {Value: "s", ExpiresIn: -time.Hour},
		"both kept": {Value: "s", ExpiresIn: time.Hour, ExpiresAt: time.Now().Add(time.Hour)},
	} {
		_, err := New(Config{Tenants: []Tenant{{ID: tenantID, Apps: []App{{ClientID: appID, Secrets: []Secret{sec}}}}}})
		if err == nil || !strings.Contains(err.Error(), "ExpiresIn") {
			t.Errorf("%s: %v, want an error naming ExpiresIn", name, err)
		}
	}
}
