package sim

import (
	"testing"

	"github.com/emersion/go-smtp"
)

// TestRevokeAppTokens: a revoked app-only token gets 535 5.7.3 at AUTH;
// a token issued after the revocation works.
func TestRevokeAppTokens(t *testing.T) {
	f := newFixture(t)
	old := f.appToken(t, appID, appSecret, outlookScope)
	if !f.RevokeAppTokens(tenantID, appID) {
		t.Fatal("the app was not found")
	}
	if f.RevokeAppTokens(tenantID, otherApp+"0") {
		t.Fatal("an unknown app was found")
	}
	c := f.dialTLS(t)
	wantSMTPError(t, c.Auth(&xoauth2{user: alice, token: old}), 535, smtp.EnhancedCode{5, 7, 3}, "Authentication unsuccessful [SIM.PROD.OUTLOOK.COM]")
	fresh := f.appToken(t, appID, appSecret, outlookScope)
	if err := f.dialTLS(t).Auth(&xoauth2{user: alice, token: fresh}); err != nil {
		t.Fatalf("AUTH with a token issued after the revocation: %v", err)
	}
}
