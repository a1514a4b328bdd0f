package relay

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"holdfast/queue"
	"holdfast/relay/upstream"
)

// Sender delivers one message upstream. It returns the upstream's reply
// when the message was accepted. Otherwise the error's class
// (upstream.ClassOf) decides what happens to the message: see
// DESIGN.md, "Error classes". An error that is not an *upstream.Error is
// transient.
type Sender interface {
	Send(ctx context.Context, m *queue.Message) (reply string, err error)
}

// AuthFailureFunc is told about every credential or mailbox failure of a
// route. The auth circuit breaker plugs in here; it may hold the route.
type AuthFailureFunc func(ctx context.Context, route string, err error)

// deliveryQueue is what the delivery workers need of the queue.
type deliveryQueue interface {
	Routes(ctx context.Context) ([]string, error)
	Lease(ctx context.Context, route string, n int, d time.Duration) (queue.LeaseResult, error)
	Extend(ctx context.Context, l *queue.Lease, d time.Duration) error
	Ack(ctx context.Context, l *queue.Lease, reply string) error
	Retry(ctx context.Context, l *queue.Lease, lastErr string) (queue.State, error)
	Defer(ctx context.Context, l *queue.Lease, delay time.Duration, reason string) (queue.State, error)
	Fail(ctx context.Context, l *queue.Lease, reason string) error
	Backoff(attempts int) time.Duration
}

var _ deliveryQueue = (*queue.Queue)(nil)

// deliveryConfig configures the delivery workers.
type deliveryConfig struct {
	Workers int
	Lease   time.Duration // lease length; extended every third of it while sending
	Poll    time.Duration // idle poll interval for mail enqueued by other replicas
	// Grace is how long shutdown waits for deliveries in flight before
	// cancelling them and handing their messages back.
	Grace time.Duration
	// OnAuthFailure, when set, is told about credential and mailbox
	// failures.
	OnAuthFailure AuthFailureFunc
	// OnDelivered, when set, is told about each delivered message's route.
	OnDelivered func(ctx context.Context, route string)
	// Skip, when set, names routes this replica must not lease from now
	// (the breakers: a credential whose file here is stale).
	Skip func(route string) bool
	// ThrottleDelay is the wait after a throttled reply that names no
	// time. Default one minute.
	ThrottleDelay time.Duration
	// PerRoute caps the deliveries of one route in flight in this
	// process, e.g. at the mailbox's connection limit. 0 means no cap
	// beyond Workers.
	PerRoute int
	// Metrics, when set, records outcomes, latency and send durations.
	Metrics *metrics
	// Transport, when set, names the upstream transport of a message
	// ("smtp" or "graph") for the send duration metric.
	Transport func(m *queue.Message) string
}

// deliverer leases due messages and hands them to the sender, at most
// Workers at a time.
type deliverer struct {
	q      deliveryQueue
	sender Sender
	cfg    deliveryConfig
	log    *slog.Logger

	wake  chan struct{} // a message was enqueued by this process
	freed chan struct{} // a delivery finished, making room on its route
	slots chan struct{} // one token per free worker
	wg    sync.WaitGroup

	mu       sync.Mutex
	inFlight map[string]int // deliveries in flight per route
	// sendCtx is cancelled when the shutdown grace period ends.
	sendCtx    context.Context
	cancelSend context.CancelFunc
}

func newDeliverer(q deliveryQueue, s Sender, cfg deliveryConfig, log *slog.Logger) *deliverer {
	if cfg.ThrottleDelay <= 0 {
		cfg.ThrottleDelay = time.Minute
	}
	d := &deliverer{
		q: q, sender: s, cfg: cfg, log: log.With("component", "delivery"),
		wake:     make(chan struct{}, 1),
		freed:    make(chan struct{}, 1),
		slots:    make(chan struct{}, cfg.Workers),
		inFlight: map[string]int{},
	}
	for range cfg.Workers {
		d.slots <- struct{}{}
	}
	d.sendCtx, d.cancelSend = context.WithCancel(context.Background())
	return d
}

// notify wakes the dispatcher: a message was just enqueued, or a route
// released.
func (d *deliverer) notify() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// run leases and delivers until ctx ends, then waits for the deliveries in
// flight (up to the grace period) and returns.
func (d *deliverer) run(ctx context.Context) {
	defer d.drain()
	var routes []string
	var refreshed time.Time
	// held are routes found held since the last refresh: passes skip
	// them, so that a held route costs one Lease (which also expires its
	// mail past the held grace) per Poll, not one per delivery elsewhere.
	held := map[string]bool{}
	for ctx.Err() == nil {
		if time.Since(refreshed) >= d.cfg.Poll || routes == nil {
			rs, err := d.q.Routes(ctx)
			if err != nil {
				d.log.Warn("cannot list routes", "err", err)
				d.sleep(ctx, d.cfg.Poll)
				continue
			}
			routes, refreshed = rs, time.Now()
			clear(held)
		}
		leased, next := d.pass(ctx, routes, held)
		if leased {
			continue
		}
		wait := d.cfg.Poll
		if !next.IsZero() {
			wait = min(wait, max(time.Until(next), 10*time.Millisecond))
		}
		if d.sleep(ctx, wait) {
			// Woken by a local enqueue (its route may be new) or a
			// released route.
			refreshed = time.Time{}
		}
	}
}

// pass leases from every route not known to be held once, as far as free
// workers allow, and adds the routes it finds held to held. It reports
// whether it leased anything and the earliest due time it saw.
func (d *deliverer) pass(ctx context.Context, routes []string, held map[string]bool) (leased bool, next time.Time) {
	for _, route := range routes {
		room := d.room(route)
		if room == 0 || held[route] || d.cfg.Skip != nil && d.cfg.Skip(route) {
			continue
		}
		n := d.takeSlots(ctx)
		if n == 0 {
			return leased, next
		}
		if n > room {
			d.giveSlots(n - room)
			n = room
		}
		res, err := d.q.Lease(ctx, route, n, d.cfg.Lease)
		if err != nil {
			d.giveSlots(n)
			if ctx.Err() == nil {
				d.log.Warn("lease failed", "route", route, "err", err)
			}
			continue
		}
		d.giveSlots(n - len(res.Leases))
		if res.Held {
			held[route] = true
		}
		if !res.NextDue.IsZero() && (next.IsZero() || res.NextDue.Before(next)) {
			next = res.NextDue
		}
		d.addInFlight(route, len(res.Leases))
		for _, l := range res.Leases {
			leased = true
			d.wg.Add(1)
			go func() {
				defer d.wg.Done()
				d.deliver(l)
				d.addInFlight(route, -1)
				d.giveSlots(1)
				select {
				case d.freed <- struct{}{}:
				default:
				}
			}()
		}
	}
	return leased, next
}

// room is how many more deliveries of the route may start now.
func (d *deliverer) room(route string) int {
	if d.cfg.PerRoute <= 0 {
		return d.cfg.Workers
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return max(0, d.cfg.PerRoute-d.inFlight[route])
}

func (d *deliverer) addInFlight(route string, n int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.inFlight[route] += n
	if d.inFlight[route] == 0 {
		delete(d.inFlight, route)
	}
}

// takeSlots waits for at least one free worker and takes all free ones,
// up to a fair share per route. It returns 0 when ctx ends.
func (d *deliverer) takeSlots(ctx context.Context) int {
	select {
	case <-d.slots:
	case <-ctx.Done():
		return 0
	}
	n := 1
	for n < d.cfg.Workers {
		select {
		case <-d.slots:
			n++
		default:
			return n
		}
	}
	return n
}

func (d *deliverer) giveSlots(n int) {
	for range n {
		d.slots <- struct{}{}
	}
}

// sleep waits for d, a local enqueue, a finished delivery or the end of
// ctx. It reports whether a local enqueue woke it.
func (d *deliverer) sleep(ctx context.Context, wait time.Duration) bool {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-d.freed:
	case <-d.wake:
		return true
	case <-ctx.Done():
	}
	return false
}

// drain waits for deliveries in flight, cancelling them after the grace
// period; their messages are handed back by deliver.
func (d *deliverer) drain() {
	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d.cfg.Grace):
		d.log.Warn("shutdown grace period over; cancelling deliveries in flight")
		d.cancelSend()
		<-done
	}
	d.cancelSend()
}

// deliver sends one leased message, keeps its lease alive meanwhile, and
// settles it by the outcome's class.
func (d *deliverer) deliver(l *queue.Lease) {
	log := d.log.With("id", l.ID, "route", l.Route)
	ctx, cancel := context.WithCancel(d.sendCtx)
	defer cancel()
	stopExtend := d.keepLease(ctx, l, log)
	start := time.Now()
	reply, err := d.sender.Send(ctx, l.Message)
	stopExtend()
	if d.cfg.Metrics != nil && d.cfg.Transport != nil {
		d.cfg.Metrics.sent(d.cfg.Transport(l.Message), time.Since(start))
	}

	// Settle with a context of its own: a cancelled send must still hand
	// its message back.
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if err == nil {
		if err := d.q.Ack(sctx, l, reply); err != nil {
			log.Error("delivered, but the queue could not record it; it may be delivered again", "err", err)
			return
		}
		log.Info("delivered", "attempts", l.Attempts, "took", time.Since(start), "reply", reply)
		d.cfg.Metrics.delivered(routeCredential(l.Route), time.Since(l.Submitted))
		if d.cfg.OnDelivered != nil {
			d.cfg.OnDelivered(sctx, l.Route)
		}
		return
	}
	d.settleFailure(sctx, l, err, log)
}

// settleFailure applies the failure's class to the message.
func (d *deliverer) settleFailure(ctx context.Context, l *queue.Lease, err error, log *slog.Logger) {
	class := upstream.ClassOf(err)
	if errors.Is(err, context.Canceled) && d.sendCtx.Err() != nil {
		// Cancelled by shutdown: not the message's fault.
		if _, serr := d.q.Defer(ctx, l, 0, "delivery interrupted by shutdown"); serr != nil {
			log.Error("cannot hand back message after shutdown", "err", serr)
		}
		return
	}
	var (
		state queue.State
		serr  error
	)
	switch class {
	case upstream.Permanent:
		serr = d.q.Fail(ctx, l, err.Error())
		state = queue.Dead
	case upstream.Throttled:
		delay := upstream.RetryAfterOf(err)
		if delay <= 0 {
			delay = d.cfg.ThrottleDelay
		}
		state, serr = d.q.Defer(ctx, l, delay, err.Error())
	case upstream.Credential, upstream.Mailbox:
		if d.cfg.OnAuthFailure != nil {
			d.cfg.OnAuthFailure(ctx, l.Route, err)
		}
		delay := upstream.RetryAfterOf(err)
		if delay <= 0 {
			delay = d.q.Backoff(l.Attempts + 1)
		}
		state, serr = d.q.Defer(ctx, l, delay, err.Error())
	default:
		state, serr = d.q.Retry(ctx, l, err.Error())
	}
	if serr != nil {
		log.Error("cannot record delivery failure", "class", class, "err", serr, "failure", err)
		return
	}
	d.cfg.Metrics.failed(class, state)
	log.Warn("delivery failed", "class", class, "now", state, "attempts", l.Attempts, "err", err)
}

// keepLease extends the lease every third of its length until the
// returned function is called.
func (d *deliverer) keepLease(ctx context.Context, l *queue.Lease, log *slog.Logger) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(d.cfg.Lease / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := d.q.Extend(ctx, l, d.cfg.Lease); err != nil && ctx.Err() == nil {
					log.Warn("cannot extend lease", "err", err)
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}
