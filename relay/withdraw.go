package relay

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"holdfast/queue"
)

// withdrawer takes back messages that were refused with a temporary
// failure after their store was sent to Redis: a hung Redis runs the
// store when it resumes, and the client, told that nothing was kept,
// sends the message again. One goroutine withdraws them in the order they
// were refused, as soon as Redis answers.
type withdrawer struct {
	q    withdrawStore
	log  *slog.Logger
	try  time.Duration // bounds one withdrawal
	kick chan struct{}
	// ended counts the withdrawals by how they ended:
	// holdfast_ingress_withdrawals_total{result}.
	ended *prometheus.CounterVec
	mu    sync.Mutex
	queue []queue.Withdrawal
	done  bool // run has returned: nothing more is withdrawn
}

// Results of a withdrawal, the label of holdfast_ingress_withdrawals_total.
const (
	withdrawn       = "withdrawn"       // taken out, or kept from being stored
	withdrawTooLate = "too_late"        // a worker had taken it: it is delivered
	withdrawDropped = "dropped"         // over maxWithdrawals while Redis was away
	withdrawShut    = "not_at_shutdown" // Redis unreachable when the relay stopped
)

// withdrawStore is what the withdrawer needs of the queue.
type withdrawStore interface {
	WithdrawEach(ctx context.Context, ws []queue.Withdrawal) []error
}

// withdrawBatch is how many withdrawals one round trip sends.
const withdrawBatch = 500

// maxWithdrawals bounds the withdrawals waiting for Redis; past it the
// oldest is dropped, logged.
const maxWithdrawals = 100_000

// newWithdrawer builds the withdrawer and registers its metrics on reg:
// holdfast_ingress_withdrawals_total{result} and
// holdfast_ingress_withdrawals_pending.
func newWithdrawer(q withdrawStore, try time.Duration, reg prometheus.Registerer, log *slog.Logger) *withdrawer {
	if try <= 0 {
		try = 3 * time.Second
	}
	w := &withdrawer{q: q, log: log, try: try, kick: make(chan struct{}, 1)}
	w.ended = promauto.With(reg).NewCounterVec(prometheus.CounterOpts{
		Name: "holdfast_ingress_withdrawals_total",
		Help: "Messages refused with a temporary failure after their store was sent to Redis, by how their withdrawal ended: withdrawn, too_late (a worker took it first: it is delivered, and again if the client resends it), dropped or not_at_shutdown (not withdrawn: if Redis stored it, it is delivered).",
	}, []string{"result"})
	for _, r := range []string{withdrawn, withdrawTooLate, withdrawDropped, withdrawShut} {
		w.ended.WithLabelValues(r)
	}
	promauto.With(reg).NewGaugeFunc(prometheus.GaugeOpts{
		Name: "holdfast_ingress_withdrawals_pending",
		Help: "Refused messages waiting for Redis to answer so that they can be withdrawn.",
	}, func() float64 { return float64(w.pending()) })
	return w
}

// mayHaveReachedRedis reports whether a store that failed with err may
// have stored the message: everything but a failure to connect, Redis
// past its maxmemory, which refuses the store whole (queue.RedisFull),
// and a store that ran and answered that it stored nothing (past its
// deadline, or withdrawn already). A withdrawal of these would only
// write a mark.
func mayHaveReachedRedis(err error) bool {
	var op *net.OpError
	return !(errors.As(err, &op) && op.Op == "dial") && !queue.RedisFull(err) &&
		!errors.Is(err, queue.ErrPastDeadline) && !errors.Is(err, queue.ErrWithdrawn)
}

// add asks for the message id of route to be withdrawn.
func (w *withdrawer) add(route, id string) {
	w.mu.Lock()
	if w.done {
		w.mu.Unlock()
		w.log.Warn("refused message not withdrawn (shutting down): if Redis stored it, it will be delivered, and again if the client resends it", "id", id, "route", route)
		w.ended.WithLabelValues(withdrawShut).Inc()
		return
	}
	if len(w.queue) >= maxWithdrawals {
		old := w.queue[0]
		w.queue = w.queue[1:]
		w.log.Warn("too many refused messages waiting to be withdrawn; dropped the oldest: if Redis stored it, it will be delivered", "id", old.ID, "route", old.Route)
		w.ended.WithLabelValues(withdrawDropped).Inc()
	}
	w.queue = append(w.queue, queue.Withdrawal{Route: route, ID: id})
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// pending returns how many withdrawals wait for Redis.
func (w *withdrawer) pending() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.queue)
}

// run withdraws until ctx ends, then makes one last pass bounded by
// w.try and logs what it could not withdraw.
//
// While Redis does not answer, a pass is sent again at most a quarter of
// a second after the last one ended: the withdrawals of a pass that a
// hung Redis holds run when it resumes, in the same turn as the stores
// they take back, before any worker can lease those. A longer pause
// between passes would let workers lease and deliver, at the resumption,
// messages whose clients were told they were not taken.
func (w *withdrawer) run(ctx context.Context) {
	const first = 100 * time.Millisecond
	b := backoff{next: first, max: 250 * time.Millisecond}
	for ctx.Err() == nil {
		if w.pass(context.Background()) {
			b.next = first
			select {
			case <-w.kick:
			case <-ctx.Done():
			}
			continue
		}
		b.wait(ctx)
	}
	last, cancel := context.WithTimeout(context.Background(), w.try)
	defer cancel()
	w.pass(last)
	w.mu.Lock()
	left := w.queue
	w.queue, w.done = nil, true
	w.mu.Unlock()
	for _, l := range left {
		w.log.Warn("refused message not withdrawn (Redis unreachable at shutdown): if Redis stored it, it will be delivered, and again if the client resends it", "id", l.ID, "route", l.Route)
	}
	w.ended.WithLabelValues(withdrawShut).Add(float64(len(left)))
}

// pass withdraws the waiting messages, withdrawBatch to a round trip,
// and reports whether it got through them all; it stops at the first
// round trip that Redis does not answer in full.
func (w *withdrawer) pass(ctx context.Context) bool {
	for {
		w.mu.Lock()
		batch := slices.Clone(w.queue[:min(len(w.queue), withdrawBatch)])
		w.mu.Unlock()
		if len(batch) == 0 {
			return true
		}
		tctx, cancel := context.WithTimeout(ctx, w.try)
		errs := w.q.WithdrawEach(tctx, batch)
		cancel()
		settled := map[queue.Withdrawal]bool{}
		answered := true
		for i, err := range errs {
			l := batch[i]
			switch {
			case errors.Is(err, queue.ErrTooLate):
				w.log.Warn("a refused message was stored all the same and is being delivered; if the client resends it, it is delivered twice", "id", l.ID, "route", l.Route)
				w.ended.WithLabelValues(withdrawTooLate).Inc()
			case err != nil:
				answered = false
				continue
			default:
				w.log.Info("refused message withdrawn", "id", l.ID, "route", l.Route)
				w.ended.WithLabelValues(withdrawn).Inc()
			}
			settled[l] = true
		}
		w.mu.Lock()
		w.queue = slices.DeleteFunc(w.queue, func(l queue.Withdrawal) bool { return settled[l] })
		w.mu.Unlock()
		if !answered {
			return false
		}
	}
}
