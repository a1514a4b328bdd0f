package sim

import "testing"

// TestSetSendAsWithWildcard: an app that may send as every mailbox
// ("*") is refused the one an access policy leaves out, and may send as
// it again once the policy takes it back in; the others are untouched.
func TestSetSendAsWithWildcard(t *testing.T) {
	const tenantID, appID = "contoso.com", "app-all"
	s, err := New(Config{Tenants: []Tenant{{ID: tenantID,
		Apps:      []App{{ClientID: appID, Secrets: []Secret{{Value: "s"}}, SendAsMailboxes: []string{"*"}}},
		Mailboxes: []Mailbox{{Address: "alice@contoso.com"}, {Address: "bob@contoso.com"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	may := func(addr string) bool {
		var ok bool
		s.withApp(tenantID, appID, func(a *app) bool {
			ok = a.maySendAs(s.mailboxes[addr])
			return true
		})
		return ok
	}
	if !s.SetSendAs(tenantID, appID, "Alice@contoso.com", false) {
		t.Fatal("SetSendAs: no such app")
	}
	if may("alice@contoso.com") || !may("bob@contoso.com") {
		t.Fatalf("after taking alice out: alice %v, bob %v; want false, true", may("alice@contoso.com"), may("bob@contoso.com"))
	}
	s.SetSendAs(tenantID, appID, "alice@contoso.com", true)
	if !may("alice@contoso.com") || !may("bob@contoso.com") {
		t.Fatalf("after taking alice back in: alice %v, bob %v; want both true", may("alice@contoso.com"), may("bob@contoso.com"))
	}
}
