package relay

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"holdfast/queue"
)

// authLimiter is what ingress needs of the fleet-wide failure counts.
type authLimiter interface {
	Blocked(ctx context.Context, ip, user string) (*queue.Block, error)
	Failed(ctx context.Context, ip, user string) error
	Attempt(ctx context.Context, ip, user string) (*queue.Block, error)
	Succeeded(ctx context.Context, ip, user string) error
	Known(ctx context.Context, ip, user string) (bool, error)
	Remember(ctx context.Context, ip, user string) error
}

var _ authLimiter = (*queue.AuthThrottle)(nil)

// authRefusalDelay is how long a throttled AUTH waits before its 454, as
// Postfix's smtpd_error_sleep_time: a guesser's connection makes one
// attempt a second at most, and a sleeping session costs no CPU.
const authRefusalDelay = time.Second

// authThrottleTimeout bounds each look-up of the failure counts: a hung
// Redis must not hold AUTH longer than this, nor add much to the write
// deadline (redis.ingress_timeout) that the same session then meets. A
// look-up takes well under a millisecond when Redis answers.
const authThrottleTimeout = 500 * time.Millisecond

// authGuard throttles password and token guessing for both ingresses: it
// refuses clients whose IP (or SMTP user name) has failed too often, and
// counts the refusals. When Redis cannot answer, authentication goes on
// unthrottled (logged): the bcrypt pool still bounds its cost.
type authGuard struct {
	limits  authLimiter
	timeout time.Duration
	delay   time.Duration // before an SMTP refusal; authRefusalDelay
	refused *prometheus.CounterVec
	log     *slog.Logger
	sample  *logSampler // one refusal line per IP per interval
	// exempt are the networks whose addresses are neither counted nor
	// blocked (auth_throttle.exempt_networks).
	exempt []netip.Prefix
}

// counted is the address whose failures count: ip, or "" when it is in
// an exempt network.
func (g *authGuard) counted(ip string) string {
	if len(g.exempt) == 0 {
		return ip
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	a = a.Unmap()
	for _, p := range g.exempt {
		if p.Contains(a) {
			return ""
		}
	}
	return ip
}

// newAuthGuard builds the guard and registers
// holdfast_auth_throttled_total{ingress} on reg.
func newAuthGuard(limits authLimiter, timeout time.Duration, exempt []netip.Prefix, reg prometheus.Registerer, log *slog.Logger) *authGuard {
	if timeout <= 0 {
		timeout = authThrottleTimeout
	}
	g := &authGuard{
		limits:  limits,
		timeout: timeout,
		delay:   authRefusalDelay,
		refused: promauto.With(reg).NewCounterVec(prometheus.CounterOpts{
			Name: "holdfast_auth_throttled_total",
			Help: "Authentication attempts refused without a password or token check, because their client IP or user name failed too often.",
		}, []string{"ingress"}),
		log:    log.With("component", "auth-throttle"),
		sample: newLogSampler(logSampleEvery),
		exempt: exempt,
	}
	for _, ingress := range []string{"smtp", "http"} {
		g.refused.WithLabelValues(ingress)
	}
	return g
}

// blocked returns the block that refuses this attempt, or nil: for the
// HTTP API, whose token check is cheap, failures are counted after the
// check (failed).
func (g *authGuard) blocked(ctx context.Context, ingress, ip, user string) *queue.Block {
	if g == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	cip := g.counted(ip)
	b, err := g.limits.Blocked(ctx, cip, user)
	return g.verdict(ingress, ip, g.unlessKnown(ctx, b, cip, ip, user), err)
}

// attempt counts a password check about to run and returns the block that
// refuses it, or nil: for SMTP, so that no more than the allowed number of
// bcrypt checks run per window even when guesses come at once. A check
// that succeeds calls succeeded.
func (g *authGuard) attempt(ctx context.Context, ingress, ip, user string) *queue.Block {
	if g == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	cip := g.counted(ip)
	b, err := g.limits.Attempt(ctx, cip, user)
	return g.verdict(ingress, ip, g.unlessKnown(ctx, b, cip, ip, user), err)
}

// unlessKnown drops a user name's block of a client in an exempt network
// (cip is "") that authenticated as that user lately: the limiter, not
// given its address, could not tell.
func (g *authGuard) unlessKnown(ctx context.Context, b *queue.Block, cip, ip, user string) *queue.Block {
	if b != nil && b.Kind == "user" && cip != ip && g.known(ctx, ip, user) {
		return nil
	}
	return b
}

// verdict counts and logs a refusal (never with the user name: clients
// sometimes put the password there). When Redis could not answer, the
// attempt goes on.
func (g *authGuard) verdict(ingress, ip string, b *queue.Block, err error) *queue.Block {
	if err != nil {
		// One line per interval: a slow Redis under a flood of guesses
		// would otherwise write one a request.
		if ok, held := g.sample.allow("unreadable counts"); ok {
			g.log.Warn("cannot read the failure counts; authentication is not throttled", withHeld([]any{"err", err}, held)...)
		}
		return nil
	}
	if b != nil {
		g.refused.WithLabelValues(ingress).Inc()
		if ok, held := g.sample.allow(ingress + " " + ip); ok {
			g.log.Info("authentication refused: too many failures", withHeld([]any{"ingress", ingress, "remote_ip", ip,
				"blocked", b.Kind, "for", b.Until.Round(time.Second).String()}, held)...)
		}
	}
	return b
}

// known reports whether ip authenticated as user lately; false when Redis
// cannot say.
func (g *authGuard) known(ctx context.Context, ip, user string) bool {
	if g == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	ok, err := g.limits.Known(ctx, ip, user)
	return err == nil && ok
}

// remember records ip as known for user after a verified success, so
// that an application's addresses, new pods' too, are known.
func (g *authGuard) remember(ctx context.Context, ip, user string) {
	g.write(ctx, "cannot record a client that authenticated", func(l authLimiter, ctx context.Context) error {
		return l.Remember(ctx, ip, user)
	})
}

// succeeded takes back the count of an attempt that succeeded.
func (g *authGuard) succeeded(ctx context.Context, ip, user string) {
	g.write(ctx, "cannot take back a successful authentication's count", func(l authLimiter, ctx context.Context) error {
		return l.Succeeded(ctx, g.counted(ip), user)
	})
}

// failed counts a failed attempt.
func (g *authGuard) failed(ctx context.Context, ip, user string) {
	g.write(ctx, "cannot count a failed authentication", func(l authLimiter, ctx context.Context) error {
		return l.Failed(ctx, g.counted(ip), user)
	})
}

// write runs one of the limiter's writes within the guard's timeout, and
// logs failure when it fails, once an interval for each failure: a
// client guessing passwords while Redis is away would otherwise write a
// line a guess. Authentication goes on either way.
func (g *authGuard) write(ctx context.Context, failure string, w func(authLimiter, context.Context) error) {
	if g == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	if err := w(g.limits, ctx); err != nil {
		if ok, held := g.sample.allow(failure); ok {
			g.log.Warn(failure, withHeld([]any{"err", err}, held)...)
		}
	}
}

// bcryptPool runs password checks a few at a time, so that guesses queue
// behind each other instead of taking every CPU from sessions already
// authenticated. One more worker takes only the checks of known clients
// (an IP that authenticated as the user lately), so that a storm of
// guesses, which has to wait for the shared workers, does not keep an
// application whose password is not cached yet (after a restart) waiting
// too.
type bcryptPool struct {
	shared chan struct{}
	known  chan struct{}
	wait   time.Duration // bcryptWait
}

// authBlockedError: the client IP or user name failed too often; Block
// says which and for how long, for the reply.
type authBlockedError struct{ *queue.Block }

func (authBlockedError) Error() string { return "too many failed authentications" }

// errBcryptBusy: the pool had no free worker within the wait.
var errBcryptBusy = errors.New("too many password checks waiting")

// bcryptWait bounds the wait for a free password-check worker.
const bcryptWait = 10 * time.Second

// newBcryptPool returns a pool of n shared workers, and the known
// clients' one; n < 1 means half the CPUs, at least one.
func newBcryptPool(n int) *bcryptPool {
	if n < 1 {
		n = max(1, runtime.GOMAXPROCS(0)/2)
	}
	return &bcryptPool{shared: make(chan struct{}, n), known: make(chan struct{}, 1), wait: bcryptWait}
}

// run runs check on a free worker, waiting at most p.wait: a shared
// one, or for a known client whichever of a shared one and the known
// clients' one comes free first. A nil pool runs it at once.
func (p *bcryptPool) run(known bool, check func()) error {
	if p == nil {
		check()
		return nil
	}
	t := time.NewTimer(p.wait)
	defer t.Stop()
	var reserved chan struct{} // nil: never ready
	if known {
		reserved = p.known
	}
	var slot chan struct{}
	select {
	case p.shared <- struct{}{}:
		slot = p.shared
	case reserved <- struct{}{}:
		slot = reserved
	case <-t.C:
		return errBcryptBusy
	}
	defer func() { <-slot }()
	check()
	return nil
}
