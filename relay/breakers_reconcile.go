package relay

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"holdfast/auth"
	"holdfast/breaker"
	"holdfast/queue"
	"holdfast/relay/upstream"
)

// Route holds follow the breaker records by reconciliation, not by the
// transitions a replica happens to observe: at start, at every breaker
// poll and at once after a transition, each replica makes the held set
// match the records. A route under an open breaker is held; a held route
// whose breakers are all closed is released. Every hold and release
// carries the generations of the records it was decided on (queue.Fence),
// so an older release cannot undo a newer hold. A reset made while every
// relay was down is applied by the first one that starts, and a release
// that failed is retried at the next poll.

// pruneEvery is how often a replica prunes routes idle for routeIdle.
const (
	pruneEvery = 10 * time.Minute
	routeIdle  = 24 * time.Hour
)

// reconcileFull is how often the reconcile loop reads the hold of every
// route, not only of those under an open breaker: a route left held with
// both breakers closed, and no transition to tell (a relay killed during
// its release), is released within it.
const reconcileFull = 10 * time.Second

// reconcileLoop reconciles the held set every poll and after each
// transition, until ctx ends. A poll reads the holds of the routes under
// open breakers; a transition, and every reconcileFull, those of every
// route: with thousands of routes and no breaker open, a poll then costs
// Redis a few commands, not one for each route.
func (g *gate) reconcileLoop(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	var pruned, full time.Time
	// fullNext: the next pass reads every route's hold: at start, after
	// a transition, and after a full pass that failed (the routes of a
	// breaker that closed are left out of the others).
	fullNext := true
	for {
		all := fullNext || time.Since(full) >= reconcileFull
		err := g.reconcile(ctx, all)
		switch {
		case err != nil && ctx.Err() == nil:
			g.log.Warn("cannot reconcile held routes with the breakers", "err", err)
		case err == nil && all:
			full = time.Now()
		}
		fullNext = all && err != nil
		if time.Since(pruned) >= pruneEvery {
			pruned = time.Now()
			if gone, err := g.q.PruneRoutes(ctx, routeIdle); err != nil && ctx.Err() == nil {
				g.log.Warn("cannot prune idle routes", "err", err)
			} else if len(gone) > 0 {
				g.log.Info("pruned routes idle for a day", "routes", len(gone))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-g.reconcileNow:
			fullNext = true
		}
	}
}

// reconcile makes the held set match the breaker records once: of every
// route with all, else of the routes under an open breaker.
func (g *gate) reconcile(ctx context.Context, all bool) error {
	list, err := g.set.Listed(ctx)
	if err != nil {
		return err
	}
	g.markExpired(list)
	routes, err := g.q.Routes(ctx)
	if err != nil {
		return err
	}
	records := make(map[string]breaker.Status, len(list))
	for _, st := range list {
		records[st.Name] = st
	}
	var exchangeRoutes []string
	for _, r := range routes {
		cred, mbx, ok := routeBreakers(r)
		if ok && (all || records[cred].State == breaker.Open || records[mbx].State == breaker.Open) {
			exchangeRoutes = append(exchangeRoutes, r)
		}
	}
	if len(exchangeRoutes) == 0 {
		return nil
	}
	held, err := g.q.HeldRoutes(ctx, exchangeRoutes)
	if err != nil {
		return err
	}
	var todo []routeChange
	for _, r := range exchangeRoutes {
		cred, mbx, _ := routeBreakers(r)
		c, m := records[cred], records[mbx]
		c.Name, m.Name = cred, mbx
		reason, isHeld := held[r]
		switch {
		case c.State == breaker.Open || m.State == breaker.Open:
			// A hold whose reason is not the breaker's (a failed probe
			// after an operator's trip) is brought up to date.
			if !isHeld || reason != holdReason(c, m) {
				todo = append(todo, routeChange{r, c, m, false})
			}
		case isHeld:
			todo = append(todo, routeChange{r, c, m, true})
		}
	}
	released, err := g.apply(ctx, todo)
	if released > 0 {
		g.log.Info("released held routes", "routes", released)
		if g.released != nil {
			g.released()
		}
	}
	return err
}

// reconcileConcurrency is how many routes a reconciliation holds or
// releases at a time. Each takes a few Redis round trips; one after
// another, with Redis a millisecond away, 2,000 mailboxes released took
// 13 s, the last one's mail waiting all that time (BenchmarkReconcileRoutes:
// 1.9 s at 8). It stays under the Redis client's pool, 10 connections a
// core, so that ingress and delivery still find a connection.
const reconcileConcurrency = 8

// releaseChunk is how many routes a reconciliation checks are still held
// in one round trip before it releases them.
const releaseChunk = 50

// stillHeld reads which routes of the chunk's releases are held now. When
// it cannot read them, it says all are.
func (g *gate) stillHeld(ctx context.Context, chunk []routeChange) func(route string) bool {
	var routes []string
	for _, ch := range chunk {
		if ch.release {
			routes = append(routes, ch.route)
		}
	}
	if len(routes) == 0 {
		return func(string) bool { return true }
	}
	held, err := g.q.HeldRoutes(ctx, routes)
	if err != nil {
		return func(string) bool { return true }
	}
	return func(route string) bool {
		_, ok := held[route]
		return ok
	}
}

// routeChange is a hold or release of a route, with the breaker records
// it is decided on.
type routeChange struct {
	route     string
	cred, mbx breaker.Status
	release   bool
}

// apply makes the changes, reconcileConcurrency at a time. It logs one
// line per breaker that held routes, with their count (a credential of
// thousands of mailboxes would write a line a route), and returns how
// many routes were released and, when some were not held or released,
// how many and the first error: with Redis away every change fails
// alike, and one line says so rather than one error a route.
func (g *gate) apply(ctx context.Context, todo []routeChange) (int, error) {
	work := make(chan routeChange)
	type heldBy struct {
		generation int64
		routes     int
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		released int
		failed   int
		first    error
		held     = map[string]heldBy{}
	)
	// failure counts err, if any; mu is held.
	failure := func(err error) {
		if err != nil {
			if failed == 0 {
				first = err
			}
			failed++
		}
	}
	for range min(reconcileConcurrency, len(todo)) {
		wg.Go(func() {
			for ch := range work {
				if !ch.release {
					fresh, st, err := g.holdQuiet(ctx, ch.route, ch.cred, ch.mbx)
					mu.Lock()
					failure(err)
					if fresh {
						h := held[st.Name]
						held[st.Name] = heldBy{st.Generation, h.routes + 1}
						g.log.Debug("route held", "route", ch.route, "breaker", st.Name, "generation", st.Generation)
					}
					mu.Unlock()
					continue
				}
				ok, err := g.release(ctx, ch.route, ch.cred, ch.mbx)
				mu.Lock()
				failure(err)
				if ok {
					released++
				}
				mu.Unlock()
			}
		})
	}
	// The relays of a fleet see a breaker close within a second of each
	// other, and each would release every route: each goes through the
	// routes in an order of its own and, before each chunk, leaves out
	// those another relay has released meanwhile.
	rand.Shuffle(len(todo), func(i, j int) { todo[i], todo[j] = todo[j], todo[i] })
	for chunk := range slices.Chunk(todo, releaseChunk) {
		stillHeld := g.stillHeld(ctx, chunk)
		for _, ch := range chunk {
			if !ch.release || stillHeld(ch.route) {
				work <- ch
			}
		}
	}
	close(work)
	wg.Wait()
	for _, name := range slices.Sorted(maps.Keys(held)) {
		g.log.Info("routes held", "breaker", name, "generation", held[name].generation, "routes", held[name].routes)
	}
	if failed > 0 {
		return released, fmt.Errorf("%d routes not held or released, tried again at the next breaker poll; the first: %w", failed, first)
	}
	return released, nil
}

// markExpired tells this replica's credentials what the fleet was told:
// a credential breaker open because Entra said the secret expired
// (AADSTS7000222) marks the secret in use here expired too, when it is
// the one the breaker knows as working (its fingerprint). A replica with a
// cached token may not ask Entra for an hour; its expiry monitor should
// not say "ok" meanwhile.
func (g *gate) markExpired(list []breaker.Status) {
	if g.x == nil {
		return
	}
	for _, st := range list {
		cred, ok := strings.CutPrefix(st.Name, "cred:")
		// A fingerprint that got a token since the breaker opened (a
		// rotated secret, its probe about to close it) works.
		if ok && st.State == breaker.Open && st.GoodFingerprint != "" && st.GoodSince.Before(st.Since) &&
			strings.Contains(st.Reason, auth.AADSTSSecretExpired) {
			g.x.secretExpired(cred, st.GoodFingerprint, st.Since)
		}
	}
}

// fence is what a hold or release of a route is decided on.
func fence(cred, mbx breaker.Status) queue.Fence {
	return queue.Fence{cred.Name: cred.Generation, mbx.Name: mbx.Generation}
}

// hold holds a route whose credential or mailbox breaker is open in the
// records given, and logs it. A stale fence means a newer release or hold
// was applied: the next reconciliation decides.
func (g *gate) hold(ctx context.Context, route string, cred, mbx breaker.Status) {
	fresh, st, err := g.holdQuiet(ctx, route, cred, mbx)
	switch {
	case err != nil:
		g.log.Error("cannot hold route", "route", route, "err", err)
	case fresh:
		g.log.Info("route held", "route", route, "breaker", st.Name, "generation", st.Generation)
	}
}

// holdQuiet is hold without the log: it reports whether the route was
// held now, and by which breaker.
func (g *gate) holdQuiet(ctx context.Context, route string, cred, mbx breaker.Status) (bool, breaker.Status, error) {
	st, _ := openBreaker(cred, mbx)
	if st.State != breaker.Open {
		return false, st, nil
	}
	fresh, err := g.q.HoldRouteAt(ctx, route, holdReason(cred, mbx), fence(cred, mbx))
	if errors.Is(err, queue.ErrStaleFence) {
		return false, st, nil
	}
	return fresh, st, err
}

// openBreaker is the breaker that holds a route, with its class: its
// credential's when open, else its mailbox's.
func openBreaker(cred, mbx breaker.Status) (breaker.Status, upstream.Class) {
	if cred.State != breaker.Open {
		return mbx, upstream.Mailbox
	}
	return cred, upstream.Credential
}

// holdReason is what a route held by the open one of its breakers says,
// e.g. "credential: breaker cred:contoso open: invalid_client
// AADSTS7000222: ...".
func holdReason(cred, mbx breaker.Status) string {
	st, class := openBreaker(cred, mbx)
	reason := class.String() + ": breaker " + st.Name + " open"
	if st.Reason != "" {
		reason += ": " + st.Reason
	}
	return reason
}

// release releases a held route whose breakers are both closed in the
// records given; its held mail goes out now, oldest first, at the
// mailbox's limits. It reports whether the route was released.
func (g *gate) release(ctx context.Context, route string, cred, mbx breaker.Status) (bool, error) {
	if _, err := g.q.Flush(ctx, route); err != nil {
		return false, err
	}
	err := g.q.ReleaseRouteAt(ctx, route, fence(cred, mbx))
	if errors.Is(err, queue.ErrStaleFence) {
		return false, nil
	}
	return err == nil, err
}
