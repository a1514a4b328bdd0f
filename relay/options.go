package relay

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Options configure the relay. DefaultOptions gives every default; Load
// reads a YAML file over them. The YAML names are the yaml tags.
type Options struct {
	// Hostname is the name the relay gives itself in its SMTP greeting
	// and Received: headers. Every relay of a fleet may share it.
	// Default: the machine's host name.
	Hostname string `yaml:"hostname"`
	// Replica is the name the relay is known by among the relays that
	// share its Redis, the same across its restarts
	// (breaker.Options.Replica): it must differ between relays that run
	// at the same time. Default: the machine's host name (in Kubernetes,
	// the pod's name); set it when several relays run on one machine.
	Replica string `yaml:"replica"`
	// ShutdownTimeout is the whole budget of a graceful stop: ingress,
	// the API and delivery stop in parallel within it, and deliveries
	// that cannot finish are handed back without spending an attempt.
	// Default 25s, under Kubernetes' default grace of 30s.
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`

	Redis    RedisOptions    `yaml:"redis"`
	SMTP     SMTPOptions     `yaml:"smtp"`
	HTTP     HTTPOptions     `yaml:"http"`
	Queue    QueueOptions    `yaml:"queue"`
	Delivery DeliveryOptions `yaml:"delivery"`
	Log      LogOptions      `yaml:"log"`

	// Apps are the applications allowed to submit mail. At least one.
	Apps []App `yaml:"apps"`

	// Credentials are the Entra ID app registrations Holdfast sends with.
	// Needed by the "exchange" sender.
	Credentials []Credential `yaml:"credentials"`
	// Exchange says where Exchange Online is and how hard to push it.
	Exchange ExchangeOptions `yaml:"exchange"`
	// Breakers configure the auth circuit breakers of the "exchange"
	// sender.
	Breakers BreakerOptions `yaml:"breakers"`
	// AuthThrottle limits password and token guessing.
	AuthThrottle ThrottleOptions `yaml:"auth_throttle"`
	// Expiry configures the credential expiry monitor of the "exchange"
	// sender.
	Expiry ExpiryOptions `yaml:"expiry"`
	// Ops is the operators' listener: status page and metrics.
	Ops OpsOptions `yaml:"ops"`
}

// BreakerOptions configure the auth circuit breakers.
type BreakerOptions struct {
	// WebhookURL receives a JSON POST on every breaker transition
	// (retried with backoff, never blocking delivery). Default: none.
	// Never email: the mail path may be what is broken.
	WebhookURL string `yaml:"webhook_url"`
	// Threshold is how many consecutive credential (or mailbox) failures,
	// counted across every replica, open a breaker. Default 3. An expired
	// secret (AADSTS7000222) opens it at once.
	Threshold int `yaml:"threshold"`
	// OpenInterval is the wait before the first probe of an open breaker;
	// it doubles while probes fail, up to MaxInterval. Defaults 30s and 5m.
	OpenInterval Duration `yaml:"open_interval"`
	MaxInterval  Duration `yaml:"max_interval"`
	// EscalateMailboxes is how many distinct delegated mailboxes of one
	// credential failing "535 5.7.3" in a row, with no success between
	// them, open the credential's breaker. Default 3.
	EscalateMailboxes int `yaml:"escalate_mailboxes"`
	// PropagationWindow is how long after this replica's secret file
	// changed a probe refused with AADSTS7000215 or AADSTS7000222 (Entra
	// does not know the secret yet, or takes it for expired: a new one
	// takes time to propagate) is retried on a short schedule of its
	// own, a tenth of the time since the change, from 1 s up to 30 s,
	// instead of doubling the open interval; and how long after a secret
	// file was written an AADSTS7000222 does not mark the secret expired;
	// and how long after a secret file changed the secret that got the
	// last token before is sent once Entra refuses the file's (see
	// auth/bridge.go). Default 5m; 0 turns it off.
	PropagationWindow Duration `yaml:"propagation_window"`
	// goneStaleEvery, for tests, replaces goneStaleEvery.
	goneStaleEvery time.Duration
}

// Credential is one Entra ID app registration, with a client secret or a
// certificate.
type Credential struct {
	// Name identifies the credential in routes, breakers and logs.
	Name string `yaml:"name"`
	// Tenant is the directory (tenant) id or domain.
	Tenant string `yaml:"tenant"`
	// ClientID is the application (client) id.
	ClientID string `yaml:"client_id"`
	// Authority is Entra's base URL. Default
	// "https://login.microsoftonline.com"; tests and "make run" point it
	// at the simulator.
	Authority string `yaml:"authority"`
	// ClientSecretFile holds the client secret. It is re-read when it
	// changes and on SIGHUP; no restart is needed after a rotation.
	ClientSecretFile string `yaml:"client_secret_file"`
	// ClientSecretFiles hold several secrets of the app at once, for a
	// rotation without a failed send: each entry a file or a directory of
	// secret files (hidden entries skipped). The secret with the latest
	// end date (from Graph, else ExpiresAtByFile) is tried first, then
	// the others in the
	// order given; when Entra says one expired or does not know it, the
	// next is tried before anything counts as a failure. Instead of
	// client_secret_file.
	ClientSecretFiles []string `yaml:"client_secret_files"`
	// ExpiresAtByFile gives, by path as listed in client_secret_files (or
	// found in a listed directory), when each secret expires (RFC 3339 or
	// YYYY-MM-DD), for that order and for the expiry monitor. Optional.
	ExpiresAtByFile map[string]string `yaml:"expires_at_by_file"`
	// CertFile and KeyFile are the PEM certificate and RSA key of a
	// certificate credential, reloaded like the secret.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ClientAssertionFile holds a JWT from another identity provider
	// trusted by a federated identity credential on the app (workload
	// identity federation), reloaded like the secret.
	ClientAssertionFile string `yaml:"client_assertion_file"`
	// ExpiresAt is when the secret or certificate expires (RFC 3339 or
	// YYYY-MM-DD), for the expiry monitor. Optional.
	ExpiresAt string `yaml:"expires_at"`
	// ExpiresAtFile names a file holding when the secret of
	// client_secret_file, or the certificate of cert_file, expires (RFC
	// 3339 or YYYY-MM-DD), kept beside it (a second key of the same
	// Kubernetes Secret) and rewritten with it at each rotation; re-read
	// like the secret. Optional; a missing file is no date.
	ExpiresAtFile string `yaml:"expires_at_file"`
	// AutoRotateBefore, when set, makes the relay rotate the client
	// secret this long before the one in use expires (see "holdfast creds
	// rotate"): it needs client_secret_files naming a directory the relay
	// may write, and Graph's Application.ReadWrite.OwnedBy with the app an
	// owner of itself.
	AutoRotateBefore Duration `yaml:"auto_rotate_before"`
	// RotateGrace is how long a rotation keeps the old secret in Entra
	// after the new one was created; default 7d.
	RotateGrace Duration `yaml:"rotate_grace"`
	// RotateLifetime is how long a secret a rotation creates lasts;
	// default 180d.
	RotateLifetime Duration `yaml:"rotate_lifetime"`
}

// ExchangeOptions configure delivery to Exchange Online.
type ExchangeOptions struct {
	// SMTPAddr is the submission endpoint. Default
	// "smtp.office365.com:587".
	SMTPAddr string `yaml:"smtp_addr"`
	// GraphURL is Microsoft Graph's root. Default
	// "https://graph.microsoft.com".
	GraphURL string `yaml:"graph_url"`
	// CAFile is an extra PEM CA to trust for SMTP, Graph and Entra (the
	// simulator's). Default: the system's roots only.
	CAFile string `yaml:"ca_file"`
	// InsecurePlaintext submits without STARTTLS: for tests against a
	// local server only. Refused unless SMTPAddr is a loopback address.
	InsecurePlaintext bool `yaml:"insecure_plaintext"`
	// MaxConnectionsPerMailbox across every replica. Default 3, Exchange
	// Online's limit.
	MaxConnectionsPerMailbox int `yaml:"max_connections_per_mailbox"`
	// MessagesPerMinute per mailbox across every replica. Default 30,
	// Exchange Online's limit.
	MessagesPerMinute int `yaml:"messages_per_minute"`
	// RecipientsPerDay per mailbox across every replica, in a rolling
	// 24 hours. Default 10,000, Exchange Online's quota; 0 still counts
	// but leaves the limit to Exchange.
	RecipientsPerDay int `yaml:"recipients_per_day"`
	// ConnectTimeout bounds the TCP connection to SMTPAddr,
	// CommandTimeout the wait for each reply (the greeting, EHLO,
	// STARTTLS and AUTH included) and DataTimeout the reply after a
	// message's data. Defaults 15s, 1m and 5m.
	ConnectTimeout Duration `yaml:"connect_timeout"`
	CommandTimeout Duration `yaml:"command_timeout"`
	DataTimeout    Duration `yaml:"data_timeout"`
	// GrantKeyFile holds the 32-byte key (raw, hex or base64) that
	// encrypts delegated refresh tokens in Redis. Needed to register
	// delegated mailboxes.
	GrantKeyFile string `yaml:"grant_key_file"`
	// GrantRedeemAfter is how long a delegated grant may go unused
	// before a relay redeems its refresh token anyway: Entra lets one
	// unused for 90 days lapse (AADSTS700082). Default 30 days; between
	// 1h and 60 days, so that a month of tries is left.
	GrantRedeemAfter Duration `yaml:"grant_redeem_after"`
	// grantKeepEvery and grantRedeemAfter, for tests, replace
	// grantKeepEvery and GrantRedeemAfter.
	grantKeepEvery, grantRedeemAfter time.Duration
	// DeadDestinationProbe is how long an endpoint (SMTP, Graph, the
	// token endpoint) that failed 3 times in a row is left alone by this
	// replica before one request tests it; meanwhile no message that
	// needs it is leased. Default 10s.
	DeadDestinationProbe Duration `yaml:"dead_destination_probe"`
	// FallbackRecheck is how long a route of an app with fallback: graph
	// sends by Graph after Exchange said SMTP AUTH is disabled for its
	// mailbox; then SMTP is tried again. Default 1h.
	FallbackRecheck Duration `yaml:"fallback_recheck"`
}

// RedisOptions say where the queue lives.
type RedisOptions struct {
	// Addrs are host:port pairs. One address is a single Redis; several
	// are the seed nodes of a Redis Cluster. Default ["127.0.0.1:6379"].
	Addrs []string `yaml:"addrs"`
	// Cluster forces cluster mode with a single seed address.
	Cluster bool `yaml:"cluster"`
	// Username for Redis ACLs. Default none.
	Username string `yaml:"username"`
	// Password, or PasswordFile to read it from. Default none.
	Password     string `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
	// DB is the database number of a single Redis. Default 0.
	DB int `yaml:"db"`
	// Strict refuses to start when Redis has AOF off or a maxmemory-policy
	// other than noeviction. Default false: a loud warning only.
	Strict bool `yaml:"strict"`

	RedisGuards `yaml:",inline"`
}

// SMTPOptions configure SMTP ingress.
type SMTPOptions struct {
	// Listeners are the addresses to accept SMTP on. Default one,
	// "127.0.0.1:2525".
	Listeners []Listener `yaml:"listeners"`
	// CertFile and KeyFile are the PEM certificate chain and key offered
	// with STARTTLS. Required unless every listener is Insecure.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// MaxMessageBytes is the largest message accepted, advertised as
	// SIZE. Default 36700160 (35 MiB, Exchange Online's default limit).
	MaxMessageBytes int64 `yaml:"max_message_bytes"`
	// MaxRecipients per message. Default 500 (Exchange Online's default).
	MaxRecipients int `yaml:"max_recipients"`
	// MaxLineLength of a command or message line, CRLF included.
	// Default 2000 (twice RFC 5321's limit, as Postfix tolerates).
	MaxLineLength int `yaml:"max_line_length"`
	// ReadTimeout and WriteTimeout bound each command and reply. Default
	// 5m each (Postfix's smtpd_timeout).
	ReadTimeout  Duration `yaml:"read_timeout"`
	WriteTimeout Duration `yaml:"write_timeout"`
	// MaxConnections in all, and per client IP. Defaults 1000 and 50
	// (Postfix's smtpd_client_connection_count_limit). In a full table a
	// new connection takes the place of the oldest connection that has
	// gone a second or more without authenticating.
	MaxConnections      int `yaml:"max_connections"`
	MaxConnectionsPerIP int `yaml:"max_connections_per_ip"`
	// MaxConnectionsPerApp bounds the authenticated sessions of one
	// application: past it, that application's next AUTH gets 421 4.7.0
	// and its connection is closed, so that one application's leaked or
	// runaway connections, which are never closed to make room, cannot
	// hold the whole table. Default 0: half of MaxConnections when
	// more than one application is configured; with one, all of them.
	MaxConnectionsPerApp int `yaml:"max_connections_per_app"`
	// MaxErrors is how many permanent (5xx) refusals of its commands a
	// connection may get with no message queued between them; the next
	// command gets 421 4.7.0 and the connection is closed. Default 20
	// (Postfix's smtpd_hard_error_limit).
	MaxErrors int `yaml:"max_errors"`
	// MaxInflightBytes bounds the message bodies held in memory at once,
	// SMTP and HTTP together. A MAIL FROM whose SIZE does not fit, or a
	// message that grows past it, gets 452 4.3.1 (HTTP 503). Default
	// 268435456 (256 MiB).
	MaxInflightBytes int64 `yaml:"max_inflight_bytes"`
	// MaxInflightBytesPerApp bounds one application's share of
	// MaxInflightBytes, so that one application's slow or many transfers
	// leave room for the others: past it, that application gets 452 4.3.1
	// (HTTP 503) while others are still taken. Default 0: half of
	// MaxInflightBytes, or twice MaxMessageBytes plus 64 KiB if that is
	// more (what one message of the largest size may need).
	MaxInflightBytesPerApp int64 `yaml:"max_inflight_bytes_per_app"`
}

// Listener is one SMTP listening address.
type Listener struct {
	// Addr is host:port.
	Addr string `yaml:"addr"`
	// Insecure allows AUTH without STARTTLS on this listener. Only for
	// development on loopback; refused on any other address.
	Insecure bool `yaml:"insecure"`
}

// HTTPOptions configure the HTTP API.
type HTTPOptions struct {
	// Addr is the host:port of the API. Default "127.0.0.1:8025".
	Addr string `yaml:"addr"`
	// CertFile and KeyFile serve the API over TLS. Default: plain HTTP,
	// for a loopback listener or a TLS-terminating proxy.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// AdminTokenSHA256 is the hex SHA-256 of the operators' bearer token,
	// as printed by "holdfast creds token", or AdminTokenSHA256File to
	// read it from. It guards /v1/breakers. Default none: those endpoints
	// answer 403.
	AdminTokenSHA256     string `yaml:"admin_token_sha256"`
	AdminTokenSHA256File string `yaml:"admin_token_sha256_file"`
	// MaxConnections bounds the API's open connections. In a full table a
	// new connection takes the place of the oldest one not in a request
	// (idle between requests, or a second without sending one); when
	// every one is in a request, the newcomer gets 503 with Retry-After.
	// Default 1000.
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerIP bounds one client address's share of them: past
	// it, a new connection from the address takes the place of one of its
	// own not in a request, or gets 503. Default 100.
	MaxConnectionsPerIP int `yaml:"max_connections_per_ip"`
}

// QueueOptions tune the queue; see queue.Options.
type QueueOptions struct {
	// Lifetime before an undelivered message is dead-lettered. Default 120h.
	Lifetime Duration `yaml:"lifetime"`
	// BackoffBase is the first retry delay, doubled per attempt up to
	// BackoffMax. Defaults 1m and 1h.
	BackoffBase Duration `yaml:"backoff_base"`
	BackoffMax  Duration `yaml:"backoff_max"`
	// DeliveredRetention is how long a delivered message's status is
	// kept. Default 168h.
	DeliveredRetention Duration `yaml:"delivered_retention"`
	// DeadRetention is how long a dead letter is kept, body and all,
	// after it died; older ones are deleted every 10 minutes, by one relay
	// for the fleet.
	// 0 keeps them until an operator requeues, deletes or purges them.
	// Default 720h.
	DeadRetention Duration `yaml:"dead_retention"`
	// routeFullRecheck, for tests, replaces fullRecheck.
	routeFullRecheck time.Duration
	// deadExpiryEvery, for tests, replaces deadExpiryEvery.
	deadExpiryEvery time.Duration
	// IdempotencyTTL is how long an HTTP Idempotency-Key is remembered.
	// Default 24h.
	IdempotencyTTL Duration `yaml:"idempotency_ttl"`
	// HeldGrace is how much of the time a route is held by an open
	// breaker does not count against its messages' lifetime. Past it,
	// held mail ages normally. Default 120h.
	HeldGrace Duration `yaml:"held_grace"`
	// MaxMessagesPerRoute bounds the messages of one route (one sending
	// mailbox, or one app's with the "dir" sender) that wait for
	// delivery: queued, scheduled, being delivered or held. Past it, the
	// route's new mail is refused with a temporary failure (SMTP 452
	// 4.3.1, HTTP 429) until some of it leaves, so that one application
	// in a loop, or a mailbox that sends nothing, cannot fill Redis for
	// every other. 0 sets no bound. Default 100000: more than a mailbox
	// can send in queue.lifetime under Exchange Online's 10,000
	// recipients a day.
	MaxMessagesPerRoute int `yaml:"max_messages_per_route"`
}

// DeliveryOptions configure the delivery workers.
type DeliveryOptions struct {
	// Workers is the number of concurrent deliveries per process.
	// Default 8.
	Workers int `yaml:"workers"`
	// Lease is how long a worker holds a message before another worker
	// may take it over; it is extended every third of it while a
	// delivery runs. It is how long the messages of a replica that died
	// (SIGKILL, a lost node) wait for another, and also how long a
	// replica cut off from Redis keeps sending: about two thirds of it.
	// Default 30s.
	Lease Duration `yaml:"lease"`
	// Poll is how often idle workers look for mail submitted through
	// other replicas. Default 1s.
	Poll Duration `yaml:"poll"`
	// Sender chooses the upstream: "exchange" delivers to Exchange Online
	// (or the simulator) with the configured credentials; "dir" writes
	// each message to Dir, for development, and is refused with
	// credentials configured; "off" runs no delivery workers in this
	// process: an ingress-only replica, whose mail, with credentials
	// configured, is routed for the replicas that deliver to Exchange.
	// Default "dir".
	Sender string `yaml:"sender"`
	// Dir is the folder of the "dir" sender. Default "./var/outbox".
	Dir string `yaml:"dir"`

	// stalledAfter replaces stalledAfter (delivery.go) in tests.
	stalledAfter time.Duration
}

// LogOptions configure logging.
type LogOptions struct {
	// Level is debug, info, warn or error. Default info.
	Level string `yaml:"level"`
	// Format is text or json. Default text.
	Format string `yaml:"format"`
}

// App is one application allowed to submit mail.
type App struct {
	// Name identifies the application in logs and message status.
	Name string `yaml:"name"`
	// Username is its SMTP AUTH user name. Default: Name.
	Username string `yaml:"username"`
	// PasswordHash is the bcrypt hash of its SMTP password, as printed by
	// "holdfast creds hash"; or PasswordHashFile to read it from.
	PasswordHash     string `yaml:"password_hash"`
	PasswordHashFile string `yaml:"password_hash_file"`
	// TokenSHA256 is the hex SHA-256 of its HTTP bearer token, as printed
	// by "holdfast creds token"; or TokenSHA256File to read it from.
	TokenSHA256     string `yaml:"token_sha256"`
	TokenSHA256File string `yaml:"token_sha256_file"`
	// Senders are the envelope senders it may use: full addresses
	// ("billing@contoso.com") or whole domains ("@contoso.com").
	Senders []string `yaml:"senders"`
	// Route is the queue route of its mail with the "dir" sender.
	// Default: Name. With the "exchange" sender the route follows from
	// Credential and the sending mailbox.
	Route string `yaml:"route"`

	// Credential names the app registration that sends its mail (the
	// "exchange" sender).
	Credential string `yaml:"credential"`
	// Mailbox is the mailbox that sends its mail from this address; any
	// other sender needs a SenderMailboxes entry or a delegated grant, or
	// is refused at MAIL FROM (see noMailboxError).
	Mailbox string `yaml:"mailbox"`
	// SenderMailboxes maps envelope senders (addresses or @domains) to the
	// mailbox that sends their mail, ahead of Mailbox. An envelope sender
	// with a registered delegated grant is sent as itself, ahead of both.
	SenderMailboxes map[string]string `yaml:"sender_mailboxes"`
	// Via is "smtp" (default) or "graph". Graph messages over 3 MB go by
	// SMTP.
	Via string `yaml:"via"`
	// Fallback is "" or "graph" (with via: smtp): a route whose mailbox
	// Exchange says has SMTP AUTH disabled (535 5.7.139) sends by Graph
	// instead of being held, when the credential's Graph token carries
	// the Mail.Send application permission; SMTP is tried again after
	// exchange.fallback_recheck.
	Fallback string `yaml:"fallback"`

	// rules are Senders parsed, set by newApps.
	rules []senderRule
}

// Duration is a time.Duration written in YAML as "90s", "5m" or "120h".
type Duration time.Duration

// UnmarshalYAML parses a duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration such as 90s, 5m, 120h or 14d", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

// ParseDuration is time.ParseDuration with whole days ("14d") as well,
// as the configuration's durations are written.
func ParseDuration(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 || n > 100_000 {
			return 0, fmt.Errorf("%q: bad number of days", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	return time.ParseDuration(s)
}

// MarshalYAML writes the duration as a string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// D returns the duration as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// DefaultOptions returns the options with every default set and no apps.
func DefaultOptions() Options {
	host, _ := os.Hostname()
	if host == "" {
		host = "localhost"
	}
	return Options{
		Hostname:        host,
		Replica:         host,
		ShutdownTimeout: Duration(25 * time.Second),
		Redis:           RedisOptions{Addrs: []string{"127.0.0.1:6379"}, RedisGuards: defaultRedisGuards()},
		SMTP: SMTPOptions{
			Listeners:           []Listener{{Addr: "127.0.0.1:2525"}},
			MaxMessageBytes:     35 << 20,
			MaxRecipients:       500,
			MaxLineLength:       2000,
			ReadTimeout:         Duration(5 * time.Minute),
			WriteTimeout:        Duration(5 * time.Minute),
			MaxConnections:      1000,
			MaxConnectionsPerIP: 50,
			MaxErrors:           20,
			MaxInflightBytes:    defaultMaxInflightBytes,
		},
		HTTP: HTTPOptions{Addr: "127.0.0.1:8025", MaxConnections: 1000, MaxConnectionsPerIP: 100},
		Ops:  defaultOpsOptions(),
		Queue: QueueOptions{
			Lifetime:            Duration(120 * time.Hour),
			BackoffBase:         Duration(time.Minute),
			BackoffMax:          Duration(time.Hour),
			DeliveredRetention:  Duration(168 * time.Hour),
			DeadRetention:       Duration(720 * time.Hour),
			IdempotencyTTL:      Duration(24 * time.Hour),
			HeldGrace:           Duration(120 * time.Hour),
			MaxMessagesPerRoute: 100000,
		},
		Delivery: DeliveryOptions{
			Workers: 8,
			Lease:   Duration(30 * time.Second),
			Poll:    Duration(time.Second),
			Sender:  "dir",
			Dir:     "./var/outbox",
		},
		Log: LogOptions{Level: "info", Format: "text"},
		Exchange: ExchangeOptions{
			SMTPAddr:                 "smtp.office365.com:587",
			GraphURL:                 "https://graph.microsoft.com",
			MaxConnectionsPerMailbox: 3,
			MessagesPerMinute:        30,
			RecipientsPerDay:         10000,
			ConnectTimeout:           Duration(15 * time.Second),
			DeadDestinationProbe:     Duration(10 * time.Second),
			FallbackRecheck:          Duration(time.Hour),
			GrantRedeemAfter:         Duration(defaultGrantRedeemAfter),
			CommandTimeout:           Duration(time.Minute),
			DataTimeout:              Duration(5 * time.Minute),
		},
		Breakers: BreakerOptions{
			Threshold:         3,
			OpenInterval:      Duration(30 * time.Second),
			MaxInterval:       Duration(5 * time.Minute),
			EscalateMailboxes: 3,
			PropagationWindow: Duration(5 * time.Minute),
		},
		AuthThrottle: defaultThrottle(),
		Expiry:       ExpiryOptions{CheckInterval: Duration(defaultExpiryCheckInterval)},
	}
}

// Load reads a YAML configuration file over DefaultOptions, reads the
// *_file secrets, and validates the result. Unknown keys are errors.
func Load(path string) (Options, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Options{}, fmt.Errorf("read config: %w", err)
	}
	o, err := Parse(data)
	if err != nil {
		return Options{}, fmt.Errorf("%s: %w", path, err)
	}
	return o, nil
}

// Parse is Load for a configuration already in memory.
func Parse(data []byte) (Options, error) {
	o := DefaultOptions()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	switch err := dec.Decode(&o); {
	case errors.Is(err, io.EOF) || err == nil && emptyYAML(data):
		return Options{}, errors.New("the file holds no settings (it is empty, only comments, or a null document); " +
			"start from holdfast.example.yaml")
	case err != nil:
		return Options{}, fmt.Errorf("parse: %w", explainYAML(data, err))
	}
	if err := o.readSecretFiles(); err != nil {
		return Options{}, err
	}
	if err := o.Validate(); err != nil {
		return Options{}, err
	}
	return o, nil
}

// emptyYAML reports whether data's first document holds nothing: "---",
// "null" or "~" alone, as a template that rendered no settings leaves.
func emptyYAML(data []byte) bool {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return false
	}
	if len(doc.Content) == 0 {
		return true
	}
	n := doc.Content[0]
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

// readSecretFiles fills each secret from its *_file, when one is given.
func (o *Options) readSecretFiles() error {
	read := func(field, path string, dst *string) error {
		if path == "" {
			return nil
		}
		if *dst != "" {
			return fmt.Errorf("%s: set either the value or the _file form, not both", field)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("%s: %w", field, err)
		}
		*dst = strings.TrimSpace(string(b))
		return nil
	}
	if err := read("redis.password_file", o.Redis.PasswordFile, &o.Redis.Password); err != nil {
		return err
	}
	if err := read("http.admin_token_sha256_file", o.HTTP.AdminTokenSHA256File, &o.HTTP.AdminTokenSHA256); err != nil {
		return err
	}
	for i := range o.Apps {
		a := &o.Apps[i]
		if err := read(fmt.Sprintf("apps[%d].password_hash_file", i), a.PasswordHashFile, &a.PasswordHash); err != nil {
			return err
		}
		if err := read(fmt.Sprintf("apps[%d].token_sha256_file", i), a.TokenSHA256File, &a.TokenSHA256); err != nil {
			return err
		}
	}
	return nil
}

// Validate checks the options and names the first bad field. It fills in
// the per-app defaults (Username, Route).
func (o *Options) Validate() error {
	if o.Hostname == "" || strings.ContainsAny(o.Hostname, " \t\r\n") {
		return bad("hostname", "must be a host name without spaces")
	}
	if o.Replica == "" || len(o.Replica) > maxReplicaLen || strings.IndexFunc(o.Replica, notReplicaRune) >= 0 {
		return bad("replica", "must be 1 to %d letters, digits or . _ - : (a pod's or host's name), got %q", maxReplicaLen, o.Replica)
	}
	if o.ShutdownTimeout < Duration(time.Second) {
		return bad("shutdown_timeout", "must be at least 1s, got %v", o.ShutdownTimeout.D())
	}
	if len(o.Redis.Addrs) == 0 {
		return bad("redis.addrs", "at least one host:port is required")
	}
	for i, a := range o.Redis.Addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return bad(fmt.Sprintf("redis.addrs[%d]", i), "%q is not host:port", a)
		}
	}
	if len(o.SMTP.Listeners) == 0 {
		return bad("smtp.listeners", "at least one listener is required")
	}
	needTLS := false
	for i, l := range o.SMTP.Listeners {
		field := fmt.Sprintf("smtp.listeners[%d]", i)
		host, _, err := net.SplitHostPort(l.Addr)
		if err != nil {
			return bad(field+".addr", "%q is not host:port", l.Addr)
		}
		if l.Insecure && !isLoopback(host) {
			return bad(field+".insecure", "AUTH without TLS is only allowed on a loopback address, not %q", l.Addr)
		}
		needTLS = needTLS || !l.Insecure
	}
	if needTLS && (o.SMTP.CertFile == "" || o.SMTP.KeyFile == "") {
		return bad("smtp.cert_file", "a certificate and key (smtp.cert_file, smtp.key_file) are required for STARTTLS unless every listener is insecure")
	}
	if o.SMTP.MaxMessageBytes < 1024 {
		return bad("smtp.max_message_bytes", "must be at least 1024")
	}
	if o.SMTP.MaxRecipients < 1 {
		return bad("smtp.max_recipients", "must be at least 1")
	}
	if o.SMTP.MaxLineLength < 1000 {
		return bad("smtp.max_line_length", "must be at least 1000 (RFC 5321)")
	}
	if err := positive(
		durationField{"smtp.read_timeout", o.SMTP.ReadTimeout},
		durationField{"smtp.write_timeout", o.SMTP.WriteTimeout},
	); err != nil {
		return err
	}
	if o.SMTP.MaxConnections < 1 {
		return bad("smtp.max_connections", "must be at least 1")
	}
	if o.SMTP.MaxConnectionsPerIP < 1 {
		return bad("smtp.max_connections_per_ip", "must be at least 1")
	}
	if p := o.SMTP.MaxConnectionsPerApp; p < 0 || p > o.SMTP.MaxConnections {
		return bad("smtp.max_connections_per_app", "must be 0 (half of smtp.max_connections with several apps), or from 1 to smtp.max_connections (%d)", o.SMTP.MaxConnections)
	}
	if o.SMTP.MaxErrors < 1 {
		return bad("smtp.max_errors", "must be at least 1")
	}
	if err := o.validateIngress(); err != nil {
		return err
	}
	if o.HTTP.MaxConnections < 1 {
		return bad("http.max_connections", "must be at least 1")
	}
	if o.HTTP.MaxConnectionsPerIP < 1 {
		return bad("http.max_connections_per_ip", "must be at least 1")
	}
	if _, _, err := net.SplitHostPort(o.HTTP.Addr); err != nil {
		return bad("http.addr", "%q is not host:port", o.HTTP.Addr)
	}
	if (o.HTTP.CertFile == "") != (o.HTTP.KeyFile == "") {
		return bad("http.cert_file", "set both http.cert_file and http.key_file, or neither")
	}
	if t := o.HTTP.AdminTokenSHA256; t != "" && !isHexSHA256(t) {
		return bad("http.admin_token_sha256", "not 64 hex digits; make one with \"holdfast creds token\"")
	}
	if err := o.validateOps(); err != nil {
		return err
	}
	if err := positive(
		durationField{"queue.lifetime", o.Queue.Lifetime},
		durationField{"queue.backoff_base", o.Queue.BackoffBase},
		durationField{"queue.backoff_max", o.Queue.BackoffMax},
		durationField{"queue.delivered_retention", o.Queue.DeliveredRetention},
		durationField{"queue.idempotency_ttl", o.Queue.IdempotencyTTL},
		durationField{"queue.held_grace", o.Queue.HeldGrace},
		durationField{"breakers.open_interval", o.Breakers.OpenInterval},
		durationField{"breakers.max_interval", o.Breakers.MaxInterval},
	); err != nil {
		return err
	}
	if o.Queue.DeadRetention < 0 {
		return bad("queue.dead_retention", "must not be negative (0 keeps dead letters until they are requeued, deleted or purged)")
	}
	if o.Queue.MaxMessagesPerRoute < 0 {
		return bad("queue.max_messages_per_route", "must not be negative (0 sets no bound)")
	}
	if o.Queue.BackoffMax < o.Queue.BackoffBase {
		return bad("queue.backoff_max", "must be at least queue.backoff_base")
	}
	if o.Breakers.MaxInterval < o.Breakers.OpenInterval {
		return bad("breakers.max_interval", "must be at least breakers.open_interval")
	}
	if o.Breakers.Threshold < 1 {
		return bad("breakers.threshold", "must be at least 1")
	}
	if o.Breakers.EscalateMailboxes < 2 {
		return bad("breakers.escalate_mailboxes", "must be at least 2: one mailbox failing is that mailbox's breaker")
	}
	if o.Breakers.PropagationWindow < 0 {
		return bad("breakers.propagation_window", "must not be negative (0 turns it off)")
	}
	if o.Delivery.Workers < 1 {
		return bad("delivery.workers", "must be at least 1")
	}
	if o.Delivery.Lease < Duration(5*time.Second) {
		return bad("delivery.lease", "must be at least 5s: it is extended every third of it, each time in a Redis round trip")
	}
	if err := positive(durationField{"delivery.poll", o.Delivery.Poll}); err != nil {
		return err
	}
	switch o.Delivery.Sender {
	case "off":
		// An ingress-only replica of a fleet that delivers to Exchange
		// routes its mail as the fleet does, from the same options.
		if len(o.Credentials) > 0 {
			if err := o.validateExchange(); err != nil {
				return err
			}
		}
	case "exchange":
		if err := o.validateExchange(); err != nil {
			return err
		}
		if err := o.Expiry.validate(); err != nil {
			return err
		}
		if u := o.Breakers.WebhookURL; u != "" {
			if why := webhookURLFault(u); why != "" {
				return bad("breakers.webhook_url", "is not an http or https URL: %s (the URL is not printed: it may hold the receiver's token)", why)
			}
		}
	case "dir":
		if o.Delivery.Dir == "" {
			return bad("delivery.dir", "the dir sender needs a folder")
		}
		if len(o.Credentials) > 0 {
			return bad("delivery.sender", "is %q (the default), which writes each message into %s and sends nothing, yet credentials are configured: set delivery.sender: exchange to deliver to Exchange Online, or off for a replica that only takes mail",
				o.Delivery.Sender, o.Delivery.Dir)
		}
	default:
		return bad("delivery.sender", "unknown sender %q (known: exchange, dir, off)", o.Delivery.Sender)
	}
	if _, err := parseLevel(o.Log.Level); err != nil {
		return bad("log.level", "%q is not debug, info, warn or error", o.Log.Level)
	}
	if o.Log.Format != "text" && o.Log.Format != "json" {
		return bad("log.format", "must be text or json, not %q", o.Log.Format)
	}
	if len(o.Apps) == 0 {
		return bad("apps", "at least one application is required")
	}
	seen := map[string]string{}
	for i := range o.Apps {
		if err := o.Apps[i].validate(fmt.Sprintf("apps[%d]", i), seen); err != nil {
			return err
		}
	}
	return nil
}

func (a *App) validate(field string, seen map[string]string) error {
	if a.Name == "" {
		return fmt.Errorf("%s.name: required", field)
	}
	if a.Username == "" {
		a.Username = a.Name
	}
	if a.Route == "" {
		a.Route = a.Name
	}
	for _, u := range []struct{ kind, v string }{{"name", a.Name}, {"username", a.Username}, {"token_sha256", a.TokenSHA256}} {
		if u.v == "" {
			continue
		}
		if other, dup := seen[u.kind+"\x00"+u.v]; dup {
			return fmt.Errorf("%s.%s: %q is already used by %s", field, u.kind, u.v, other)
		}
		seen[u.kind+"\x00"+u.v] = field
	}
	if a.PasswordHash == "" && a.TokenSHA256 == "" {
		return fmt.Errorf("%s: set password_hash (SMTP) or token_sha256 (HTTP), or both", field)
	}
	if a.PasswordHash != "" && !strings.HasPrefix(a.PasswordHash, "$2") {
		return fmt.Errorf("%s.password_hash: not a bcrypt hash; make one with \"holdfast creds hash\"", field)
	}
	if a.TokenSHA256 != "" && !isHexSHA256(a.TokenSHA256) {
		return fmt.Errorf("%s.token_sha256: not 64 hex digits; make one with \"holdfast creds token\"", field)
	}
	if len(a.Senders) == 0 {
		return fmt.Errorf("%s.senders: at least one address or @domain is required", field)
	}
	for j, s := range a.Senders {
		if _, err := parseSenderRule(s); err != nil {
			return fmt.Errorf("%s.senders[%d]: %v", field, j, err)
		}
	}
	if !validRoute(a.Route) {
		return fmt.Errorf("%s.route: %q must be printable ASCII without spaces, at most 200 bytes", field, a.Route)
	}
	return nil
}

func isHexSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !strings.ContainsRune("0123456789abcdef", c) {
			return false
		}
	}
	return true
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(s))
	return l, err
}

// webhookURLFault says what makes u unfit for a webhook, without
// quoting it: "" when it is an http or https URL with a host.
func webhookURLFault(u string) string {
	pu, err := url.Parse(u)
	switch {
	case err != nil:
		// url.Error quotes the URL: only the reason is given.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "it does not parse (" + err.Error() + ")"
	case pu.Scheme == "":
		return "it has no scheme; write it as https://HOST/PATH"
	case pu.Scheme != "https" && pu.Scheme != "http":
		return fmt.Sprintf("its scheme is %q", pu.Scheme)
	case pu.Host == "":
		return "it has no host"
	}
	return ""
}

// bad is a validation error naming the field, as "field: what is wrong".
func bad(field, format string, args ...any) error {
	return fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...))
}

// maxReplicaLen bounds Options.Replica, as DNS bounds a host name.
const maxReplicaLen = 253

// notReplicaRune reports whether r may not be in Options.Replica, which
// Redis records keep between spaces.
func notReplicaRune(r rune) bool {
	switch {
	case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		return false
	}
	return !strings.ContainsRune("._-:", r)
}

// durationField is a duration option and its name, for positive.
type durationField struct {
	field string
	v     Duration
}

// positive returns an error naming the first of fields that is not
// positive.
func positive(fields ...durationField) error {
	for _, d := range fields {
		if d.v <= 0 {
			return fmt.Errorf("%s: must be positive", d.field)
		}
	}
	return nil
}
