package auth

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	"holdfast/cmd/o365sim/sim"
)

// TestRemovePasswordBadRequest: Graph answers 400 both for a key that is
// no longer on the app registration (removed already, by an earlier try
// whose answer was lost) and for a request it cannot take. The first is
// done; the second is not, and the secret is still valid. RemovePassword
// tells them apart by listing the app's secrets, not by the status.
func TestRemovePasswordBadRequest(t *testing.T) {
	const (
		oldKey = "11111111-1111-4111-8111-111111111111"
		newKey = "22222222-2222-4222-8222-222222222222"
	)
	c, s := simCredential(t, sim.App{ClientID: testClientID, Secrets: []sim.Secret{
		{Value: "Old~secret", KeyID: oldKey},
		{Value: "New~secret", KeyID: newKey},
	}, GraphRoles: []string{"Application.ReadWrite.OwnedBy"}, OwnsItself: true}, "New~secret", "", "")

	// A Graph in front of the simulator's that answers every
	// removePassword with a 400 of its own, removing nothing.
	target, _ := url.Parse(s.GraphURL())
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.RootCAs()}}
	refuse := func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/removePassword") {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":{"code":"Request_BadRequest","message":"Invalid value specified for property 'keyId' of resource 'PasswordCredential'."}}`))
			return
		}
		r.Host = target.Host
		proxy.ServeHTTP(w, r)
	}
	front := httptest.NewServer(http.HandlerFunc(refuse))
	t.Cleanup(front.Close)

	ctx := context.Background()
	err := c.RemovePassword(ctx, front.URL, oldKey)
	if err == nil {
		t.Fatal("a 400 that removed nothing was taken as the secret removed")
	}
	if !strings.Contains(err.Error(), "Invalid value") {
		t.Errorf("error %q does not carry Graph's answer", err)
	}

	if err := c.RemovePassword(ctx, s.GraphURL(), oldKey); err != nil {
		t.Fatalf("first removal: %v", err)
	}
	// Removed: Graph's 400 to the same key again means it is gone.
	if err := c.RemovePassword(ctx, s.GraphURL(), oldKey); err != nil {
		t.Errorf("a removal of a key already gone: %v, want done", err)
	}
	list, err := c.AppCredentials(ctx, s.GraphURL())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].KeyID != newKey {
		t.Errorf("secrets left: %+v, want the new one only", list)
	}
}
