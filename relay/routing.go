package relay

import (
	"context"
	"strings"
	"sync"
	"time"
)

// Routes of the exchange sender. A route is one sending identity, so a
// held route holds exactly the mail of one credential and mailbox:
//
//	app:CRED:MAILBOX   the app-only token of credential CRED, sent as MAILBOX
//	mbx:CRED:MAILBOX   MAILBOX's delegated grant, redeemed through CRED
const (
	appRoutePrefix   = "app:"
	grantRoutePrefix = "mbx:"
)

func appRoute(cred, mailbox string) string {
	return appRoutePrefix + cred + ":" + strings.ToLower(mailbox)
}

func grantRoute(cred, mailbox string) string {
	return grantRoutePrefix + cred + ":" + strings.ToLower(mailbox)
}

// RouteCredential returns the credential an exchange route sends with.
func RouteCredential(route string) (string, bool) {
	_, cred, _, ok := parseRoute(route)
	return cred, ok
}

// parseRoute splits an exchange route into its parts.
func parseRoute(route string) (delegated bool, cred, mailbox string, ok bool) {
	rest, isApp := strings.CutPrefix(route, appRoutePrefix)
	if !isApp {
		if rest, ok = strings.CutPrefix(route, grantRoutePrefix); !ok {
			return false, "", "", false
		}
		delegated = true
	}
	cred, mailbox, ok = strings.Cut(rest, ":")
	return delegated, cred, mailbox, ok && cred != "" && mailbox != ""
}

// grantIndex tells whether a mailbox has a registered delegated grant, and
// through which credential.
type grantIndex interface {
	GrantCredential(ctx context.Context, mailbox string) (cred string, ok bool, err error)
}

// exchangeRouting decides the route of each submitted message: the
// envelope sender's own delegated grant first, then the app's
// sender_mailboxes (address, then @domain), then the app's mailbox.
// Grant lookups are cached for grantCacheTTL, so a grant registered
// through another replica is used within that time, and ingress does not
// pay a Redis round trip per message.
type exchangeRouting struct {
	grants grantIndex // nil when delegated grants are not configured

	mu    sync.Mutex
	cache map[string]grantEntry
}

type grantEntry struct {
	cred    string
	ok      bool
	fetched time.Time
}

const grantCacheTTL = 5 * time.Second

func newExchangeRouting(g grantIndex) *exchangeRouting {
	return &exchangeRouting{grants: g, cache: map[string]grantEntry{}}
}

// route returns the queue route of a message from the app with the given
// envelope sender.
func (r *exchangeRouting) route(ctx context.Context, app *App, from string) (string, error) {
	if r.grants != nil {
		cred, ok, err := r.grant(ctx, strings.ToLower(from))
		if err != nil {
			return "", err
		}
		if ok {
			return grantRoute(cred, from), nil
		}
	}
	mbx, ok := senderMailbox(app, from)
	if !ok {
		return "", &noMailboxError{app: app.Name, from: from, mailbox: mbx}
	}
	return appRoute(app.Credential, mbx), nil
}

func (r *exchangeRouting) grant(ctx context.Context, mailbox string) (string, bool, error) {
	r.mu.Lock()
	e, hit := r.cache[mailbox]
	r.mu.Unlock()
	if hit && time.Since(e.fetched) < grantCacheTTL {
		return e.cred, e.ok, nil
	}
	cred, ok, err := r.grants.GrantCredential(ctx, mailbox)
	if err != nil {
		return "", false, err
	}
	r.mu.Lock()
	if len(r.cache) > 100000 {
		clear(r.cache)
	}
	r.cache[mailbox] = grantEntry{cred: cred, ok: ok, fetched: time.Now()}
	r.mu.Unlock()
	return cred, ok, nil
}

// forget drops a cached lookup, after a grant is registered or removed
// through this replica.
func (r *exchangeRouting) forget(mailbox string) {
	r.mu.Lock()
	delete(r.cache, strings.ToLower(mailbox))
	r.mu.Unlock()
}

// senderMailbox is the mailbox an app's message from this sender is sent
// as: sender_mailboxes by address, then by @domain, then the app's
// mailbox. ok is false when the sender falls through to the app's
// mailbox without being that mailbox: nothing in the configuration says
// that mailbox may send as the sender, and Exchange would refuse it
// (SendAsDenied) after the message was accepted.
func senderMailbox(app *App, from string) (mailbox string, ok bool) {
	// ASCII folding only, as the sender check (maySend): Unicode folding
	// would take a KELVIN SIGN for "k".
	from = lowerASCII(from)
	var byDomain string
	for rule, mbx := range app.SenderMailboxes {
		rule = lowerASCII(strings.TrimSpace(rule))
		if rule == from {
			return mbx, true
		}
		if d, ok := strings.CutPrefix(rule, "@"); ok && strings.HasSuffix(from, "@"+d) {
			byDomain = mbx
		}
	}
	if byDomain != "" {
		return byDomain, true
	}
	return app.Mailbox, lowerASCII(app.Mailbox) == from
}

// routeCredential is the credential an exchange route sends with, or ""
// for a route of another sender.
func routeCredential(route string) string {
	_, cred, _, _ := parseRoute(route)
	return cred
}
