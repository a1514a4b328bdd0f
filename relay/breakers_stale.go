package relay

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

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

// issued records that a credential's material just got a token. A
// record Redis does not take is made again (keep): the next token may be
// an hour away.
func (g *gate) issued(name, fingerprint string) {
	at := time.Now()
	err := g.set.Succeeded(context.Background(), credentialBreaker(name), fingerprint)
	g.keep("record of the credential that works: "+name, err, func(ctx context.Context) error {
		return g.set.SucceededAt(ctx, credentialBreaker(name), fingerprint, at)
	})
	if err != nil {
		g.log.Warn("cannot record the credential that works; recorded again once Redis answers", "credential", name, "err", err)
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
			g.log.Warn("cannot record this relay as stale; recorded once Redis answers", "credential", cred, "err", err)
		}
		g.log.Warn("this relay's secret or certificate file is older than the one that works for the fleet; "+
			"it leaves the credential's mail to the other relays until the file changes",
			"credential", cred, "fingerprint", fingerprint)
	}
}

// reconcileStale makes this replica's stale marks in the credential
// breakers' records, as list holds them, match its state: a mark or its
// removal that Redis did not take, or that reached it out of order, and a
// mark an earlier process under this replica's name left (one killed
// while stale, whose file changed before this one started), are written
// again. It runs at each breaker poll, and writes only what differs.
func (g *gate) reconcileStale(ctx context.Context, list []breaker.Status) {
	for _, st := range list {
		cred, ok := strings.CutPrefix(st.Name, "cred:")
		if !ok {
			continue
		}
		stale := g.staleFor(cred)
		if slices.Contains(st.StaleReplicas, g.replica) == stale {
			continue
		}
		if err := g.set.MarkStale(ctx, st.Name, g.replica, stale); err != nil {
			return // Redis does not answer: the next poll tries again
		}
		g.log.Info("recorded this relay's stale state for the credential", "credential", cred, "stale", stale)
	}
	g.dropGoneStale(ctx, list)
}

// goneStaleEvery is how often a replica removes from the credential
// breakers' records the stale marks of relays that no longer run, made
// at least goneStaleAge ago (breaker.Set.DropGoneStale).
const (
	goneStaleEvery = time.Minute
	goneStaleAge   = time.Minute
)

// dropGoneStale removes, at most every goneStaleEvery, the stale marks
// that list names of other relays that no longer run. Pods replaced by a
// rollout get new names; a mark one left when it was killed or stopped
// while stale would otherwise be shown for good. It runs in the breaker
// poll, the only caller of reconcileStale.
func (g *gate) dropGoneStale(ctx context.Context, list []breaker.Status) {
	if time.Since(g.goneSwept) < g.goneStaleEvery {
		return
	}
	g.goneSwept = time.Now()
	for _, st := range list {
		others := slices.DeleteFunc(slices.Clone(st.StaleReplicas), func(r string) bool { return r == g.replica })
		if len(others) == 0 {
			continue
		}
		dropped, err := g.set.DropGoneStale(ctx, st.Name, others, goneStaleAge)
		if err != nil {
			return // Redis does not answer: the next sweep tries again
		}
		for _, r := range dropped {
			g.log.Info("removed the stale mark of a relay that no longer runs", "breaker", st.Name, "replica", r)
		}
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
			g.log.Warn("cannot record this relay as no longer stale; recorded once Redis answers", "credential", cred, "err", err)
		}
	}
	return false
}

// staleAny reports whether this replica is stale for any credential.
func (g *gate) staleAny() bool {
	g.mu.Lock()
	creds := make([]string, 0, len(g.stale))
	for cred := range g.stale {
		creds = append(creds, cred)
	}
	g.mu.Unlock()
	for _, cred := range creds {
		if g.staleFor(cred) {
			return true
		}
	}
	return false
}

// probeRefusedStale reports whether a probe failed because Entra refused
// this replica's material of credential cred while the fleet's record,
// read now, names newer material as the one that works: this replica is
// then stale for it, and the probe is not its to decide. A replica whose
// file has not changed since the breaker opened knows of no newer
// material until another replica's token says so.
//
// When Redis does not give the record, it cannot tell: it fails, and the
// probe counts as not run rather than as a failure of the credential.
func (g *gate) probeRefusedStale(ctx context.Context, cred string, err error) (bool, error) {
	var te *auth.TokenError
	if cred == "" || !errors.As(err, &te) || !o365.EntraRefused(te) {
		return false, nil
	}
	sts, rerr := g.set.Fresh(ctx, credentialBreaker(cred))
	if rerr != nil {
		return false, rerr
	}
	if len(sts) == 0 || !materialOf(te).Stale(sts[0]) {
		return false, nil
	}
	g.markStale(cred, te.Fingerprint)
	return true, nil
}

// probeAtStart asks, for each credential whose breaker is open, for a
// probe by this replica at once when its secret or certificate is news
// to the breaker: its files were written after the breaker opened (a
// redeploy with a rotated secret), or it got a token since (a relay
// restarted after it was killed in its probe). Either way its mail need
// not wait for the open interval. A relay started with the files it had
// when the breaker opened (or was tripped) waits for the probe as the
// others do. A breaker whose record Redis does not give is read again
// (keep).
func (g *gate) probeAtStart(ctx context.Context) {
	if g.x == nil {
		return
	}
	for name := range g.x.creds {
		check := func(ctx context.Context) error { return g.probeAtStartOne(ctx, name) }
		g.keep("start-up probe check of "+name, check(ctx), check)
	}
}

// probeAtStartOne is probeAtStart for credential name. It fails when
// Redis does not give the breaker's record.
func (g *gate) probeAtStartOne(ctx context.Context, name string) error {
	c := g.x.creds[name]
	sts, err := g.set.Fresh(ctx, credentialBreaker(name))
	if err != nil {
		return err
	}
	if len(sts) == 0 || sts[0].State != breaker.Open {
		return nil
	}
	st := sts[0]
	proven := st.GoodFingerprint == c.Fingerprint() && !st.GoodSince.Before(st.Since)
	if !proven && !c.Written().After(st.Since) {
		return nil
	}
	g.log.Info("credential breaker found open at start; probing it with this relay's secret", "credential", name)
	if !proven {
		// A file written after the breaker opened is a rotation, as a
		// change seen while running is (a Secret updated, then the pods
		// restarted): while Entra propagates the new secret, a refusal
		// of the probe is retried, and does not count.
		g.fileChangedAt(name, c.Written())
	}
	if err := g.probeNow(ctx, credentialBreaker(name)); err != nil {
		g.log.Warn("cannot request a probe", "credential", name, "err", err)
	}
	return nil
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
