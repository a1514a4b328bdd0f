package auth

import (
	"strings"
	"testing"
	"time"
)

// TestTokenRenewedTenMinutesEarlyOverEntraLifetimes: for every lifetime
// Entra issues (60 to 90 minutes), the default cache serves a token until
// exactly 10 minutes before its expiry and fetches a new one from then on.
func TestTokenRenewedTenMinutesEarlyOverEntraLifetimes(t *testing.T) {
	for _, life := range []int{3600, 4500, 5399} {
		clock := newFakeClock()
		f := newFakeEntra(t, secretHandler(t, life))
		c := secretCredential(t, f, writeFile(t, t.TempDir(), "secret", secretV1), func(o *CredentialOptions) {
			o.Now = clock.Now
		})
		tok, err := c.Token(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		clock.Add(tok.Expiry.Sub(clock.Now()) - MinRefreshBefore - time.Second)
		if _, err := c.Token(t.Context()); err != nil {
			t.Fatal(err)
		}
		if n := f.requests(); n != 1 {
			t.Fatalf("lifetime %ds: %d requests 10m01s before expiry, want 1", life, n)
		}
		clock.Add(time.Second)
		if _, err := c.Token(t.Context()); err != nil {
			t.Fatal(err)
		}
		if n := f.requests(); n != 2 {
			t.Fatalf("lifetime %ds: %d requests 10m before expiry, want 2", life, n)
		}
	}
}

func TestRefreshBeforeBelowMinimumRejected(t *testing.T) {
	f := newFakeEntra(t, secretHandler(t, 3600))
	o := CredentialOptions{
		Tenant: testTenant, ClientID: testClientID, Authority: f.srv.URL,
		ClientSecretFile: writeFile(t, t.TempDir(), "secret", secretV1),
		RefreshBefore:    5 * time.Minute,
	}
	_, err := NewCredential(o)
	if err == nil || !strings.Contains(err.Error(), "refresh_before") {
		t.Fatalf("err = %v, want one naming refresh_before", err)
	}
	o.RefreshBefore = 15 * time.Minute
	if _, err := NewCredential(o); err != nil {
		t.Fatalf("15m: %v", err)
	}
}
