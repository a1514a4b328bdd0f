package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"

	"holdfast/queue"
)

const (
	// smtpSenderCheckTimeout bounds the look-up, at MAIL FROM, of the
	// mailbox that sends as the sender.
	smtpSenderCheckTimeout = 30 * time.Second
	// smtpGoodbyeTimeout bounds writing a 421 to a client that does not
	// read, and the wait for sessions to end after shutdown closed them.
	smtpGoodbyeTimeout = 5 * time.Second
	// smtpEvictAge is how long a connection must have gone without
	// authenticating before a new connection may take its place in a full
	// connection table. An application authenticates within a few round
	// trips of connecting; a client that holds a slot, silent or sending
	// commands that lead nowhere, does not.
	smtpEvictAge = time.Second
)

// smtpIngress is the SMTP submission endpoint: STARTTLS, AUTH PLAIN and
// LOGIN, per-application sender rules and limits. It stores each message
// through ingress and acknowledges it only once it is stored. It runs one
// go-smtp server per listener, and counts connections across all of them.
type smtpIngress struct {
	opts     SMTPOptions
	hostname string
	in       *ingress
	apps     *apps
	tls      *tls.Config // nil when no listener offers STARTTLS
	log      *slog.Logger
	sample   *logSampler // one refused-connection line per client IP per interval
	// errSample: one go-smtp error line per kind of error per interval.
	errSample *logSampler
	// cmdSample: one line of a refused command or failed AUTH per client
	// IP and kind per interval (logRefusal).
	cmdSample *logSampler

	// base is the parent of the context of every enqueue. It is
	// cancelled when shutdown ends, not when it starts, so that a DATA
	// transfer in progress can still store its message.
	base   context.Context
	cancel context.CancelFunc

	closing atomic.Bool

	mu        sync.Mutex
	servers   []*smtp.Server
	listeners []net.Listener
	conns     map[*smtpConn]struct{}
	perIP     map[string]int
	perApp    map[string]int // authenticated sessions by application
	appShare  int            // the most of them one application may hold
	evicting  int            // connections in conns told to go, not yet closed
	drained   chan struct{}  // closed once closing and no connection is left
	drainOnce sync.Once

	// evictAge is how long (ns) a connection must have gone without
	// authenticating before a new connection may take its place in a full
	// table: smtpEvictAge, which tests change while serving.
	evictAge atomic.Int64

	refused *prometheus.CounterVec // connections refused, by limit
	evicted prometheus.Counter     // unauthenticated connections closed to make room
}

// newSMTPIngress builds SMTP ingress. tlsConfig may be nil only when every
// listener is insecure.
func newSMTPIngress(o Options, in *ingress, a *apps, tlsConfig *tls.Config, log *slog.Logger) *smtpIngress {
	base, cancel := context.WithCancel(context.Background())
	s := &smtpIngress{
		opts:      o.SMTP,
		hostname:  o.Hostname,
		in:        in,
		apps:      a,
		log:       log.With("component", "smtp"),
		base:      base,
		cancel:    cancel,
		conns:     map[*smtpConn]struct{}{},
		perIP:     map[string]int{},
		perApp:    map[string]int{},
		appShare:  o.SMTP.connectionsPerApp(len(o.Apps)),
		drained:   make(chan struct{}),
		sample:    newLogSampler(logSampleEvery),
		errSample: newLogSampler(logSampleEvery),
		cmdSample: newLogSampler(logSampleEvery),
	}
	s.evictAge.Store(int64(smtpEvictAge))
	s.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "holdfast_smtp_connections_refused_total",
		Help: "SMTP connections refused with 421, by the limit reached: total or per_ip at connect, per_app at AUTH.",
	}, []string{"limit"})
	for _, l := range []string{"total", "per_ip", "per_app"} {
		s.refused.WithLabelValues(l)
	}
	s.evicted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "holdfast_smtp_connections_evicted_total",
		Help: "SMTP connections unauthenticated for a second or more, closed to make room for a new connection in a full table.",
	})
	if tlsConfig != nil {
		// The hook marks a connection as soon as its TLS handshake starts:
		// from then on, a 421 must go through the TLS layer or not at all.
		cfg := tlsConfig.Clone()
		prev := cfg.GetConfigForClient
		cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			if c, ok := hello.Conn.(*smtpConn); ok {
				c.startTLS()
			}
			if prev != nil {
				return prev(hello)
			}
			return nil, nil
		}
		s.tls = cfg
	}
	return s
}

// serve accepts SMTP on l until shutdown; insecure allows AUTH without TLS
// on this listener. Returns nil after shutdown.
func (s *smtpIngress) serve(l net.Listener, insecure bool) error {
	if !insecure && s.tls == nil {
		l.Close()
		return fmt.Errorf("smtp listener %s: STARTTLS needs a certificate unless the listener is insecure", l.Addr())
	}
	srv := smtp.NewServer(smtpBackend{s})
	srv.Domain = s.hostname
	srv.MaxMessageBytes = s.opts.MaxMessageBytes
	// The session counts recipients itself, to answer with
	// errSMTPTooManyRecipients.
	srv.MaxRecipients = 0
	srv.MaxLineLength = s.opts.MaxLineLength
	srv.ReadTimeout = s.opts.ReadTimeout.D()
	srv.WriteTimeout = s.opts.WriteTimeout.D()
	srv.AllowInsecureAuth = insecure
	srv.EnableSMTPUTF8 = true
	srv.TLSConfig = s.tls
	srv.ErrorLog = smtpErrorLog{s.log, s.errSample}

	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.servers = append(s.servers, srv)
	s.listeners = append(s.listeners, l)
	s.mu.Unlock()

	s.log.Info("listening", "addr", l.Addr().String(), "insecure", insecure)
	err := srv.Serve(&gatedListener{Listener: l, admit: func(nc net.Conn) net.Conn {
		c, reply := s.admit(nc)
		if reply != nil {
			// Greeted with the 421 and closed.
			s.refuse(nc, reply)
			return nil
		}
		return c
	}})
	if s.closing.Load() {
		return nil
	}
	return fmt.Errorf("smtp listener %s: %w", l.Addr(), err)
}

// shutdown stops accepting connections; idle sessions and sessions at
// their next command get "421 4.3.2 Service shutting down" and are closed;
// a DATA transfer in progress may finish (its message is stored and
// acknowledged) until ctx ends, then remaining connections are closed.
func (s *smtpIngress) shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	servers := slices.Clone(s.servers)
	listeners := slices.Clone(s.listeners)
	conns := make([]*smtpConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	if len(s.conns) == 0 {
		s.drainOnce.Do(func() { close(s.drained) })
	}
	s.mu.Unlock()

	// go-smtp's Shutdown marks the server closed, so that Serve returns
	// nil, and closes its listeners; with a cancelled context it does not
	// wait for the sessions, which are handled here.
	now, stop := context.WithCancel(context.Background())
	stop()
	for _, srv := range servers {
		_ = srv.Shutdown(now)
	}
	for _, l := range listeners {
		// Serve may not have registered l with go-smtp yet; a second
		// close only returns an error.
		_ = l.Close()
	}
	for _, c := range conns {
		c.interrupt()
	}

	select {
	case <-s.drained:
		s.cancel()
		return nil
	case <-ctx.Done():
	}
	s.cancel()
	s.mu.Lock()
	left := len(s.conns)
	for c := range s.conns {
		c.Conn.Close()
	}
	s.mu.Unlock()
	s.log.Warn("shutdown deadline reached, closing connections", "connections", left)
	select {
	case <-s.drained:
	case <-time.After(smtpGoodbyeTimeout):
		s.log.Error("sessions still running after their connections were closed")
	}
	return ctx.Err()
}

// admit registers a new connection, or returns a refusal when a connection
// limit is reached or shutdown has begun. When the table is full, the
// oldest connection that has gone evictAge or more without
// authenticating, and is waiting for its client, is told to go and the
// new one takes its place: otherwise anyone could hold every slot without
// a password, from a few addresses, for the whole read timeout.
// Authenticated connections are never closed to make room, nor is one
// whose command the relay is working on (a password check).
func (s *smtpIngress) admit(nc net.Conn) (*smtpConn, *smtp.SMTPError) {
	ip := clientIP(nc.RemoteAddr())
	s.mu.Lock()
	var victim *smtpConn
	switch {
	case s.closing.Load():
		s.mu.Unlock()
		return nil, errSMTPShuttingDown
	case s.perIP[ip] >= s.opts.MaxConnectionsPerIP:
		s.mu.Unlock()
		s.refused.WithLabelValues("per_ip").Inc()
		return nil, errSMTPTooManyConnections
	case len(s.conns)-s.evicting >= s.opts.MaxConnections:
		if victim = s.oldestUnauthenticated(ip); victim == nil {
			s.mu.Unlock()
			s.refused.WithLabelValues("total").Inc()
			return nil, errSMTPTooManyConnections
		}
		victim.evicted.Store(true)
		s.evicting++
	}
	c := &smtpConn{Conn: nc, ing: s, ip: ip, admitted: time.Now()}
	c.top = c
	s.conns[c] = struct{}{}
	s.perIP[ip]++
	s.mu.Unlock()
	if victim != nil {
		s.evicted.Inc()
		if ok, held := s.sample.allow("evicted " + victim.ip); ok {
			s.log.Info("unauthenticated connection closed to make room", withHeld([]any{"remote", victim.RemoteAddr().String(),
				"for", nc.RemoteAddr().String(), "connected_for", time.Since(victim.admitted).Round(time.Millisecond)}, held)...)
		}
		victim.evict()
	}
	return c, nil
}

// oldestUnauthenticated returns the connection to close for a newcomer
// from ip, or nil: among those not authenticated, not already told to go
// and waiting for their client, the oldest connected for evictAge or
// more. Failing that, a flood that reconnects faster than evictAge would
// keep every slot: the oldest of the address that holds the most of them
// goes, if that address holds at least two more than the newcomer's, so
// that an address with few connections always gets in and a flooding
// one cannot take another's place. s.mu is held.
func (s *smtpIngress) oldestUnauthenticated(ip string) *smtpConn {
	var victim *smtpConn
	oldest := time.Now().Add(-time.Duration(s.evictAge.Load()))
	count := map[string]int{}
	first := map[string]*smtpConn{} // each address's oldest candidate
	for c := range s.conns {
		if c.authenticated.Load() || c.evicted.Load() || !c.waiting.Load() {
			continue
		}
		if !c.admitted.After(oldest) {
			victim, oldest = c, c.admitted
		}
		count[c.ip]++
		if f := first[c.ip]; f == nil || c.admitted.Before(f.admitted) {
			first[c.ip] = c
		}
	}
	if victim != nil {
		return victim
	}
	if top, ok := crowdedOver(count, s.perIP[ip]); ok {
		return first[top]
	}
	return nil
}

// crowdedOver returns the address with the most of count (the lowest of
// equals, so that the choice does not depend on map order), and whether
// it holds at least two more than mine, a newcomer's address's
// connections: whether one of them may make room for the newcomer, for
// both ingresses' connection tables.
func crowdedOver(count map[string]int, mine int) (string, bool) {
	top, n := "", 0
	for a, k := range count {
		if k > n || k == n && a < top {
			top, n = a, k
		}
	}
	return top, n > mine+1
}

// claimApp counts c as a session of app, unless app holds its share of
// the table already (smtp.max_connections_per_app). A connection that
// authenticates again (after STARTTLS, which starts a new session) is
// counted once, for the application of its last AUTH.
func (s *smtpIngress) claimApp(c *smtpConn, app string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.app == app {
		return true
	}
	s.forgetApp(c)
	if s.perApp[app] >= s.appShare {
		return false
	}
	s.perApp[app]++
	c.app = app
	return true
}

// forgetApp takes c out of its application's count. s.mu is held.
func (s *smtpIngress) forgetApp(c *smtpConn) {
	if c.app == "" {
		return
	}
	if s.perApp[c.app]--; s.perApp[c.app] <= 0 {
		delete(s.perApp, c.app)
	}
	c.app = ""
}

// collectors are the ingress's metrics, for the relay's registry.
func (s *smtpIngress) collectors() []prometheus.Collector {
	open := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "holdfast_smtp_connections",
		Help: "SMTP connections open now (smtp.max_connections bounds them).",
	}, func() float64 {
		s.mu.Lock()
		defer s.mu.Unlock()
		return float64(len(s.conns))
	})
	return []prometheus.Collector{s.refused, s.evicted, open}
}

// release forgets a closed connection.
func (s *smtpIngress) release(c *smtpConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
	if c.evicted.Load() {
		s.evicting--
	}
	if s.perIP[c.ip]--; s.perIP[c.ip] <= 0 {
		delete(s.perIP, c.ip)
	}
	s.forgetApp(c)
	if s.closing.Load() && len(s.conns) == 0 {
		s.drainOnce.Do(func() { close(s.drained) })
	}
}

// refuse greets a connection that was not admitted with reply and closes
// it. The reply fits in the empty send buffer of a new connection, so the
// write does not wait for the client.
func (s *smtpIngress) refuse(nc net.Conn, reply *smtp.SMTPError) {
	defer nc.Close()
	if ok, held := s.sample.allow(clientIP(nc.RemoteAddr())); ok {
		s.log.Info("connection refused", withHeld([]any{"remote", nc.RemoteAddr().String(), "reply", reply.Message}, held)...)
	}
	_ = nc.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = io.WriteString(nc, smtpReplyLine(reply))
}

// smtpReplyLine formats a one-line reply.
func smtpReplyLine(e *smtp.SMTPError) string {
	c := e.EnhancedCode
	return fmt.Sprintf("%d %d.%d.%d %s\r\n", e.Code, c[0], c[1], c[2], e.Message)
}

func clientIP(a net.Addr) string { return clientIPString(a.String()) }

// clientIPString is the IP of a host:port address.
func clientIPString(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}

// gatedListener hands out the connections admit takes in; admit refuses
// the others itself and returns nil for them.
type gatedListener struct {
	net.Listener
	admit func(net.Conn) net.Conn
}

func (l *gatedListener) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if c := l.admit(nc); c != nil {
			return c, nil
		}
	}
}

// smtpBackend starts a session for each client that says EHLO or HELO.
type smtpBackend struct{ ing *smtpIngress }

func (b smtpBackend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	tc := smtpConnOf(c.Conn())
	if tc == nil {
		return nil, errors.New("connection not accepted by smtpIngress")
	}
	tc.setTop(c.Conn())
	_, isTLS := c.TLSConnectionState()
	return &smtpSession{
		ing:  b.ing,
		conn: c,
		tc:   tc,
		log:  b.ing.log.With("remote", c.Conn().RemoteAddr().String(), "tls", isTLS),
	}, nil
}

// smtpSession is one client's SMTP session, from EHLO to QUIT or the next
// STARTTLS.
type smtpSession struct {
	ing  *smtpIngress
	conn *smtp.Conn
	tc   *smtpConn
	log  *slog.Logger

	// mu guards the fields below: on BDAT, go-smtp runs Data on a
	// goroutine of its own while the session reads the next command.
	mu    sync.Mutex
	app   *App
	from  string
	route string // from senderRoute at MAIL
	utf8  bool
	to    []string
	size  int64 // the SIZE parameter of MAIL, 0 when not given
	bdat  *bdatRun
}

// bdatRun is a BDAT transfer's Data, run by go-smtp on a goroutine of
// its own, which hands Data's result on for the reply to the last chunk
// and then closes r. go-smtp takes the place for the result anew at the
// next transfer's first chunk without waiting for that goroutine: a
// transfer it ended early (a chunk past the size limit, RSET) could put
// its result there after the next transfer began (a data race), and that
// transfer's last chunk would get it as its reply. Reset waits for it.
type bdatRun struct {
	r    *io.PipeReader
	done chan struct{} // closed when Data returns
}

// bdatHandOff bounds wait. The goroutine has two statements left when
// Data returns; one that has not handed its result on in this time is
// stuck (go-smtp's place for the result already taken), and waiting on
// would keep go-smtp's lock of the connection, and its close, for ever.
var bdatHandOff = time.Second

// wait waits until the transfer's goroutine has handed on Data's result
// and closed r: a Read then fails with io.ErrClosedPipe, where it gave
// the error go-smtp closed the other end with before. go-smtp resets a
// session only once it has closed that end, so Data returns at once and
// the goroutine has two statements left. It reports false when the
// goroutine did not get there within bdatHandOff.
func (b *bdatRun) wait() bool {
	if b == nil {
		return true
	}
	<-b.done
	deadline := time.Now().Add(bdatHandOff)
	for spins := 0; ; spins++ {
		if _, err := b.r.Read(nil); errors.Is(err, io.ErrClosedPipe) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		if spins < 100 {
			runtime.Gosched()
		} else {
			time.Sleep(time.Millisecond)
		}
	}
}

var (
	_ smtp.Session     = (*smtpSession)(nil)
	_ smtp.AuthSession = (*smtpSession)(nil)
)

func (s *smtpSession) AuthMechanisms() []string { return []string{sasl.Plain, sasl.Login} }

func (s *smtpSession) Auth(mech string) (sasl.Server, error) {
	switch mech {
	case sasl.Plain:
		return saslReplies{sasl.NewPlainServer(func(identity, user, password string) error {
			if identity != "" && identity != user {
				s.logRefusal(slog.LevelWarn, "authentication failed", "mechanism", mech, "reason", "authorization identity differs from user")
				return errSMTPAuthFailed
			}
			return s.authenticate(mech, user, password)
		})}, nil
	case sasl.Login:
		return saslReplies{&loginServer{auth: func(user, password string) error {
			return s.authenticate(mech, user, password)
		}}}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// authenticate checks a user name and password. A client IP or user name
// that failed too often is refused with 454 4.7.0 before any check. A
// failure logs neither name nor password: clients sometimes put the
// password in the user name.
func (s *smtpSession) authenticate(mech, user, password string) error {
	ip, guard, ctx := s.tc.ip, s.ing.in.guard, s.ing.base
	if b := guard.blocked(ctx, "smtp", ip, user); b != nil {
		s.refusalDelay()
		return authThrottled(b)
	}
	app, err := s.ing.apps.checkPassword(user, password, func() (bool, error) {
		// Counted before bcrypt runs: guesses sent at once cannot all
		// pass the check above while the count is still low.
		if b := guard.attempt(ctx, "smtp", ip, user); b != nil {
			return false, authBlockedError{b}
		}
		return guard.known(ctx, ip, user), nil
	}, func() { guard.succeeded(ctx, ip, user) })
	var blocked authBlockedError
	switch {
	case errors.As(err, &blocked):
		// Sessions that waited on the same check get the same block.
		s.refusalDelay()
		return authThrottled(blocked.Block)
	case err != nil:
		s.log.Warn("authentication deferred", "mechanism", mech, "err", err)
		return errSMTPAuthTemporary
	}
	if app == nil {
		s.logRefusal(slog.LevelWarn, "authentication failed", "mechanism", mech, "reason", "unknown user or wrong password")
		return s.refused(errSMTPAuthFailed)
	}
	// Every verified success, checked now or answered by the password
	// cache, records its IP as known (at most once an hour); an attempt
	// that no worker was free to check is not one.
	guard.remember(ctx, ip, user)
	if !s.ing.claimApp(s.tc, app.Name) {
		s.ing.refused.WithLabelValues("per_app").Inc()
		s.logRefusal(slog.LevelWarn, "authentication refused: the application holds its share of the connections",
			"app", app.Name, "max_connections_per_app", s.ing.appShare)
		s.tc.appRefused.Store(true)
		return errSMTPTooManyAppConnections
	}
	s.tc.authenticated.Store(true)
	s.mu.Lock()
	s.app = app
	s.mu.Unlock()
	s.log.Info("authenticated", "app", app.Name, "mechanism", mech)
	return nil
}

// refusalDelay waits the guard's delay, or less when shutdown ends
// first.
func (s *smtpSession) refusalDelay() {
	t := time.NewTimer(s.ing.in.guard.delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.ing.base.Done():
	}
}

func (s *smtpSession) Mail(from string, opts *smtp.MailOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var err *smtp.SMTPError
	var route, why string
	switch {
	case s.app == nil:
		err = errSMTPAuthRequired
	case s.from != "":
		err = errSMTPNestedMail
	case from == "":
		// The null sender is for bounces; applications submit new mail.
		err, why = errSMTPSenderNotAllowed, "the null sender is for bounces, not new mail"
	case !validAddress(from):
		err = errSMTPBadSender
	case !opts.UTF8 && !isASCII(from):
		err = errSMTPNeedsUTF8
	case !s.app.maySend(from):
		// The reply is Exchange's; the log says what to change.
		err, why = errSMTPSenderNotAllowed, "not among the senders of app "+s.app.Name+" (apps[].senders)"
	default:
		route, err = s.senderRoute(from)
	}
	if err != nil {
		args := []any{"app", appName(s.app), "from", from, "reply", err.Message}
		if why != "" {
			args = append(args, "why", why)
		}
		s.logRefusal(slog.LevelInfo, "MAIL refused", args...)
		return s.refused(err)
	}
	if s.ing.in.refuseFull(route, "SMTP", s.app.Name) {
		s.logRefusal(slog.LevelInfo, "MAIL refused", "app", appName(s.app), "from", from, "reply", errSMTPRouteFull.Message)
		return errSMTPRouteFull
	}
	if opts.Size > 0 && !s.ing.in.fits(s.app.Name, opts.Size) {
		s.logRefusal(slog.LevelInfo, "MAIL refused", "app", appName(s.app), "from", from, "size", opts.Size, "reply", errSMTPInsufficientStorage.Message)
		return errSMTPInsufficientStorage
	}
	s.from, s.route, s.utf8, s.to, s.size = from, route, opts.UTF8, nil, opts.Size
	return nil
}

// senderRoute decides the route of the mail from this sender at MAIL
// FROM, refusing a sender that no mailbox sends as (see noMailboxError).
func (s *smtpSession) senderRoute(from string) (string, *smtp.SMTPError) {
	ctx, cancel := context.WithTimeout(s.ing.base, smtpSenderCheckTimeout)
	defer cancel()
	route, err := s.ing.in.senderRoute(ctx, s.app, from)
	if nm, ok := asNoMailbox(err); ok {
		return "", nm.smtpError()
	}
	if err != nil {
		s.log.Error("cannot check the sender's mailbox", "app", s.app.Name, "err", err)
		return "", errSMTPStoreFailed
	}
	return route, nil
}

func (s *smtpSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var err *smtp.SMTPError
	switch {
	case s.app == nil:
		err = errSMTPAuthRequired
	case !validAddress(to):
		err = errSMTPBadRecipient
	case !s.utf8 && !isASCII(to):
		err = errSMTPNeedsUTF8
	case len(s.to) >= s.ing.opts.MaxRecipients:
		err = errSMTPTooManyRecipients
	}
	if err != nil {
		s.logRefusal(slog.LevelInfo, "RCPT refused", "app", appName(s.app), "to", to, "reply", err.Message)
		return s.refused(err)
	}
	s.to = append(s.to, to)
	return nil
}

func (s *smtpSession) Data(r io.Reader) error {
	// A BDAT transfer's Data reads a pipe (see bdatRun); DATA's does not.
	pr, bdat := r.(*io.PipeReader)
	if bdat {
		run := &bdatRun{r: pr, done: make(chan struct{})}
		defer close(run.done)
		s.mu.Lock()
		s.bdat = run
		s.mu.Unlock()
	}
	s.tc.beginData()
	defer s.tc.endData()

	s.mu.Lock()
	app, from, route, to, size := s.app, s.from, s.route, slices.Clone(s.to), s.size
	s.mu.Unlock()
	if app == nil || from == "" || len(to) == 0 {
		// go-smtp only starts DATA after MAIL and RCPT were accepted.
		return errSMTPAuthRequired
	}

	_, isTLS := s.conn.TLSConnectionState()
	// RFC 3848: ESMTPA is ESMTP with AUTH; ESMTPSA adds STARTTLS.
	protocol := "ESMTPA"
	if isTLS {
		protocol = "ESMTPSA"
	}
	sub := submission{
		app:        app,
		from:       from,
		route:      route,
		to:         to,
		protocol:   protocol,
		remoteAddr: s.conn.Conn().RemoteAddr().String(),
		helo:       s.conn.Hostname(),
	}
	buf := s.ing.in.newBody(app.Name)
	defer buf.release()
	err := buf.setPrefix(s.ing.in.stamp(sub))
	if err == nil && size > 0 && size <= s.ing.opts.MaxMessageBytes {
		err = buf.reserve(size)
	}
	if err == nil {
		err = buf.readFrom(r, s.ing.opts.MaxMessageBytes)
	}
	if err == nil && bdat && s.tc.readEOF.Load() {
		// go-smtp reads a chunk with a LimitReader and takes an early end
		// of the connection for the chunk's end: the message may be cut
		// short, so none of it is queued. A client that closes its side
		// right after a whole last chunk gets the same 451 if it still
		// reads, and sends the message again.
		err = errSMTPChunkCut
	}
	if errors.Is(err, errInflightFull) {
		// What the buffer holds is of no use now: the budget has it back
		// while a slow client sends the rest.
		buf.release()
		err = restOfMessage(r, err)
	}
	if err != nil {
		if errors.Is(err, smtp.ErrTooLongLine) {
			s.tc.lineStuck.Store(true)
		}
		reply := smtpReadError(err)
		if reply != nil {
			s.logRefusal(slog.LevelInfo, "DATA refused", "app", app.Name, "from", from, "reply", reply.Message)
			return s.refused(reply)
		}
		return err
	}
	if f := s.ing.in.check(buf.body()); f != nil {
		s.logRefusal(slog.LevelInfo, "DATA refused", "app", app.Name, "from", from, "reply", f.smtp.Message)
		return s.refused(f.smtp)
	}
	sub.body = buf.bytes()
	id, _, err := s.ing.in.accept(s.ing.base, sub)
	if errors.Is(err, queue.ErrRouteFull) {
		return errSMTPRouteFull // accept has logged why
	}
	if err != nil {
		return errSMTPStoreFailed // accept has logged why
	}
	s.log.Debug("message stored", "id", id, "app", app.Name, "from", from, "rcpts", len(to), "bytes", len(sub.body))
	s.tc.refusals.Store(0)
	return smtpQueued(id)
}

// logRefusal logs a refused command or a failed AUTH at level: one line
// per client IP and kind (msg) every logSampleEvery, which says how many
// like lines were held back since the last. A client that sends
// thousands of refused commands, or a fleet of guessers, writes a line
// every 10 s; the metrics still count each.
func (s *smtpSession) logRefusal(level slog.Level, msg string, attrs ...any) {
	if ok, held := s.ing.cmdSample.allow(s.tc.ip + " " + msg); ok {
		s.log.Log(context.Background(), level, msg, withHeld(attrs, held)...)
	}
}

// refused counts a refusal of the client's command toward
// smtp.max_errors and returns it. Only permanent (5xx) ones count: a
// temporary one (too many recipients, no room, the queue unavailable)
// is the relay's condition, not the client's mistake. At the limit the
// session ends at its next command, with 421.
func (s *smtpSession) refused(err *smtp.SMTPError) *smtp.SMTPError {
	if err.Code < 500 {
		return err
	}
	if int(s.tc.refusals.Add(1)) == s.ing.opts.MaxErrors {
		s.tc.tooManyErrors.Store(true)
		s.log.Info("closing the connection: too many errors", "app", appName(s.app), "errors", s.ing.opts.MaxErrors)
	}
	return err
}

// Reset ends the transaction. go-smtp calls it on RSET and after each
// message, refused or not, with a BDAT transfer's pipe closed; it waits
// for that transfer's Data to be done (see bdatRun).
func (s *smtpSession) Reset() {
	s.mu.Lock()
	s.from, s.route, s.utf8, s.to, s.size = "", "", false, nil, 0
	run := s.bdat
	s.bdat = nil
	s.mu.Unlock()
	if !run.wait() {
		s.log.Warn("an ended BDAT transfer did not hand its result on; the next message's last chunk may get its reply", "waited", bdatHandOff)
	}
}

// Logout ends the session. After STARTTLS, go-smtp calls it with the TLS
// connection already in place, and later replies go through it.
func (s *smtpSession) Logout() error {
	s.tc.setTop(s.conn.Conn())
	return nil
}

// restOfMessage reads out the rest of a message that found no room in
// the in-flight budget (full, errInflightFull), without keeping it, and
// returns the error its reply should tell: the message's own permanent
// fault when the rest has one (over smtp.max_message_bytes, a line too
// long), else full. A client told 452 sends the message again, and one
// that can never be taken would come back for as long as it retries.
// go-smtp reads the rest of a refused DATA anyway before it replies. BDAT
// chunks go on with 250 up to the last one, which gets full; go-smtp
// itself answers the chunk that takes them past the size limit with 552
// and ends the transfer (smtp.ErrDataReset, whose reply nobody reads).
func restOfMessage(r io.Reader, full error) error {
	_, err := io.Copy(io.Discard, r)
	if errors.Is(err, smtp.ErrDataTooLarge) || errors.Is(err, smtp.ErrTooLongLine) || errors.Is(err, smtp.ErrDataReset) {
		return err
	}
	return full
}

// smtpReadError is the reply to a message that could not be read to its
// end, or nil when nobody reads the reply.
func smtpReadError(err error) *smtp.SMTPError {
	switch {
	case errors.Is(err, errInflightFull):
		return errSMTPInsufficientStorage
	case errors.Is(err, errBodyTooBig), errors.Is(err, smtp.ErrDataTooLarge):
		return errSMTPMessageTooBig
	case errors.Is(err, smtp.ErrTooLongLine):
		return errSMTPLineTooLong
	case errors.Is(err, smtp.ErrDataReset):
		// BDAT was aborted by RSET or a closed connection.
		return nil
	}
	return errSMTPReadFailed
}

// validAddress reports whether a is a plain mailbox (see parseAddress).
func validAddress(a string) bool {
	_, err := parseAddress(a)
	return err == nil
}

func appName(app *App) string {
	if app == nil {
		return ""
	}
	return app.Name
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login-00): it asks for the user name, then the
// password. go-sasl only has the client side. A user name sent as the
// initial response skips the first challenge.
type loginServer struct {
	auth  func(user, password string) error
	user  string
	state int
}

func (l *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch l.state {
	case 0:
		if response == nil {
			l.state = 1
			return []byte("Username:"), false, nil
		}
		l.user, l.state = string(response), 2
		return []byte("Password:"), false, nil
	case 1:
		l.user, l.state = string(response), 2
		return []byte("Password:"), false, nil
	case 2:
		l.state = 3
		return nil, true, l.auth(l.user, string(response))
	}
	return nil, true, errSMTPAuthMalformed
}

// saslReplies turns the plain errors of a SASL server, such as a PLAIN
// response without its NUL separators, into an SMTP reply.
type saslReplies struct{ sasl.Server }

func (s saslReplies) Next(response []byte) ([]byte, bool, error) {
	challenge, done, err := s.Server.Next(response)
	if _, ok := err.(*smtp.SMTPError); err != nil && !ok {
		err = errSMTPAuthMalformed
	}
	return challenge, done, err
}

// smtpErrorLog passes go-smtp's own error messages, connection errors and
// recovered panics, to slog: errors as warnings, one line per kind
// of error (the text after the last colon, as "connection reset by peer")
// every interval: clients that reset their connections by the thousand
// do not flood the log. Panics are always written.
type smtpErrorLog struct {
	log    *slog.Logger
	sample *logSampler
}

func (l smtpErrorLog) Printf(format string, v ...any) { l.print(fmt.Sprintf(format, v...)) }

func (l smtpErrorLog) Println(v ...any) { l.print(strings.TrimSuffix(fmt.Sprintln(v...), "\n")) }

func (l smtpErrorLog) print(msg string) {
	if strings.HasPrefix(msg, "panic") {
		l.log.Error("go-smtp: "+msg, "panic", true)
		return
	}
	kind := msg[strings.LastIndex(msg, ": ")+1:]
	if ok, held := l.sample.allow(kind); ok {
		l.log.Warn("go-smtp: "+msg, withHeld(nil, held)...)
	}
}
