package relay

import (
	"context"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"holdfast/queue"
	"holdfast/relay/ops"
)

// Kinds of the fleet's record of a mailbox's waits
// (queue.Limiter.HoldMailbox), one for each mailboxWaits of the exchange
// sender.
const (
	waitBlocked = "blocked"
	waitGraph   = "graph"
)

// mailboxWaits keeps, per mailbox, until when the upstream asked this
// replica to leave the mailbox alone: Graph's 429 (o365.ErrMailboxThrottled),
// or Exchange's holds of the whole mailbox (o365.ErrMailboxBlocked). One
// mailbox's wait holds back that mailbox's mail, not an endpoint and
// every other mailbox with it. The exchange sender records each wait for
// the fleet too, under kind, so that the other replicas, and those
// started meanwhile, leave the mailbox alone as well (exchange.Reserve).
//
// This replica's own record holds only where the fleet's does not: until
// Redis took the fleet's record, or for good when it did not. Past that,
// the fleet's record decides, as it does for every other replica, so
// that an operator's end of the wait (holdfast queue flush --end-waits)
// ends it here too.
type mailboxWaits struct {
	kind  string
	set   expiries // lower-cased mailbox: until when it is left alone
	fleet expiries // lower-cased mailbox: until when the fleet's record covers the wait
}

// hold leaves mailbox alone until end. It reports whether the mailbox was
// not held already.
func (t *mailboxWaits) hold(mailbox string, end time.Time) bool {
	now := time.Now()
	if !end.After(now) {
		return false
	}
	return t.set.extend(strings.ToLower(mailbox), end, now)
}

// recorded notes that the fleet's record of the mailbox's wait lasts at
// least until end: this replica's record gives way to it until then.
func (t *mailboxWaits) recorded(mailbox string, end time.Time) {
	t.fleet.extend(strings.ToLower(mailbox), end, time.Now())
}

// unrecorded notes that Redis did not take a hold of the mailbox: the
// fleet's record may be gone (an operator ended it), or older than this
// hold, so this replica's own record holds whole again.
func (t *mailboxWaits) unrecorded(mailbox string) {
	t.fleet.forget(strings.ToLower(mailbox))
}

// wait is how long this replica still leaves mailbox alone on its own
// record, or 0: the wait has ended, or the fleet's record covers it.
func (t *mailboxWaits) wait(mailbox string) time.Duration {
	key, now := strings.ToLower(mailbox), time.Now()
	if own := t.set.left(key, now); own > t.fleet.left(key, now) {
		return own
	}
	return 0
}

// MailboxWait is a wait the upstream asked of a mailbox, as the fleet
// recorded it: until when no relay sends its mail, and why. The status
// page shows the same.
type MailboxWait = ops.MailboxWait

// waitReasons says what each kind of wait is.
var waitReasons = map[string]string{
	waitBlocked: "Exchange holds its sending (550 5.2.25x, or its daily recipient quota)",
	waitGraph:   "Graph throttles it (429); its mail that goes by Graph waits",
}

// MailboxWaits returns the waits not yet ended of the mailboxes of
// routes, as "holdfast queue stats" shows them. now is the clock.
func MailboxWaits(ctx context.Context, rdb redis.UniversalClient, routes []string, now func() time.Time) ([]MailboxWait, error) {
	waits, err := readWaits(ctx, rdb, routes, now)
	if err != nil {
		return nil, err
	}
	return describeWaits(waits), nil
}

// readWaits reads the fleet's waits of the mailboxes of routes.
func readWaits(ctx context.Context, rdb redis.UniversalClient, routes []string, now func() time.Time) ([]queue.MailboxWait, error) {
	return queue.NewLimiter(rdb, now).MailboxWaits(ctx, routeMailboxes(routes))
}

// EndMailboxWaits ends the waits of the mailboxes of routes at once, as
// "holdfast queue flush --end-waits" does, and returns those it ended
// that had not ended yet. Every running relay sends the mailboxes' mail
// again within waitRecheck. now is the clock.
func EndMailboxWaits(ctx context.Context, rdb redis.UniversalClient, routes []string, now func() time.Time) ([]MailboxWait, error) {
	waits, err := queue.NewLimiter(rdb, now).EndMailboxWaits(ctx, routeMailboxes(routes))
	return describeWaits(waits), err
}

// RouteMailbox returns the mailbox an exchange route sends as.
func RouteMailbox(route string) (string, bool) {
	_, _, m, ok := parseRoute(route)
	return m, ok
}

// routeMailboxes returns the mailboxes of the exchange routes among
// routes, each once.
func routeMailboxes(routes []string) []string {
	seen := map[string]bool{}
	var mailboxes []string
	for _, r := range routes {
		if m, ok := RouteMailbox(r); ok && !seen[m] {
			seen[m] = true
			mailboxes = append(mailboxes, m)
		}
	}
	return mailboxes
}

// waitsOf reads the fleet's waits of the mailboxes of routes: none
// without the exchange sender.
func (s *Server) waitsOf(ctx context.Context, routes []string) ([]queue.MailboxWait, error) {
	if s.exchange == nil || len(routes) == 0 {
		return nil, nil
	}
	return readWaits(ctx, s.rdb, routes, time.Now)
}

// readySince is the earliest due time of the ready messages of the
// routes in ready (route -> the earliest of its own), leaving out the
// routes whose mailbox waits for Exchange or Graph: their mail waits for
// the upstream, not for a worker, and "queue stats" and the status page
// name the wait. This is the oldest ready message's age that an alert
// reads as relays stuck or overloaded.
func (s *Server) readySince(ctx context.Context, ready map[string]time.Time) (time.Time, error) {
	waits, err := s.waitsOf(ctx, slices.Collect(maps.Keys(ready)))
	if err != nil {
		return time.Time{}, err
	}
	return s.exchange.readySince(ready, waits), nil
}

// readySince is Server.readySince with the waits read.
func (x *exchange) readySince(ready map[string]time.Time, waits []queue.MailboxWait) time.Time {
	var since time.Time
	for route, t := range ready {
		if !x.waitsFor(route, waits) && !t.IsZero() && (since.IsZero() || t.Before(since)) {
			since = t
		}
	}
	return since
}

// waitsFor reports whether one of waits holds the mail of route (see
// waitKinds).
func (x *exchange) waitsFor(route string, waits []queue.MailboxWait) bool {
	mailbox, ok := RouteMailbox(route)
	if x == nil || !ok {
		return false
	}
	kinds := x.waitKinds(route)
	for _, w := range waits {
		if strings.EqualFold(w.Mailbox, mailbox) && slices.Contains(kinds, w.Kind) {
			return true
		}
	}
	return false
}

// describeWaits gives each of the fleet's waits its reason.
func describeWaits(waits []queue.MailboxWait) []MailboxWait {
	out := make([]MailboxWait, 0, len(waits))
	for _, w := range waits {
		why := waitReasons[w.Kind]
		if why == "" {
			why = w.Kind
		}
		out = append(out, MailboxWait{Mailbox: w.Mailbox, Until: w.Until.UTC(), Why: why, All: w.Kind == waitBlocked})
	}
	return out
}
