package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"

	"golang.org/x/oauth2"
)

// A token request made with material that has not got a token yet (the
// files as loaded at start or after they changed, or after Entra refused
// them; for several secret files, the secret tried first) is a trial.
// While it is under way the credential's other token requests, for any
// scope or grant, wait for its answer instead of sending the same secret,
// certificate or assertion beside it. When Entra refuses the client
// (invalid_client: a secret unknown or expired, a certificate or
// assertion not accepted, which no scope changes), they all return that
// refusal: Entra sees one refused request, not one per scope or mailbox.
// When the trial fails for another reason (the endpoint unreachable or
// throttled, a grant refused), the requests that waited go side by side;
// once the material got a token, all requests do.
//
// A relay that starts on a secret deleted at Entra refreshes the tokens
// of its delegated mailboxes at about the same moment, one request each;
// without trials, Entra would see as many refused requests as mailboxes.

// tried names what a request sends: the material and, for several
// secret files, the one tried first (Credential.inUse).
type tried struct {
	m     *material
	first int
}

// trial is a token request under way with material not yet proven.
type trial struct {
	tried
	done chan struct{}
	// refusal is what the waiters return: the trial's invalid_client
	// answer. When nil, each waiter tries again itself.
	refusal *TokenError
	waiting int // requests waiting for it, guarded by Credential.mu
}

// redeem makes a token request with the credential's client
// authentication (see redeemMaterial), as a trial or beside other
// requests; see trial. ctx bounds only the wait for a trial: the request
// itself runs under the HTTP client's timeouts.
func (c *Credential) redeem(ctx context.Context, log *slog.Logger, scopes []string, params url.Values) (*oauth2.Token, error) {
	for {
		m, first, tr, lead := c.joinTrial()
		if tr != nil && !lead {
			select {
			case <-tr.done:
			case <-ctx.Done():
				return nil, fmt.Errorf("credential %s: waiting for the token request under way: %w", c.opts.Name, ctx.Err())
			}
			if tr.refusal != nil {
				cp := *tr.refusal
				return nil, &cp
			}
			c.mu.Lock()
			moved := c.mat != tr.m
			c.mu.Unlock()
			if moved {
				continue // new files, with a trial of their own
			}
			// The trial got a token, or failed for a reason of its own
			// (the endpoint unreachable, throttled, a grant refused): the
			// requests that waited for it now go side by side rather than
			// each wait for the one before.
			m, first = c.secretInUse()
			tr = nil
		}
		tok, err := c.redeemMaterial(log, scopes, params, m, first)
		c.endTrial(m, tr, err)
		return tok, err
	}
}

// joinTrial returns the material and the secret to try first, and how to
// send: side by side (tr nil), as the trial (lead), or once the trial
// under way (tr, not lead) has ended.
func (c *Credential) joinTrial() (m *material, first int, tr *trial, lead bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := tried{c.mat, c.inUse}
	switch {
	case c.proven == now:
		return now.m, now.first, nil, false
	case c.trial != nil && c.trial.tried == now:
		c.trial.waiting++
		return now.m, now.first, c.trial, false
	}
	c.trial = &trial{tried: now, done: make(chan struct{})}
	return now.m, now.first, c.trial, true
}

// endTrial records what a request with m ended with: m is proven by a
// token, or by a grant refused (Entra checks the client before the
// grant), and no longer proven once Entra refuses the client. When the
// request was a trial, its waiters go on.
func (c *Credential) endTrial(m *material, tr *trial, err error) {
	var te *TokenError
	isTE := errors.As(err, &te)
	c.mu.Lock()
	switch {
	case err == nil || isTE && te.Code == CodeInvalidGrant:
		if c.mat == m {
			// The secret in use now is the one that got the token
			// (useSecret), or the one tried first.
			c.proven = tried{m, c.inUse}
		}
	case isTE && te.Code == CodeInvalidClient:
		if c.proven.m == m {
			c.proven = tried{}
		}
		if tr != nil {
			tr.refusal = te
		}
	}
	if tr != nil && c.trial == tr {
		c.trial = nil
	}
	waited := 0
	if tr != nil && tr.refusal != nil {
		waited = tr.waiting
	}
	c.mu.Unlock()
	if waited > 0 {
		c.log.Debug("Entra refused the client credentials; the requests that waited get that refusal", "waited", waited)
	}
	if tr != nil {
		close(tr.done)
	}
}
