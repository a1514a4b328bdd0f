package relay

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"holdfast/auth"
	"holdfast/relay/o365"
	"holdfast/relay/upstream"
)

// Grant states counted by holdfast_grants.
const (
	grantOK = "ok"
	// grantLapsing: no error, but the refresh token lapses within
	// grantLapsingWithin unless redeemed: the keeper has not managed to
	// for a month.
	grantLapsing = "lapsing"
	// grantFailing: Entra refused the last redemption (the grant expired,
	// was revoked or lost its consent), or the relay has no credential
	// of the grant's name.
	grantFailing = "failing"
)

// grantLapsingWithin is how close to its lapse a grant counts as
// lapsing: the month ahead that the credentials' expiry warning gives.
const grantLapsingWithin = 30 * 24 * time.Hour

// defaultGrantRedeemAfter is ExchangeOptions.GrantRedeemAfter's default:
// a third of Entra's 90 days, leaving two months of hourly tries.
const defaultGrantRedeemAfter = 30 * 24 * time.Hour

// maxGrantRedeemAfter is the longest GrantRedeemAfter: it leaves a month
// of tries before Entra's 90 days.
const maxGrantRedeemAfter = 60 * 24 * time.Hour

// grantKeepEvery is how often a relay looks at every grant.
const grantKeepEvery = time.Hour

// keptGrants is what the keeper needs of the grant store.
type keptGrants interface {
	List(ctx context.Context) ([]auth.Grant, error)
	Get(ctx context.Context, mailbox string) (auth.Grant, error)
	Redeem(ctx context.Context, cred *auth.Credential, mailbox string) error
}

// grantKeeper keeps delegated grants from lapsing. Entra lets a refresh
// token lapse after 90 days unused (AADSTS700082), so a mailbox that
// rarely sends would find its mail held until it grants again. Each pass
// redeems every grant unused for redeemAfter, and every grant whose last
// redemption was refused (it may have been fixed since), and counts the
// grants by state for holdfast_grants. A pass runs at start, every
// grantKeepEvery, and soon after a grant is registered or removed. A
// grant under an open breaker is left to that breaker's probe (see
// breakerOpen).
type grantKeeper struct {
	grants      keptGrants
	creds       map[string]*auth.Credential
	redeemAfter time.Duration
	every       time.Duration
	now         func() time.Time
	log         *slog.Logger
	wake        chan struct{}
	desc        *prometheus.Desc
	// breakerOpen, when set, reports whether a breaker of a grant's
	// redemption is open: its mailbox's or its credential's. A
	// redemption is a token request, and under an open breaker the
	// fleet's only token request is its probe, one per interval; the
	// probe of a mailbox's breaker redeems the grant, and records the
	// redemption as any does.
	breakerOpen func(ctx context.Context, credential, mailbox string) bool

	mu     sync.Mutex
	counts map[string]int // by state, from the last pass; nil before one ended
	// refused holds each failing grant's error as last logged, so that a
	// refusal is logged once per replica, not at every pass.
	refused map[string]string
}

// newGrantKeeper builds the keeper of the exchange sender's grants.
func (s *Server) newGrantKeeper() *grantKeeper {
	x := s.opts.Exchange
	every, after := grantKeepEvery, x.GrantRedeemAfter.D()
	if x.grantKeepEvery > 0 {
		every = x.grantKeepEvery
	}
	if x.grantRedeemAfter > 0 {
		after = x.grantRedeemAfter
	}
	k := newGrantKeeper(s.exchange.grants, s.exchange.creds, after, every, s.log)
	// The gate's check of a send on the grant's route: the same breakers,
	// read as a send reads them.
	k.breakerOpen = func(ctx context.Context, credential, mailbox string) bool {
		return s.gate.check(ctx, grantRoute(credential, mailbox)) != nil
	}
	return k
}

func newGrantKeeper(grants keptGrants, creds map[string]*auth.Credential, redeemAfter, every time.Duration, log *slog.Logger) *grantKeeper {
	return &grantKeeper{
		grants: grants, creds: creds, redeemAfter: redeemAfter, every: every, now: time.Now,
		log:     log.With("component", "grants"),
		wake:    make(chan struct{}, 1),
		refused: map[string]string{},
		desc: prometheus.NewDesc("holdfast_grants",
			"Delegated mailbox grants by state (ok; lapsing: Entra lets the refresh token lapse within 30 days unless it is redeemed; failing: Entra refused its last redemption), as the last pass found them.",
			[]string{"state"}, nil),
	}
}

// changed asks for a pass soon: a grant was registered or removed.
func (k *grantKeeper) changed(string) {
	select {
	case k.wake <- struct{}{}:
	default:
	}
}

// run passes at start, every k.every and when woken, until ctx ends. The
// first pass waits up to a tenth of k.every (at most a minute), so that
// replicas started together do not redeem the same grants together.
func (k *grantKeeper) run(ctx context.Context) {
	first := time.NewTimer(rand.N(min(k.every/10, time.Minute) + 1))
	defer first.Stop()
	t := time.NewTicker(k.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-first.C:
		case <-t.C:
		case <-k.wake:
		}
		k.pass(ctx)
	}
}

// pass looks at every grant once.
func (k *grantKeeper) pass(ctx context.Context) {
	list, err := k.grants.List(ctx)
	if err != nil {
		if ctx.Err() == nil {
			k.log.Warn("cannot list the delegated grants; the next pass tries again", "err", err, "in", k.every)
		}
		return
	}
	counts := map[string]int{grantOK: 0, grantLapsing: 0, grantFailing: 0}
	// waitFor holds the credentials whose redemptions cannot succeed in
	// this pass (refused or unreachable): one try each, not one a grant.
	waitFor := map[string]bool{}
	redeemed := 0
	for _, g := range list {
		if ctx.Err() != nil {
			return
		}
		cred := k.creds[g.Credential]
		if cred != nil && !waitFor[g.Credential] && k.due(g) && !k.underOpenBreaker(ctx, g) {
			// Read again: another replica may have redeemed it meanwhile.
			if cur, err := k.grants.Get(ctx, g.Mailbox); err == nil && k.due(cur) {
				err := k.grants.Redeem(ctx, cred, g.Mailbox)
				if err == nil {
					redeemed++
				} else if class := upstream.ClassOf(o365.ClassifyTokenError(err, o365.Delegated)); class != upstream.Mailbox {
					waitFor[g.Credential] = true
					k.log.Warn("cannot redeem the credential's delegated grants now; the next pass tries again",
						"credential", g.Credential, "class", class.String(), "err", err, "in", k.every)
				}
				if cur, err = k.grants.Get(ctx, g.Mailbox); err == nil {
					g = cur
				} else if errors.Is(err, auth.ErrNoGrant) {
					continue
				}
			}
		}
		state := k.state(g, cred)
		counts[state]++
		k.logRefusal(g, cred, state)
	}
	if redeemed > 0 {
		k.log.Info("delegated grants redeemed so that they do not lapse", "grants", redeemed, "unused_for", k.redeemAfter)
	}
	k.mu.Lock()
	k.counts = counts
	k.mu.Unlock()
}

// underOpenBreaker reports whether a breaker of g's redemption is open
// (see breakerOpen).
func (k *grantKeeper) underOpenBreaker(ctx context.Context, g auth.Grant) bool {
	return k.breakerOpen != nil && k.breakerOpen(ctx, g.Credential, g.Mailbox)
}

// due reports whether a pass redeems g: unused for redeemAfter, or
// refused last time.
func (k *grantKeeper) due(g auth.Grant) bool {
	return g.LastError != "" || k.now().Sub(g.LastUsed()) >= k.redeemAfter
}

func (k *grantKeeper) state(g auth.Grant, cred *auth.Credential) string {
	switch {
	case cred == nil || g.LastError != "":
		return grantFailing
	case g.LapsesAt().Sub(k.now()) < grantLapsingWithin:
		return grantLapsing
	}
	return grantOK
}

// logRefusal logs a grant that turned failing or lapsing, once until it
// changes.
func (k *grantKeeper) logRefusal(g auth.Grant, cred *auth.Credential, state string) {
	why := g.LastError
	switch {
	case cred == nil:
		why = "credential " + g.Credential + " is not configured on this relay"
	case state == grantLapsing:
		why = "lapsing"
	}
	k.mu.Lock()
	last, seen := k.refused[g.Mailbox]
	if state == grantOK {
		delete(k.refused, g.Mailbox)
	} else {
		k.refused[g.Mailbox] = why
	}
	k.mu.Unlock()
	if state == grantOK || seen && last == why {
		return
	}
	if state == grantLapsing {
		k.log.Warn("a delegated grant lapses soon and could not be redeemed: its mail will be held from then until the mailbox grants again",
			"mailbox", g.Mailbox, "credential", g.Credential, "lapses_at", g.LapsesAt().UTC().Format(time.RFC3339))
		return
	}
	k.log.Error("a delegated grant is refused: the mailbox's mail is held until it is registered again (PUT /v1/mailboxes/ADDRESS)",
		"mailbox", g.Mailbox, "credential", g.Credential, "err", why)
}

func (k *grantKeeper) Describe(ch chan<- *prometheus.Desc) { ch <- k.desc }

// Collect serves the counts of the last pass; none before the first.
func (k *grantKeeper) Collect(ch chan<- prometheus.Metric) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for state, n := range k.counts {
		ch <- prometheus.MustNewConstMetric(k.desc, prometheus.GaugeValue, float64(n), state)
	}
}
