package auth

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"
)

// tokenCache holds one access token and makes concurrent callers share one
// fetch. Errors are never cached: the next call after a failed fetch starts
// a new one.
type tokenCache struct {
	now    func() time.Time
	before time.Duration // refresh at least this long before expiry
	// fetches tracks the fetches' goroutines, for the owner's Wait.
	fetches *fetchGroup
	// until, when set, gives for a token fetched when it stops being
	// served at the latest (zero: no limit): a token got with a bridge
	// (see bridge.go) ends with the bridge.
	until func(*oauth2.Token) time.Time

	mu      sync.Mutex
	tok     *oauth2.Token
	refresh time.Time // when tok stops being served
	gen     uint64    // bumped by reset; a fetch started under an older gen is not stored
	call    *fetchCall
}

// fetchCall is one fetch in flight. tok and err are written before done
// is closed.
type fetchCall struct {
	done chan struct{}
	tok  *oauth2.Token
	err  error
}

// get returns the cached token, or waits for a fetch. Only one fetch runs at
// a time; it runs on its own goroutine so that a caller whose ctx ends stops
// waiting without failing the other callers.
func (c *tokenCache) get(ctx context.Context, fetch func() (*oauth2.Token, error)) (*oauth2.Token, error) {
	c.mu.Lock()
	if c.tok != nil && c.now().Before(c.refresh) {
		tok := c.tok
		c.mu.Unlock()
		return tok, nil
	}
	call := c.call
	if call == nil {
		call = &fetchCall{done: make(chan struct{})}
		c.call = call
		gen := c.gen
		c.fetches.Go(func() { c.run(call, gen, fetch) })
	}
	c.mu.Unlock()

	select {
	case <-call.done:
		return call.tok, call.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *tokenCache) run(call *fetchCall, gen uint64, fetch func() (*oauth2.Token, error)) {
	start := c.now()
	tok, err := fetch()
	var until time.Time
	if err == nil && c.until != nil {
		until = c.until(tok)
	}
	c.mu.Lock()
	call.tok, call.err = tok, err
	if c.call == call {
		c.call = nil
	}
	if err == nil && c.gen == gen {
		c.tok = tok
		c.refresh = refreshAt(start, tok.Expiry, c.before)
		if !until.IsZero() && until.Before(c.refresh) {
			c.refresh = until
		}
	}
	c.mu.Unlock()
	close(call.done)
}

// fetchGroup tracks token requests in flight.
type fetchGroup struct {
	wg sync.WaitGroup
	n  atomic.Int64
}

// Go runs f on a goroutine of the group.
func (g *fetchGroup) Go(f func()) {
	g.n.Add(1)
	g.wg.Go(func() {
		defer g.n.Add(-1)
		f()
	})
}

// wait waits until the group's fetches have ended, or ctx has: their own
// timeouts bound them, ctx the caller's patience. It looks every
// fetchPoll rather than start a goroutine of its own to wait on wg.
func (g *fetchGroup) wait(ctx context.Context) error {
	t := time.NewTicker(fetchPoll)
	defer t.Stop()
	for g.n.Load() > 0 {
		select {
		case <-t.C:
		case <-ctx.Done():
			return fmt.Errorf("%d token requests still in flight: %w", g.n.Load(), ctx.Err())
		}
	}
	return nil
}

// fetchPoll is how often wait looks at the fetches in flight.
const fetchPoll = 10 * time.Millisecond

// refreshAt returns when a token fetched at start and expiring at expiry
// must be refreshed: before ahead of expiry, or half-way through its
// lifetime when the lifetime is shorter than twice before. A token without
// an expiry is not served from the cache.
func refreshAt(start, expiry time.Time, before time.Duration) time.Time {
	if expiry.IsZero() {
		return time.Time{}
	}
	if life := expiry.Sub(start); life < 2*before {
		return start.Add(life / 2)
	}
	return expiry.Add(-before)
}

// invalidate drops the cached token. A fetch in flight may still store its
// result, since it was started after the token being dropped was issued.
func (c *tokenCache) invalidate() {
	c.mu.Lock()
	c.tok = nil
	c.mu.Unlock()
}

// reset drops the cached token and detaches any fetch in flight, whose
// result will not be stored: used when the credential itself changed.
func (c *tokenCache) reset() {
	c.mu.Lock()
	c.tok = nil
	c.gen++
	c.call = nil
	c.mu.Unlock()
}

// maxTokenLifetime caps expires_in: Entra ID issues tokens for at most
// 24 hours, and a larger figure would overflow time.Duration.
const maxTokenLifetime = 24 * time.Hour

// expiresIn returns the expires_in field of a token response, capped at
// maxTokenLifetime. ok is false when the field is missing or not a
// number; a zero or negative lifetime is returned as it is.
func expiresIn(tok *oauth2.Token) (time.Duration, bool) {
	var secs float64
	switch v := tok.Extra("expires_in").(type) {
	case float64:
		secs = v
	case json.Number:
		f, err := v.Float64()
		if err != nil {
			return 0, false
		}
		secs = f
	case string:
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, false
		}
		secs = f
	default:
		return 0, false
	}
	if math.IsNaN(secs) {
		return 0, false
	}
	if secs >= maxTokenLifetime.Seconds() {
		return maxTokenLifetime, true
	}
	return time.Duration(secs * float64(time.Second)), true
}

// stampExpiry sets tok.Expiry from expires_in against the injected clock,
// so that tests with a fake clock see consistent expiries.
// A token that is expired already (expires_in zero or negative) is an
// error: using it would only fail upstream.
func stampExpiry(tok *oauth2.Token, now time.Time) error {
	d, ok := expiresIn(tok)
	if !ok {
		return nil
	}
	if d <= 0 {
		return fmt.Errorf("token endpoint: the token it issued is already expired (expires_in %v)", tok.Extra("expires_in"))
	}
	tok.Expiry = now.Add(d)
	return nil
}
