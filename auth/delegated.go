package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"golang.org/x/oauth2"
)

// DelegatedScopes are requested when redeeming a mailbox's refresh token.
var DelegatedScopes = []string{"https://outlook.office.com/SMTP.Send", "offline_access"}

// delegatedFetchTimeout bounds the Redis calls of one refresh; the token
// request itself is bounded by the credential's HTTP client.
const delegatedFetchTimeout = 30 * time.Second

// DelegatedSource issues access tokens for one mailbox by redeeming its
// stored refresh token with a Credential's client authentication. Access
// tokens are cached in memory (RefreshBefore applies); rotated refresh
// tokens are written back with a compare-and-set on the grant's generation.
// It is safe for concurrent use.
type DelegatedSource struct {
	store   *GrantStore
	cred    *Credential
	mailbox string
	log     *slog.Logger
	cache   tokenCache
}

// TokenSource returns the token source of mailbox, redeemed with cred. The
// same source is returned for the same credential and mailbox, so its
// access token cache is shared within the process. An invalid mailbox
// address gives a source whose Token fails.
func (g *GrantStore) TokenSource(cred *Credential, mailbox string) *DelegatedSource {
	m, err := normMailbox(mailbox)
	if err != nil {
		m = mailbox
	}
	k := sourceKey{cred: cred, mailbox: m}
	g.mu.Lock()
	defer g.mu.Unlock()
	if s, ok := g.sources[k]; ok {
		return s
	}
	s := &DelegatedSource{
		store:   g,
		cred:    cred,
		mailbox: m,
		log:     cred.log.With("mailbox", m),
		cache:   tokenCache{now: cred.opts.Now, before: cred.opts.RefreshBefore, fetches: &g.fetches, until: cred.bridgedUntil},
	}
	g.sources[k] = s
	return s
}

func (g *GrantStore) invalidateSources(mailbox string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for k, s := range g.sources {
		if k.mailbox == mailbox {
			s.cache.reset()
		}
	}
}

// Wait waits until the delegated token requests in flight have ended and
// stored the refresh tokens Entra rotated, or until ctx ends: before the
// store's Redis client is closed.
func (g *GrantStore) Wait(ctx context.Context) error { return g.fetches.wait(ctx) }

// Mailbox returns the normalised mailbox address.
func (s *DelegatedSource) Mailbox() string { return s.mailbox }

// Token returns an access token for the mailbox. Concurrent callers share
// one refresh; ctx bounds the wait only. An error answer from the token
// endpoint (invalid_grant for an expired, revoked or unconsented grant) is
// a *TokenError and is not cached; it is also recorded as the grant's
// LastError. The returned token carries no refresh token.
func (s *DelegatedSource) Token(ctx context.Context) (*oauth2.Token, error) {
	return s.cache.get(ctx, s.fetch)
}

// Invalidate drops the cached access token, e.g. after a 535.
func (s *DelegatedSource) Invalidate() {
	s.cache.invalidate()
}

// fetch redeems the stored refresh token. When the endpoint answers
// invalid_grant and the stored generation has moved meanwhile (another
// replica rotated the token we read), it retries once with the newer token.
func (s *DelegatedSource) fetch() (*oauth2.Token, error) {
	ctx, cancel := context.WithTimeout(context.Background(), delegatedFetchTimeout)
	defer cancel()
	for attempt := 1; ; attempt++ {
		gr, rt, err := s.store.load(ctx, s.mailbox, true)
		if errors.Is(err, ErrNoGrant) {
			return nil, fmt.Errorf("%w; register it again with PUT /v1/mailboxes/{address}", err)
		}
		if err != nil {
			return nil, err
		}
		if gr.Credential != s.cred.Name() {
			return nil, fmt.Errorf("grant %s belongs to credential %q, not %q; its queued mail waits for a grant of %q (PUT /v1/mailboxes/{address})",
				s.mailbox, gr.Credential, s.cred.Name(), s.cred.Name())
		}
		tok, err := s.cred.redeem(ctx, s.log, DelegatedScopes, url.Values{
			"grant_type":    {"refresh_token"},
			"refresh_token": {rt},
		})
		if err != nil {
			var te *TokenError
			if !errors.As(err, &te) {
				return nil, fmt.Errorf("grant %s: %w", s.mailbox, err)
			}
			if te.Code == CodeInvalidGrant && attempt == 1 {
				cur, gerr := s.store.Get(ctx, s.mailbox)
				if gerr == nil && cur.Generation != gr.Generation {
					s.log.Debug("refresh token rotated elsewhere while redeeming, retrying with the stored one",
						"redeemed_generation", gr.Generation, "stored_generation", cur.Generation)
					continue
				}
			}
			if !te.Unavailable() {
				// Entra's refusal of the grant; a throttled or unavailable
				// endpoint says nothing of it.
				s.store.setError(ctx, s.mailbox, gr.Generation, te.Error())
			}
			return nil, err
		}
		if tok.RefreshToken == "" || tok.RefreshToken == rt {
			s.store.redeemed(ctx, s.mailbox, gr.Generation)
		} else {
			gen, err := s.store.Rotate(ctx, s.mailbox, gr.Generation, tok.RefreshToken)
			switch {
			case err == nil:
				s.log.Debug("refresh token rotated", "generation", gen)
			case errors.Is(err, ErrGrantRotated):
				// Another replica stored a token redeemed from the same
				// generation first; both are valid and the stored one wins.
				s.log.Debug("refresh token already rotated by another replica", "redeemed_generation", gr.Generation)
			case errors.Is(err, ErrNoGrant):
				return nil, err
			default:
				s.log.Error("cannot store the rotated refresh token; the stored one stays in use", "err", err)
			}
		}
		// A new token without the raw response, which holds the refresh token.
		return &oauth2.Token{AccessToken: tok.AccessToken, TokenType: tok.TokenType, Expiry: tok.Expiry}, nil
	}
}
