package auth

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// Defaults for CredentialOptions.
const (
	DefaultAuthority      = "https://login.microsoftonline.com"
	DefaultScope          = "https://outlook.office365.com/.default"
	DefaultReloadInterval = 5 * time.Second
	DefaultRefreshBefore  = 10 * time.Minute
	DefaultDialTimeout    = 10 * time.Second
	DefaultHTTPTimeout    = 30 * time.Second
)

// CredentialOptions configures an Entra ID app registration used with the
// client credentials grant. Exactly one of ClientSecretFile, CertFile and
// ClientAssertionFile is set.
type CredentialOptions struct {
	// Name identifies the credential in logs and in OnChange. Default:
	// ClientID.
	Name     string
	Tenant   string // tenant id or domain
	ClientID string

	// Authority is the Entra ID host. Default: https://login.microsoftonline.com.
	// The token URL is Authority + "/" + Tenant + "/oauth2/v2.0/token".
	Authority string

	// ClientSecretFile holds the client secret value. Surrounding
	// whitespace is ignored.
	ClientSecretFile string

	// ClientSecretFiles are several secrets of the app, each a file or a
	// directory of files (see secrets.go), instead of ClientSecretFile.
	// SecretExpires gives, by the path as listed (or as found in a listed
	// directory), cleaned (filepath.Clean), when a secret expires: the
	// latest is tried first.
	ClientSecretFiles []string
	SecretExpires     map[string]time.Time

	// ExpiresAtFile, optional, holds when the secret or certificate
	// expires (RFC 3339 or YYYY-MM-DD), kept beside it and rewritten with
	// it: re-read with the other files (see FileExpiry). A missing file
	// is no date.
	ExpiresAtFile string
	// OnExpiresAtFile is called with Name when ExpiresAtFile changed and
	// the secret or certificate did not (OnChange is called when it did).
	OnExpiresAtFile func(name string)

	// CertFile holds the PEM certificate, optionally followed by its chain.
	// KeyFile holds its RSA private key in PEM (PKCS#8 or PKCS#1); when
	// empty the key is read from CertFile.
	CertFile string
	KeyFile  string

	// ClientAssertionFile holds a JWT issued by another identity provider
	// that Entra trusts through a federated identity credential, e.g. the
	// service-account token AKS workload identity projects (its path in
	// AZURE_FEDERATED_TOKEN_FILE). It is re-read like the other files.
	ClientAssertionFile string

	// Scope requested with client credentials. Default:
	// https://outlook.office365.com/.default.
	Scope string

	// HTTPClient talks to the token endpoint. Default: NewHTTPClient(nil),
	// 10 s dial and 30 s overall timeouts. Set RootCAs through its
	// transport.
	HTTPClient *http.Client

	// ReloadInterval is how often Watch re-reads the secret or certificate
	// files. Default: 5 s.
	ReloadInterval time.Duration

	// RefreshBefore is how long before expiry a cached token is replaced.
	// Default and minimum: 10 min (MinRefreshBefore). Tokens living less
	// than twice this are replaced half-way through their lifetime.
	RefreshBefore time.Duration

	// OnChange is called with Name after a changed secret or certificate
	// has been loaded, e.g. to make the breaker probe at once.
	OnChange func(name string)

	// Metrics, when set, counts this credential's token requests.
	Metrics *Metrics
	// OnSecretInUse is called with Name when another of ClientSecretFiles
	// became the one in use (the one sent first had been refused).
	OnSecretInUse func(name string)
	// OnSecretExpired is called with Name when Entra first answers that
	// one of the loaded secrets expired (AADSTS7000222) and no other
	// secret got a token in its place; see SecretInfo.ExpiredAt.
	OnSecretExpired func(name string)

	// PropagationWindow is how long after a secret's file was written
	// Entra's AADSTS7000222 for it may mean that Entra has not
	// propagated a new secret yet, as it sometimes answers: within it
	// the secret is not marked expired. It is also how long after the
	// files changed the secret that got the last token before is tried
	// once Entra refuses theirs (see bridge.go). Zero: always marked, and
	// no such bridge.
	PropagationWindow time.Duration

	// OnIssued is called with Name and the fingerprint of the secret or
	// certificate used (see Fingerprint) after each token the token
	// endpoint issued: proof that this material works.
	OnIssued func(name, fingerprint string)

	// OnRefused is called with Name and each error answer of the token
	// endpoint (its Fingerprint and Written set), for any scope or grant:
	// a refusal of this material, which the caller may hold against it.
	OnRefused func(name string, te *TokenError)

	// Now is the clock. Default: time.Now.
	Now func() time.Time

	// Logger receives debug and warning records; it never sees a secret,
	// an assertion or a token. Default: discard.
	Logger *slog.Logger
}

// Credential is an app registration's client credentials together with a
// cached app-only access token. It is safe for concurrent use.
type Credential struct {
	opts     CredentialOptions
	tokenURL string
	log      *slog.Logger
	// base carries the HTTP client for the oauth2 package. It is never a
	// request's context: fetches are shared between callers.
	base context.Context

	cache   tokenCache
	fetches fetchGroup // the cache's fetches

	mu  sync.Mutex // guards the fields below
	mat *material
	// dated is ExpiresAtFile as read just before mat's files; datedFor
	// the fingerprint (usedFingerprint) of the secret or certificate
	// loaded by the reload that found its content changed, "" until one
	// did (see DateStatedFor).
	dated    datedFile
	datedFor string
	// inUse is the index in mat.secrets of the secret that got the last
	// token, tried first; 0 after a reload.
	inUse int
	// graphDates are Graph's end dates of the secrets, by hint (see
	// SetSecretDates).
	graphDates map[string]time.Time
	// retired holds, by hint, when a rotation removes a secret (Retire).
	retired map[string]time.Time
	// refusedAt is when Entra last refused each secret of mat, by index:
	// a refused secret is not preferred again for refusedMemory.
	refusedAt map[int]time.Time
	// proven is mat and the secret tried first once they got a token;
	// trial is the request under way while they have not (see trial).
	proven tried
	trial  *trial
	// lastGood is the secret that got the last token. previous is the
	// one that did when the files last changed, when the new files do not
	// hold it: tried after them while Entra may still be propagating
	// them, until previousUntil, or until Entra refuses it (see
	// bridge.go). nil when there is none.
	lastGood      *secretFile
	previous      *secretFile
	previousUntil time.Time
	previousSaid  bool // the bridge's use since the change was logged
	// bridged are the tokens the bridge got, each with its bridge's
	// end, until a token cache takes them (see bridgedUntil).
	bridged map[*oauth2.Token]time.Time
}

// NewHTTPClient returns an HTTP client for the token endpoint with a 10 s
// dial timeout and a 30 s overall timeout. tlsConfig, when not nil, is
// cloned into the transport, e.g. to set RootCAs.
func NewHTTPClient(tlsConfig *tls.Config) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: DefaultDialTimeout, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = DefaultDialTimeout
	t.ResponseHeaderTimeout = DefaultHTTPTimeout
	if tlsConfig != nil {
		t.TLSClientConfig = tlsConfig.Clone()
	}
	return &http.Client{Transport: t, Timeout: DefaultHTTPTimeout}
}

// NewCredential validates o, applies the defaults and reads the secret or
// certificate files. A missing, empty or unparsable file is an error naming
// the file.
func NewCredential(o CredentialOptions) (*Credential, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	c := &Credential{
		opts:     o,
		tokenURL: o.Authority + "/" + url.PathEscape(o.Tenant) + "/oauth2/v2.0/token",
		log:      o.Logger.With("component", "auth", "credential", o.Name),
		base:     context.WithValue(context.Background(), oauth2.HTTPClient, o.HTTPClient),
		cache:    tokenCache{now: o.Now, before: o.RefreshBefore},
	}
	c.cache.fetches, c.cache.until = &c.fetches, c.bridgedUntil
	c.dated = readDatedFile(o.ExpiresAtFile)
	m, err := loadMaterial(&c.opts)
	if err != nil {
		return nil, fmt.Errorf("credential %s: %w", o.Name, err)
	}
	c.mat = m
	return c, nil
}

func (o *CredentialOptions) setDefaults() error {
	switch {
	case o.Tenant == "":
		return errors.New("credential: tenant is required")
	case strings.ContainsAny(o.Tenant, "/?#% "):
		return fmt.Errorf("credential: tenant %q is not a tenant id or domain", o.Tenant)
	case o.ClientID == "":
		return errors.New("credential: client_id is required")
	case o.ClientSecretFile != "" && len(o.ClientSecretFiles) > 0:
		return errors.New("credential: client_secret_file and client_secret_files are mutually exclusive")
	case countSet(o.ClientSecretFile+strings.Join(o.ClientSecretFiles, ""), o.CertFile, o.ClientAssertionFile) == 0:
		return errors.New("credential: one of client_secret_file and cert_file, or client_assertion_file, is required")
	case countSet(o.ClientSecretFile+strings.Join(o.ClientSecretFiles, ""), o.CertFile, o.ClientAssertionFile) > 1:
		return errors.New("credential: client_secret_file, cert_file and client_assertion_file are mutually exclusive")
	case o.KeyFile != "" && o.CertFile == "":
		return errors.New("credential: key_file needs cert_file")
	case o.ReloadInterval < 0:
		return errors.New("credential: reload_interval must not be negative")
	case o.RefreshBefore != 0 && o.RefreshBefore < MinRefreshBefore:
		return fmt.Errorf("credential: refresh_before %s is below the minimum %s", o.RefreshBefore, MinRefreshBefore)
	}
	if o.Name == "" {
		o.Name = o.ClientID
	}
	if o.Authority == "" {
		o.Authority = DefaultAuthority
	}
	o.Authority = strings.TrimRight(o.Authority, "/")
	if u, err := url.Parse(o.Authority); err != nil || u.Scheme == "" || u.Host == "" {
		return fmt.Errorf("credential: authority %q is not an absolute URL", o.Authority)
	}
	if o.KeyFile == "" {
		o.KeyFile = o.CertFile
	}
	if o.Scope == "" {
		o.Scope = DefaultScope
	}
	if o.HTTPClient == nil {
		o.HTTPClient = NewHTTPClient(nil)
	}
	if o.ReloadInterval == 0 {
		o.ReloadInterval = DefaultReloadInterval
	}
	if o.RefreshBefore == 0 {
		o.RefreshBefore = DefaultRefreshBefore
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

// Name returns the credential's name.
func (c *Credential) Name() string { return c.opts.Name }

// TokenURL returns the token endpoint URL.
func (c *Credential) TokenURL() string { return c.tokenURL }

// ClientID returns the application (client) id.
func (c *Credential) ClientID() string { return c.opts.ClientID }

// Token returns an app-only access token for Scope. The token is cached
// until RefreshBefore ahead of its expiry; concurrent callers share one
// request. ctx bounds the wait only: the request itself runs under the
// HTTP client's timeouts and its result serves the other callers. An error
// answer from the endpoint is a *TokenError and is not cached; Entra's
// refusal of the client also answers the requests that waited for it
// (see trial).
func (c *Credential) Token(ctx context.Context) (*oauth2.Token, error) {
	return c.cache.get(ctx, c.fetch)
}

// Wait waits until the token requests in flight, whose callers may have
// stopped waiting, have ended and called the hooks (OnIssued, OnRefused),
// or until ctx ends: before the things the hooks use are closed.
func (c *Credential) Wait(ctx context.Context) error { return c.fetches.wait(ctx) }

// Invalidate drops the cached token, e.g. after the server rejected it.
// The next Token call requests a new one.
func (c *Credential) Invalidate() {
	c.cache.invalidate()
	c.log.Debug("cached token dropped")
}

// Expiry returns the certificate's NotAfter for a certificate credential.
// A client secret's expiry is not known here.
func (c *Credential) Expiry() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mat.leaf == nil {
		return time.Time{}, false
	}
	return c.mat.leaf.NotAfter, true
}

// Fingerprint identifies the secret or certificate loaded now: 16 hex
// digits of the SHA-256 of its files, never the secret itself. Replicas
// whose files hold the same material have the same fingerprint.
func (c *Credential) Fingerprint() string {
	m, i := c.secretInUse()
	if len(m.secrets) > 0 {
		return m.secrets[i].fingerprint()
	}
	return m.fingerprint()
}

// Written is when the files of the secret or certificate loaded now were
// written (their modification time): zero when not known.
func (c *Credential) Written() time.Time {
	m, i := c.secretInUse()
	if len(m.secrets) > 0 {
		return m.secrets[i].written
	}
	return m.written
}

func (m *material) fingerprint() string { return hex.EncodeToString(m.sum[:8]) }

func (c *Credential) material() *material {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mat
}

func (c *Credential) fetch() (*oauth2.Token, error) {
	return c.redeem(context.Background(), c.log, []string{c.opts.Scope}, nil)
}

// redeemMaterial makes one token request with material m: the secret in
// the form, the first-th of m first, or a fresh client assertion. params
// adds form fields, e.g. grant_type=refresh_token.
func (c *Credential) redeemMaterial(log *slog.Logger, scopes []string, params url.Values, m *material, first int) (*oauth2.Token, error) {
	if len(m.secrets) == 0 {
		return c.redeemWith(log, scopes, params, m, nil)
	}
	// The secret in use first, then the others in their order, while
	// Entra says the one tried expired or is unknown.
	order := append([]int{first}, slices.DeleteFunc(seq(len(m.secrets)), func(i int) bool { return i == first })...)
	var (
		firstErr error
		expired  bool // Entra said a secret expired for the first time
	)
	for n, i := range order {
		tok, err := c.redeemWith(log, scopes, params, m, &m.secrets[i])
		if err == nil {
			c.worked(m, i)
			c.useSecret(m, first, i)
			c.served(m, m.secrets[i])
			return tok, nil
		}
		var te *TokenError
		if !errors.As(err, &te) || !te.SecretRefused() {
			// Whether the next secret works is not known: no news.
			return nil, err
		}
		expired = c.refused(m, i, te) || expired
		if firstErr == nil {
			firstErr = err
		}
		if n+1 < len(order) {
			log.Warn("client secret refused; trying the next one", "file", m.secrets[i].file,
				"hint", m.secrets[i].hint(), "aadsts", te.AADSTS)
		}
	}
	tok, ok, err := c.bridge(log, scopes, params, m)
	if ok {
		return tok, nil
	}
	c.toldExpired(expired)
	if err != nil {
		return nil, err // the bridge's answer is not known
	}
	// Every secret refused: the refusal of the one in use, whose
	// fingerprint is the one the breaker knows as working, so that it
	// counts as a failure of the credential rather than of old files.
	return nil, firstErr
}

// seq returns 0, 1, …, n-1.
func seq(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// redeemWith is redeem with material m and, for a secret credential, one
// of its secrets.
func (c *Credential) redeemWith(log *slog.Logger, scopes []string, params url.Values, m *material, sec *secretFile) (*oauth2.Token, error) {
	start := c.opts.Now()
	cfg := &clientcredentials.Config{
		ClientID:       c.opts.ClientID,
		TokenURL:       c.tokenURL,
		Scopes:         scopes,
		AuthStyle:      oauth2.AuthStyleInParams,
		EndpointParams: url.Values{},
	}
	for k, v := range params {
		cfg.EndpointParams[k] = v
	}
	var scrub []string
	switch {
	case m.fed != nil:
		if err := m.fed.check(start); err != nil {
			c.opts.Metrics.tokenRequest(c.opts.Name, err)
			log.Warn("client assertion expired, not sent", "file", m.fed.file, "exp", m.fed.exp)
			// As Entra's refusal would be: with the file's fingerprint and
			// write time, a replica whose file is older than the one that
			// works elsewhere is stale, and leaves the mail to the others.
			var te *TokenError
			if errors.As(err, &te) {
				te.Fingerprint, te.Written = m.fingerprint(), m.written
				if c.opts.OnRefused != nil {
					c.opts.OnRefused(c.opts.Name, te)
				}
			}
			return nil, err
		}
		cfg.EndpointParams.Set("client_assertion_type", clientAssertionType)
		cfg.EndpointParams.Set("client_assertion", m.fed.jwt)
		scrub = append(scrub, m.fed.jwt)
	case m.key != nil:
		jwt, err := m.assertion(c.tokenURL, c.opts.ClientID, start)
		if err != nil {
			return nil, fmt.Errorf("credential %s: %w", c.opts.Name, err)
		}
		cfg.EndpointParams.Set("client_assertion_type", clientAssertionType)
		cfg.EndpointParams.Set("client_assertion", jwt)
		scrub = append(scrub, jwt)
	default:
		cfg.ClientSecret = sec.value
		scrub = append(scrub, sec.value)
	}
	fingerprint, written := m.fingerprint(), m.written
	if sec != nil {
		fingerprint, written = sec.fingerprint(), sec.written
	}
	scrub = append(scrub, params.Get("refresh_token"))

	// The previous secret, sent as a bridge, is no longer in the files:
	// what Entra says of it is no news of them.
	hooks := sec == nil || !sec.bridge
	tok, err := cfg.Token(c.base)
	c.opts.Metrics.tokenRequest(c.opts.Name, err)
	if err != nil {
		err = tokenErr(err, c.opts.Now(), scrub...)
		var te *TokenError
		if errors.As(err, &te) {
			te.Fingerprint, te.Written = fingerprint, written
			log.Warn("token request rejected", "status", te.HTTPStatus, "error", te.Code,
				"aadsts", te.AADSTS, "suberror", te.SubError, "correlation_id", te.CorrelationID)
			if hooks && c.opts.OnRefused != nil {
				c.opts.OnRefused(c.opts.Name, te)
			}
		} else {
			log.Warn("token request failed", "err", err)
		}
		return nil, err
	}
	if err := stampExpiry(tok, start); err != nil {
		log.Warn("token request failed", "err", err)
		return nil, err
	}
	if hooks && c.opts.OnIssued != nil {
		c.opts.OnIssued(c.opts.Name, fingerprint)
	}
	log.Debug("token issued", "expiry", tok.Expiry, "duration", c.opts.Now().Sub(start))
	return tok, nil
}
