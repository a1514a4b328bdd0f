package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"holdfast/queue"
	"holdfast/relay/destination"
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

// A reservation is room to send one message now, taken before the
// message is leased (see capacity).
type reservation interface {
	// Bind returns a context that carries the reservation to the
	// sender's Send.
	Bind(ctx context.Context) context.Context
	// Cancel gives back a reservation no message used.
	Cancel()
}

// capacity is the sender's own limits: a route's messages are leased only
// when it has room to send them now, so that those limits never fail a
// delivery.
type capacity interface {
	// Reserve takes room for up to n messages of the route. With none
	// it returns how long until room may free up. With an error, the
	// room it returns was taken before the error, and is given back.
	Reserve(ctx context.Context, route string, n int) ([]reservation, time.Duration, error)
}

// noReservation is the reservation of a sender without limits.
type noReservation struct{}

func (noReservation) Bind(ctx context.Context) context.Context { return ctx }
func (noReservation) Cancel()                                  {}

func unlimited(n int) []reservation {
	out := make([]reservation, n)
	for i := range out {
		out[i] = noReservation{}
	}
	return out
}

// deliveryQueue is what the delivery workers need of the queue.
type deliveryQueue interface {
	DueRoutes(ctx context.Context, max int) ([]string, time.Time, error)
	SweepDue(ctx context.Context) (int, error)
	Lease(ctx context.Context, route string, n int, d time.Duration) (queue.LeaseResult, error)
	LeaseTrial(ctx context.Context, route string, d time.Duration) (*queue.Lease, error)
	Extend(ctx context.Context, l *queue.Lease, d time.Duration) error
	Ack(ctx context.Context, l *queue.Lease, reply string) error
	AckNext(ctx context.Context, l *queue.Lease, reply string, n int, d time.Duration) (queue.LeaseResult, error)
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
	// Capacity, when set, is asked for room before each lease.
	Capacity capacity
	// Sweep is how often the due-route index is checked for routes a
	// stopped process left unmarked. Default 5 minutes.
	Sweep time.Duration
	// Metrics, when set, records outcomes, latency and send durations.
	Metrics *metrics
	// Transport, when set, names the upstream transport of a message
	// ("smtp" or "graph") for the send duration metric.
	Transport func(m *queue.Message) string
	// StalledAfter is how long a send runs before its worker is handed
	// to other routes (see watchStalled). Default stalledAfter.
	StalledAfter time.Duration
}

// stalledAfter is how long a send may run before it counts as stalled:
// its worker is handed to the other routes, up to Workers such sends at
// once. A send normally takes well under a second; one that waits for
// Exchange's reply after the data may wait the data timeout (5 minutes),
// and a few stalled mailboxes, each with its three connections, would
// otherwise hold every worker that long.
const stalledAfter = 15 * time.Second

// dueBatch is the most routes one pass reads from the due index.
const dueBatch = 1000

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
	// full holds routes the sender had no room for, until when to ask
	// again, or until one of the route's deliveries here ends (its
	// connection is then free for the next message).
	full map[string]time.Time
	// sendCtx is cancelled when the shutdown grace period ends.
	sendCtx    context.Context
	cancelSend context.CancelFunc
	// settleBy, set when shutdown starts (unix ns), is when its budget
	// ends, handBack after deliveries in flight are cancelled: no try at
	// recording an outcome begun after that start runs past it.
	settleBy atomic.Int64
	// stopBy, when set (unix ns), replaces Grace: deliveries in flight
	// are cancelled at that time.
	stopBy atomic.Int64
	// stalled counts the sends whose worker was handed on (see
	// stalledAfter); at most Workers.
	stalled atomic.Int64
}

// stopAt makes the coming shutdown cancel deliveries still in flight at
// t, instead of after Grace, and end handBack later.
func (d *deliverer) stopAt(t time.Time) {
	d.stopBy.Store(t.UnixNano())
	d.settleBy.Store(t.Add(handBack).UnixNano())
}

// pastSettleBy reports whether the shutdown budget has ended.
func (d *deliverer) pastSettleBy() bool {
	by := d.settleBy.Load()
	return by != 0 && time.Now().UnixNano() >= by
}

func newDeliverer(q deliveryQueue, s Sender, cfg deliveryConfig, log *slog.Logger) *deliverer {
	if cfg.ThrottleDelay <= 0 {
		cfg.ThrottleDelay = time.Minute
	}
	if cfg.Sweep <= 0 {
		cfg.Sweep = 5 * time.Minute
	}
	if cfg.StalledAfter <= 0 {
		cfg.StalledAfter = stalledAfter
	}
	d := &deliverer{
		q: q, sender: s, cfg: cfg, log: log.With("component", "delivery"),
		wake:     make(chan struct{}, 1),
		freed:    make(chan struct{}, 1),
		slots:    make(chan struct{}, cfg.Workers),
		inFlight: map[string]int{},
		full:     map[string]time.Time{},
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
// flight (up to the grace period) and returns. Each pass reads the routes
// due now from the queue's index and sleeps until the next due time, a
// wake-up (a local enqueue or release), a finished delivery or Poll (for
// mail enqueued by other replicas).
func (d *deliverer) run(ctx context.Context) {
	defer d.drain()
	d.wg.Go(func() { d.sweep(ctx) })
	// Since when, and how often, the due routes could not be read: the
	// warnings are written once every 10 s while they repeat, so the
	// line that says the queue is read again dates the outage's end.
	var (
		failing  time.Time
		failures int
	)
	for ctx.Err() == nil {
		routes, next, err := d.q.DueRoutes(ctx, dueBatch)
		if err != nil {
			if ctx.Err() == nil {
				if failing.IsZero() {
					failing = time.Now()
				}
				failures++
				d.log.Warn("cannot read due routes", "err", err)
			}
			d.sleep(ctx, d.cfg.Poll)
			continue
		}
		if !failing.IsZero() {
			d.log.Info("due routes read again; delivery goes on", "failing_for", time.Since(failing).Round(time.Millisecond),
				"failed_reads", failures)
			failing, failures = time.Time{}, 0
		}
		leased, retry := d.pass(ctx, routes)
		if leased {
			continue
		}
		wait := d.cfg.Poll
		for _, t := range []time.Time{next, retry} {
			if !t.IsZero() {
				wait = min(wait, max(time.Until(t), 10*time.Millisecond))
			}
		}
		d.sleep(ctx, wait)
	}
}

// sweep repairs the due-route index at start and every Sweep, beside the
// dispatcher: its cost follows the number of routes.
func (d *deliverer) sweep(ctx context.Context) {
	t := time.NewTicker(d.cfg.Sweep)
	defer t.Stop()
	for {
		if n, err := d.q.SweepDue(ctx); err != nil && ctx.Err() == nil {
			d.log.Warn("cannot check the due-route index", "err", err)
		} else if n > 0 {
			d.log.Info("due-route index repaired", "routes", n)
			d.notify()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// pass leases from each due route, as far as free workers and the
// sender's room allow. It reports whether it leased anything and the
// earliest time a route it had no room for may have some.
func (d *deliverer) pass(ctx context.Context, routes []string) (leased bool, retry time.Time) {
	now := time.Now()
	for _, route := range routes {
		room := d.room(route)
		if t, ok := d.isFull(route, now); room == 0 || ok || d.cfg.Skip != nil && d.cfg.Skip(route) {
			if ok && (retry.IsZero() || t.Before(retry)) {
				retry = t
			}
			continue
		}
		n := d.takeSlots(ctx)
		if n == 0 {
			return leased, retry
		}
		if n > room {
			d.giveSlots(n - room)
			n = room
		}
		rs, wait, err := d.reserve(ctx, route, n)
		if err != nil || len(rs) == 0 {
			// Room taken before the capacity failed goes back: each holds
			// a connection of the sender's.
			cancelAll(rs)
			d.giveSlots(n)
			if err != nil && ctx.Err() == nil {
				d.log.Warn("cannot reserve room to send", "route", route, "err", err)
				wait = d.cfg.Poll
			}
			until := now.Add(max(wait, 10*time.Millisecond))
			d.setFull(route, until)
			if retry.IsZero() || until.Before(retry) {
				retry = until
			}
			continue
		}
		d.giveSlots(n - len(rs))
		n = len(rs)
		res, err := d.q.Lease(ctx, route, n, d.cfg.Lease)
		if err != nil {
			cancelAll(rs)
			d.giveSlots(n)
			if ctx.Err() == nil {
				d.log.Warn("lease failed", "route", route, "err", err)
			}
			continue
		}
		cancelAll(rs[len(res.Leases):])
		d.giveSlots(n - len(res.Leases))
		d.addInFlight(route, len(res.Leases))
		for i, l := range res.Leases {
			leased = true
			r := rs[i]
			d.wg.Add(1)
			go func() {
				defer d.wg.Done()
				handedOn := d.lane(ctx, l, r)
				d.addInFlight(route, -1)
				d.setFull(route, time.Time{})
				if !handedOn {
					d.giveSlots(1)
				}
				select {
				case d.freed <- struct{}{}:
				default:
				}
			}()
		}
	}
	return leased, retry
}

// laneRun is how many messages a worker sends in a row on one route
// before it goes back to the dispatcher, so that other routes get their
// turn.
const laneRun = 100

// lane delivers l, then keeps the worker and the sender's room on the
// route for its next due messages, while they are delivered, there are
// more and the sender has room, up to laneRun in a row. The room for the
// next message is taken before the delivered one is acked, so that the
// ack leases the next message in the same round trip.
//
// It reports whether it handed its worker on during a stalled send (see
// stalledAfter): the caller then has no worker to give back.
func (d *deliverer) lane(ctx context.Context, l *queue.Lease, r reservation) (handedOn bool) {
	route := l.Route
	for i := 1; l != nil && !handedOn; i++ {
		l, r, handedOn = d.deliver(l, r, func() reservation {
			if i == laneRun || ctx.Err() != nil || d.sendCtx.Err() != nil {
				return nil
			}
			rs, _, err := d.reserve(ctx, route, 1)
			if err != nil || len(rs) == 0 {
				cancelAll(rs)
				return nil
			}
			return rs[0]
		})
	}
	return handedOn
}

// watchStalled hands the worker of a send on to the other routes once
// the send has run StalledAfter, if fewer than Workers sends have
// handed theirs on: the dispatcher may then start another delivery,
// while the route's own count in flight still bounds its deliveries. The
// returned func, called when the send ends, reports whether the worker
// was handed on.
func (d *deliverer) watchStalled(log *slog.Logger) (end func() bool) {
	var handed bool
	fired := make(chan struct{})
	t := time.AfterFunc(d.cfg.StalledAfter, func() {
		defer close(fired)
		if d.stalled.Add(1) > int64(d.cfg.Workers) {
			d.stalled.Add(-1)
			return
		}
		handed = true
		log.Warn("send still running; its worker goes to other mailboxes meanwhile",
			"after", d.cfg.StalledAfter, "sends_handed_on", d.stalled.Load())
		d.giveSlots(1)
		select {
		case d.freed <- struct{}{}:
		default:
		}
	})
	return func() bool {
		if t.Stop() {
			return false
		}
		<-fired // the timer's func has run, or is running
		if handed {
			d.stalled.Add(-1)
		}
		return handed
	}
}

// isFull reports whether the sender had no room for the route lately,
// and until when.
func (d *deliverer) isFull(route string, now time.Time) (time.Time, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	t, ok := d.full[route]
	if ok && !t.After(now) {
		delete(d.full, route)
		return time.Time{}, false
	}
	return t, ok
}

// setFull records that the route has no room until t; a zero t clears
// it.
func (d *deliverer) setFull(route string, t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if t.IsZero() {
		delete(d.full, route)
	} else {
		d.full[route] = t
	}
}

// reserve asks the sender's capacity for room for n messages.
func (d *deliverer) reserve(ctx context.Context, route string, n int) ([]reservation, time.Duration, error) {
	if d.cfg.Capacity == nil {
		return unlimited(n), 0, nil
	}
	return d.cfg.Capacity.Reserve(ctx, route, n)
}

func cancelAll(rs []reservation) {
	for _, r := range rs {
		r.Cancel()
	}
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
// ctx.
func (d *deliverer) sleep(ctx context.Context, wait time.Duration) {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-d.freed:
	case <-d.wake:
	case <-ctx.Done():
	}
}

// drain waits for deliveries in flight, cancelling them after the grace
// period; their messages are handed back by deliver.
func (d *deliverer) drain() {
	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	grace := d.cfg.Grace
	if by := d.stopBy.Load(); by != 0 {
		grace = time.Until(time.Unix(0, by))
	}
	d.settleBy.CompareAndSwap(0, time.Now().Add(grace+handBack).UnixNano())
	select {
	case <-done:
	case <-time.After(grace):
		d.log.Warn("shutdown grace period over; cancelling deliveries in flight")
		d.cancelSend()
		<-done
	}
	d.cancelSend()
}

// deliver sends one leased message, keeps its lease alive meanwhile, and
// settles it by the outcome's class. When the message was delivered and
// more gives room for another of its route, the ack leases that message
// too: deliver returns its lease and the room, or nil when there was none
// (the room then given back).
func (d *deliverer) deliver(l *queue.Lease, r reservation, more func() reservation) (next *queue.Lease, nr reservation, handedOn bool) {
	a := d.attempt(d.sendCtx, l, r, more, true)
	return a.next, a.room, a.handedOn
}

// attempted is what attempt did.
type attempted struct {
	next     *queue.Lease // the route's next message, leased by the ack
	room     reservation  // next's room
	handedOn bool         // the worker was handed on (see watchStalled)
	// err is the send's error, nil when the message was delivered; it
	// wraps queue.ErrLeaseLost when the lease was lost during the send.
	err error
}

// attempt is deliver in ctx, which ends the send when it ends, and with
// watch false a send not watched for stalling (one that took no
// worker).
func (d *deliverer) attempt(ctx context.Context, l *queue.Lease, r reservation, more func() reservation, watch bool) (a attempted) {
	log := d.log.With("id", l.ID, "route", l.Route)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stopExtend := d.keepLease(ctx, l, cancel, log)
	start := time.Now()
	endStalled := func() bool { return false }
	if watch {
		endStalled = d.watchStalled(log)
	}
	reply, err := d.sender.Send(r.Bind(ctx), l.Message)
	a.handedOn = endStalled()
	stopExtend()
	if a.handedOn || more == nil {
		// No worker to send the route's next message on.
		more = func() reservation { return nil }
	}
	if d.cfg.Metrics != nil && d.cfg.Transport != nil {
		d.cfg.Metrics.sent(d.cfg.Transport(l.Message), time.Since(start))
	}
	r.Cancel() // gives back what the send did not use
	if err != nil && errors.Is(context.Cause(ctx), queue.ErrLeaseLost) {
		// Another worker may own the message now; whatever this send did,
		// the lease's holder settles it.
		log.Warn("lease lost during the send; the send was abandoned", "err", err)
		a.err = fmt.Errorf("%w: %w", queue.ErrLeaseLost, err)
		return a
	}

	if err != nil {
		d.settleFailure(l, err, log)
		a.err = err
		return a
	}
	a.next, a.room, err = d.ack(l, reply, more(), log)
	if errors.Is(err, queue.ErrLeaseLost) {
		// Recorded by a try whose answer was lost, or the lease ran out
		// and another worker holds the message now.
		log.Warn("delivered, but the lease was gone when the delivery was recorded; it may be delivered again", "err", err)
		return a
	}
	if err != nil {
		log.Error("delivered, but the queue could not record it; it may be delivered again", "err", err)
		return a
	}
	log.Info("delivered", "attempts", l.Attempts, "took", time.Since(start), "reply", reply)
	d.cfg.Metrics.delivered(routeCredential(l.Route), time.Since(l.Submitted))
	if d.cfg.OnDelivered != nil {
		ctx, cancel := d.settleContext()
		d.cfg.OnDelivered(ctx, l.Route)
		cancel()
	}
	return a
}

// errNoTrial: the route has no message a trial may take.
var errNoTrial = errors.New("no message to try")

// errTrialNotRun: a trial sent nothing, for want of Redis or of room on
// the route (the mailbox's own limits).
var errTrialNotRun = errors.New("trial not run")

// trial leases one message of route, held or not due (queue.LeaseTrial),
// and delivers it as a worker does, in ctx: a breaker's probe where only
// a real message tests the upstream. The message is settled by the
// outcome as any delivery is. trial returns the send's error, nil when
// the message was delivered, errNoTrial when the route has no message to
// try, or an error wrapping errTrialNotRun when nothing was sent.
func (d *deliverer) trial(ctx context.Context, route string) error {
	rs, wait, err := d.reserve(ctx, route, 1)
	if err != nil || len(rs) == 0 {
		cancelAll(rs)
		if err == nil {
			err = fmt.Errorf("no room on the route for %v", wait.Round(time.Millisecond))
		}
		return fmt.Errorf("%w: %w", errTrialNotRun, err)
	}
	l, err := d.q.LeaseTrial(ctx, route, d.cfg.Lease)
	if err != nil || l == nil {
		rs[0].Cancel()
		if err != nil {
			return fmt.Errorf("%w: %w", errTrialNotRun, err)
		}
		return errNoTrial
	}
	d.addInFlight(route, 1)
	defer d.addInFlight(route, -1)
	d.log.Info("trial send", "id", l.ID, "route", route)
	// Leased, the message is sent and settled as a worker's would be: a
	// shutdown ends it with the deliveries (sendCtx), not with the probe,
	// and the probe's deadline bounds it.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	defer context.AfterFunc(d.sendCtx, cancel)()
	if end, ok := ctx.Deadline(); ok {
		var stop context.CancelFunc
		sctx, stop = context.WithDeadline(sctx, end)
		defer stop()
	}
	return d.attempt(sctx, l, rs[0], nil, false).err
}

// settleTimeout bounds one try at recording a message's outcome. A try
// that a hung Redis holds when shutdown starts can end that much after
// the shutdown budget (go-redis does not abandon a command in flight when
// its context is cancelled, only at the context's deadline).
const settleTimeout = 3 * time.Second

// settleContext is the context of one try at recording an outcome: it
// ends after settleTimeout, or when the shutdown budget does.
func (d *deliverer) settleContext() (context.Context, context.CancelFunc) {
	end := time.Now().Add(settleTimeout)
	if by := d.settleBy.Load(); by != 0 && by < end.UnixNano() {
		end = time.Unix(0, by)
	}
	return context.WithDeadline(context.Background(), end)
}

// ack records l as delivered with reply. With room for another message
// of the route (nr), the same call leases it: ack returns its lease and
// the room, or gives the room back when there was none. Called again
// after an error, the ack-and-lease returns what an earlier call leased
// if that call reached Redis.
func (d *deliverer) ack(l *queue.Lease, reply string, nr reservation, log *slog.Logger) (*queue.Lease, reservation, error) {
	if nr == nil {
		return nil, nil, d.recordUntil(l, ackBy(l), log, func(ctx context.Context) error {
			return d.q.Ack(ctx, l, reply)
		})
	}
	var res queue.LeaseResult
	err := d.recordUntil(l, ackBy(l), log, func(ctx context.Context) (err error) {
		res, err = d.q.AckNext(ctx, l, reply, 1, d.cfg.Lease)
		return err
	})
	if err == nil && len(res.Leases) > 0 {
		return res.Leases[0], nr, nil
	}
	nr.Cancel()
	return nil, nil, err
}

// record runs settle, which records l's outcome, until it succeeds, the
// queue finds the lease lost, the lease is about to run out, or shutdown
// cancels deliveries; settleContext bounds each try. An outcome lost to a
// Redis restart or failover would otherwise leave the message leased
// until its lease runs out.
func (d *deliverer) record(l *queue.Lease, log *slog.Logger, settle func(context.Context) error) error {
	return d.recordUntil(l, l.LeaseEnd, log, settle)
}

// ackBy is when the tries at recording the delivery of l stop: past the
// lease's end, at the message's expiry when that is later. The queue
// takes the record by the lease's token, so it is taken as long as
// nobody leased the message again; and while Redis does not answer
// nobody can. A delivery recorded late is one not sent again after a
// Redis outage longer than the lease (a Sentinel failover); one recorded
// too late finds the lease lost.
func ackBy(l *queue.Lease) time.Time {
	return later(l.LeaseEnd, l.Expires)
}

// later returns the later of a and b.
func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// recordUntil is record, tried until end rather than the lease's end.
func (d *deliverer) recordUntil(l *queue.Lease, end time.Time, log *slog.Logger, settle func(context.Context) error) error {
	b := backoff{next: 50 * time.Millisecond, max: time.Second}
	for tries := 1; ; tries++ {
		ctx, cancel := d.settleContext()
		err := settle(ctx)
		cancel()
		if err == nil || errors.Is(err, queue.ErrLeaseLost) || time.Until(end) < b.next ||
			d.sendCtx.Err() != nil || d.pastSettleBy() {
			if err == nil && tries > 1 {
				log.Info("outcome recorded after Redis came back", "tries", tries)
			}
			return err
		}
		if tries == 1 {
			log.Warn("cannot record the outcome; trying again", "err", err, "lease_end", l.LeaseEnd, "until", end)
		}
		b.wait(d.sendCtx)
	}
}

// giveBack returns l to the queue, due after delay, without spending an
// attempt; reason is its last error.
func (d *deliverer) giveBack(l *queue.Lease, delay time.Duration, reason string, log *slog.Logger) error {
	return d.record(l, log, func(ctx context.Context) error {
		_, err := d.q.Defer(ctx, l, delay, reason)
		return err
	})
}

// settleFailure applies the failure's class to the message.
func (d *deliverer) settleFailure(l *queue.Lease, err error, log *slog.Logger) {
	class := upstream.ClassOf(err)
	if errors.Is(err, upstream.ErrOutcomeUnknown) {
		// The sender marked the message already, unless Redis failed
		// it; the settle below, tried until recorded, marks it too.
		l.SetAmbiguous()
	}
	if errors.Is(err, context.Canceled) && d.sendCtx.Err() != nil {
		// Cancelled by shutdown: not the message's fault.
		if serr := d.giveBack(l, 0, "delivery interrupted by shutdown", log); serr != nil {
			log.Error("cannot hand back message after shutdown", "err", serr)
		}
		return
	}
	if errors.Is(err, destination.ErrPaused) {
		// The relay's own dead-destination breaker: no failure.
		if serr := d.giveBack(l, upstream.RetryAfterOf(err), err.Error(), log); serr != nil {
			log.Error("cannot hand back message", "err", serr)
		}
		log.Debug("endpoint paused; message handed back", "err", err)
		return
	}
	if class == upstream.Credential || class == upstream.Mailbox {
		if d.cfg.OnAuthFailure != nil {
			ctx, cancel := d.settleContext()
			d.cfg.OnAuthFailure(ctx, l.Route, err)
			cancel()
		}
	}
	var state queue.State
	serr := d.record(l, log, func(ctx context.Context) (serr error) {
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
			delay := upstream.RetryAfterOf(err)
			if delay <= 0 {
				delay = d.q.Backoff(l.Attempts + 1)
			}
			state, serr = d.q.Defer(ctx, l, delay, err.Error())
		default:
			state, serr = d.q.Retry(ctx, l, err.Error())
		}
		return serr
	})
	if serr != nil {
		log.Error("cannot record delivery failure", "class", class, "err", serr, "failure", err)
		return
	}
	d.cfg.Metrics.failed(class, state)
	log.Warn("delivery failed", "class", class, "now", state, "attempts", l.Attempts, "err", err)
}

// keepLease extends the lease every third of its length until the
// returned function is called, the first time a third of the lease
// after it began (at once when that is past: a lease taken by an
// ack-and-lease asked again after a lost reply), and a third of the lease
// after a try that failed. When the lease is lost, or cannot be
// extended before it would run out, it cancels the send with
// queue.ErrLeaseLost: another worker may take the message, and this send
// must stop before the message's final dot. Each extension gives up a
// sixth of the lease before the lease ends (see extendBy), so that a
// Redis that stops answering cannot keep the send going past it.
func (d *deliverer) keepLease(ctx context.Context, l *queue.Lease, abandon context.CancelCauseFunc, log *slog.Logger) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTimer(time.Until(extendAt(l.LeaseEnd, d.cfg.Lease)))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			ectx, ecancel := context.WithDeadline(ctx, extendBy(l.LeaseEnd, d.cfg.Lease))
			err := d.q.Extend(ectx, l, d.cfg.Lease)
			ecancel()
			if ctx.Err() != nil {
				return
			}
			switch {
			case errors.Is(err, queue.ErrLeaseLost):
				abandon(queue.ErrLeaseLost)
				return
			case err != nil && time.Until(l.LeaseEnd) < d.cfg.Lease/3:
				// The next extension would come too late.
				log.Warn("cannot extend lease; abandoning the send", "err", err)
				abandon(queue.ErrLeaseLost)
				return
			case err != nil:
				log.Warn("cannot extend lease", "err", err)
				t.Reset(d.cfg.Lease / 3)
			default:
				t.Reset(time.Until(extendAt(l.LeaseEnd, d.cfg.Lease)))
			}
		}
	}()
	return func() { cancel(); <-done }
}

// extendAt is when a lease of length d that ends at end is next
// extended: a third of the lease after it began or was last extended.
func extendAt(end time.Time, d time.Duration) time.Time {
	return end.Add(-2 * d / 3)
}

// extendBy is when a try at extending a lease that ends at end gives up:
// a sixth of the lease d before the end, which leaves that long for the
// cancelled send to close its connection, and for the clocks of the
// replicas, which time leases, to differ.
func extendBy(end time.Time, d time.Duration) time.Time {
	return end.Add(-d / 6)
}
