package auth

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Errors returned by GrantStore.
var (
	// ErrNoGrant means no grant is stored for the mailbox.
	ErrNoGrant = errors.New("no grant stored for the mailbox")
	// ErrGrantRotated means the stored refresh token is no longer the one
	// the caller redeemed: another replica (or a new Put) replaced it.
	ErrGrantRotated = errors.New("grant was rotated by someone else")
)

// GrantKeySize is the size of the AES-256 key that seals refresh tokens.
const GrantKeySize = 32

// Grant is a mailbox's delegated grant as stored, without its refresh token.
type Grant struct {
	Mailbox    string
	Credential string // name of the Credential the grant was issued to
	Created    time.Time
	Updated    time.Time // the last Put or rotation: a new refresh token
	// Redeemed is when a relay last got an access token with the grant;
	// zero if none has since it was stored.
	Redeemed   time.Time
	Generation int64  // incremented by every Put and every rotation
	LastError  string // last token endpoint error for this generation, if any
}

// RefreshTokenMaxInactive is how long Entra keeps a refresh token that
// nobody redeems: past it, it answers AADSTS700082 and the mailbox must
// grant again. Every redemption starts the time again.
const RefreshTokenMaxInactive = 90 * 24 * time.Hour

// LastUsed is when the grant's refresh token was last issued or redeemed.
func (g Grant) LastUsed() time.Time {
	if g.Redeemed.After(g.Updated) {
		return g.Redeemed
	}
	return g.Updated
}

// LapsesAt is when Entra lets the refresh token lapse unless it is
// redeemed before.
func (g Grant) LapsesAt() time.Time { return g.LastUsed().Add(RefreshTokenMaxInactive) }

// Grant hash fields.
const (
	gfCredential = "cred"
	gfToken      = "rt"      // sealed refresh token
	gfCreated    = "created" // unix ms
	gfUpdated    = "updated" // unix ms
	gfGeneration = "gen"
	gfLastError  = "err"
	gfRedeemed   = "redeemed" // unix ms
)

// grantKeyPrefix and the hash tag keep each grant in one key:
// hf:{grant:MAILBOX} is a hash with the fields above.
const grantKeyPrefix = "hf:{grant:"

func grantKey(mailbox string) string { return grantKeyPrefix + mailbox + "}" }

// putScript stores a new grant or replaces one.
//
// KEYS[1] grant hash
// ARGV[1] credential name, ARGV[2] sealed refresh token, ARGV[3] now (unix ms)
// Returns the new generation.
var putScript = redis.NewScript(`
if redis.call('HEXISTS', KEYS[1], 'created') == 0 then
  redis.call('HSET', KEYS[1], 'created', ARGV[3])
end
redis.call('HSET', KEYS[1], 'cred', ARGV[1], 'rt', ARGV[2], 'updated', ARGV[3])
redis.call('HDEL', KEYS[1], 'err')
return redis.call('HINCRBY', KEYS[1], 'gen', 1)
`)

// rotateScript replaces the refresh token only if the stored generation is
// the one the caller redeemed. Redis runs it past its maxmemory too (the
// Redis 7 flag allow-oom): the token Entra just issued must be kept while
// a queue that grew during an outage fills Redis, and it replaces one of
// the same size.
//
// KEYS[1] grant hash
// ARGV[1] redeemed generation, ARGV[2] sealed refresh token, ARGV[3] now (unix ms)
// Returns the new generation, 0 if the generation changed, -1 if there is
// no grant.
var rotateScript = redis.NewScript(`#!lua flags=allow-oom
local gen = redis.call('HGET', KEYS[1], 'gen')
if not gen then return -1 end
if gen ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'rt', ARGV[2], 'updated', ARGV[3], 'redeemed', ARGV[3])
redis.call('HDEL', KEYS[1], 'err')
return redis.call('HINCRBY', KEYS[1], 'gen', 1)
`)

// redeemedScript records a redemption of a generation that Entra answered
// without a new refresh token, and clears the generation's last error.
//
// KEYS[1] grant hash
// ARGV[1] generation, ARGV[2] now (unix ms)
// Returns 1 if recorded, 0 if the generation changed or there is no grant.
var redeemedScript = redis.NewScript(`#!lua flags=allow-oom
if redis.call('HGET', KEYS[1], 'gen') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'redeemed', ARGV[2])
redis.call('HDEL', KEYS[1], 'err')
return 1
`)

// setErrorScript records the last error of a generation.
//
// KEYS[1] grant hash
// ARGV[1] generation, ARGV[2] error text
// Returns 1 if recorded, 0 if the generation changed or there is no grant.
var setErrorScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'gen') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'err', ARGV[2])
return 1
`)

// GrantStore keeps delegated refresh tokens in Redis, sealed with
// AES-256-GCM, and hands out per-mailbox token sources.
type GrantStore struct {
	rdb  redis.UniversalClient
	aead cipher.AEAD
	log  *slog.Logger
	now  func() time.Time

	mu      sync.Mutex
	sources map[sourceKey]*DelegatedSource

	fetches fetchGroup // the sources' token requests
}

type sourceKey struct {
	cred    *Credential
	mailbox string
}

// GrantOption changes a GrantStore.
type GrantOption func(*GrantStore)

// WithGrantLogger sets the logger. Default: discard.
func WithGrantLogger(l *slog.Logger) GrantOption {
	return func(g *GrantStore) { g.log = l.With("component", "auth") }
}

// WithGrantClock sets the clock. Default: time.Now.
func WithGrantClock(now func() time.Time) GrantOption {
	return func(g *GrantStore) { g.now = now }
}

// NewGrantStore returns a store using rdb and the 32-byte key.
func NewGrantStore(rdb redis.UniversalClient, key []byte, opts ...GrantOption) (*GrantStore, error) {
	if len(key) != GrantKeySize {
		return nil, fmt.Errorf("grant store: key is %d bytes, want %d", len(key), GrantKeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("grant store: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("grant store: %w", err)
	}
	g := &GrantStore{
		rdb:     rdb,
		aead:    aead,
		log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		now:     time.Now,
		sources: map[sourceKey]*DelegatedSource{},
	}
	for _, o := range opts {
		o(g)
	}
	return g, nil
}

// LoadKeyFile reads a grant key: 32 raw bytes, 64 hex characters, or the
// standard or URL base64 encoding of 32 bytes. Surrounding whitespace is
// ignored for the text forms.
func LoadKeyFile(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("grant key file: %w", err)
	}
	if len(raw) == GrantKeySize {
		return raw, nil
	}
	text := strings.TrimSpace(string(raw))
	if len(text) == 2*GrantKeySize {
		if key, err := hex.DecodeString(text); err == nil {
			return key, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if key, err := enc.DecodeString(text); err == nil && len(key) == GrantKeySize {
			return key, nil
		}
	}
	return nil, fmt.Errorf("grant key file %s: want 32 raw bytes, 64 hex characters or base64 of 32 bytes (e.g. openssl rand -hex 32); the file has %d bytes", path, len(raw))
}

// normMailbox lower-cases and trims a mailbox address.
func normMailbox(mailbox string) (string, error) {
	m := strings.ToLower(strings.TrimSpace(mailbox))
	if m == "" || !strings.Contains(m, "@") || strings.ContainsFunc(m, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return "", fmt.Errorf("grant: %q is not a mailbox address", mailbox)
	}
	return m, nil
}

func (g *GrantStore) seal(mailbox, token string) (string, error) {
	nonce := make([]byte, g.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	ct := g.aead.Seal(nonce, nonce, []byte(token), sealAAD(mailbox))
	return "v1." + base64.RawStdEncoding.EncodeToString(ct), nil
}

func (g *GrantStore) open(mailbox, sealed string) (string, error) {
	b64, ok := strings.CutPrefix(sealed, "v1.")
	if !ok {
		return "", fmt.Errorf("grant %s: unknown refresh token format", mailbox)
	}
	ct, err := base64.RawStdEncoding.DecodeString(b64)
	if err != nil || len(ct) < g.aead.NonceSize() {
		return "", fmt.Errorf("grant %s: corrupt refresh token", mailbox)
	}
	n := g.aead.NonceSize()
	pt, err := g.aead.Open(nil, ct[:n], ct[n:], sealAAD(mailbox))
	if err != nil {
		return "", fmt.Errorf("grant %s: cannot decrypt the refresh token: is exchange.grant_key_file the key it was stored with? Otherwise register the mailbox again (PUT /v1/mailboxes/{address})", mailbox)
	}
	return string(pt), nil
}

// sealAAD binds a sealed token to its mailbox, so a value copied to another
// mailbox's key does not decrypt.
func sealAAD(mailbox string) []byte { return []byte("holdfast grant v1\x00" + mailbox) }

// Put stores a mailbox's refresh token for the named credential, replacing
// any earlier grant, and drops the mailbox's cached access token in this
// process.
func (g *GrantStore) Put(ctx context.Context, mailbox, credential, refreshToken string) error {
	m, err := normMailbox(mailbox)
	if err != nil {
		return err
	}
	if credential == "" || refreshToken == "" {
		return fmt.Errorf("grant %s: credential and refresh token are required", m)
	}
	sealed, err := g.seal(m, refreshToken)
	if err != nil {
		return fmt.Errorf("grant %s: %w", m, err)
	}
	if err := putScript.Run(ctx, g.rdb, []string{grantKey(m)}, credential, sealed, g.now().UnixMilli()).Err(); err != nil {
		return fmt.Errorf("grant %s: store: %w", m, err)
	}
	g.invalidateSources(m)
	g.log.Info("grant stored", "mailbox", m, "credential", credential)
	return nil
}

// Get returns the stored grant without its token, or ErrNoGrant.
func (g *GrantStore) Get(ctx context.Context, mailbox string) (Grant, error) {
	gr, _, err := g.load(ctx, mailbox, false)
	return gr, err
}

// load reads a grant and, when withToken is set, opens its refresh token.
func (g *GrantStore) load(ctx context.Context, mailbox string, withToken bool) (Grant, string, error) {
	m, err := normMailbox(mailbox)
	if err != nil {
		return Grant{}, "", err
	}
	h, err := g.rdb.HGetAll(ctx, grantKey(m)).Result()
	if err != nil {
		return Grant{}, "", fmt.Errorf("grant %s: load: %w", m, err)
	}
	if len(h) == 0 || h[gfGeneration] == "" {
		return Grant{}, "", fmt.Errorf("grant %s: %w", m, ErrNoGrant)
	}
	gr := Grant{
		Mailbox:    m,
		Credential: h[gfCredential],
		Created:    unixMilli(h[gfCreated]),
		Updated:    unixMilli(h[gfUpdated]),
		Redeemed:   unixMilli(h[gfRedeemed]),
		LastError:  h[gfLastError],
	}
	if gr.Generation, err = strconv.ParseInt(h[gfGeneration], 10, 64); err != nil {
		return Grant{}, "", fmt.Errorf("grant %s: bad generation %q", m, h[gfGeneration])
	}
	if !withToken {
		return gr, "", nil
	}
	rt, err := g.open(m, h[gfToken])
	return gr, rt, err
}

func unixMilli(s string) time.Time {
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil || ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

// Delete removes a mailbox's grant. Deleting a missing grant is not an
// error.
func (g *GrantStore) Delete(ctx context.Context, mailbox string) error {
	m, err := normMailbox(mailbox)
	if err != nil {
		return err
	}
	if err := g.rdb.Del(ctx, grantKey(m)).Err(); err != nil {
		return fmt.Errorf("grant %s: delete: %w", m, err)
	}
	g.mu.Lock()
	for k := range g.sources {
		if k.mailbox == m {
			delete(g.sources, k)
		}
	}
	g.mu.Unlock()
	g.log.Info("grant deleted", "mailbox", m)
	return nil
}

// Rotate stores refreshToken as the mailbox's refresh token if the stored
// generation is still redeemed, the one whose token the caller redeemed.
// It returns the new generation, ErrGrantRotated if another rotation or Put
// came first, or ErrNoGrant if the grant was deleted.
func (g *GrantStore) Rotate(ctx context.Context, mailbox string, redeemed int64, refreshToken string) (int64, error) {
	m, err := normMailbox(mailbox)
	if err != nil {
		return 0, err
	}
	sealed, err := g.seal(m, refreshToken)
	if err != nil {
		return 0, fmt.Errorf("grant %s: %w", m, err)
	}
	gen, err := rotateScript.Run(ctx, g.rdb, []string{grantKey(m)}, redeemed, sealed, g.now().UnixMilli()).Int64()
	switch {
	case err != nil:
		return 0, fmt.Errorf("grant %s: rotate: %w", m, err)
	case gen == 0:
		return 0, fmt.Errorf("grant %s: %w", m, ErrGrantRotated)
	case gen < 0:
		return 0, fmt.Errorf("grant %s: %w", m, ErrNoGrant)
	}
	return gen, nil
}

// redeemed records that generation gen was redeemed now without a new
// refresh token.
func (g *GrantStore) redeemed(ctx context.Context, mailbox string, gen int64) {
	if err := redeemedScript.Run(ctx, g.rdb, []string{grantKey(mailbox)}, gen, g.now().UnixMilli()).Err(); err != nil {
		g.log.Warn("cannot record a grant's redemption", "mailbox", mailbox, "err", err)
	}
}

// Redeem gets a new access token for the mailbox with its stored refresh
// token now, whatever the cache holds, and stores the refresh token Entra
// rotated: it keeps a grant that carries no mail from lapsing
// (RefreshTokenMaxInactive). A refusal is recorded as the grant's
// LastError and returned as a *TokenError.
func (g *GrantStore) Redeem(ctx context.Context, cred *Credential, mailbox string) error {
	s := g.TokenSource(cred, mailbox)
	s.Invalidate()
	_, err := s.Token(ctx)
	return err
}

// setError records the last token endpoint error of a generation.
func (g *GrantStore) setError(ctx context.Context, mailbox string, gen int64, msg string) {
	if err := setErrorScript.Run(ctx, g.rdb, []string{grantKey(mailbox)}, gen, truncate(msg, maxDescriptionLen)).Err(); err != nil {
		g.log.Warn("cannot record grant error", "mailbox", mailbox, "err", err)
	}
}

// List returns every stored grant, in no particular order.
func (g *GrantStore) List(ctx context.Context) ([]Grant, error) {
	var (
		mu   sync.Mutex
		keys []string
	)
	scan := func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, grantKeyPrefix+"*", 100).Iterator()
		for iter.Next(ctx) {
			mu.Lock()
			keys = append(keys, iter.Val())
			mu.Unlock()
		}
		return iter.Err()
	}
	var err error
	switch c := g.rdb.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, scan)
	case *redis.Client:
		err = scan(ctx, c)
	default:
		return nil, fmt.Errorf("grant list: unsupported client %T", g.rdb)
	}
	if err != nil {
		return nil, fmt.Errorf("grant list: %w", err)
	}
	grants := make([]Grant, 0, len(keys))
	for _, k := range keys {
		m := strings.TrimSuffix(strings.TrimPrefix(k, grantKeyPrefix), "}")
		gr, err := g.Get(ctx, m)
		if errors.Is(err, ErrNoGrant) {
			continue // deleted since the scan
		}
		if err != nil {
			return nil, err
		}
		grants = append(grants, gr)
	}
	return grants, nil
}
