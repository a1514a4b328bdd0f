package auth

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"holdfast/queue/redistest"
)

const (
	mailboxA  = "Sales@Contoso.com"
	rtInitial = "1.AQ8Ae1x9-refresh-token-initial-value-0000"
)

var testGrantKey = bytes.Repeat([]byte{0x42}, GrantKeySize)

func newGrantStore(t *testing.T, rdb redis.UniversalClient, key []byte) *GrantStore {
	t.Helper()
	g, err := NewGrantStore(rdb, key)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestLoadKeyFile(t *testing.T) {
	dir := t.TempDir()
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i * 7)
	}
	good := map[string]string{
		"raw":       string(key),
		"hex":       hex.EncodeToString(key) + "\n",
		"base64":    base64.StdEncoding.EncodeToString(key) + "\n",
		"base64url": base64.RawURLEncoding.EncodeToString(key),
	}
	for name, content := range good {
		got, err := LoadKeyFile(writeFile(t, dir, name, content))
		if err != nil || !bytes.Equal(got, key) {
			t.Errorf("%s: %x, %v", name, got, err)
		}
	}
	bad := map[string]string{
		"short":      "tooshort",
		"hex62":      hex.EncodeToString(key)[:62],
		"base64-16":  base64.StdEncoding.EncodeToString(key[:16]),
		"raw-33":     string(key) + "x",
		"hex-nonhex": strings.Repeat("zz", 32),
	}
	for name, content := range bad {
		path := writeFile(t, dir, name, content)
		if _, err := LoadKeyFile(path); err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: err = %v, want an error naming the file", name, err)
		}
	}
	if _, err := LoadKeyFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing key file accepted")
	}
	if _, err := NewGrantStore(nil, key[:16]); err == nil {
		t.Error("16-byte key accepted")
	}
}

func TestGrantStorePutGetDelete(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	clock := newFakeClock()
	g, err := NewGrantStore(rdb, testGrantKey, WithGrantClock(clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if _, err := g.Get(ctx, mailboxA); !errors.Is(err, ErrNoGrant) {
		t.Fatalf("Get before Put: %v, want ErrNoGrant", err)
	}
	if err := g.Put(ctx, mailboxA, "crm", rtInitial); err != nil {
		t.Fatal(err)
	}
	created := clock.Now()
	gr, err := g.Get(ctx, mailboxA)
	if err != nil {
		t.Fatal(err)
	}
	want := Grant{Mailbox: "sales@contoso.com", Credential: "crm", Created: created, Updated: created, Generation: 1}
	if gr != want {
		t.Fatalf("Get = %+v, want %+v", gr, want)
	}

	// Encrypted at rest: neither the token nor its base64 is in Redis.
	raw, err := rdb.HGetAll(ctx, "hf:{grant:sales@contoso.com}").Result()
	if err != nil || len(raw) == 0 {
		t.Fatalf("raw hash %v, %v", raw, err)
	}
	dump := fmt.Sprint(raw)
	for _, s := range []string{rtInitial, base64.StdEncoding.EncodeToString([]byte(rtInitial)), "refresh-token"} {
		if strings.Contains(dump, s) {
			t.Fatalf("raw Redis value contains %q: %s", s, dump)
		}
	}
	if _, rt, err := g.load(ctx, mailboxA, true); err != nil || rt != rtInitial {
		t.Fatalf("load = %q, %v", rt, err)
	}

	// A store with another key cannot read it; a value copied to another
	// mailbox does not decrypt either.
	other := newGrantStore(t, rdb, bytes.Repeat([]byte{1}, GrantKeySize))
	if _, _, err := other.load(ctx, mailboxA, true); err == nil || !strings.Contains(err.Error(), "decrypt") {
		t.Fatalf("load with another key: %v", err)
	}
	if err := rdb.HSet(ctx, "hf:{grant:ops@contoso.com}", raw).Err(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := g.load(ctx, "ops@contoso.com", true); err == nil {
		t.Fatal("a sealed token copied to another mailbox decrypted")
	}

	// Put again: new generation, Created kept.
	clock.Add(time.Hour)
	if err := g.Put(ctx, mailboxA, "crm", "1.AQ8Ae1x9-second"); err != nil {
		t.Fatal(err)
	}
	gr, _ = g.Get(ctx, mailboxA)
	if gr.Generation != 2 || !gr.Created.Equal(created) || !gr.Updated.Equal(clock.Now()) {
		t.Fatalf("after second Put: %+v", gr)
	}
	list, err := g.List(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("List = %+v, %v", list, err)
	}

	// Rotate is a compare-and-set on the generation.
	if _, err := g.Rotate(ctx, mailboxA, 1, "stale"); !errors.Is(err, ErrGrantRotated) {
		t.Fatalf("Rotate with an old generation: %v", err)
	}
	if gen, err := g.Rotate(ctx, mailboxA, 2, "1.AQ8Ae1x9-third"); err != nil || gen != 3 {
		t.Fatalf("Rotate = %d, %v", gen, err)
	}

	if err := g.Delete(ctx, mailboxA); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Get(ctx, mailboxA); !errors.Is(err, ErrNoGrant) {
		t.Fatalf("Get after Delete: %v", err)
	}
	if _, err := g.Rotate(ctx, mailboxA, 3, "x"); !errors.Is(err, ErrNoGrant) {
		t.Fatalf("Rotate after Delete: %v", err)
	}
	if err := g.Put(ctx, "not-an-address", "crm", "x"); err == nil {
		t.Fatal("Put accepted a bad mailbox")
	}
}

// rotatingEntra issues a new refresh token on every redemption. With strict
// set, a redeemed refresh token is invalid afterwards; otherwise old ones
// stay valid, as Entra's do.
type rotatingEntra struct {
	strict bool

	mu     sync.Mutex
	valid  map[string]bool
	issued []string
}

func (e *rotatingEntra) redeem(rt string) (string, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.valid[rt] {
		return "", false
	}
	if e.strict {
		delete(e.valid, rt)
	}
	next := fmt.Sprintf("1.AQ8Ae1x9-rotated-%d", len(e.issued)+1)
	e.valid[next] = true
	e.issued = append(e.issued, next)
	return next, true
}

func (e *rotatingEntra) isValid(rt string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.valid[rt]
}

func (e *rotatingEntra) newest() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.issued[len(e.issued)-1]
}

func checkRefreshForm(t *testing.T, form url.Values) {
	if form.Get("grant_type") != "refresh_token" || form.Get("scope") != "https://outlook.office.com/SMTP.Send offline_access" ||
		form.Get("client_id") != testClientID || form.Get("client_secret") != secretV1 {
		t.Errorf("refresh form %v", form)
	}
}

// grantOfA stores rtInitial as mailboxA's grant of a secret credential
// at f, and returns the store, the credential and the grant's source.
func grantOfA(t *testing.T, rdb *redis.Client, f *fakeEntra) (*GrantStore, *Credential, *DelegatedSource) {
	t.Helper()
	cred := secretCredential(t, f, writeFile(t, t.TempDir(), "secret", secretV1), nil)
	g := newGrantStore(t, rdb, testGrantKey)
	if err := g.Put(t.Context(), mailboxA, "crm", rtInitial); err != nil {
		t.Fatal(err)
	}
	return g, cred, g.TokenSource(cred, mailboxA)
}

func TestDelegatedSourceRedeemsAndRotates(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	e := &rotatingEntra{strict: true, valid: map[string]bool{rtInitial: true}}
	f := newFakeEntra(t, func(w http.ResponseWriter, r *http.Request, form url.Values) {
		checkRefreshForm(t, form)
		next, ok := e.redeem(form.Get("refresh_token"))
		if !ok {
			writeFixture(t, w, http.StatusBadRequest, "aadsts700082")
			return
		}
		writeToken(w, "at-"+next, 3599, next)
	})
	g, cred, src := grantOfA(t, rdb, f)
	ctx := t.Context()
	if g.TokenSource(cred, "sales@contoso.com") != src {
		t.Fatal("TokenSource returned a second source for the same mailbox")
	}
	for range 5 {
		tok, err := src.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if tok.AccessToken != "at-1.AQ8Ae1x9-rotated-1" || tok.RefreshToken != "" || tok.Extra("refresh_token") != nil {
			t.Fatalf("token %q (refresh %q)", tok.AccessToken, tok.RefreshToken)
		}
	}
	if f.requests() != 1 {
		t.Fatalf("%d requests, want 1 (cached)", f.requests())
	}
	if _, rt, _ := g.load(ctx, mailboxA, true); rt != e.newest() {
		t.Fatalf("stored %q, want %q", rt, e.newest())
	}
	src.Invalidate()
	if _, err := src.Token(ctx); err != nil {
		t.Fatal(err)
	}
	gr, _ := g.Get(ctx, mailboxA)
	if _, rt, _ := g.load(ctx, mailboxA, true); rt != e.newest() || gr.Generation != 3 {
		t.Fatalf("stored %q gen %d, want %q gen 3", rt, gr.Generation, e.newest())
	}

	// An expired grant: invalid_grant as *TokenError, recorded, not cached.
	if err := g.Put(ctx, mailboxA, "crm", "1.AQ8Ae1x9-unknown"); err != nil {
		t.Fatal(err)
	}
	before := f.requests()
	for range 2 {
		_, err := src.Token(ctx)
		var te *TokenError
		if !errors.As(err, &te) || te.Code != CodeInvalidGrant || te.AADSTS != AADSTSRefreshTokenExpired {
			t.Fatalf("err = %v, want invalid_grant AADSTS700082", err)
		}
	}
	if n := f.requests() - before; n != 2 {
		t.Fatalf("%d requests for 2 failing calls, want 2", n)
	}
	gr, _ = g.Get(ctx, mailboxA)
	if !strings.Contains(gr.LastError, "AADSTS700082") {
		t.Fatalf("LastError = %q", gr.LastError)
	}

	// A grant registered for another credential is refused.
	if err := g.Put(ctx, mailboxA, "other-app", rtInitial); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Token(ctx); err == nil || !strings.Contains(err.Error(), "other-app") {
		t.Fatalf("err = %v", err)
	}
}

// TestGrantRedeem: Redeem asks Entra now even with an access token
// cached, and every redemption, with a new refresh token or without one,
// moves the grant's LastUsed and so its LapsesAt; a redemption without one
// clears the error an earlier refusal recorded.
func TestGrantRedeem(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	var rotate, refuse atomic.Bool
	rotate.Store(true)
	f := newFakeEntra(t, func(w http.ResponseWriter, r *http.Request, form url.Values) {
		checkRefreshForm(t, form)
		switch {
		case refuse.Load():
			writeFixture(t, w, http.StatusBadRequest, "aadsts700082")
		case rotate.Load():
			writeToken(w, "at-rotated", 3599, fmt.Sprintf("1.AQ8Ae1x9-next-%d", time.Now().UnixNano()))
		default:
			writeToken(w, "at-same", 3599, "")
		}
	})
	cred := secretCredential(t, f, writeFile(t, t.TempDir(), "secret", secretV1), nil)
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	var clock atomic.Int64
	clock.Store(now.UnixNano())
	g, err := NewGrantStore(rdb, testGrantKey, WithGrantClock(func() time.Time { return time.Unix(0, clock.Load()) }))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := g.Put(ctx, mailboxA, "crm", rtInitial); err != nil {
		t.Fatal(err)
	}
	gr, err := g.Get(ctx, mailboxA)
	if err != nil {
		t.Fatal(err)
	}
	if !gr.Redeemed.IsZero() || !gr.LastUsed().Equal(now) || !gr.LapsesAt().Equal(now.Add(90*24*time.Hour)) {
		t.Fatalf("new grant: redeemed %v, last used %v, lapses %v", gr.Redeemed, gr.LastUsed(), gr.LapsesAt())
	}
	if _, err := g.TokenSource(cred, mailboxA).Token(ctx); err != nil {
		t.Fatal(err)
	}

	// 40 days on, with the access token still cached: Redeem asks.
	day40 := now.Add(40 * 24 * time.Hour)
	clock.Store(day40.UnixNano())
	before := f.requests()
	if err := g.Redeem(ctx, cred, mailboxA); err != nil {
		t.Fatal(err)
	}
	if f.requests() != before+1 {
		t.Fatalf("Redeem made %d requests, want 1", f.requests()-before)
	}
	if gr, _ = g.Get(ctx, mailboxA); !gr.LastUsed().Equal(day40) || !gr.Updated.Equal(day40) {
		t.Fatalf("after a rotation: updated %v, last used %v, want %v", gr.Updated, gr.LastUsed(), day40)
	}

	// Refused: recorded, returned, the dates unchanged.
	refuse.Store(true)
	clock.Store(day40.Add(time.Hour).UnixNano())
	var te *TokenError
	if err := g.Redeem(ctx, cred, mailboxA); !errors.As(err, &te) || te.AADSTS != AADSTSRefreshTokenExpired {
		t.Fatalf("refused Redeem: %v", err)
	}
	if gr, _ = g.Get(ctx, mailboxA); !strings.Contains(gr.LastError, "AADSTS700082") || !gr.LastUsed().Equal(day40) {
		t.Fatalf("after a refusal: last error %q, last used %v", gr.LastError, gr.LastUsed())
	}

	// Answered without a new refresh token: the redemption still counts,
	// and the error is gone.
	refuse.Store(false)
	rotate.Store(false)
	day80 := now.Add(80 * 24 * time.Hour)
	clock.Store(day80.UnixNano())
	gen := gr.Generation
	if err := g.Redeem(ctx, cred, mailboxA); err != nil {
		t.Fatal(err)
	}
	gr, _ = g.Get(ctx, mailboxA)
	if gr.LastError != "" || gr.Generation != gen || !gr.Redeemed.Equal(day80) || !gr.Updated.Equal(day40) ||
		!gr.LapsesAt().Equal(day80.Add(RefreshTokenMaxInactive)) {
		t.Fatalf("after a redemption without rotation: %+v, lapses %v", gr, gr.LapsesAt())
	}
}

func TestDelegatedConsentRequired(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	f := newFakeEntra(t, func(w http.ResponseWriter, r *http.Request, form url.Values) {
		writeFixture(t, w, http.StatusBadRequest, "aadsts65001")
	})
	cred := secretCredential(t, f, writeFile(t, t.TempDir(), "secret", secretV1), nil)
	g := newGrantStore(t, rdb, testGrantKey)
	if err := g.Put(t.Context(), mailboxA, "crm", rtInitial); err != nil {
		t.Fatal(err)
	}
	_, err := g.TokenSource(cred, mailboxA).Token(t.Context())
	var te *TokenError
	if !errors.As(err, &te) || te.SubError != SubErrorConsentRequired || te.AADSTS != AADSTSConsentMissing {
		t.Fatalf("err = %v", err)
	}
	if f.requests() != 1 {
		t.Fatalf("%d requests, want 1 (the generation did not move, so no retry)", f.requests())
	}
}

// TestDelegatedUnavailableNotRecorded: a token endpoint that throttles
// (429) or is unavailable (503) says nothing of the grant: the redemption
// fails, and is tried again later, but the grant keeps no last error, so
// it is not counted failing (refused by Entra) while the endpoint is
// down. A refusal of the grant after it is recorded as before.
func TestDelegatedUnavailableNotRecorded(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	var mu sync.Mutex
	answer := "unavailable503"
	f := newFakeEntra(t, func(w http.ResponseWriter, r *http.Request, form url.Values) {
		mu.Lock()
		a := answer
		mu.Unlock()
		status := map[string]int{"unavailable503": http.StatusServiceUnavailable, "throttled429": http.StatusTooManyRequests}[a]
		if status == 0 {
			status = http.StatusBadRequest
		}
		writeFixture(t, w, status, a)
	})
	g, _, src := grantOfA(t, rdb, f)
	ctx := t.Context()
	for _, a := range []string{"unavailable503", "throttled429", "aadsts50173"} {
		mu.Lock()
		answer = a
		mu.Unlock()
		src.Invalidate()
		if _, err := src.Token(ctx); err == nil {
			t.Fatalf("%s: the redemption succeeded", a)
		}
		gr, err := g.Get(ctx, mailboxA)
		if err != nil {
			t.Fatal(err)
		}
		if refused := a == "aadsts50173"; refused != strings.Contains(gr.LastError, "AADSTS50173") || !refused && gr.LastError != "" {
			t.Errorf("after %s: last error %q", a, gr.LastError)
		}
	}
}

// TestConcurrentReplicasRotate runs two replicas (two stores, two sources,
// two Redis clients) that refresh the same grant at the same moment.
func TestConcurrentReplicasRotate(t *testing.T) {
	for _, strict := range []bool{true, false} {
		t.Run(fmt.Sprintf("strict=%v", strict), func(t *testing.T) {
			srv := redistest.Start(t)
			stores := [2]*GrantStore{
				newGrantStore(t, srv.Client(t), testGrantKey),
				newGrantStore(t, srv.Client(t), testGrantKey),
			}
			e := &rotatingEntra{strict: strict, valid: map[string]bool{rtInitial: true}}
			var arrived atomic.Int64
			both := make(chan struct{})
			f := newFakeEntra(t, func(w http.ResponseWriter, r *http.Request, form url.Values) {
				checkRefreshForm(t, form)
				if arrived.Add(1) == 2 {
					close(both)
				}
				next, ok := e.redeem(form.Get("refresh_token"))
				// Hold every answer until both replicas have asked.
				select {
				case <-both:
				case <-time.After(5 * time.Second):
					t.Error("the second replica never asked")
				}
				if !ok {
					// Answer the loser only once the winner has stored
					// its rotation, as the real race would often go.
					waitGeneration(t, stores[0], 2)
					writeFixture(t, w, http.StatusBadRequest, "aadsts50173")
					return
				}
				writeToken(w, "at-"+next, 3599, next)
			})
			secret := writeFile(t, t.TempDir(), "secret", secretV1)
			ctx := t.Context()
			if err := stores[0].Put(ctx, mailboxA, "crm", rtInitial); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for i := range stores {
				cred := secretCredential(t, f, secret, nil)
				src := stores[i].TokenSource(cred, mailboxA)
				wg.Go(func() {
					if _, err := src.Token(ctx); err != nil {
						t.Errorf("replica %d: %v", i, err)
					}
				})
			}
			wg.Wait()

			gr, rt, err := stores[1].load(ctx, mailboxA, true)
			if err != nil {
				t.Fatal(err)
			}
			if !e.isValid(rt) {
				t.Fatalf("stored refresh token %q is no longer valid: it was lost", rt)
			}
			if strict {
				// A redeemed-then-retried chain: rt0 -> rt1 (winner) -> rt2
				// (loser's retry). The newest must be the stored one.
				if f.requests() != 3 || rt != e.newest() || gr.Generation != 3 {
					t.Fatalf("requests %d, stored %q gen %d; want 3, %q, 3", f.requests(), rt, gr.Generation, e.newest())
				}
			} else {
				// Both redeemed rt0; one rotation was stored, the other
				// lost the compare-and-set and was dropped.
				if f.requests() != 2 || gr.Generation != 2 {
					t.Fatalf("requests %d, gen %d; want 2, 2", f.requests(), gr.Generation)
				}
			}
		})
	}
}

func waitGeneration(t *testing.T, g *GrantStore, gen int64) {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if gr, err := g.Get(t.Context(), mailboxA); err == nil && gr.Generation >= gen {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Errorf("generation %d never stored", gen)
}

func TestGrantStoreOnCluster(t *testing.T) {
	rdb := redistest.StartCluster(t, 3).Client(t)
	g := newGrantStore(t, rdb, testGrantKey)
	ctx := t.Context()
	mailboxes := []string{"a@contoso.com", "b@contoso.com", "c@contoso.com", "d@contoso.com", "e@contoso.com"}
	for _, m := range mailboxes {
		if err := g.Put(ctx, m, "crm", rtInitial+m); err != nil {
			t.Fatal(err)
		}
		if gen, err := g.Rotate(ctx, m, 1, "rotated-"+m); err != nil || gen != 2 {
			t.Fatalf("Rotate %s = %d, %v", m, gen, err)
		}
	}
	list, err := g.List(ctx)
	if err != nil || len(list) != len(mailboxes) {
		t.Fatalf("List = %+v, %v", list, err)
	}
	if _, rt, err := g.load(ctx, "c@contoso.com", true); err != nil || rt != "rotated-c@contoso.com" {
		t.Fatalf("load = %q, %v", rt, err)
	}
}

// TestGrantRotateWhileRedisFull: a refresh token Entra issued is stored
// while Redis is past its maxmemory (noeviction), as a queue that grew
// during an outage leaves it; a new grant is refused.
func TestGrantRotateWhileRedisFull(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	g := newGrantStore(t, rdb, testGrantKey)
	ctx := t.Context()
	if err := g.Put(ctx, mailboxA, "crm", rtInitial); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.ConfigSet(context.Background(), "maxmemory", "0") })
	if gen, err := g.Rotate(ctx, mailboxA, 1, "rotated-refresh-token"); err != nil || gen != 2 {
		t.Fatalf("Rotate with Redis full = %d, %v; want 2, nil", gen, err)
	}
	if err := g.Put(ctx, "new@contoso.com", "crm", rtInitial); err == nil {
		t.Error("Put of a new grant with Redis full succeeded; want Redis's refusal")
	}
}
