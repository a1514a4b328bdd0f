package relay

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"holdfast/queue"
	"holdfast/relay/o365"
	"holdfast/relay/upstream"
)

// An app with fallback: graph sends a route's mail by Graph once Exchange
// says SMTP AUTH is disabled for the route's mailbox (535 5.7.139), as
// long as the credential's Graph token carries Mail.Send. The decision is
// the fleet's (queue.SetGraphFallback), made by the first send that meets
// the refusal and kept for exchange.fallback_recheck; then the next send
// tries SMTP again, and a refusal decides again. Messages are not held or
// spent meanwhile: the send that meets the refusal is retried at once.

// fallbackRead is how long a replica trusts its copy of the fleet's
// fallback routes.
const fallbackRead = 10 * time.Second

// fallbackRetry is when the message whose send met the refusal is due
// again, by Graph.
const fallbackRetry = 500 * time.Millisecond

// graphFallbacks is this replica's view of the routes that send by Graph
// as a fallback.
type graphFallbacks struct {
	q       *queue.Queue
	recheck time.Duration
	log     *slog.Logger

	mu     sync.Mutex
	routes map[string]time.Time // route -> until
	read   time.Time            // when routes was read from Redis
	warned map[string]bool      // credentials logged as lacking Mail.Send
}

// warnOnce reports whether the credential's missing Mail.Send is to be
// logged: the first time only.
func (f *graphFallbacks) warnOnce(cred string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.warned[cred] {
		return false
	}
	if f.warned == nil {
		f.warned = map[string]bool{}
	}
	f.warned[cred] = true
	return true
}

// set records that the route goes by Graph until then.
func (f *graphFallbacks) set(route string, until time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.routes == nil {
		f.routes = map[string]time.Time{}
	}
	f.routes[route] = until
}

// refresh reads the fleet's routes when this replica's copy is older than
// fallbackRead. With Redis unreadable it keeps its copy.
func (f *graphFallbacks) refresh(ctx context.Context) {
	f.mu.Lock()
	stale := time.Since(f.read) >= fallbackRead
	f.mu.Unlock()
	if !stale {
		return
	}
	routes, err := f.q.GraphFallbacks(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.read = time.Now()
	if err == nil {
		f.routes = routes
	}
}

// cached reports whether the route sends by Graph now, by this replica's
// copy.
func (f *graphFallbacks) cached(route string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return time.Now().Before(f.routes[route])
}

// fallBack answers an SMTP send of m that Exchange refused with 535
// 5.7.139: the route sends by Graph from now on, and the message is
// retried at once, unspent; or, when the credential's Graph token lacks
// Mail.Send (or cannot be had), the refusal stands and the mailbox's
// breaker holds the route as before.
func (x *exchange) fallBack(ctx context.Context, m *queue.Message, refusal error) error {
	delegated, cred, mailbox, ok := parseRoute(m.Route)
	src := x.graphCreds[cred]
	if !ok || delegated || src == nil || x.graph == nil {
		return refusal
	}
	tok, err := src.Token(ctx)
	if err != nil {
		x.fallbacks.log.Warn("fallback: graph: cannot get a Graph token; the mailbox's mail is held. "+
			"Check the credential with \"holdfast creds check\"", "credential", cred, "mailbox", mailbox, "err", err)
		return refusal
	}
	if !o365.TokenHasRole(tok.AccessToken, o365.MailSendRole) {
		if f := x.fallbacks; f.warnOnce(cred) {
			f.log.Warn("fallback: graph needs the Mail.Send application permission (admin-consented) on the app registration; "+
				"until it has it, mailboxes with SMTP AUTH disabled are held", "credential", cred, "mailbox", mailbox)
		}
		return refusal
	}
	until, decided, err := x.fallbacks.q.SetGraphFallback(ctx, m.Route, time.Now().Add(x.fallbacks.recheck))
	if err != nil {
		x.fallbacks.log.Warn("fallback: graph: cannot record the route's fallback; the mailbox's mail is held and tried again",
			"route", m.Route, "err", err)
		return refusal
	}
	x.fallbacks.set(m.Route, until)
	if decided {
		x.fallbacks.log.Info("SMTP AUTH is disabled for the mailbox; its mail goes by Graph (fallback: graph)",
			"route", m.Route, "until", until.UTC().Format(time.RFC3339))
	}
	return &upstream.Error{Class: upstream.Throttled, RetryAfter: fallbackRetry, Err: refusal,
		Text: fmt.Sprintf("SMTP AUTH is disabled for %s; its mail goes by Graph until %s (fallback: graph)",
			mailbox, until.UTC().Format(time.RFC3339))}
}
