package relay

import (
	"context"
	"errors"

	"holdfast/auth"
	"holdfast/breaker"
	"holdfast/relay/o365"
	"holdfast/relay/upstream"
)

// A Kubernetes Secret reaches each pod's file at a different moment. The
// breaker record keeps the fingerprint of the secret or certificate that
// last got a token, and since when; a credential failure of another one
// whose files were written before that does not touch the fleet-wide
// breaker (breaker.ErrStale). It marks this replica stale
// for that credential instead: the replica stops leasing the credential's
// routes and lets the others deliver, says so once, and rejoins as soon
// as its file changes.

// issued records that a credential's material just got a token.
func (g *gate) issued(name, fingerprint string) {
	ctx := context.Background()
	if err := g.set.Succeeded(ctx, credentialBreaker(name), fingerprint); err != nil {
		g.log.Warn("cannot record the credential that works", "credential", name, "err", err)
	}
}

// materialOf is the material a failed token request used: its
// fingerprint and when its files were written; zero when err is not one.
func materialOf(err error) breaker.Material {
	var te *auth.TokenError
	if errors.As(err, &te) {
		return breaker.Material{Fingerprint: te.Fingerprint, Written: te.Written}
	}
	return breaker.Material{}
}

// markStale notes that this replica's material for a credential failed
// while another works.
func (g *gate) markStale(cred, fingerprint string) {
	g.mu.Lock()
	if g.stale == nil {
		g.stale = map[string]string{}
	}
	first := g.stale[cred] != fingerprint
	g.stale[cred] = fingerprint
	g.mu.Unlock()
	if first {
		if err := g.set.MarkStale(context.Background(), credentialBreaker(cred), g.replica, true); err != nil {
			g.log.Warn("cannot record this relay as stale", "credential", cred, "err", err)
		}
		g.log.Warn("this relay's secret or certificate file is older than the one that works for the fleet; "+
			"it leaves the credential's mail to the other relays until the file changes",
			"credential", cred, "fingerprint", fingerprint)
	}
}

// staleFor reports whether this replica is stale for a credential: its
// material is still the one that failed.
func (g *gate) staleFor(cred string) bool {
	g.mu.Lock()
	fp := g.stale[cred]
	g.mu.Unlock()
	if fp == "" || g.x == nil {
		return false
	}
	c := g.x.creds[cred]
	if c != nil && c.Fingerprint() == fp {
		return true
	}
	g.mu.Lock()
	rejoined := g.stale[cred] == fp
	if rejoined {
		delete(g.stale, cred)
	}
	g.mu.Unlock()
	if rejoined {
		g.log.Info("this relay's credential file changed; it sends again", "credential", cred)
		if err := g.set.MarkStale(context.Background(), credentialBreaker(cred), g.replica, false); err != nil {
			g.log.Warn("cannot record this relay as no longer stale", "credential", cred, "err", err)
		}
	}
	return false
}

// skip tells the dispatcher which routes this replica leaves alone: those
// of credentials it is stale for.
func (g *gate) skip(route string) bool {
	_, cred, _, ok := parseRoute(route)
	return ok && g.staleFor(cred)
}

// staleError is what a send under a credential this replica is stale for
// gets: it waits, spending no attempt and counting no failure, for
// another replica (or a changed file).
func staleError(cred string) error {
	return &upstream.Error{Class: upstream.Throttled, RetryAfter: breakerRecheck,
		Text: "this relay's secret for " + cred + " is older than the one that works; another relay sends it"}
}

// refusedStale reports whether Entra refused material older than the one
// that works, as this replica last read the breaker's record (the record
// is re-read at each transition): if so this replica is now stale for the
// credential, and the send waits instead of failing. Material written
// after the working one got its first token (a new secret that is wrong)
// is not stale: its failures count.
func (g *gate) refusedStale(cred string, te *auth.TokenError) bool {
	if !o365.EntraRefused(te) {
		return false
	}
	m := materialOf(te)
	if !m.Stale(g.set.Cached(credentialBreaker(cred))) {
		return false
	}
	g.markStale(cred, te.Fingerprint)
	return true
}

// recordCredentialFailure counts a credential failure on the fleet-wide
// breaker, unless it is a failure of stale material.
func (g *gate) recordCredentialFailure(ctx context.Context, name, cred string, err error) {
	m := materialOf(err)
	rerr := g.set.RecordAs(ctx, name, err, m)
	switch {
	case errors.Is(rerr, breaker.ErrStale):
		g.markStale(cred, m.Fingerprint)
	case rerr != nil:
		g.log.Warn("cannot record failure on breaker", "breaker", name, "err", rerr)
	}
}
