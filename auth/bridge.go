package auth

import (
	"errors"
	"log/slog"
	"net/url"
	"slices"
	"time"

	"golang.org/x/oauth2"
)

// Microsoft's rotation adds a new client secret while the old one still
// works, and the new one is written into the files at once; Entra refuses
// it (AADSTS7000215, at times AADSTS7000222) for seconds or minutes while
// it propagates. A reload drops the cached token, so without more, every
// token request of that while would be refused, count against the
// credential's breaker and hold mail that the old secret could still
// send. So the secret that got the last token before the files changed,
// when the new files do not hold it, is kept as a bridge: once every
// loaded secret is refused, it is tried, for the propagation window after
// the change. Its token is not reported to OnIssued, nor its refusal to
// OnRefused: it is no longer in the files, and the fleet's record of the
// material that works names files. Entra's refusal of it (an expired or
// deleted old secret, as in an outage) ends the bridge, as a token got
// with the files does: a rotation after an outage sends no more requests
// than before. A token the bridge got is served from the caches until the
// window's end at the latest, so that a wrong new secret is refused, with
// no bridge, once the window is over.

// served notes that sec, of the files m, got a token: it is the secret
// to bridge from at the next change, and, when m are the files loaded
// now, no bridge is needed. A request that was under way as the files
// changed leaves their bridge as it is.
func (c *Credential) served(m *material, sec secretFile) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastGood = &sec
	if c.mat == m {
		c.previous = nil
	}
}

// keepPreviousLocked makes the secret that got the last token the bridge
// of the files just loaded, when they do not hold it. c.mu is held.
func (c *Credential) keepPreviousLocked() {
	c.previous, c.previousSaid = nil, false
	last := c.lastGood
	if c.opts.PropagationWindow <= 0 || last == nil || len(c.mat.secrets) == 0 ||
		slices.ContainsFunc(c.mat.secrets, func(s secretFile) bool { return s.value == last.value }) {
		return
	}
	prev := *last
	prev.bridge = true
	c.previous, c.previousUntil = &prev, c.opts.Now().Add(c.opts.PropagationWindow)
}

// forgetLocked drops the secret value, which Entra refused, as the one
// to bridge from and as the bridge. c.mu is held.
func (c *Credential) forgetLocked(value string) {
	if c.lastGood != nil && c.lastGood.value == value {
		c.lastGood = nil
	}
	if c.previous != nil && c.previous.value == value {
		c.previous = nil
	}
}

// bridge requests a token with the previous secret, after Entra refused
// every secret of m, the files loaded now; ok is false when there is no
// bridge, or Entra refused it too, which ends it. Another failure (the
// endpoint unreachable, throttled, unavailable) says nothing of it: the
// bridge is kept, and err is that failure, returned in place of the
// refusal of the files' secret.
func (c *Credential) bridge(log *slog.Logger, scopes []string, params url.Values, m *material) (tok *oauth2.Token, ok bool, err error) {
	c.mu.Lock()
	prev, until := c.previous, c.previousUntil
	if prev != nil && (c.mat != m || !c.opts.Now().Before(until)) {
		prev = nil
	}
	c.mu.Unlock()
	if prev == nil {
		return nil, false, nil
	}
	tok, err = c.redeemWith(log, scopes, params, m, prev)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		var te *TokenError
		if !errors.As(err, &te) || !te.SecretRefused() {
			return nil, false, err
		}
		c.forgetLocked(prev.value)
		log.Warn("the previous client secret is refused too; no longer tried", "hint", prev.hint())
		return nil, false, nil
	}
	for t, end := range c.bridged {
		if !c.opts.Now().Before(end) {
			delete(c.bridged, t) // got by a request no cache took
		}
	}
	if c.bridged == nil {
		c.bridged = map[*oauth2.Token]time.Time{}
	}
	c.bridged[tok] = until
	if !c.previousSaid && c.previous == prev {
		c.previousSaid = true
		log.Warn("the client secret file's new secret is refused; sending with the previous one while Entra may still be propagating it",
			"hint", prev.hint(), "until", until)
	}
	return tok, true, nil
}

// bridgedUntil is when a token got with the bridge stops being served
// from a cache: at the bridge's end, when the files' secret is sent again
// and, should Entra still refuse it, that counts. Zero for any other
// token.
func (c *Credential) bridgedUntil(tok *oauth2.Token) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	until := c.bridged[tok]
	delete(c.bridged, tok)
	return until
}
