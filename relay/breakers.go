package relay

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"holdfast/auth"
	"holdfast/breaker"
	"holdfast/queue"
	"holdfast/relay/destination"
	"holdfast/relay/o365"
	"holdfast/relay/upstream"

	"golang.org/x/oauth2"
)

// Breaker names: one per credential, one per mailbox.
func credentialBreaker(cred string) string { return "cred:" + cred }
func mailboxBreaker(mailbox string) string { return "mbx:" + strings.ToLower(mailbox) }

// routeBreakers are the breakers a route's mail depends on: its
// credential's and its mailbox's.
func routeBreakers(route string) (cred, mailbox string, ok bool) {
	_, c, m, ok := parseRoute(route)
	if !ok {
		return "", "", false
	}
	return credentialBreaker(c), mailboxBreaker(m), true
}

// errBreakerOpen is returned instead of sending while a route's breaker is
// open: the message is held, no token is fetched and no AUTH is tried.
var errBreakerOpen = errors.New("breaker open")

// gate ties the auth circuit breakers to delivery: it counts credential
// and mailbox failures, holds a route's mail while one of its breakers is
// open, probes open breakers, and releases the mail when they close.
type gate struct {
	set *breaker.Set
	q   *queue.Queue
	x   *exchange
	log *slog.Logger
	// escalate is how many distinct delegated mailboxes of one credential
	// failing 535 5.7.3 in a row open the credential's breaker.
	escalate int
	// wake makes the probe loop look at once (buffered, one slot).
	wake chan struct{}
	// released, when set, is told that held routes were released.
	released func()
	// trial, when set, sends one message of a route, held or not, as a
	// worker does, and returns the send's error (deliverer.trial): the
	// probe of a mailbox's breaker whose mail goes by Graph.
	trial func(ctx context.Context, route string) error
	// reconcileNow makes the reconcile loop run at once (buffered, one
	// slot).
	reconcileNow chan struct{}
	// propagationWindow: see breakers_propagation.go.
	propagationWindow time.Duration

	mu sync.Mutex
	// refused holds, per credential (or delegated mailbox), when Entra
	// last refused it: see token.
	refused map[string]time.Time
	// turns holds, per credential (or delegated mailbox), the turn of
	// its token requests: see token.
	turns map[string]chan struct{}
	// stale holds, per credential, the fingerprint of this replica's
	// material that failed while another works (breakers_stale.go).
	stale map[string]string
	// goneSwept is when dropGoneStale last ran; the breaker poll's
	// goroutine alone reads and writes it.
	goneSwept time.Time
	// goneStaleEvery is how often dropGoneStale runs.
	goneStaleEvery time.Duration
	// changed holds, per credential, when this replica's files of it last
	// changed (breakers_propagation.go).
	changed map[string]time.Time
	// cured holds, per credential breaker, the newest cure of a refused
	// token this replica acted on (breakers_turn.go).
	cured map[string]time.Time
	// replica names this relay among the fleet's (Options.Replica).
	replica string
	// mailboxesDue: a credential's breaker closed, and the open mailbox
	// breakers are to be probed at once (see transition).
	mailboxesDue bool
	// redos holds the Redis writes, by what they do, that failed while
	// Redis did not answer: see keep.
	redos map[string]redoWrite
	redoN uint64 // counts keep's stored writes
}

// breakerRecheck is when a send held back by a breaker or a stale
// credential is due again.
const breakerRecheck = time.Second

// refusalHold is how long after Entra refuses a credential (400 or 401:
// an expired or wrong secret, a revoked grant) this replica asks again
// only as a probe. It outlasts the breakers' 500 ms poll, so that the
// sends that were already past the breaker check when it opened do not
// each ask too.
const refusalHold = time.Second

// token gets a route's token through the breakers: none, cached or new,
// while one of the route's breakers is open (a send that waited for a
// connection slot while its breaker opened must not reach Entra or try
// AUTH), and none within refusalHold of Entra refusing the same
// credentials: that send waits as throttled, spending no attempt and
// counting no failure, while the refusal reaches the breaker.
func (g *gate) token(ctx context.Context, route string, src o365.TokenSource) (*oauth2.Token, error) {
	if err := g.check(ctx, route); err != nil {
		return nil, err
	}
	delegated, cred, mailbox, _ := parseRoute(route)
	key := credentialBreaker(cred)
	if delegated {
		key = mailboxBreaker(mailbox)
	}
	// One request per key at a time, checked and recorded in its turn:
	// a send that asks while a request is out waits for its verdict, so
	// no second request starts between a refusal and its record.
	turn := g.tokenTurn(key)
	select {
	case turn <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-turn }()
	if !delegated && g.staleFor(cred) {
		return nil, staleError(cred)
	}
	g.mu.Lock()
	wait := time.Until(g.refused[key].Add(refusalHold))
	g.mu.Unlock()
	if wait > 0 {
		return nil, &upstream.Error{Class: upstream.Throttled, RetryAfter: wait,
			Text: "the token endpoint refused " + key + " just now; waiting for the breaker"}
	}
	tok, err := src.Token(ctx)
	var te *auth.TokenError
	if !delegated && errors.As(err, &te) && g.refusedStale(cred, te) {
		return nil, staleError(cred)
	}
	if o365.EntraRefused(err) {
		g.mu.Lock()
		if g.refused == nil {
			g.refused = map[string]time.Time{}
		}
		g.refused[key] = time.Now()
		g.mu.Unlock()
	}
	return tok, err
}

// tokenTurn returns the turn of a credential's (or delegated mailbox's)
// token requests: a channel of one slot.
func (g *gate) tokenTurn(key string) chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.turns == nil {
		g.turns = map[string]chan struct{}{}
	}
	t := g.turns[key]
	if t == nil {
		t = make(chan struct{}, 1)
		g.turns[key] = t
	}
	return t
}

// forgetRefusals lets token ask Entra at once again: the files changed,
// or a breaker closed.
func (g *gate) forgetRefusals() {
	g.mu.Lock()
	clear(g.refused)
	g.mu.Unlock()
}

// probeNow asks the fleet for an immediate probe of the breaker, and this
// replica's probe loop to look now. A request Redis does not take is
// asked again (keep): the file change that asked for it is not reported
// twice.
func (g *gate) probeNow(ctx context.Context, name string) error {
	g.forgetRefusals()
	ask := func(ctx context.Context) error {
		_, err := g.set.ProbeNowHere(ctx, name)
		if errors.Is(err, breaker.ErrHeld) {
			return nil // an operator holds it: it waits for a reset
		}
		return err
	}
	err := ask(ctx)
	g.keep("probe of "+name, err, ask)
	if err != nil {
		return fmt.Errorf("%w; asked again once Redis answers", err)
	}
	g.wakeProbes()
	return nil
}

// redoWrite is a Redis write to make again, and which keep call stored it.
type redoWrite struct {
	write func(context.Context) error
	n     uint64
}

// keep notes how a Redis write made in answer to an event (a file change,
// a token, a start) ended, under what names it. When it failed (err), the
// probe loop makes it again with again each second until Redis takes it
// (redo): the event is not seen twice, so the write would be lost to a
// moment without Redis. A later write under the same name replaces it.
func (g *gate) keep(what string, err error, again func(context.Context) error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err == nil {
		delete(g.redos, what)
		return
	}
	if g.redos == nil {
		g.redos = map[string]redoWrite{}
	}
	g.redoN++
	g.redos[what] = redoWrite{again, g.redoN}
}

// redo makes again the writes keep holds. It stops at the first one
// Redis still does not take.
func (g *gate) redo(ctx context.Context) {
	g.mu.Lock()
	names := slices.Sorted(maps.Keys(g.redos))
	g.mu.Unlock()
	for _, what := range names {
		g.mu.Lock()
		w, ok := g.redos[what]
		g.mu.Unlock()
		if !ok {
			continue
		}
		if err := w.write(ctx); err != nil {
			return
		}
		g.mu.Lock()
		if g.redos[what].n == w.n {
			delete(g.redos, what)
		}
		g.mu.Unlock()
		g.log.Info("done now that Redis answers", "what", what)
	}
}

// wakeProbes makes the probe loop look at once.
func (g *gate) wakeProbes() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// trialKey marks the context of a probe's trial send with the name of
// the breaker it tests.
type trialKey struct{}

// withTrial marks ctx as the trial send of breaker name's probe: check
// lets it past that breaker, open as it is.
func withTrial(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, trialKey{}, name)
}

// check returns errBreakerOpen, as a held failure of the right class,
// when one of the route's breakers is open, but for the one whose probe
// ctx carries the trial send of (withTrial).
func (g *gate) check(ctx context.Context, route string) error {
	cred, mbx, ok := routeBreakers(route)
	if !ok {
		return nil
	}
	trial, _ := ctx.Value(trialKey{}).(string)
	for _, b := range []struct {
		name  string
		class upstream.Class
	}{{cred, upstream.Credential}, {mbx, upstream.Mailbox}} {
		if b.name == trial {
			continue
		}
		allowed, err := g.set.Allow(ctx, b.name)
		if !allowed {
			return openError(b.name, b.class, g.set.Cached(b.name).Reason, err)
		}
	}
	return nil
}

// openError is the error of a send held by the open breaker name: it is
// retried shortly, the route held meanwhile, since this replica's view of
// the breaker may be a poll behind. err is what the breaker said, if
// anything.
func openError(name string, class upstream.Class, reason string, err error) error {
	text := "breaker " + name + " open"
	if reason != "" {
		text += ": " + reason
	}
	return &upstream.Error{Class: class, Text: text, RetryAfter: breakerRecheck, Err: errors.Join(errBreakerOpen, err)}
}

// checkNow is check with the records read from Redis now, in one round
// trip: a send that starts after "holdfast breaker trip" returned is held
// on every replica, whatever its cache says.
func (g *gate) checkNow(ctx context.Context, route string) error {
	cred, mbx, ok := routeBreakers(route)
	if !ok {
		return nil
	}
	// With Redis unreadable, check falls back to the cached records and
	// the local breakers.
	_, _ = g.set.Fresh(ctx, cred, mbx)
	return g.check(ctx, route)
}

// failed counts a credential or mailbox failure of a route, or, when the
// breaker was already open, holds the route.
func (g *gate) failed(ctx context.Context, route string, err error) {
	cred, mbx, ok := routeBreakers(route)
	if !ok {
		return
	}
	if errors.Is(err, errBreakerOpen) {
		g.holdRoutes(ctx, []string{route})
		return
	}
	if upstream.ClassOf(err) == upstream.Mailbox {
		g.record(ctx, mbx, err)
	} else {
		_, credName, _, _ := parseRoute(route)
		g.recordCredentialFailure(ctx, cred, credName, err)
		if o365.AppTokenRefused(err) {
			// Exchange gives the same reply when the token is bad and
			// when the service principal has no permission on this one
			// mailbox (FullAccess, or an RBAC scope without it): it
			// counts on the mailbox's breaker too, which then holds that
			// mailbox alone, while the credential's probe passes over a
			// mailbox with failures (probeRoutes).
			g.record(ctx, mbx, err)
		}
	}
	if delegated, _, mailbox, _ := parseRoute(route); delegated && o365.DelegatedTokenRefused(err) {
		// One mailbox's 535 is that mailbox's problem; several in a row
		// point at the app registration.
		if rerr := g.set.RecordSpread(ctx, cred, mailbox, err, g.escalate); rerr != nil {
			g.log.Warn("cannot record failure on breaker", "breaker", cred, "err", rerr)
		}
	}
}

// record counts a failure (or, with a nil err, a success) on breaker
// name, logging what Redis did not take.
func (g *gate) record(ctx context.Context, name string, err error) {
	if rerr := g.set.Record(ctx, name, err); rerr != nil {
		g.log.Warn("cannot record failure on breaker", "breaker", name, "err", rerr)
	}
}

// delivered resets the route's breakers' failure counts; it costs nothing
// while they count no failures.
func (g *gate) delivered(ctx context.Context, route string) {
	cred, mbx, ok := routeBreakers(route)
	if !ok {
		return
	}
	for _, name := range []string{cred, mbx} {
		if err := g.set.Record(ctx, name, nil); err != nil {
			g.log.Warn("cannot record success on breaker", "breaker", name, "err", err)
		}
	}
}

// transition reacts to a breaker that changed, on this replica: a
// closed credential breaker re-reads its files (another replica's probe
// most likely closed it with a rotated file this replica has not re-read
// yet) and forgets refusals; then the held set is reconciled at once.
func (g *gate) transition(t breaker.Transition) {
	// An open or half-open breaker holds mail; a closed one is the
	// recovery, news but not a warning.
	level := slog.LevelWarn
	if t.To == breaker.Closed {
		level = slog.LevelInfo
	}
	msg := "breaker " + t.To.String()
	if t.Found {
		// Opened before this relay started: not news, but its mail is
		// held all the same.
		msg = "breaker found " + t.To.String()
	}
	g.log.Log(context.Background(), level, msg, "breaker", t.Name, "reason", t.Reason, "generation", t.Generation, "since", t.At)
	if t.To == breaker.Closed {
		g.forgetRefusals()
		if cred, ok := strings.CutPrefix(t.Name, "cred:"); ok && g.x != nil {
			if err := g.x.reloadCredential(cred); err != nil {
				g.log.Warn("cannot reload credential", "credential", cred, "err", err)
			}
			// A refusal at one mailbox may have been the credential's
			// (Exchange answers both 535 5.7.3): mailboxes that opened
			// meanwhile are probed now, not an open interval later.
			g.mu.Lock()
			g.mailboxesDue = true
			g.mu.Unlock()
			g.wakeProbes()
		}
	}
	select {
	case g.reconcileNow <- struct{}{}:
	default:
	}
}

// routesUnder lists the routes that depend on a breaker.
func (g *gate) routesUnder(ctx context.Context, name string) ([]string, error) {
	all, err := g.q.Routes(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, r := range all {
		if cred, mbx, ok := routeBreakers(r); ok && (cred == name || mbx == name) {
			out = append(out, r)
		}
	}
	return out, nil
}

// holdRoutes holds those of routes whose breakers are open, as this
// replica last read them.
func (g *gate) holdRoutes(ctx context.Context, routes []string) {
	for _, r := range routes {
		cred, mbx, ok := routeBreakers(r)
		if !ok {
			continue
		}
		g.hold(ctx, r, g.set.Cached(cred), g.set.Cached(mbx))
	}
}

// probeLoop probes open breakers when their probe is due, one replica in
// the fleet at a time, until ctx ends.
func (g *gate) probeLoop(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	// retry fires when the earliest probe retried for a secret still
	// propagating is due: sooner than the next tick.
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	var retryAt time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-g.wake:
		case <-retry.C:
			retryAt = time.Time{}
		}
		g.redo(ctx)
		list, err := g.set.Listed(ctx)
		if err != nil {
			continue
		}
		g.reconcileStale(ctx, list)
		g.probeMailboxesNow(ctx, list)
		waiting := g.mailboxesUnderOpenCredentials(ctx, list)
		for _, st := range list {
			if st.State != breaker.Open {
				continue
			}
			if cred, ok := strings.CutPrefix(st.Name, "cred:"); ok && g.staleFor(cred) {
				continue // its probe would fail on this replica's old file
			}
			if strings.HasPrefix(st.Name, "mbx:") && g.staleAny() {
				continue // the other replicas probe mailboxes with the secret that works
			}
			if waiting[st.Name] {
				continue // probed once its credential's breaker closes
			}
			if ok, err := g.set.AcquireProbe(ctx, st.Name); err != nil || !ok {
				continue
			}
			if after := g.runProbe(ctx, st.Name); after > 0 {
				if at := time.Now().Add(after); retryAt.IsZero() || at.Before(retryAt) {
					retryAt = at
					retry.Reset(after)
				}
			}
		}
	}
}

// mailboxesUnderOpenCredentials returns the open mailbox breakers in list
// whose every route is under an open credential breaker
// (credentialsOpen). Their probes wait: the token they would fetch, or
// the AUTH with it, fails on the credential's account, and would count on
// the mailbox with the credential's reason. They are probed at once when
// the credential's breaker closes (probeMailboxesNow). It reads the
// routes only while a credential's breaker and a mailbox's are open
// together; when it cannot, none waits.
func (g *gate) mailboxesUnderOpenCredentials(ctx context.Context, list []breaker.Status) map[string]bool {
	var credOpen, mailboxOpen bool
	for _, st := range list {
		credOpen = credOpen || st.State == breaker.Open && strings.HasPrefix(st.Name, "cred:")
		mailboxOpen = mailboxOpen || st.State == breaker.Open && strings.HasPrefix(st.Name, "mbx:")
	}
	if !credOpen || !mailboxOpen {
		return nil
	}
	routes, err := g.q.Routes(ctx)
	if err != nil {
		return nil
	}
	byMailbox := map[string][]string{}
	for _, r := range routes {
		if _, mbx, ok := routeBreakers(r); ok {
			byMailbox[mbx] = append(byMailbox[mbx], r)
		}
	}
	waiting := map[string]bool{}
	for mbx, rs := range byMailbox {
		waiting[mbx] = g.credentialsOpen(rs)
	}
	return waiting
}

// runProbe runs the probe of breaker name, whose lease this replica just
// took, keeping the lease while the probe and the writing of its result
// last, and records the result. It returns when this replica is to probe
// again (a secret still propagating), or 0.
func (g *gate) runProbe(ctx context.Context, name string) time.Duration {
	stop := g.keepProbe(name)
	defer stop()
	perr := g.probe(ctx, name)
	switch after, propagating := g.propagating(name, perr); {
	case errors.Is(perr, errProbeStale):
		g.writeProbe(ctx, name, func(ctx context.Context) error { return g.set.ReleaseProbe(ctx, name) })
		g.log.Info("breaker probe handed to another relay: this relay's secret is older than the one that works",
			"breaker", name, "err", perr)
	case errors.Is(perr, errProbeNotRun):
		// Nothing was asked of Microsoft: no failure of the
		// credential, so the open interval is not doubled.
		g.writeProbe(ctx, name, func(ctx context.Context) error {
			return g.set.ProbeRetry(ctx, name, perr, probeNotRunRetry)
		})
		g.log.Warn("breaker probe could not run; trying again soon", "breaker", name, "in", probeNotRunRetry, "err", perr)
	case upstream.AsksLater(perr):
		// The token endpoint or Exchange asked to be tried later:
		// nothing was learnt of the credential or the mailbox, so the
		// open interval is not doubled. The probe comes again after
		// it, or after the Retry-After given, if longer.
		after := max(g.set.Cached(name).Interval, upstream.RetryAfterOf(perr), time.Second)
		g.writeProbe(ctx, name, func(ctx context.Context) error {
			return g.set.ProbeRetry(ctx, name, perr, after)
		})
		g.log.Info("breaker probe met an upstream that asks to be tried later; probing again after the same interval",
			"breaker", name, "in", after, "err", perr)
		return after
	case propagating:
		g.writeProbe(ctx, name, func(ctx context.Context) error {
			return g.set.ProbeRetry(ctx, name, perr, after)
		})
		g.log.Info("breaker probed; the new secret is not propagated yet, probing again soon",
			"breaker", name, "in", after, "err", perr)
		return after
	default:
		g.writeProbe(ctx, name, func(ctx context.Context) error {
			return g.set.ProbeResult(ctx, name, perr)
		})
		g.log.Info("breaker probed", "breaker", name, "ok", perr == nil, "err", perr)
	}
	return 0
}

// keepProbe renews the probe lease of breaker name until the returned
// func is called, which returns once the renewal has ended: the lease of
// a relay killed in its probe lapses within the breakers' ProbeLease,
// while a live probe keeps it however long Microsoft takes to answer.
func (g *gate) keepProbe(name string) (stop func()) {
	return renewing(g.set.ProbeLease()/3, func(ctx context.Context) bool {
		err := g.set.RenewProbe(ctx, name)
		if err != nil && !errors.Is(err, breaker.ErrLeaseLost) && ctx.Err() == nil {
			g.log.Warn("cannot renew the probe's lease", "breaker", name, "err", err)
		}
		return !errors.Is(err, breaker.ErrLeaseLost)
	})
}

// errProbeStale marks a probe refused for this replica's material, older
// than the one that works: the probe is handed to another replica.
var errProbeStale = errors.New("this relay's secret is older than the one that works")

// probeMailboxesNow makes the probes of the open mailbox breakers in
// list due at once, fleet-wide, after a credential's breaker closed.
func (g *gate) probeMailboxesNow(ctx context.Context, list []breaker.Status) {
	g.mu.Lock()
	due := g.mailboxesDue
	g.mailboxesDue = false
	g.mu.Unlock()
	if !due {
		return
	}
	// Once Redis fails a request, the others are kept without trying.
	var err error
	for _, st := range list {
		if st.State != breaker.Open || st.Held || !strings.HasPrefix(st.Name, "mbx:") {
			continue // an operator's hold waits for a reset
		}
		ask := func(ctx context.Context) error {
			_, err := g.set.ProbeNow(ctx, st.Name)
			if errors.Is(err, breaker.ErrHeld) {
				return nil // held since the list was read
			}
			return err
		}
		if err == nil {
			if err = ask(ctx); err != nil {
				g.log.Warn("cannot request the mailboxes' probes; asked again once Redis answers", "breaker", st.Name, "err", err)
			}
		}
		g.keep("probe of "+st.Name, err, ask)
	}
}

// errProbeNotRun marks a probe that stopped before asking Microsoft
// anything, because Redis did not answer, or whose refusal by Entra could
// not be told from a stale secret's, for the same reason.
var errProbeNotRun = errors.New("probe not run")

// probeNotRunRetry is how soon a probe that could not run is tried again.
const probeNotRunRetry = 5 * time.Second

// probeWriteFor is how long a probe's result is tried again while Redis
// does not take it; keepProbe renews the lease meanwhile.
const probeWriteFor = 20 * time.Second

// writeProbe runs write, which records a probe's result, until it
// succeeds, the probe's lease is found lost, probeWriteFor has passed or
// ctx ends. A result lost to a moment without Redis would leave the
// breaker open, its mail held, until the probe's lease ran out.
func (g *gate) writeProbe(ctx context.Context, name string, write func(context.Context) error) {
	b := backoff{next: 100 * time.Millisecond, max: 2 * time.Second}
	until := time.Now().Add(probeWriteFor)
	for {
		err := write(ctx)
		if err == nil {
			return
		}
		if errors.Is(err, breaker.ErrLeaseLost) || ctx.Err() != nil || time.Now().Add(b.next).After(until) {
			g.log.Warn("cannot record probe result", "breaker", name, "err", err)
			return
		}
		b.wait(ctx)
	}
}

// probeTries is how many mailboxes a credential probe tries when
// mailboxes fail it on their own account.
const probeTries = 3

// probe runs a token fetch and an SMTP AUTH, sending nothing, as a route
// under the breaker (or, for a credential with no route yet, a token
// fetch only); a credential's routes whose mail goes by Graph get the
// token fetch only, and a mailbox's a trial send (probeByTrial). Files
// are re-read first: the rotation that asked for this probe may have
// been seen by another replica first.
//
// A credential's probe tests the credential, not a mailbox: it uses an
// app-only route whose mailbox is not known to be broken (no open
// mailbox breaker, no failure counted on it). A mailbox-class failure is
// recorded on that mailbox's breaker, and the probe tries another
// mailbox, up to probeTries.
func (g *gate) probe(ctx context.Context, name string) (result error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	routes, err := g.routesUnder(ctx, name)
	if err != nil {
		return fmt.Errorf("%w: the routes under the breaker could not be read: %w", errProbeNotRun, err)
	}
	credName, isCred := strings.CutPrefix(name, "cred:")
	candidates, failing := routes, false
	if isCred {
		candidates, failing = g.probeRoutes(ctx, routes)
	} else {
		// Its credential's breaker may have opened since the probe loop
		// looked: the routes under it wait for it to close.
		candidates = slices.DeleteFunc(slices.Clone(routes), func(r string) bool { return g.credentialsOpen([]string{r}) })
		if len(candidates) == 0 && len(routes) > 0 {
			return fmt.Errorf("%w: the breaker of its credential is open; it is probed once that closes", errProbeNotRun)
		}
	}
	if len(candidates) > 0 {
		_, credName, _, _ = parseRoute(candidates[0])
	}
	defer func() {
		switch stale, err := g.probeRefusedStale(ctx, credName, result); {
		case err != nil:
			result = fmt.Errorf("%w: Entra refused this relay's secret, and whether another works could not be read: %w (%w)",
				errProbeNotRun, err, result)
		case stale:
			result = fmt.Errorf("%w: %w", errProbeStale, result)
		}
	}()
	if err := g.x.reloadCredential(credName); err != nil {
		g.log.Warn("cannot reload credential before probing", "credential", credName, "err", err)
	}
	if len(candidates) == 0 {
		return g.probeToken(ctx, name, credName, isCred, g.x.creds)
	}
	if !isCred && g.trial != nil && !slices.ContainsFunc(candidates, func(rt string) bool { return !g.x.routeByGraph(rt) }) {
		return g.probeByTrial(ctx, name, candidates)
	}
	var perr error
	smtpOff := false
	for i, rt := range candidates[:min(len(candidates), probeTries)] {
		if isCred && g.x.routeByGraph(rt) {
			// Graph has no AUTH to try without sending: a Graph token
			// tests the credential. (A mailbox's breaker is probed by a
			// trial send, probeByTrial: a Graph token says nothing of one
			// mailbox, and a probe that passed on it alone would close
			// and reopen the breaker of a mailbox Graph refuses, every
			// interval.)
			return g.probeToken(ctx, name, credName, isCred, g.x.graphCreds)
		}
		r, err := g.x.route(g.x.creds, false)(ctx, &queue.Message{Route: rt})
		if err != nil {
			return err
		}
		perr = g.x.smtp.Probe(ctx, r)
		_, mbx, _ := routeBreakers(rt)
		if isCred && errors.Is(perr, o365.ErrSMTPAuthDisabled) {
			// SMTP AUTH off for the mailbox or the tenant says nothing of
			// the credential; the mailbox's own sends count it.
			smtpOff = true
			continue
		}
		if isCred && o365.AppTokenRefused(perr) {
			// Maybe this mailbox's alone: the next probe tries another.
			g.record(ctx, mbx, perr)
		}
		if perr == nil || !isCred || upstream.ClassOf(perr) != upstream.Mailbox {
			return perr
		}
		g.log.Warn("credential probe failed on a mailbox of its own account; trying another",
			"breaker", name, "mailbox", mbx, "try", i+1, "err", perr)
		g.record(ctx, mbx, perr)
	}
	if failing || smtpOff {
		// Mailboxes that had failed before failed again on their own
		// account, or have SMTP AUTH off: the credential is tested by a
		// token, as with no mailbox to try.
		return g.probeToken(ctx, name, credName, isCred, g.x.creds)
	}
	return perr
}

// probeByTrial is the probe of mailbox breaker name whose mail goes by
// Graph: one held message of routes, sent by Graph as the trial. Graph
// has nothing to try for one mailbox without sending, and an SMTP AUTH
// says nothing of Graph's verdict on the mailbox (an application access
// policy covers Graph alone) and fails where SMTP AUTH is off. A message
// refused for its own reasons (a permanent failure: dead-lettered, as
// any delivery would leave it) says nothing of the mailbox either: the
// next message is tried, up to probeTries.
func (g *gate) probeByTrial(ctx context.Context, name string, routes []string) error {
	ctx = withTrial(ctx, name)
	tried := 0
	var refused error // the last message refused on its own account
	for _, rt := range routes {
		for tried < probeTries {
			err := g.trial(ctx, rt)
			if errors.Is(err, errNoTrial) {
				break
			}
			tried++
			switch {
			case errors.Is(err, errTrialNotRun), errors.Is(err, queue.ErrLeaseLost), errors.Is(err, destination.ErrPaused):
				// Nothing reached Graph, or what did is not this probe's to
				// judge (a lost lease).
				return fmt.Errorf("%w: %w", errProbeNotRun, err)
			case err == nil || upstream.ClassOf(err) != upstream.Permanent:
				return err
			}
			refused = err
			g.log.Warn("trial message refused on its own account; trying another",
				"breaker", name, "route", rt, "try", tried, "err", err)
		}
	}
	if refused != nil {
		return refused
	}
	return noMailToProbe(name)
}

// noMailToProbe is the probe's error for mailbox breaker name when no
// queued mail uses the mailbox.
func noMailToProbe(name string) error {
	return fmt.Errorf("breaker %s cannot be probed: no queued mail uses its mailbox; it is probed again when mail for it arrives, or close it with \"holdfast breaker reset %s\"", name, name)
}

// credentialsOpen reports whether routes, one or more, are all under
// credential breakers that are open, as this replica last read them.
func (g *gate) credentialsOpen(routes []string) bool {
	for _, r := range routes {
		if cred, _, ok := routeBreakers(r); !ok || g.set.Cached(cred).State != breaker.Open {
			return false
		}
	}
	return len(routes) > 0
}

// probeToken is a credential's probe by a token fetch only, from creds
// (the SMTP or the Graph token sources): with no route to try, or at a
// route whose mail goes by Graph.
func (g *gate) probeToken(ctx context.Context, name, credName string, isCred bool, creds map[string]*auth.Credential) error {
	c := creds[credName]
	switch {
	case !isCred:
		return noMailToProbe(name)
	case c == nil:
		return fmt.Errorf("breaker %s cannot be probed: no queued mail uses it and credential %q is not configured; add the credential, or close the breaker with \"holdfast breaker reset %s\"", name, credName, name)
	}
	c.Invalidate()
	_, err := c.Token(ctx)
	return err
}

// probeRoutes orders the routes a credential's probe may use: app-only
// routes (an app-only token is what the credential itself proves) whose
// mailbox is not known to be broken; failing that, those whose mailbox's
// breaker counts failures but is closed, fewest first (the bool is then
// true); and delegated ones when there is no app-only route at all.
func (g *gate) probeRoutes(ctx context.Context, routes []string) ([]string, bool) {
	var app, delegated []string
	for _, rt := range routes {
		isDelegated, _, _, _ := parseRoute(rt)
		if isDelegated {
			delegated = append(delegated, rt)
			continue
		}
		app = append(app, rt)
	}
	if len(app) == 0 {
		return delegated[:min(len(delegated), 1)], false
	}
	names := make([]string, len(app))
	for i, rt := range app {
		_, names[i], _ = routeBreakers(rt)
	}
	sts, err := g.set.Fresh(ctx, names...)
	if err != nil {
		return app, false
	}
	type failing struct {
		route    string
		failures int64
	}
	var healthy []string
	var others []failing
	for i, st := range sts {
		switch {
		case st.State == breaker.Closed && st.Failures == 0:
			healthy = append(healthy, app[i])
		case st.State == breaker.Closed:
			others = append(others, failing{app[i], st.Failures})
		}
	}
	if len(healthy) > 0 {
		return healthy, false
	}
	// Every mailbox has failed lately: the credential is tested where it
	// failed least, rather than by a token alone, which an app-only
	// token refused at every mailbox would pass. Mailboxes whose own
	// breakers are open are left out: their mail stays held whatever the
	// credential's probe says.
	slices.SortStableFunc(others, func(a, b failing) int { return cmp.Compare(a.failures, b.failures) })
	out := make([]string, len(others))
	for i, o := range others {
		out[i] = o.route
	}
	return out, len(out) > 0
}

// breakerKind is "credential" or "mailbox" for a breaker name.
func breakerKind(name string) string {
	if strings.HasPrefix(name, "cred:") {
		return "credential"
	}
	return "mailbox"
}

// grantRegistered asks for the probe of the mailbox's breaker now, when
// it is open: a grant registered again after Entra refused the old one
// is what that probe waits for, as a changed secret file is for a
// credential's. The probe redeems the new grant, and on success the held
// mail goes.
func (g *gate) grantRegistered(mailbox string) {
	name := mailboxBreaker(mailbox)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	open, err := g.set.ProbeNow(ctx, name)
	switch {
	case errors.Is(err, breaker.ErrHeld):
		// An operator's hold waits for a reset.
	case err != nil:
		g.log.Warn("cannot ask for the mailbox's probe after its grant was registered; it is probed at its next interval", "breaker", name, "err", err)
	case open:
		g.log.Info("mailbox grant registered while its breaker is open; probing it now", "breaker", name)
		g.wakeProbes()
	}
}
