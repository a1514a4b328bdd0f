package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Options configure a Queue. The zero value of every field means its
// default.
type Options struct {
	// Lifetime is how long a message may stay undelivered before it is
	// dead-lettered. Default 5 days (Postfix's maximal_queue_lifetime).
	Lifetime time.Duration
	// BackoffBase is the delay before the second attempt; each further
	// failed attempt doubles it. Default 1 minute.
	BackoffBase time.Duration
	// BackoffMax caps the delay between attempts. Default 1 hour.
	BackoffMax time.Duration
	// DeliveredRetention is how long the record of a delivered message
	// (without its body) is kept for status queries. Default 7 days.
	DeliveredRetention time.Duration
	// IdempotencyTTL is how long an idempotency key is remembered.
	// Default 24 hours.
	IdempotencyTTL time.Duration
	// HeldGrace is how long a route's hold does not count against its
	// messages' lifetime. ReleaseRoute moves each waiting message's
	// expiry later by the time it spent held, up to HeldGrace. A message
	// held for longer follows the normal lifetime: it is dead-lettered,
	// while its route is still held, once its lifetime plus HeldGrace has
	// passed. Default 5 days; zero or negative means the default. To
	// count held time in full, set it to time.Millisecond.
	HeldGrace time.Duration
	// HeldRecheck is how often a held route is leased anyway, to
	// dead-letter its messages past their lifetime (see HeldGrace).
	// Default 1 minute.
	HeldRecheck time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// MinReplicas is how many replicas must have a new message before
	// Enqueue returns: WAITAOF (the replicas wrote it to their AOF) on
	// Redis 7.2 and later, WAIT (they have it) before. Default 0, the
	// primary alone. Only for a single Redis primary, not a Cluster.
	MinReplicas int
	// ReplicasTimeout bounds the wait for MinReplicas. Default 1 second.
	ReplicasTimeout time.Duration
	// MaxPerRoute bounds the messages a route holds that are not yet
	// delivered or dead (ready, scheduled, leased or held): past it,
	// Enqueue refuses the route's new messages with ErrRouteFull. 0, the
	// default, sets no bound.
	MaxPerRoute int
}

func (o Options) withDefaults() Options {
	if o.Lifetime <= 0 {
		o.Lifetime = 5 * 24 * time.Hour
	}
	if o.BackoffBase <= 0 {
		o.BackoffBase = time.Minute
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = time.Hour
	}
	if o.DeliveredRetention <= 0 {
		o.DeliveredRetention = 7 * 24 * time.Hour
	}
	if o.IdempotencyTTL <= 0 {
		o.IdempotencyTTL = 24 * time.Hour
	}
	if o.HeldGrace <= 0 {
		o.HeldGrace = 5 * 24 * time.Hour
	}
	if o.HeldRecheck <= 0 {
		o.HeldRecheck = time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.ReplicasTimeout <= 0 {
		o.ReplicasTimeout = time.Second
	}
	return o
}

// Queue is the mail queue. It is safe for concurrent use.
type Queue struct {
	rdb  redis.UniversalClient
	opts Options

	mu     sync.Mutex
	routes map[string]time.Time // routes this process added to routesKey, and when
	// unmarked are routes this process changed but could not mark due
	// (Redis Cluster, the index's slot unreachable): DueRoutes returns
	// them until a Lease of each has run.
	unmarked map[string]bool
	// orphans are the tokens of leases that failed, by route: Redis may
	// have run them after all (a hung Redis resuming), leasing messages
	// no worker knows of. The next Lease of the route hands them back.
	orphans map[string][]string

	waitAOF     bool // the server has WAITAOF (Redis 7.2+); set once waitChecked
	waitChecked bool

	clock redisClock // see clock.go

	// moveHook, set by tests, is called by a move with the id of each
	// message it took out, before it stores the copy.
	moveHook func(id string)
	// moveLockTTL is the lifetime of a route's move lock (see lockMoves).
	moveLockTTL time.Duration
}

// ErrNotFound is returned for a message id that does not exist.
var ErrNotFound = errors.New("no such message")

// ErrLeaseLost is returned when a lease is settled or extended after it
// expired and the message may have been leased again.
var ErrLeaseLost = errors.New("lease lost: it expired before the worker reported")

// New returns a queue stored in rdb.
func New(rdb redis.UniversalClient, opts Options) *Queue {
	return &Queue{rdb: rdb, opts: opts.withDefaults(), routes: map[string]time.Time{}, unmarked: map[string]bool{},
		orphans: map[string][]string{}, moveLockTTL: moveLockTTL}
}

// Options returns the queue's options, defaults filled in.
func (q *Queue) Options() Options { return q.opts }

// Enqueue stores a message durably, due now, and returns its id. When
// m.IdempotencyKey was used before on the same route, it returns the id of
// the first message and dup true, and stores nothing; if that use had
// another Fingerprint, it returns the first message's id and
// ErrKeyReused, and stores nothing.
//
// An error after the message was sent to Redis (a timeout, a lost reply,
// too few replicas) comes with the id the message has if Redis stores it
// all the same, as a hung Redis does when it resumes: Withdraw of that id
// makes sure it is not, or is not stored for long. Before that, the id is
// empty. An error for which RedisFull is true (Redis past its maxmemory)
// stored nothing, and needs no Withdraw.
//
// It costs one round trip to Redis, which stores the message and marks
// its route due (two on Redis Cluster, where the due index is in another
// slot; see markDue), plus one the first time this process sees the
// route (and once a minute after).
func (q *Queue) Enqueue(ctx context.Context, m Submission) (id string, dup bool, err error) {
	return q.enqueue(ctx, m, -1)
}

// enqueue is Enqueue, with the store's deadline in Redis's clock (unix
// ms; 0: none), or -1 for the one of ctx's deadline (see storeDeadline).
func (q *Queue) enqueue(ctx context.Context, m Submission, deadline int64) (id string, dup bool, err error) {
	if !ValidRoute(m.Route) {
		return "", false, fmt.Errorf("enqueue: invalid route name %q", m.Route)
	}
	if len(m.To) == 0 {
		return "", false, errors.New("enqueue: no recipients")
	}
	if strings.ContainsAny(m.Fingerprint, "\r\n") {
		return "", false, errors.New("enqueue: the fingerprint contains a line break")
	}
	for _, a := range append([]string{m.From}, m.To...) {
		if strings.ContainsAny(a, "\r\n\x00") {
			return "", false, fmt.Errorf("enqueue: address %q contains a line break or NUL", a)
		}
	}
	if err := q.registerRoute(ctx, m.Route); err != nil {
		return "", false, err
	}
	now := q.opts.Now()
	rk := keysFor(m.Route)
	id = newID(rk.tag, now)
	keys := []string{msgKey(id), rk.due, rk.live, withdrawnKey(id)}
	if m.IdempotencyKey != "" {
		keys = append(keys, idemKey(m.Route, m.IdempotencyKey), idemPrintKey(m.Route, m.IdempotencyKey))
	}
	// On a single server the script marks the route due itself.
	marked := !q.cluster()
	mark := ""
	if marked {
		keys, mark = append(keys, dueDirtyKey, changesKey), "1"
	}
	ctxDeadline := deadline < 0
	if ctxDeadline {
		deadline = q.storeDeadline(ctx)
	}
	args := []any{id, m.Route, m.App, m.From, strings.Join(m.To, "\n"), m.Body,
		now.UnixMilli(), now.Add(q.opts.Lifetime).UnixMilli(),
		q.opts.IdempotencyTTL.Milliseconds(), m.IdempotencyKey, mark, m.Fingerprint, deadline,
		max(q.opts.MaxPerRoute, 0)}
	var res []any
	if q.opts.MinReplicas > 0 {
		res, err = q.enqueueReplicated(ctx, keys, args)
	} else {
		res, err = enqueueScript.Run(ctx, q.rdb, keys, args...).Slice()
	}
	if err != nil {
		if !marked && !RedisFull(err) {
			// The message may be stored all the same (too few replicas
			// acknowledged it, a reply lost): a mark costs nothing if not.
			// Redis full refused the script whole: nothing was stored.
			q.markOrKeep(ctx, m.Route)
		}
		return id, false, fmt.Errorf("enqueue: %w", err)
	}
	got, _ := res[0].(string)
	switch res[1].(int64) {
	case 1:
		dup = true
	case 2:
		return id, false, fmt.Errorf("enqueue %s: %w", id, ErrWithdrawn)
	case 3:
		return got, false, fmt.Errorf("enqueue: idempotency key of %s: %w", got, ErrKeyReused)
	case 4:
		if dl, ok := ctx.Deadline(); ctxDeadline && ok && time.Until(dl) > deadlineMargin {
			q.clockSuspect()
		}
		return id, false, fmt.Errorf("enqueue %s: %w", id, ErrPastDeadline)
	case 5:
		return "", false, fmt.Errorf("enqueue: route %s: %w", m.Route, ErrRouteFull)
	}
	if !dup && !marked {
		// The message is stored either way; a route left unmarked is
		// leased at this process's next DueRoutes, or found by SweepDue.
		q.markOrKeep(ctx, m.Route)
	}
	return got, dup, nil
}

// ErrWithdrawn is returned by an Enqueue whose id was withdrawn before it
// ran.
var ErrWithdrawn = errors.New("the message was withdrawn")

// ErrPastDeadline is returned by an Enqueue that Redis ran after its
// context's deadline: nothing was stored (see clock.go).
var ErrPastDeadline = errors.New("the store reached Redis after its deadline; nothing was stored")

// ErrRouteFull is returned by an Enqueue whose route already holds
// Options.MaxPerRoute messages not yet delivered or dead. Nothing is
// stored; the route takes new messages again as its mail leaves.
var ErrRouteFull = errors.New("the route holds as many undelivered messages as it may")

// ErrKeyReused is returned by an Enqueue whose idempotency key was used
// for another submission (another Fingerprint) on the same route, with
// the id of that submission's message. Nothing is stored.
var ErrKeyReused = errors.New("the idempotency key was used for another message")

// ErrTooLate is returned by Withdraw when the message was stored and a
// worker has leased or settled it since: it is being delivered.
var ErrTooLate = errors.New("the message is already being delivered")

// withdrawnTTL is how long a withdrawal mark is kept. An Enqueue held by
// a hung Redis runs when Redis resumes, and the caller keeps withdrawing
// until it can reach Redis; the mark only has to outlast the moments
// between the two.
const withdrawnTTL = time.Hour

// Withdraw makes sure the message that a failed Enqueue returned id for
// is not stored: deleted if it was stored and no worker has leased it
// yet, or, if it was not stored yet, its id marked for an hour so that
// the Enqueue stores nothing should it still run. It returns
// ErrTooLate when a worker took the message first. Withdraw is for
// messages whose submitter was told they were not taken; the route is
// the one given to Enqueue.
func (q *Queue) Withdraw(ctx context.Context, route, id string) error {
	return q.WithdrawEach(ctx, []Withdrawal{{Route: route, ID: id}})[0]
}

// A Withdrawal names a message for WithdrawEach: the route and id given
// to and by a failed Enqueue.
type Withdrawal struct{ Route, ID string }

// WithdrawEach withdraws each message as Withdraw does, all in one round
// trip, and returns each one's error in order. Sent while Redis is hung,
// the withdrawals wait in its input with the stores they take back, and
// run when it resumes, before a worker can lease what those stored.
func (q *Queue) WithdrawEach(ctx context.Context, ws []Withdrawal) []error {
	errs := make([]error, len(ws))
	pipe := q.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(ws))
	for i, w := range ws {
		if !ValidID(w.ID) {
			errs[i] = fmt.Errorf("withdraw %q: not a message id", w.ID)
			continue
		}
		rk := keysFor(w.Route)
		// Eval, not EvalSha: a pipeline cannot load the script on a
		// NOSCRIPT, and this runs only after a failed store.
		cmds[i] = withdrawScript.Eval(ctx, pipe,
			[]string{msgKey(w.ID), rk.due, rk.leased, rk.dead, rk.live, withdrawnKey(w.ID)},
			w.ID, withdrawnTTL.Milliseconds())
	}
	_, _ = pipe.Exec(ctx) // each command carries its own error
	changed := map[string]bool{}
	for i, c := range cmds {
		if c == nil {
			continue
		}
		n, err := c.Int()
		switch {
		case err != nil:
			errs[i] = fmt.Errorf("withdraw %s: %w", ws[i].ID, err)
		case n < 0:
			errs[i] = fmt.Errorf("withdraw %s: %w", ws[i].ID, ErrTooLate)
		case n > 0 && !changed[ws[i].Route]:
			// One change a route, however many of its messages went.
			changed[ws[i].Route] = true
			q.logChange(ctx, ws[i].Route)
		}
	}
	return errs
}

// ErrNotReplicated is returned by Enqueue when fewer replicas than
// Options.MinReplicas acknowledged the message in time. The message is
// stored on the primary and will be delivered; the submitter is told to
// try again, so a retry may deliver it twice.
var ErrNotReplicated = errors.New("too few replicas acknowledged the message in time")

// enqueueReplicated runs the enqueue script and WAITAOF or WAIT in one
// pipeline, on one connection: WAIT counts the writes of its own
// connection.
func (q *Queue) enqueueReplicated(ctx context.Context, keys []string, args []any) ([]any, error) {
	c, err := q.primaryFor(ctx, keys[0])
	if err != nil {
		return nil, err
	}
	aof, err := q.hasWaitAOF(ctx, c)
	if err != nil {
		return nil, err
	}
	ms := q.opts.ReplicasTimeout.Milliseconds()
	for attempt := 0; ; attempt++ {
		pipe := c.Pipeline()
		enq := enqueueScript.EvalSha(ctx, pipe, keys, args...)
		var wait *redis.Cmd
		if aof {
			wait = pipe.Do(ctx, "WAITAOF", 0, q.opts.MinReplicas, ms)
		} else {
			wait = pipe.Do(ctx, "WAIT", q.opts.MinReplicas, ms)
		}
		_, _ = pipe.Exec(ctx)
		if err := enq.Err(); err != nil {
			if attempt == 0 && redis.HasErrorPrefix(err, "NOSCRIPT") {
				if err := enqueueScript.Load(ctx, c).Err(); err != nil {
					return nil, err
				}
				continue
			}
			return nil, err
		}
		res, _ := enq.Result()
		out, _ := res.([]any)
		if len(out) == 2 && out[1] != int64(0) {
			// A duplicate, whose first copy was acknowledged before, or
			// a refusal: nothing was written, and the replicas' count
			// (WAIT ran all the same) says nothing of it.
			return out, nil
		}
		got, err := wait.Result()
		if err != nil {
			return nil, fmt.Errorf("wait for replicas: %w", err)
		}
		acked := int64(0)
		switch v := got.(type) {
		case int64: // WAIT: replicas
			acked = v
		case []any: // WAITAOF: {local, replicas}
			if len(v) == 2 {
				acked, _ = v[1].(int64)
			}
		}
		if acked < int64(q.opts.MinReplicas) {
			return nil, fmt.Errorf("%w: %d of %d within %v", ErrNotReplicated, acked, q.opts.MinReplicas, q.opts.ReplicasTimeout)
		}
		return out, nil
	}
}

// primaryFor is the client of the primary that holds key: the one Redis
// of a single-node setup, or, on Redis Cluster, the master of the key's
// slot, where WAIT and WAITAOF count that master's replicas.
func (q *Queue) primaryFor(ctx context.Context, key string) (*redis.Client, error) {
	switch c := q.rdb.(type) {
	case *redis.Client:
		return c, nil
	case *redis.ClusterClient:
		m, err := c.MasterForKey(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("min replicas: the master of %s: %w", key, err)
		}
		return m, nil
	}
	return nil, fmt.Errorf("min replicas: needs a single Redis or a Redis Cluster, not a %T", q.rdb)
}

// hasWaitAOF reports, once per queue, whether the server offers WAITAOF
// (Redis 7.2 and later).
func (q *Queue) hasWaitAOF(ctx context.Context, c *redis.Client) (bool, error) {
	q.mu.Lock()
	checked, aof := q.waitChecked, q.waitAOF
	q.mu.Unlock()
	if checked {
		return aof, nil
	}
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		return false, fmt.Errorf("redis version: %w", err)
	}
	aof = versionAtLeast(infoValue(info, "redis_version"), 7, 2)
	q.mu.Lock()
	q.waitChecked, q.waitAOF = true, aof
	q.mu.Unlock()
	return aof, nil
}

// infoValue returns the value of a "name:value" line of INFO.
func infoValue(info, name string) string {
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return ""
}

// versionAtLeast reports whether a "major.minor.patch" version is at
// least major.minor.
func versionAtLeast(v string, major, minor int) bool {
	var ma, mi int
	if _, err := fmt.Sscanf(v, "%d.%d", &ma, &mi); err != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

// registerRoute records the route in the set of routes, once per process
// and registerEvery (PruneRoutes may have removed it).
func (q *Queue) registerRoute(ctx context.Context, route string) error {
	q.mu.Lock()
	at, known := q.routes[route]
	q.mu.Unlock()
	if known && time.Since(at) < registerEvery {
		return nil
	}
	if err := q.rdb.SAdd(ctx, routesKey, route).Err(); err != nil {
		return fmt.Errorf("register route %s: %w", route, err)
	}
	q.mu.Lock()
	q.routes[route] = time.Now()
	q.mu.Unlock()
	return nil
}

// Routes returns every route that has had a message, sorted.
func (q *Queue) Routes(ctx context.Context) ([]string, error) {
	routes, err := q.rdb.SMembers(ctx, routesKey).Result()
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	slices.Sort(routes)
	return routes, nil
}
