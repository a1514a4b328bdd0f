package relay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"github.com/redis/go-redis/v9"

	"holdfast/auth"
	"holdfast/queue"
	"holdfast/relay/destination"
	"holdfast/relay/o365"
	"holdfast/relay/upstream"
)

// Scopes of the two kinds of app-only tokens.
const (
	outlookScope = "https://outlook.office365.com/.default"
	graphScope   = "https://graph.microsoft.com/.default"
)

// exchange is the "exchange" sender: SMTP submission or Graph per app,
// over the configured credentials.
type exchange struct {
	smtp  *o365.SMTPSender
	graph *o365.GraphSender
	via   map[string]string // app name -> "smtp" or "graph"

	// creds and graphCreds are each credential's token sources for SMTP
	// and for Graph, by credential name.
	creds      map[string]*auth.Credential
	graphCreds map[string]*auth.Credential
	// grants holds delegated refresh tokens; nil when
	// exchange.grant_key_file is not set.
	grants *auth.GrantStore
	// gate, when set, holds mail whose breaker is open.
	gate *gate
	// dest is this replica's dead-destination breakers.
	dest *destination.Set
	// endpoints is which of them each route's messages need.
	endpoints routeEndpoints
	// throttled holds the mailboxes Graph throttled, each for its
	// Retry-After: their routes that go by Graph alone lease nothing
	// meanwhile (Reserve). blocked holds those Exchange holds whatever
	// the transport (o365.ErrMailboxBlocked): none of their routes
	// leases.
	throttled, blocked mailboxWaits
	// fleetWaits is the fleet's record of the same waits.
	fleetWaits mailboxHolder
	log        *slog.Logger
	// quota counts what each mailbox sent, for Exchange's recipient quota.
	quota *recipientQuota
	// fallback holds the apps with fallback: graph; fallbacks the routes
	// that send by Graph for it (exchange_fallback.go).
	fallback  map[string]bool
	fallbacks *graphFallbacks
	// graphOnly holds the credentials every app of which sends by Graph;
	// credFallback those with an app with fallback: graph.
	graphOnly, credFallback map[string]bool
}

var (
	_ Sender = (*exchange)(nil)
	_ Sender = (*o365.SMTPSender)(nil)
	_ Sender = (*o365.GraphSender)(nil)
)

// exchangeTLS returns the TLS configuration for Entra, Graph and SMTP:
// the system roots plus exchange.ca_file.
func exchangeTLS(o ExchangeOptions) (*tls.Config, error) {
	if o.CAFile == "" {
		return &tls.Config{MinVersion: tls.VersionTLS12}, nil
	}
	pem, err := os.ReadFile(o.CAFile)
	if err != nil {
		return nil, fmt.Errorf("exchange.ca_file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("exchange.ca_file: %s holds no PEM certificate", o.CAFile)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// credentialHooks are told about the credentials' material: onChange when
// a secret or certificate file changes, onIssued when it got a token,
// onRefused when the token endpoint refused it (any scope: delivery,
// expiry read, rotation), onSecretInUse when another of several secrets
// became the one in use, onSecretExpired when Entra said one expired,
// onDated when only the credential's expires_at_file changed.
type credentialHooks struct {
	onChange        func(name string)
	onIssued        func(name, fingerprint string)
	onRefused       func(name string, te *auth.TokenError)
	onSecretExpired func(name string)
	onSecretInUse   func(name string)
	onDated         func(name string)
}

// mailboxHolder records a mailbox's waits for the fleet.
type mailboxHolder interface {
	HoldMailbox(ctx context.Context, mailbox, kind string, d time.Duration) (bool, error)
}

// waitRecheck is how often a relay asks the fleet's record again while it
// holds a mailbox's sends (queue.Limiter.WithWaitRecheck): a wait that an
// operator ended early ends on every relay within it.
const waitRecheck = 2 * time.Second

// The kinds of wait that hold a route's sends (exchange.Reserve): the
// mailbox blocked, and Graph's throttling of the mailbox when the route
// goes by Graph (routeByGraph).
var (
	holdsSMTP  = []string{waitBlocked}
	holdsGraph = []string{waitBlocked, waitGraph}
)

// newExchange builds the exchange sender.
func newExchange(o Options, rdb redis.UniversalClient, hooks credentialHooks, mx *metrics, authMx *auth.Metrics, log *slog.Logger) (*exchange, error) {
	tlsConfig, err := exchangeTLS(o.Exchange)
	if err != nil {
		return nil, err
	}
	httpClient := auth.NewHTTPClient(tlsConfig)
	xlog := log.With("component", "exchange")
	limits := queue.NewLimiter(rdb, nil).WithWaitRecheck(waitRecheck)
	x := &exchange{
		via:        map[string]string{},
		creds:      map[string]*auth.Credential{},
		graphCreds: map[string]*auth.Credential{},
		dest: destination.New(destination.Options{ProbeInterval: o.Exchange.DeadDestinationProbe.D(),
			Logger: log.With("component", "destination")}),
		quota:      &recipientQuota{rl: limits, limit: o.Exchange.RecipientsPerDay, log: xlog},
		fallback:   map[string]bool{},
		fallbacks:  &graphFallbacks{q: queue.New(rdb, queue.Options{}), recheck: o.Exchange.FallbackRecheck.D(), log: xlog},
		throttled:  mailboxWaits{kind: waitGraph},
		blocked:    mailboxWaits{kind: waitBlocked},
		fleetWaits: limits,
		log:        xlog,
	}
	httpClient.Transport = x.dest.Transport(httpClient.Transport, tokenEndpoint, classifyToken)
	if o.Exchange.GrantKeyFile != "" {
		if x.grants, err = openGrantStore(o.Exchange.GrantKeyFile, rdb, log); err != nil {
			return nil, err
		}
	}
	x.endpoints = newRouteEndpoints(o.Apps)
	usesGraph := map[string]bool{}
	x.graphOnly, x.credFallback = map[string]bool{}, map[string]bool{}
	bySMTP := map[string]bool{}
	for _, a := range o.Apps {
		x.via[a.Name] = a.Via
		x.fallback[a.Name] = a.Fallback == "graph"
		if a.Via == "graph" || a.Fallback == "graph" {
			usesGraph[a.Credential] = true
		}
		if a.Via != "graph" {
			bySMTP[a.Credential] = true
		}
		if a.Fallback == "graph" {
			x.credFallback[a.Credential] = true
		}
	}
	for c := range usesGraph {
		x.graphOnly[c] = !bySMTP[c]
	}
	for i, c := range o.Credentials {
		co := c.authOptions(outlookScope, httpClient, log)
		co.OnChange, co.OnIssued, co.ReloadInterval = hooks.onChange, hooks.onIssued, credentialReload
		co.OnRefused = hooks.onRefused
		co.OnSecretInUse, co.OnSecretExpired = hooks.onSecretInUse, hooks.onSecretExpired
		co.OnExpiresAtFile = hooks.onDated
		co.PropagationWindow = o.Breakers.PropagationWindow.D()
		co.Metrics = authMx
		authMx.Credential(c.Name)
		if x.creds[c.Name], err = auth.NewCredential(co); err != nil {
			return nil, credentialError(i, err)
		}
		if usesGraph[c.Name] {
			// The expiry monitor reads the date with the first one.
			co.Scope, co.OnChange, co.ExpiresAtFile, co.OnExpiresAtFile = graphScope, nil, "", nil
			if x.graphCreds[c.Name], err = auth.NewCredential(co); err != nil {
				return nil, credentialError(i, err)
			}
		}
	}
	smtpTLS := tlsConfig.Clone()
	x.smtp, err = o365.NewSMTPSender(o365.SMTPOptions{
		Addr:              o.Exchange.SMTPAddr,
		TLS:               smtpTLS,
		InsecurePlaintext: o.Exchange.InsecurePlaintext,
		DialTimeout:       o.Exchange.ConnectTimeout.D(),
		CommandTimeout:    o.Exchange.CommandTimeout.D(),
		DataTimeout:       o.Exchange.DataTimeout.D(),
		MaxConns:          o.Exchange.MaxConnectionsPerMailbox,
		PerMinute:         o.Exchange.MessagesPerMinute,
		Limits:            limits,
		Router:            x.route(x.creds, true),
		Logger:            log.With("component", "smtp-out"),
		Endpoint:          smtpEndpoint{x.dest},
		OnAuth:            mx.upstreamAuth,
		// Exchange's hold of a mailbox is recorded for the fleet before
		// the refused connection's slot is free for another send.
		OnBlocked: func(ctx context.Context, mailbox string, err error) {
			x.holdMailbox(ctx, &x.blocked, mailbox, upstream.RetryAfterOf(err), blockedWhy)
		},
	})
	if err != nil {
		return nil, err
	}
	if len(x.graphCreds) > 0 {
		x.graph, err = o365.NewGraphSender(o365.GraphOptions{
			BaseURL:    o.Exchange.GraphURL,
			HTTPClient: httpClient,
			Router:     x.route(x.graphCreds, true),
			Large:      x.smtp,
			// Only the per-message flags are used, which need no options.
			Outcomes: queue.New(rdb, queue.Options{}),
		})
		if err != nil {
			return nil, err
		}
	}
	return x, nil
}

// route returns a router that sends app-only routes with the given
// credentials and delegated routes with the mailbox's grant. Gated
// routes get no token, cached or new, while one of their breakers is
// open (only the prober's route is not gated).
func (x *exchange) route(creds map[string]*auth.Credential, gated bool) o365.Router {
	plain := x.plainRoute(creds)
	if !gated {
		return plain
	}
	return func(ctx context.Context, m *queue.Message) (o365.Route, error) {
		r, err := plain(ctx, m)
		if err != nil || x.gate == nil {
			return r, err
		}
		r.Tokens = gatedTokens{TokenSource: r.Tokens, gate: x.gate, route: m.Route}
		r.Check = func(ctx context.Context) error { return x.gate.checkNow(ctx, m.Route) }
		if r.Kind == o365.AppOnly {
			r.Turn = x.gate.authTurn(m.Route)
		}
		return r, nil
	}
}

// gatedTokens gets tokens through the gate (see gate.token).
type gatedTokens struct {
	o365.TokenSource
	gate  *gate
	route string
}

func (g gatedTokens) Token(ctx context.Context) (*oauth2.Token, error) {
	return g.gate.token(ctx, g.route, g.TokenSource)
}

func (x *exchange) plainRoute(creds map[string]*auth.Credential) o365.Router {
	return func(ctx context.Context, m *queue.Message) (o365.Route, error) {
		delegated, name, mailbox, ok := parseRoute(m.Route)
		if !ok {
			return o365.Route{}, o365.ClassifyRoute(o365.RouteMalformed,
				fmt.Sprintf("route %q is not an exchange route (app:CRED:MAILBOX or mbx:CRED:MAILBOX)", m.Route))
		}
		cred := creds[name]
		if cred == nil {
			return o365.Route{}, o365.ClassifyRoute(o365.CredentialMissing,
				fmt.Sprintf("credential %q of route %s is not configured", name, m.Route))
		}
		if !delegated {
			return o365.Route{Mailbox: mailbox, Tokens: cred, Kind: o365.AppOnly}, nil
		}
		if x.grants == nil {
			return o365.Route{}, o365.ClassifyRoute(o365.GrantsMissing,
				"delegated grants are not configured (exchange.grant_key_file)")
		}
		return o365.Route{Mailbox: mailbox, Tokens: x.grants.TokenSource(cred, mailbox), Kind: o365.Delegated}, nil
	}
}

// storedGrants is the grant store as routing reads it.
type storedGrants struct{ *auth.GrantStore }

// GrantCredential tells routing whether a mailbox has a delegated grant,
// and of which credential.
func (g storedGrants) GrantCredential(ctx context.Context, mailbox string) (string, bool, error) {
	gr, err := g.Get(ctx, mailbox)
	if errors.Is(err, auth.ErrNoGrant) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return gr.Credential, true, nil
}

// openGrantStore opens the delegated grants with the key in keyFile
// (exchange.grant_key_file).
func openGrantStore(keyFile string, rdb redis.UniversalClient, log *slog.Logger) (*auth.GrantStore, error) {
	key, err := auth.LoadKeyFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("exchange.grant_key_file: %w", err)
	}
	g, err := auth.NewGrantStore(rdb, key, auth.WithGrantLogger(log))
	if err != nil {
		return nil, fmt.Errorf("exchange.grant_key_file: %w", err)
	}
	return g, nil
}

// Send sends by Graph for apps configured so, by SMTP otherwise.
func (x *exchange) Send(ctx context.Context, m *queue.Message) (string, error) {
	if x.fallback[m.App] {
		x.fallbacks.refresh(ctx)
	}
	graph := x.transport(m) == "graph"
	if x.gate != nil {
		// Over SMTP the route's Check reads the records again just
		// before MAIL FROM; Graph sends right after this.
		check := x.gate.check
		if graph {
			check = x.gate.checkNow
		}
		if err := check(ctx, m.Route); err != nil {
			return "", err
		}
	}
	counted, err := x.quota.reserve(ctx, m)
	if err != nil {
		return "", err
	}
	var reply string
	if graph {
		// Graph's breaker judges the classified sendMail outcome, which
		// names Graph's throttling (the token endpoint's is judged by
		// the HTTP client's transport).
		done, derr := x.dest.Allow(destination.Graph)
		if derr != nil {
			return "", x.quota.settle(ctx, m, counted, derr)
		}
		reply, err = x.graph.Send(ctx, m)
		if errors.Is(err, o365.ErrMailboxThrottled) {
			// The mailbox waits, not the endpoint (done would suspend
			// the endpoint for every mailbox). Graph answered: the
			// endpoint is up.
			x.holdRoute(ctx, &x.throttled, m.Route, upstream.RetryAfterOf(err), "Graph throttles the mailbox; its Graph mail waits")
			done(nil)
		} else {
			done(err)
		}
	} else {
		reply, err = x.smtp.Send(ctx, m)
		if x.fallback[m.App] && errors.Is(err, o365.ErrSMTPAuthDisabled) {
			err = x.fallBack(ctx, m, err)
		}
	}
	err = x.quota.settle(ctx, m, counted, err)
	if errors.Is(err, o365.ErrMailboxBlocked) {
		// The recipient quota's wait is known only now; a penalty's was
		// recorded by OnBlocked already, and is recorded again, here
		// with the same end, for a send by another path.
		x.holdRoute(ctx, &x.blocked, m.Route, upstream.RetryAfterOf(err), blockedWhy)
	}
	return reply, err
}

// watch reloads every credential's files when they change, until ctx
// ends, in goroutines of wg.
func (x *exchange) watch(ctx context.Context, wg *sync.WaitGroup) {
	for _, list := range []map[string]*auth.Credential{x.creds, x.graphCreds} {
		for _, c := range list {
			wg.Go(func() { c.Watch(ctx) })
		}
	}
}

// credentialReload is how often each credential's files are re-read: a
// rotated secret is seen within it.
const credentialReload = time.Second

// reloadCredential re-reads one credential's files now.
func (x *exchange) reloadCredential(name string) error {
	var errs []error
	for _, list := range []map[string]*auth.Credential{x.creds, x.graphCreds} {
		if c := list[name]; c != nil {
			if _, err := c.Reload(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// secretExpired marks the named credential's secret in use as expired
// since at when its fingerprint is fingerprint: the fleet's breaker opened
// because Entra said so of that secret (see gate.markExpired).
func (x *exchange) secretExpired(name, fingerprint string, at time.Time) {
	if c := x.creds[name]; c != nil {
		c.MarkExpired(fingerprint, at)
	}
}

// reload re-reads every credential's files now (SIGHUP).
func (x *exchange) reload() error {
	var errs []error
	for _, list := range []map[string]*auth.Credential{x.creds, x.graphCreds} {
		for name, c := range list {
			if _, err := c.Reload(); err != nil {
				errs = append(errs, fmt.Errorf("credential %s: %w", name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// close closes idle upstream connections.
// close closes the SMTP sender's connections and waits, within ctx, for
// the token requests in flight: their hooks and a rotated refresh token
// still need Redis, which the caller closes next.
func (x *exchange) close(ctx context.Context) error {
	x.smtp.Close()
	var errs []error
	for _, creds := range []map[string]*auth.Credential{x.creds, x.graphCreds} {
		for _, c := range creds {
			errs = append(errs, c.Wait(ctx))
		}
	}
	if x.grants != nil {
		errs = append(errs, x.grants.Wait(ctx))
	}
	return errors.Join(errs...)
}

// smtpReservation is a reservation of the SMTP sender's (an o365.Grant).
type smtpReservation struct{ g *o365.Grant }

func (r smtpReservation) Bind(ctx context.Context) context.Context { return o365.WithGrant(ctx, r.g) }
func (r smtpReservation) Cancel()                                  { r.g.Cancel() }

// Reserve takes room in the mailbox's connection slots and rate for up to
// n messages of an exchange route (see capacity). A route that is not an
// exchange route needs none: its messages fail in Send.
func (x *exchange) Reserve(ctx context.Context, route string, n int) ([]reservation, time.Duration, error) {
	delegated, cred, mailbox, ok := parseRoute(route)
	if !ok {
		return unlimited(n), 0, nil
	}
	// A dead endpoint leases nothing; a half-open one, its one test.
	room, wait := x.endpoints.room(x.dest, delegated, cred)
	if room == 0 {
		return nil, wait, nil
	}
	if wait := x.blocked.wait(mailbox); wait > 0 {
		return nil, wait, nil
	}
	if x.credFallback[cred] && !delegated {
		// Whether the route goes by Graph now is the fleet's decision,
		// read at most every fallbackRead.
		x.fallbacks.refresh(ctx)
	}
	holds := x.waitKinds(route)
	if x.routeByGraph(route) {
		// Graph's 429 of the mailbox holds its mail, whether the route
		// goes by Graph alone or as fallback: graph decided.
		if wait := x.throttled.wait(mailbox); wait > 0 {
			return nil, wait, nil
		}
	}
	if room > 0 {
		n = min(n, room)
	}
	// The fleet's waits are read in the script that counts the send.
	grants, wait, err := x.smtp.Reserve(ctx, mailbox, n, holds...)
	out := make([]reservation, len(grants))
	for i, g := range grants {
		out[i] = smtpReservation{g}
	}
	return out, wait, err
}

// blockedWhy is logged when Exchange holds a mailbox's sending.
const blockedWhy = "Exchange holds the mailbox's sending; its mail waits"

// holdRoute is holdMailbox for the mailbox of route.
func (x *exchange) holdRoute(ctx context.Context, t *mailboxWaits, route string, d time.Duration, why string) {
	if _, _, mailbox, ok := parseRoute(route); ok {
		x.holdMailbox(ctx, t, mailbox, d, why)
	}
}

// holdMailbox records in t, and for the fleet, that mailbox is left
// alone for d, as the upstream asked (without a time, each message waits
// the throttled default alone), and logs why the first time.
func (x *exchange) holdMailbox(ctx context.Context, t *mailboxWaits, mailbox string, d time.Duration, why string) {
	if d <= 0 {
		return
	}
	end := time.Now().Add(d)
	if t.hold(mailbox, end) {
		x.log.Info(why, "mailbox", mailbox, "for", d)
	}
	if _, err := x.fleetWaits.HoldMailbox(context.WithoutCancel(ctx), mailbox, t.kind, d); err != nil {
		x.log.Warn("cannot record the mailbox's wait for the other relays; they may try it meanwhile, and this relay waits on its own",
			"mailbox", mailbox, "for", d, "err", err)
		t.unrecorded(mailbox)
		return
	}
	t.recorded(mailbox, end)
}

// smtpEndpoint is the SMTP endpoint's dead-destination breaker.
type smtpEndpoint struct{ s *destination.Set }

func (e smtpEndpoint) Allow() (func(error), error) { return e.s.Allow(destination.SMTP) }

// tokenEndpoint names the token endpoint's requests by their OAuth path;
// the transport leaves other requests (Graph's) alone.
func tokenEndpoint(r *http.Request) string {
	if strings.Contains(r.URL.Path, "/oauth2/") {
		return destination.Token
	}
	return ""
}

// classifyToken is what an answer of the token endpoint means, by the
// classification of the o365 package: nil below 400.
func classifyToken(resp *http.Response) error {
	if resp.StatusCode < 400 {
		return nil
	}
	return o365.ClassifyToken(o365.TokenFailure{HTTPStatus: resp.StatusCode, RetryAfter: destination.RetryAfter(resp.Header)}, o365.AppOnly)
}

// waitKinds are the kinds of the fleet's waits of its mailbox that hold
// the mail of route: a block always, Graph's throttling when the route
// goes by Graph.
func (x *exchange) waitKinds(route string) []string {
	if x.routeByGraph(route) {
		return holdsGraph
	}
	return holdsSMTP
}

// routeByGraph reports whether the mail of route goes by Graph: every app
// of its credential sends by Graph, or the route is one that fallback:
// graph sends by Graph now. A credential's probe at such a route tests
// the credential by Graph too (gate.probe).
func (x *exchange) routeByGraph(route string) bool {
	delegated, cred, _, ok := parseRoute(route)
	if !ok || delegated || x.graphCreds[cred] == nil {
		return false
	}
	return x.graphOnly[cred] || (x.credFallback[cred] && x.fallbacks.cached(route))
}

// transport names the upstream transport a message goes by. A delegated
// mailbox's mail goes by SMTP, whatever its app's via: its grant's
// tokens are for SMTP.Send (auth.DelegatedScopes), which Graph refuses.
func (x *exchange) transport(m *queue.Message) string {
	if delegated, _, _, _ := parseRoute(m.Route); delegated {
		return "smtp"
	}
	if x.graph != nil && (x.via[m.App] == "graph" || (x.fallback[m.App] && x.fallbacks.cached(m.Route))) {
		return "graph"
	}
	return "smtp"
}
