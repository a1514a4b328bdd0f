package relay

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"

	"holdfast/auth"
	"holdfast/breaker"
	"holdfast/queue"
	"holdfast/relay/dirsender"
)

// handBack is the part of the shutdown budget kept for handing the
// messages of unfinished deliveries back to the queue.
const handBack = time.Second

// Server is a running relay: SMTP listeners, the HTTP API and the delivery
// workers, over one queue.
type Server struct {
	opts  Options
	log   *slog.Logger
	rdb   redis.UniversalClient
	queue *queue.Queue

	smtp      *smtpIngress
	smtpLns   []net.Listener
	httpSrv   *http.Server
	httpLn    net.Listener
	httpConns *httpConns
	deliverer *deliverer
	exchange  *exchange // nil unless delivery.sender is "exchange"
	gate      *gate     // the auth circuit breakers, with exchange
	webhook   *breaker.Webhook
	durable   *durability
	expiry    *ExpiryMonitor // with exchange
	rotator   *rotator       // with exchange
	keeper    *grantKeeper   // with exchange and exchange.grant_key_file

	reg     *prometheus.Registry
	metrics *metrics // nil when ops.noMetrics turns the hot path's metrics off
	// summary sums the queue by credential for the scrape and the
	// per-minute counts; refreshed off the scrape's path (startOps).
	summary *queue.Summarizer
	opsSrv  *http.Server
	opsLn   net.Listener

	stopping atomic.Bool
	cancel   context.CancelFunc
	// stopWithdraw ends the withdrawer once SMTP and HTTP ingress have
	// stopped, so that a message refused while they drain is withdrawn.
	stopWithdraw context.CancelFunc
	wg           sync.WaitGroup
	errs         chan error
}

// Options converts the configuration's queue section for queue.New.
func (o QueueOptions) Options() queue.Options {
	return queue.Options{
		Lifetime:           o.Lifetime.D(),
		BackoffBase:        o.BackoffBase.D(),
		BackoffMax:         o.BackoffMax.D(),
		DeliveredRetention: o.DeliveredRetention.D(),
		IdempotencyTTL:     o.IdempotencyTTL.D(),
		HeldGrace:          o.HeldGrace.D(),
		MaxPerRoute:        o.MaxMessagesPerRoute,
	}
}

// Options returns the breaker options these configure, without
// callbacks.
func (o BreakerOptions) Options() breaker.Options {
	return breaker.Options{
		Threshold:    o.Threshold,
		OpenInterval: o.OpenInterval.D(),
		MaxInterval:  o.MaxInterval.D(),
	}
}

// breakerReporter describes the breakers with this relay's live view of
// its credentials' expiry: the expiry monitor's soonest date (a rotated
// certificate's new NotAfter, Graph's end date of the secret in use).
func (s *Server) breakerReporter() *BreakerReporter {
	return newBreakerReporter(s.gate.set, s.queue, s.opts, func(_ context.Context, cred string) time.Time { return s.expiry.ExpiresAt(cred) })
}

// newSender builds the configured upstream.
func newSender(o DeliveryOptions) (Sender, error) {
	switch o.Sender {
	case "dir":
		return dirsender.New(o.Dir)
	case "off":
		return nil, nil
	}
	return nil, fmt.Errorf("delivery.sender: unknown sender %q", o.Sender)
}

// startCheckTimeout bounds the Redis check when the relay starts: a Redis
// that has not answered by then is checked again once the relay runs.
const startCheckTimeout = 5 * time.Second

// New checks Redis, binds every listener and returns a relay ready to
// Start. A Redis that cannot be used yet is checked again once the relay
// runs; one that refuses the configured user, or is found not durable
// under redis.strict, is an error. The options must have passed
// Validate. sender, when not nil, replaces the configured one.
func New(ctx context.Context, o Options, sender Sender, log *slog.Logger) (*Server, error) {
	s := &Server{opts: o, log: log, errs: make(chan error, len(o.SMTP.Listeners)+3)}
	s.reg = prometheus.NewRegistry()
	authMx := auth.NewMetrics(s.reg)
	if !o.Ops.noMetrics {
		s.metrics = newMetrics(s.reg, o.Ops.Version)
		s.metrics.knowApps(o.Apps)
	}
	s.rdb = RedisClient(o.Redis)
	// The loops that poll Redis (delivery, the breakers) fail the same
	// way many times a second while it is away.
	quiet := CollapseRepeats(log)
	ok := false
	defer func() {
		if !ok {
			s.closeAll()
		}
	}()

	// A Redis found not durable under strict stops the start, as does one
	// that refuses the configured user or password: neither mends
	// itself. One that cannot be reached, or is loading its data, does
	// not: the relay starts without taking mail (not ready, 451 4.3.0)
	// and checks again each second, as a relay whose Redis stopped
	// answering while it ran.
	cctx, cancel := context.WithTimeout(ctx, startCheckTimeout)
	warnings, err := queue.CheckDurability(cctx, s.rdb, o.Redis.Strict)
	cancel()
	for _, w := range warnings {
		log.Warn("redis durability: "+w, "component", "queue")
	}
	if redis.IsAuthError(err) || redis.IsPermissionError(err) {
		return nil, fmt.Errorf("redis %v: %w; set redis.username and redis.password (or redis.password_file) to a user Redis accepts, allowed the commands Holdfast runs",
			o.Redis.Addrs, err)
	}
	if errors.Is(err, queue.ErrNotDurable) || ctx.Err() != nil {
		return nil, fmt.Errorf("redis %v: %w", o.Redis.Addrs, err)
	}
	s.durable = &durability{rdb: s.rdb, addrs: o.Redis.Addrs, strict: o.Redis.Strict, interval: o.Redis.CheckInterval.D(), log: log.With("component", "queue")}
	if err != nil {
		s.durable.fail(err)
	} else {
		s.durable.set(warnings)
		s.durable.readMemory(ctx)
	}
	qo := o.Queue.Options()
	qo.MinReplicas, qo.ReplicasTimeout = o.Redis.MinReplicasAcked, o.Redis.ReplicasTimeout.D()
	s.queue = queue.New(s.rdb, qo)

	var (
		route   func(ctx context.Context, app *App, from string) (string, error)
		routing *exchangeRouting
	)
	if sender == nil && o.Delivery.Sender == "exchange" {
		g := &gate{q: s.queue, log: quiet.With("component", "breaker"), escalate: o.Breakers.EscalateMailboxes,
			wake: make(chan struct{}, 1), reconcileNow: make(chan struct{}, 1), replica: o.Replica,
			propagationWindow: o.Breakers.PropagationWindow.D(),
			goneStaleEvery:    cmp.Or(o.Breakers.goneStaleEvery, goneStaleEvery)}
		bo := o.Breakers.Options()
		bo.OnTransition = func(t breaker.Transition) {
			if !t.Found {
				// A restart does not count the breakers it finds open.
				s.metrics.transition(breakerKind(t.Name), t.To.String())
			}
			g.transition(t)
		}
		bo.Logger = quiet
		bo.Replica = o.Replica
		if o.Breakers.WebhookURL != "" {
			// One webhook per transition fleet-wide: from the replica
			// whose script made it. Its metrics start every event this
			// relay posts at zero.
			mx := breaker.NewWebhookMetrics(s.reg, EventCredentialExpiring, EventCredentialRotation)
			s.webhook = breaker.NewWebhook(o.Breakers.WebhookURL, &http.Client{Timeout: 10 * time.Second}, log, mx)
			bo.OnMade = s.webhook.Notify
		}
		g.set = breaker.New(s.rdb, bo)
		if s.webhook != nil {
			// A transition this relay does not get to post (killed,
			// stopped) is posted by another.
			s.webhook.Track(g.set)
		}
		onChange := func(name string) {
			log.Info("credential file changed; the next token request uses it", "component", "auth", "credential", name)
			g.fileChanged(name)
			if err := g.probeNow(context.Background(), credentialBreaker(name)); err != nil {
				log.Warn("cannot request a probe", "credential", name, "err", err)
			}
			s.expiry.Reloaded(name)
		}
		// The expiry monitor marks the dates of the secret in use.
		inUse := func(name string) { s.expiry.Reloaded(name) }
		expired := func(name string) { s.expiry.SecretExpired(name) }
		// A refusal of material older than the one that works marks this
		// relay stale, whatever asked for the token: the expiry read at
		// start tells a relay on an old secret before its first delivery.
		refused := func(name string, te *auth.TokenError) { g.refusedStale(name, te) }
		hooks := credentialHooks{onChange: onChange, onIssued: g.issued, onRefused: refused,
			onSecretExpired: expired, onSecretInUse: inUse, onDated: inUse}
		if s.exchange, err = newExchange(o, s.rdb, hooks, s.metrics, authMx, log); err != nil {
			return nil, err
		}
		g.x, s.exchange.gate, s.gate = s.exchange, g, g
		if err := s.newExpiryMonitor(); err != nil {
			return nil, err
		}
		var rotations rotationStore = s.queue
		if o.Expiry.rotations != nil {
			rotations = o.Expiry.rotations(rotations)
		}
		s.rotator = newRotator(o, s.exchange.creds, s.exchange.reloadCredential, rotations, g.set,
			breaker.NewNotices(s.rdb), s.webhook, s.expiry, log)
		s.rotator.keep = g.keep
		if s.exchange.grants != nil {
			s.keeper = s.newGrantKeeper()
			if err := s.reg.Register(s.keeper); err != nil {
				return nil, fmt.Errorf("grant metrics: %w", err)
			}
		}
		sender = s.exchange
	}
	// Routes follow the exchange sender's configuration, also on an
	// ingress-only replica of a fleet that delivers to Exchange, so that
	// the other replicas' workers can deliver its mail.
	if s.exchange != nil || sender == nil && o.Delivery.Sender == "off" && len(o.Credentials) > 0 {
		var grants *auth.GrantStore
		if s.exchange != nil {
			grants = s.exchange.grants
		} else if o.Exchange.GrantKeyFile != "" {
			if grants, err = openGrantStore(o.Exchange.GrantKeyFile, s.rdb, log); err != nil {
				return nil, err
			}
		}
		var idx grantIndex
		if grants != nil {
			idx = storedGrants{grants}
		}
		routing = newExchangeRouting(idx)
		route = routing.route
	}
	if sender == nil && o.Delivery.Sender != "off" {
		if sender, err = newSender(o.Delivery); err != nil {
			return nil, err
		}
	}
	tlsConfig, err := listenerTLS("smtp", o.SMTP.CertFile, o.SMTP.KeyFile)
	if err != nil {
		return nil, err
	}
	httpTLS, err := listenerTLS("http", o.HTTP.CertFile, o.HTTP.KeyFile)
	if err != nil {
		return nil, err
	}

	a := newApps(o.Apps)
	a.pool = newBcryptPool(o.AuthThrottle.BcryptWorkers)
	exempt, err := o.AuthThrottle.exemptPrefixes()
	if err != nil {
		return nil, fmt.Errorf("auth_throttle.exempt_networks: %w", err)
	}
	in := &ingress{hostname: o.Hostname, store: s.queue, log: log.With("component", "ingress"), now: time.Now, route: route,
		budget: newInflight(o.SMTP.MaxInflightBytes, o.SMTP.inflightPerApp()), maxLine: o.SMTP.MaxLineLength, timeout: o.Redis.IngressTimeout.D(),
		healthy: s.durable.err,
		guard: newAuthGuard(queue.NewAuthThrottle(s.rdb, o.AuthThrottle.MaxFailures, o.AuthThrottle.Window.D()),
			authThrottleTimeout, exempt, s.reg, log),
		metrics:  s.metrics,
		full:     newLogSampler(logSampleEvery),
		withdraw: newWithdrawer(s.queue, o.Redis.IngressTimeout.D(), s.reg, log.With("component", "ingress"))}
	in.fullRoutes = newFullRoutes(o.Queue.routeFullRecheck)
	if sender != nil {
		dc := deliveryConfig{
			Workers: o.Delivery.Workers,
			Lease:   o.Delivery.Lease.D(),
			Poll:    o.Delivery.Poll.D(),
			Grace:   o.ShutdownTimeout.D() - handBack,
			// Zero: stalledAfter.
			StalledAfter: o.Delivery.stalledAfter,
		}
		if s.exchange != nil {
			// More deliveries of one mailbox than it has connections
			// would only wait for a slot.
			dc.PerRoute = o.Exchange.MaxConnectionsPerMailbox
			dc.Capacity = s.exchange
		}
		if s.gate != nil {
			dc.OnAuthFailure = s.gate.failed
			dc.OnDelivered = s.gate.delivered
			dc.Skip = s.gate.skip
		}
		dc.Metrics = s.metrics
		if s.exchange != nil {
			dc.Transport = s.exchange.transport
		}
		s.deliverer = newDeliverer(s.queue, sender, dc, quiet)
		in.queued = s.deliverer.notify
		if s.gate != nil {
			s.gate.released = s.deliverer.notify
			s.gate.trial = s.deliverer.trial
		}
	}
	s.smtp = newSMTPIngress(o, in, a, tlsConfig, log)
	s.reg.MustRegister(s.smtp.collectors()...)
	s.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "holdfast_inflight_bytes",
		Help: "Message body bytes held in memory now, SMTP and HTTP together (smtp.max_inflight_bytes bounds them).",
	}, func() float64 { return float64(in.budget.inUse()) }),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, l := range o.SMTP.Listeners {
		ln, err := net.Listen("tcp", l.Addr)
		if err != nil {
			return nil, fmt.Errorf("smtp listener %s: %w", l.Addr, err)
		}
		s.smtpLns = append(s.smtpLns, ln)
	}
	httpLn, err := net.Listen("tcp", o.HTTP.Addr)
	if err != nil {
		return nil, fmt.Errorf("http listener %s: %w", o.HTTP.Addr, err)
	}
	s.httpConns = newHTTPConns(o.HTTP.MaxConnections, o.HTTP.MaxConnectionsPerIP, o.HTTP.CertFile != "", log.With("component", "http"))
	s.reg.MustRegister(s.httpConns.collectors()...)
	s.httpLn = s.httpConns.listener(httpLn)
	handler := newAPI(in, a, s.queue, s.ready, o.SMTP.MaxMessageBytes, log)
	if s.exchange != nil && s.exchange.grants != nil {
		handler.handleMailboxes(s.exchange.grants, func(mailbox string, registered bool) {
			routing.forget(mailbox)
			s.keeper.changed(mailbox)
			if registered && s.gate != nil {
				s.gate.grantRegistered(mailbox)
			}
		})
	}
	if s.gate != nil {
		handler.handleBreakers(s.breakerReporter(), s.gate.set, o.HTTP.AdminTokenSHA256)
	}
	if err := s.setupOps(); err != nil {
		return nil, err
	}
	s.httpSrv = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       o.SMTP.ReadTimeout.D(),
		WriteTimeout:      time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ConnState:         s.httpConns.connState,
		TLSConfig:         httpTLS,
	}
	ok = true
	return s, nil
}

// SMTPAddrs are the bound SMTP addresses, in configuration order.
func (s *Server) SMTPAddrs() []string {
	out := make([]string, len(s.smtpLns))
	for i, l := range s.smtpLns {
		out[i] = l.Addr().String()
	}
	return out
}

// HTTPAddr is the bound address of the HTTP API.
func (s *Server) HTTPAddr() string { return s.httpLn.Addr().String() }

// Queue is the relay's queue.
func (s *Server) Queue() *queue.Queue { return s.queue }

// ready reports whether the relay can take mail, within readyTimeout
// whatever Redis does. The ops listener's /readyz, the one Kubernetes
// probes, bounds its handler at 5 s for the status read; readiness itself
// answers within the second here.
func (s *Server) ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	if s.stopping.Load() {
		return errors.New("shutting down")
	}
	if err := s.durable.err(); err != nil {
		return err
	}
	return pingRedis(ctx, s.rdb)
}

// Start serves in the background until Shutdown.
func (s *Server) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	wctx, stopWithdraw := context.WithCancel(context.Background())
	s.stopWithdraw = stopWithdraw
	s.wg.Go(func() { s.smtp.in.withdraw.run(wctx) })
	for i, ln := range s.smtpLns {
		insecure := s.opts.SMTP.Listeners[i].Insecure
		s.goServe(func() error { return s.smtp.serve(ln, insecure) })
	}
	s.goServe(func() error {
		var err error
		if s.httpSrv.TLSConfig != nil {
			err = s.httpSrv.ServeTLS(s.httpLn, "", "")
		} else {
			err = s.httpSrv.Serve(s.httpLn)
		}
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	})
	if s.exchange != nil {
		s.exchange.watch(ctx, &s.wg)
	}
	if s.gate != nil {
		s.wg.Go(func() { s.gate.set.Watch(ctx) })
		s.wg.Go(func() { s.gate.probeLoop(ctx, time.Second) })
		s.wg.Go(func() { s.gate.reconcileLoop(ctx, s.gate.set.Poll()) })
		s.wg.Go(func() { s.gate.probeAtStart(ctx) })
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.durable.run(ctx)
	}()
	if s.expiry != nil {
		s.wg.Go(func() { s.expiry.Run(ctx) })
	}
	if keep := s.opts.Queue.DeadRetention.D(); keep > 0 {
		every := cmp.Or(s.opts.Queue.deadExpiryEvery, deadExpiryEvery)
		s.wg.Go(func() { expireDeadLoop(ctx, s.queue, keep, every, s.log.With("component", "queue")) })
	}
	if s.rotator != nil {
		every := rotateEvery
		if s.opts.Expiry.rotateEvery > 0 {
			every = s.opts.Expiry.rotateEvery
		}
		s.wg.Go(func() { s.rotator.run(ctx, every) })
	}
	if s.keeper != nil {
		s.wg.Go(func() { s.keeper.run(ctx) })
	}
	s.startOps(ctx)
	if s.deliverer != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.deliverer.run(ctx)
		}()
	}
	s.log.Info("holdfast started", "smtp", s.SMTPAddrs(), "http", s.HTTPAddr(), "ops", s.OpsAddr(), "workers", s.opts.Delivery.Workers,
		"replica", s.opts.Replica)
}

func (s *Server) goServe(serve func() error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := serve(); err != nil && !s.stopping.Load() {
			s.errs <- err
		}
	}()
}

// Reload re-reads every credential's secret or certificate file now, as
// on SIGHUP. Changed credentials are used from the next token request.
func (s *Server) Reload() error {
	if s.exchange == nil {
		return nil
	}
	err := s.exchange.reload()
	// SIGHUP also probes every open credential breaker at once, and
	// reads the expiry again.
	for name := range s.exchange.creds {
		s.expiry.Reloaded(name)
		if perr := s.gate.probeNow(context.Background(), credentialBreaker(name)); perr != nil {
			err = errors.Join(err, perr)
		}
	}
	return err
}

// Err delivers the first error of a listener that stopped by itself.
func (s *Server) Err() <-chan error { return s.errs }

// Shutdown stops taking mail (readiness fails first: /readyz, and SMTP
// clients get 421), then stops SMTP ingress, the HTTP API and delivery in
// parallel, all within ctx: deliveries still running shortly before ctx
// ends are cancelled and their messages handed back to the queue without
// spending an attempt. Then it closes Redis.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopping.Store(true)
	s.log.Info("shutting down")
	if s.deliverer != nil {
		by := time.Now().Add(time.Hour)
		if dl, ok := ctx.Deadline(); ok {
			by = dl
		}
		s.deliverer.stopAt(by.Add(-handBack))
	}
	if s.cancel != nil {
		s.cancel() // delivery, probes and watchers
	}
	var (
		mu   sync.Mutex
		errs []error
		stop sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	stop.Go(func() {
		if err := s.smtp.shutdown(ctx); err != nil {
			fail(fmt.Errorf("smtp: %w", err))
		}
	})
	stop.Go(func() {
		if err := s.httpSrv.Shutdown(ctx); err != nil {
			fail(fmt.Errorf("http: %w", err))
		}
	})
	if s.opsSrv != nil {
		stop.Go(func() {
			if err := s.opsSrv.Shutdown(ctx); err != nil {
				fail(fmt.Errorf("ops: %w", err))
			}
		})
	}
	stop.Wait()
	if s.stopWithdraw != nil {
		s.stopWithdraw()
	}
	s.wg.Wait()
	s.smtp.in.budget.wait()
	s.httpConns.wait()
	if s.exchange != nil {
		if err := s.exchange.close(ctx); err != nil {
			s.log.Warn("stopping with token requests in flight", "err", err)
		}
	}
	if s.webhook != nil {
		s.webhook.Close()
	}
	s.closeAll()
	s.log.Info("stopped")
	return errors.Join(errs...)
}

func (s *Server) closeAll() {
	for _, l := range s.smtpLns {
		l.Close()
	}
	if s.httpLn != nil {
		s.httpLn.Close()
	}
	if s.opsLn != nil {
		s.opsLn.Close()
	}
	s.rdb.Close()
}

// Run runs the relay until ctx ends, then shuts it down gracefully. Each
// value on reload (SIGHUP) re-reads the credential files; reload may be
// nil. Each ready function is called once every listener serves (systemd's
// READY=1).
func Run(ctx context.Context, o Options, log *slog.Logger, reload <-chan struct{}, ready ...func()) error {
	setMemoryLimit(o.SMTP.MaxInflightBytes, log)
	s, err := New(ctx, o, nil, log)
	if err != nil {
		return err
	}
	s.Start()
	for _, f := range ready {
		f()
	}
	var runErr error
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case runErr = <-s.Err():
			log.Error("listener failed", "err", runErr)
			break wait
		case <-reload:
			if err := s.Reload(); err != nil {
				log.Error("reload failed; the credentials in use are kept", "err", err)
			} else {
				log.Info("credential files re-read")
			}
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), o.ShutdownTimeout.D())
	defer cancel()
	return errors.Join(runErr, s.Shutdown(sctx))
}
