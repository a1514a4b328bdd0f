package sim

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/mail"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// Config seeds a simulator. The zero value of each field is usable.
type Config struct {
	Tenants []Tenant
	// Now is the simulator's clock for tokens, grants and secret expiry;
	// default time.Now. TLS certificates always use the real clock.
	Now func() time.Time
	// TokenLifetime, when set, is the lifetime of every access token.
	// Default: Entra's, a random lifetime from 60 to 90 minutes per token.
	TokenLifetime time.Duration
	// Seed makes the random token lifetimes repeatable; 0 draws a seed.
	Seed uint64
	// ExpiringTokenMargin, when set, makes SMTP AUTH refuse a token with
	// this long or less left before its expiry with "501 5.5.127 Invalid
	// XOAUTH2 auth data - Token will expire soon", as Exchange Online's
	// high volume endpoint does. SetExpiringTokenMargin changes it.
	ExpiringTokenMargin time.Duration
	// RecipientQuota is how many recipients one mailbox may send to in a
	// rolling 24 hours, as Exchange Online's recipient rate limit; default
	// 10,000. A message that would go over it gets 554 5.2.0
	// SubmissionQuotaExceededException.
	RecipientQuota int
	// HTTPSAddr, SMTPAddr and AdminAddr are the listen addresses; each
	// defaults to 127.0.0.1:0 and must be a loopback address.
	HTTPSAddr, SMTPAddr, AdminAddr string
	// PasswordPropagation is how long a secret created with Graph's
	// addPassword is answered AADSTS7000215, as Entra answers a secret
	// it has not propagated yet. SetPasswordPropagation changes it.
	PasswordPropagation time.Duration
	// PasswordRefusedAsExpired answers AADSTS7000222 instead meanwhile
	// (see Secret.RefusedAsExpired). SetPasswordPropagation changes it.
	PasswordRefusedAsExpired bool
}

// Tenant is an Entra tenant with its app registrations and mailboxes.
// Mailbox addresses must be unique across tenants.
type Tenant struct {
	ID        string
	Apps      []App
	Mailboxes []Mailbox
}

// App is an app registration and its service principal.
type App struct {
	ClientID string
	Secrets  []Secret
	// FederatedCredentials are the federated identity credentials: JWTs
	// from these issuers and subjects are accepted as client assertions.
	FederatedCredentials []FederatedCredential
	// CertificatesPEM are the public certificates accepted for
	// private_key_jwt client assertions.
	CertificatesPEM [][]byte
	// SendAsMailboxes are the mailboxes the service principal may send as
	// (SMTP.SendAsApp plus FullAccess, or Mail.Send for Graph); "*" means
	// every mailbox of the tenant.
	SendAsMailboxes []string
	// GraphRoles are the application permissions granted on Microsoft
	// Graph, carried as "roles" in its app-only Graph tokens. Nil means
	// Mail.Send, Mail.ReadBasic.All and Application.Read.All; an empty,
	// non-nil list grants nothing. Listing a mailbox's Sent Items needs
	// Mail.ReadBasic.All, Mail.ReadBasic or Mail.Read. Reading an application needs Application.Read.All (or
	// Application.ReadWrite.All), or Application.ReadWrite.OwnedBy with
	// OwnsItself.
	GraphRoles []string
	// OwnsItself lists the app's service principal as an owner of its own
	// registration, for Application.ReadWrite.OwnedBy.
	OwnsItself bool
}

// Secret is a client secret. With ExpiresAt and ExpiresIn both zero it
// never expires; an empty KeyID gets a generated one.
type Secret struct {
	Value     string
	ExpiresAt time.Time
	// ExpiresIn, when set, ends the secret this long after the
	// simulator's start (its clock at New), for a seed whose secret
	// should always have the same time left. It must not be negative,
	// and ExpiresAt must then be zero.
	ExpiresIn   time.Duration
	KeyID       string
	DisplayName string
	// ValidFrom is when Entra has propagated the secret: until then a
	// token request with it is answered AADSTS7000215, as Entra answers
	// a secret created moments ago. Zero: at once.
	ValidFrom time.Time
	// RefusedAsExpired makes the answer before ValidFrom AADSTS7000222,
	// the secret expired, which Entra too gives at times for a secret
	// it has not propagated yet.
	RefusedAsExpired bool
}

// hint is what Graph shows of a secret: its first three characters.
func (k Secret) hint() string { return k.Value[:min(3, len(k.Value))] }

// Mailbox is an Exchange Online mailbox.
type Mailbox struct {
	Address          string
	SMTPAuthDisabled bool
	// SendAs are the other senders, addresses or whole @domains, this
	// mailbox holds Exchange's SendAs permission on: over SMTP it may
	// use them as envelope sender and From. Without it a mailbox sends
	// only as itself.
	SendAs []string
}

// Fault makes the simulator fail on purpose until the next SetFault or
// reset. The zero value injects nothing.
type Fault struct {
	// TokenThrottle answers every token request with 429 and a
	// Retry-After of this many seconds (rounded up).
	TokenThrottle time.Duration
	// TokenUnavailable answers every token request with 503
	// temporarily_unavailable.
	TokenUnavailable bool
	// SMTPTransient is "421" (new connections are greeted with
	// "421 4.3.2 Service not active" and closed) or "451" (the end of DATA
	// gets "451 4.7.0 Temporary server error. Please try again later.
	// PRX4" and the message is not recorded).
	SMTPTransient string
	// SMTPDown closes the SMTP listening socket, so that connections are
	// refused; clearing it listens again on the same address.
	SMTPDown bool
	// SMTPStall makes the SMTP server hang, so that the client's timeout
	// is what ends the session: "greeting" accepts new connections and
	// never says anything, not even the greeting; "data" reads a message
	// to its end and never answers it (the message is not recorded). A
	// stalled session lasts until the client hangs up, 5 minutes pass or
	// the simulator closes; clearing the fault does not revive it.
	// Each takes precedence over SMTPTransient at the same step.
	SMTPStall string
	// SMTPStallMailbox stalls as SMTPStall "data" does, but only the
	// messages of sessions authenticated as this mailbox: one mailbox
	// hangs while the others work. With it set, SMTPStall "data" stalls
	// this mailbox alone too.
	SMTPStallMailbox string
	// GraphThrottle answers sendMail with 429 ApplicationThrottled and a
	// Retry-After of this many seconds (rounded up).
	GraphThrottle time.Duration
	// GraphThrottleMailbox, when set, limits GraphThrottle to the sends
	// of this mailbox, as Graph throttles each app and mailbox apart: one
	// busy mailbox is throttled while the others send.
	GraphThrottleMailbox string
	// GraphAfterSend makes sendMail record the message, as Exchange does
	// when it sent it, and then fail: "500" or "504" answers with that
	// status, "hang" never answers: it drops the connection when the
	// client gives up, 5 minutes pass or the simulator closes.
	GraphAfterSend string
	// GraphFail answers sendMail with this 5xx status ("500" or "503")
	// without recording the message.
	GraphFail string
	// GraphAcceptedRetryAfter adds a Retry-After of this many seconds
	// (rounded up) to sendMail's 202.
	GraphAcceptedRetryAfter time.Duration
	// AuthDelay is how long each AUTH XOAUTH2 takes to be answered, as
	// Exchange's token validation takes a round trip or more: sessions
	// opened together then AUTH together.
	AuthDelay time.Duration
	// SMTPRoundTrip delays each write of the SMTP server, the greeting,
	// every reply and the TLS handshake's, by this long, as a network
	// with this round trip does: a session's set-up (greeting, EHLO,
	// STARTTLS, the handshake, EHLO) then takes a few of them before
	// its AUTH.
	SMTPRoundTrip time.Duration
	// SMTPMailRefusal answers every MAIL FROM with one of Exchange's
	// refusals of the sender: "sender_not_permitted" is 550 5.7.60
	// "SMTP; Client does not have permissions to send as this sender".
	SMTPMailRefusal string
	// SMTPDataRefusal answers the end of every message with one of
	// Exchange's refusals, without recording it: "thread_limit" is 432
	// 4.3.2 "STOREDRV.ClientSubmit; sender thread limit exceeded", the
	// other form of the concurrency limit; "sender_throttled" is 550
	// 5.2.251 "Sender throttled due to continuous ...", Exchange's block
	// of a mailbox that repeated an error.
	SMTPDataRefusal string
	// SMTPDataRefusalMailbox, when set, limits SMTPDataRefusal to the
	// messages of sessions authenticated as this mailbox: one mailbox is
	// refused while the others send.
	SMTPDataRefusalMailbox string
}

// Received is a message Exchange accepted.
type Received struct {
	Mailbox string   `json:"mailbox"`
	From    string   `json:"from"`
	To      []string `json:"to"`
	Data    []byte   `json:"data"`
	// MessageID is the Message-ID header as sent, angle brackets
	// included, or the one the simulator added when there was none.
	MessageID     string `json:"message_id"`
	Via           string `json:"via"` // "smtp" or "graph"
	TokenClientID string `json:"token_client_id"`
	Delegated     bool   `json:"delegated"`
	// Started is when the sending began: MAIL FROM over SMTP, the
	// request over Graph.
	Started time.Time `json:"started"`
}

// Counters are what the simulator observed since start or the last reset.
type Counters struct {
	// Clients is keyed by client id, spelt as registered when the app is
	// known; "" counts requests whose client is
	// unknown (no client_id, or an SMTP token that did not verify).
	Clients map[string]ClientCounters `json:"clients"`
	// Mailboxes is keyed by lower-case address.
	Mailboxes map[string]MailboxCounters `json:"mailboxes"`
}

// ClientCounters count requests per client id.
type ClientCounters struct {
	TokenRequests int `json:"token_requests"`
	// GraphTokenRequests are the client-credentials token requests for
	// https://graph.microsoft.com/.default, also counted in
	// TokenRequests.
	GraphTokenRequests int `json:"graph_token_requests"`
	TokenErrors        int `json:"token_errors"`
	SMTPAuthAttempts   int `json:"smtp_auth_attempts"`
	SMTPAuthFailures   int `json:"smtp_auth_failures"`
	GraphRequests      int `json:"graph_requests"`
	// SMTPRefusedByFault counts the MAIL FROMs and message ends that
	// Fault.SMTPMailRefusal and Fault.SMTPDataRefusal refused.
	SMTPRefusedByFault int `json:"smtp_refused_by_fault"`
	// GraphThrottledByFault counts the sendMail requests that
	// Fault.GraphThrottle answered with 429.
	GraphThrottledByFault int `json:"graph_throttled_by_fault"`
}

// MailboxCounters count per mailbox.
type MailboxCounters struct {
	// MaxConcurrentSMTP is the most SMTP connections that were
	// authenticated, or attempting XOAUTH2 with a valid token, as this
	// mailbox at once. A value above 3 means a client tried a 4th.
	MaxConcurrentSMTP int `json:"max_concurrent_smtp"`
	// RefreshTokenRedemptions counts successful refresh-token grants for
	// this mailbox.
	RefreshTokenRedemptions int `json:"refresh_token_redemptions"`
}

const (
	// smtpHost is the host name in SMTP replies.
	smtpHost = "SIM.PROD.OUTLOOK.COM"
	// maxSMTPPerMailbox is Exchange Online's concurrent connection limit.
	maxSMTPPerMailbox = 3
	// refreshInactivity is how long an unused refresh token lives.
	refreshInactivity = 90 * 24 * time.Hour
	// rotatedSecretLifetime is the lifetime of a secret set by
	// RotateSecret, the portal's recommended 180 days.
	rotatedSecretLifetime = 180 * 24 * time.Hour

	roleMailSend           = "Mail.Send"
	roleMailReadBasicAll   = "Mail.ReadBasic.All"
	roleApplicationReadAll = "Application.Read.All"
	roleApplicationRWAll   = "Application.ReadWrite.All"
	roleApplicationOwnedBy = "Application.ReadWrite.OwnedBy"

	audOutlook    = "https://outlook.office.com"
	audOutlook365 = "https://outlook.office365.com"
	audGraph      = "https://graph.microsoft.com"
)

// Sim is a running Exchange Online and Entra ID simulator.
type Sim struct {
	now      func() time.Time
	lifetime time.Duration // fixed token lifetime; 0: random (see lifetimes.go)
	quota    int           // recipients per mailbox per rolling 24 hours
	certs    *certs
	key      []byte // signs access tokens
	addrs    [3]string

	mu        sync.Mutex
	started   bool
	closed    bool
	tenants   map[string]*tenant // by lower-case id
	mailboxes map[string]*mailbox
	grants    map[string]*grant // by refresh token
	fault     Fault
	rng       *lifetimeRand // draws token lifetimes
	margin    time.Duration // ExpiringTokenMargin
	propagate time.Duration // PasswordPropagation
	// propagateExpired is PasswordRefusedAsExpired.
	propagateExpired bool
	received         []Received
	clients          map[string]*ClientCounters
	mcount           map[string]*MailboxCounters
	active           map[string]int // authenticated SMTP sessions per mailbox

	https    *http.Server
	admin    *http.Server
	httpsURL string
	adminURL string
	smtp     *smtpFront
	smtpSrv  *smtp.Server
	wg       sync.WaitGroup
}

type tenant struct {
	id   string
	apps map[string]*app
}

type app struct {
	clientID string
	tenant   *tenant
	secrets  []secret
	certs    []appCert
	sendAll  bool
	sendAs   map[string]bool
	// leftOut are the mailboxes SetSendAs took out: refused even with
	// sendAll, as an access policy that leaves them out.
	leftOut map[string]bool
	denied  bool // DenySendAsApp
	// graphRoles go into app-only Graph tokens; ownsItself is App.OwnsItself.
	graphRoles []string
	ownsItself bool
	// disabled refuses every token request: AADSTS7000112.
	disabled  bool
	federated []FederatedCredential
	// epoch goes into the app's app-only tokens; RevokeAppTokens moves
	// it on, so that every token issued before is refused.
	epoch int
}

type secret struct {
	Secret
	start time.Time
}

type appCert struct {
	cert   *x509.Certificate
	s256   string // base64url SHA-256 thumbprint, as in x5t#S256
	s1     string // base64url SHA-1 thumbprint, as in x5t
	keyID  string
	sha1Hx string
}

type mailbox struct {
	address      string
	id           string
	tenant       *tenant
	smtpDisabled bool
	sendAs       []string // lower-case addresses and @domains
	// sent counts the recipients of the messages it sent, for the
	// recipient quota (see quota.go).
	sent []quotaEntry
	// used is the recipients counted in sent; unordered says an entry
	// in sent is earlier than one before it (the clock went back).
	used      int
	unordered bool
}

// grant is a delegated consent of one mailbox to one app, with the refresh
// tokens issued under it.
type grant struct {
	tenant, clientID, mailbox string
	scopes                    []string
	issued, lastUsed          time.Time
	revoked                   bool
	revokedAt                 time.Time
}

// New checks cfg and builds a simulator; Start makes it listen.
func New(cfg Config) (*Sim, error) {
	s := &Sim{
		now:       cfg.Now,
		lifetime:  cfg.TokenLifetime,
		rng:       newLifetimeRand(cfg.Seed),
		margin:    cfg.ExpiringTokenMargin,
		quota:     cfg.RecipientQuota,
		propagate: cfg.PasswordPropagation, propagateExpired: cfg.PasswordRefusedAsExpired,
		tenants:   map[string]*tenant{},
		mailboxes: map[string]*mailbox{},
		grants:    map[string]*grant{},
		clients:   map[string]*ClientCounters{},
		mcount:    map[string]*MailboxCounters{},
		active:    map[string]int{},
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.lifetime < 0 {
		return nil, errors.New("negative token lifetime")
	}
	for i, a := range []string{cfg.HTTPSAddr, cfg.SMTPAddr, cfg.AdminAddr} {
		if a == "" {
			a = "127.0.0.1:0"
		}
		if err := checkLoopback(a); err != nil {
			return nil, err
		}
		s.addrs[i] = a
	}
	start := s.now()
	for _, t := range cfg.Tenants {
		if t.ID == "" {
			return nil, errors.New("tenant with an empty ID")
		}
		id := strings.ToLower(t.ID)
		if s.tenants[id] != nil {
			return nil, fmt.Errorf("tenant %s: duplicate", t.ID)
		}
		tn := &tenant{id: t.ID, apps: map[string]*app{}}
		s.tenants[id] = tn
		for _, a := range t.Apps {
			ap, err := newApp(tn, a, start)
			if err != nil {
				return nil, fmt.Errorf("tenant %s: %w", t.ID, err)
			}
			if tn.apps[strings.ToLower(a.ClientID)] != nil {
				return nil, fmt.Errorf("tenant %s: app %s: duplicate", t.ID, a.ClientID)
			}
			tn.apps[strings.ToLower(a.ClientID)] = ap
		}
		for _, m := range t.Mailboxes {
			addr, err := mail.ParseAddress(m.Address)
			if err != nil || addr.Address != m.Address {
				return nil, fmt.Errorf("tenant %s: mailbox %q: not a plain address", t.ID, m.Address)
			}
			key := strings.ToLower(m.Address)
			if s.mailboxes[key] != nil {
				return nil, fmt.Errorf("mailbox %s: duplicate", m.Address)
			}
			mb := &mailbox{address: m.Address, id: guidFrom("mailbox:" + key), tenant: tn, smtpDisabled: m.SMTPAuthDisabled}
			for _, a := range m.SendAs {
				mb.sendAs = append(mb.sendAs, strings.ToLower(a))
			}
			s.mailboxes[key] = mb
		}
	}
	certs, err := newCerts()
	if err != nil {
		return nil, err
	}
	s.certs = certs
	s.key = make([]byte, 32)
	if _, err := rand.Read(s.key); err != nil {
		return nil, err
	}
	return s, nil
}

func newApp(tn *tenant, a App, start time.Time) (*app, error) {
	if a.ClientID == "" {
		return nil, errors.New("app with an empty ClientID")
	}
	ap := &app{clientID: a.ClientID, tenant: tn, sendAs: map[string]bool{}, ownsItself: a.OwnsItself,
		graphRoles: []string{roleMailSend, roleMailReadBasicAll, roleApplicationReadAll}}
	if a.GraphRoles != nil {
		ap.graphRoles = append([]string{}, a.GraphRoles...)
	}
	for _, sec := range a.Secrets {
		if sec.KeyID == "" {
			sec.KeyID = newGUID()
		}
		switch {
		case sec.ExpiresIn < 0:
			return nil, fmt.Errorf("app %s: secret %s: negative ExpiresIn", a.ClientID, sec.KeyID)
		case sec.ExpiresIn > 0 && !sec.ExpiresAt.IsZero():
			return nil, fmt.Errorf("app %s: secret %s: set ExpiresAt or ExpiresIn, not both", a.ClientID, sec.KeyID)
		case sec.ExpiresIn > 0:
			sec.ExpiresAt, sec.ExpiresIn = start.Add(sec.ExpiresIn), 0
		}
		ap.secrets = append(ap.secrets, secret{Secret: sec, start: start})
	}
	for _, fc := range a.FederatedCredentials {
		if fc.Issuer == "" || fc.Subject == "" {
			return nil, fmt.Errorf("app %s: a federated credential needs an issuer and a subject", a.ClientID)
		}
		if len(fc.Audiences) == 0 {
			fc.Audiences = []string{federatedAudience}
		}
		ap.federated = append(ap.federated, fc)
	}
	for i, p := range a.CertificatesPEM {
		c, err := parseCertPEM(p)
		if err != nil {
			return nil, fmt.Errorf("app %s: certificate %d: %w", a.ClientID, i, err)
		}
		s256 := sha256.Sum256(c.Raw)
		s1 := sha1Sum(c.Raw)
		ap.certs = append(ap.certs, appCert{
			cert:   c,
			s256:   b64.EncodeToString(s256[:]),
			s1:     b64.EncodeToString(s1),
			keyID:  guidFrom(fmt.Sprintf("cert:%x", s256)),
			sha1Hx: strings.ToUpper(fmt.Sprintf("%x", s1)),
		})
	}
	for _, m := range a.SendAsMailboxes {
		if m == "*" {
			ap.sendAll = true
			continue
		}
		ap.sendAs[strings.ToLower(m)] = true
	}
	return ap, nil
}

func parseCertPEM(p []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(p)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("no CERTIFICATE PEM block")
	}
	return x509.ParseCertificate(b.Bytes)
}

func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("listen address %q: not a loopback address", addr)
	}
	return nil
}

// Start listens on the configured addresses and serves until Close.
func (s *Sim) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started || s.closed {
		return errors.New("sim: already started")
	}
	s.started = true
	hl, err := net.Listen("tcp", s.addrs[0])
	if err != nil {
		return fmt.Errorf("listen https: %w", err)
	}
	al, err := net.Listen("tcp", s.addrs[2])
	if err != nil {
		hl.Close()
		return fmt.Errorf("listen admin: %w", err)
	}
	front, err := s.newSMTPFront(s.addrs[1])
	if err != nil {
		hl.Close()
		al.Close()
		return err
	}
	s.smtp = front
	if s.fault.SMTPDown {
		front.setDown(true)
	}
	s.smtpSrv = s.newSMTPServer()
	s.httpsURL = "https://" + hl.Addr().String()
	s.adminURL = "http://" + al.Addr().String()
	s.https = &http.Server{Handler: s.httpsHandler(), TLSConfig: s.certs.serverConfig(), ReadHeaderTimeout: 10 * time.Second}
	s.admin = &http.Server{Handler: s.adminHandler(), ReadHeaderTimeout: 10 * time.Second}
	s.wg.Add(3)
	go func() { defer s.wg.Done(); _ = s.https.ServeTLS(hl, "", "") }()
	go func() { defer s.wg.Done(); _ = s.admin.Serve(al) }()
	go func() { defer s.wg.Done(); _ = s.smtpSrv.Serve(front) }()
	return nil
}

// Close stops every listener and closes every connection.
func (s *Sim) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	started := s.started
	s.mu.Unlock()
	if !started {
		return nil
	}
	err := errors.Join(s.https.Close(), s.admin.Close(), s.smtpSrv.Close())
	s.smtp.Close()
	s.wg.Wait()
	return err
}

// AuthorityURL is the login endpoint's base; the token URL is
// AuthorityURL + "/{tenant}/oauth2/v2.0/token".
func (s *Sim) AuthorityURL() string { return s.httpsURL }

// TokenURL is the token endpoint of tenant.
func (s *Sim) TokenURL(tenant string) string {
	return s.httpsURL + "/" + tenant + "/oauth2/v2.0/token"
}

// GraphURL is the Graph base; its paths start with /v1.0/.
func (s *Sim) GraphURL() string { return s.httpsURL }

// SMTPAddr is the host:port of SMTP submission (STARTTLS).
func (s *Sim) SMTPAddr() string { return s.smtp.addr }

// AdminURL is the base of the plain-HTTP admin API.
func (s *Sim) AdminURL() string { return s.adminURL }

// CACertPEM is the PEM of the CA that signed the TLS certificate.
func (s *Sim) CACertPEM() []byte { return append([]byte(nil), s.certs.caPEM...) }

// RootCAs is a pool holding only the simulator's CA.
func (s *Sim) RootCAs() *x509.CertPool { return s.certs.pool.Clone() }
