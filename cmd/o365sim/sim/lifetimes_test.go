package sim

import (
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// lifetimes fetches n app-only tokens and returns their expires_in.
func lifetimes(t *testing.T, f *fixture, n int) []time.Duration {
	t.Helper()
	var out []time.Duration
	for range n {
		tok, err := f.ccConfig(appID, appSecret, outlookScope).Token(f.ctx())
		if err != nil {
			t.Fatal(err)
		}
		secs, ok := tok.Extra("expires_in").(float64)
		if !ok {
			t.Fatalf("expires_in %v", tok.Extra("expires_in"))
		}
		out = append(out, time.Duration(secs)*time.Second)
		if exp := int64(claimsOf(t, tok.AccessToken)["exp"].(float64)); exp != f.clock.Now().Add(out[len(out)-1]).Unix() {
			t.Fatalf("exp claim %d does not match expires_in %v", exp, out[len(out)-1])
		}
	}
	return out
}

func TestTokenLifetimesRandomAndSeeded(t *testing.T) {
	seeded := func(c *Config) { c.Seed = 42 }
	a := lifetimes(t, newFixture(t, seeded), 20)
	b := lifetimes(t, newFixture(t, seeded), 20)
	distinct := map[time.Duration]bool{}
	for i := range a {
		if a[i] < 60*time.Minute || a[i] > 90*time.Minute {
			t.Fatalf("lifetime %v outside 60 to 90 minutes", a[i])
		}
		if a[i] != b[i] {
			t.Fatalf("token %d: lifetimes %v and %v under one seed", i, a[i], b[i])
		}
		distinct[a[i]] = true
	}
	if len(distinct) < 10 {
		t.Fatalf("only %d distinct lifetimes in 20: %v", len(distinct), a)
	}
	fixed := lifetimes(t, newFixture(t, func(c *Config) { c.TokenLifetime = 4 * time.Second }), 2)
	if fixed[0] != 4*time.Second || fixed[1] != 4*time.Second {
		t.Fatalf("fixed lifetimes %v, want 4s", fixed)
	}
}

func TestSMTPRefusesTokenExpiringSoon(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.TokenLifetime = time.Hour
		c.ExpiringTokenMargin = 10 * time.Minute
	})
	tok := f.appToken(t, appID, appSecret, outlookScope)
	f.clock.Add(49*time.Minute + 59*time.Second)
	if err := f.dialTLS(t).Auth(&xoauth2{user: alice, token: tok}); err != nil {
		t.Fatalf("10m01s before expiry: %v", err)
	}
	f.clock.Add(time.Second)
	err := f.dialTLS(t).Auth(&xoauth2{user: alice, token: tok})
	wantSMTPError(t, err, 501, smtp.EnhancedCode{5, 5, 127}, "Invalid XOAUTH2 auth data - Token will expire soon")
	if code := f.admin(t, "POST", "/admin/tokens/expiring-margin", map[string]string{"margin": "soon"}, nil); code != 400 {
		t.Fatalf("bad margin: status %d", code)
	}
	if code := f.admin(t, "POST", "/admin/tokens/expiring-margin", map[string]string{"margin": "0s"}, nil); code != 204 {
		t.Fatalf("margin 0s: status %d", code)
	}
	if err := f.dialTLS(t).Auth(&xoauth2{user: alice, token: tok}); err != nil {
		t.Fatalf("margin off: %v", err)
	}
	if cc := f.Counters().Clients[appID]; cc.SMTPAuthAttempts != 3 || cc.SMTPAuthFailures != 1 {
		t.Fatalf("counters %+v", cc)
	}
}
