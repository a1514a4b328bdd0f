package queue

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"
)

// LeaseResult is what Lease found on a route.
type LeaseResult struct {
	Leases []*Lease
	// Held is true when the route is held; nothing was leased.
	Held bool
	// NextDue is the due time of the earliest message left on the route,
	// zero when the route is empty or held.
	NextDue time.Time
}

// Lease claims up to n due messages of a route until now+d. It first
// returns the route's expired leases to the queue (counting the lost
// attempt) and dead-letters due messages past their lifetime. A held
// route leases nothing; it only dead-letters, among its 100 oldest
// messages, those whose lifetime has run out even after crediting their
// time held up to Options.HeldGrace.
func (q *Queue) Lease(ctx context.Context, route string, n int, d time.Duration) (LeaseResult, error) {
	return q.lease(ctx, route, n, d, newToken(), nil, "", false)
}

// LeaseTrial leases one message of the route until now+d, whether the
// route is held or the message is not due yet: the trial send of a
// breaker's probe where nothing but a real message tests the upstream.
// It takes the earliest of the route's first ten messages in line whose
// lifetime has not run out before crediting time held (the credit is
// given on release; until then, a trial that failed would dead-letter
// such a message). As Lease does, it first dead-letters a held route's
// messages whose lifetime has run out even after crediting their time
// held. It returns nil when the route has no message to try.
func (q *Queue) LeaseTrial(ctx context.Context, route string, d time.Duration) (*Lease, error) {
	res, err := q.lease(ctx, route, 1, d, newToken(), nil, "", true)
	if err != nil || len(res.Leases) == 0 {
		return nil, err
	}
	return res.Leases[0], nil
}

// releaseOrphans hands back, due at now and without spending an
// attempt, what the route's failed leases (tokens) leased if Redis ran
// them after all. Those it cannot hand back are kept for the route's next
// Lease, which passes its own now: what it hands back is due for that
// Lease, however long the hand-back took.
func (q *Queue) releaseOrphans(ctx context.Context, route string, tokens []string, now time.Time) error {
	rk := keysFor(route)
	released := 0
	for i, token := range tokens {
		n, err := releaseScript.Run(ctx, q.rdb, []string{rk.leaseSet(token), rk.leased, rk.due},
			token, now.UnixMilli(), msgKeyPrefix(rk.tag)).Int()
		if err != nil {
			q.mu.Lock()
			q.orphans[route] = append(q.orphans[route], tokens[i:]...)
			q.unmarked[route] = true
			q.mu.Unlock()
			return fmt.Errorf("hand back a failed lease's messages: %w", err)
		}
		released += n
	}
	if released > 0 {
		q.logChange(ctx, route)
	}
	return nil
}

// AckNext is Ack of l with the upstream's reply, then Lease of up to n
// more of its route until now+d, in one round trip: the worker that
// delivered a message takes the route's next ones. When the lease of l
// was lost, it returns ErrLeaseLost and leases nothing. After an error of
// another kind, whether l was acked is not known, as with Ack; called
// again for l, it acks l if that was not done and returns what the first
// call leased, while that lease lasts.
func (q *Queue) AckNext(ctx context.Context, l *Lease, reply string, n int, d time.Duration) (LeaseResult, error) {
	return q.lease(ctx, l.Route, n, d, followToken(l), l, reply, false)
}

// lease is Lease with a given token; the same token leases nothing more.
// With ack set, the same script first acks that message of the route
// (see AckNext); with trial, it leases as LeaseTrial.
func (q *Queue) lease(ctx context.Context, route string, n int, d time.Duration, token string, ack *Lease, reply string, trial bool) (LeaseResult, error) {
	if n <= 0 {
		n = 1
	}
	now := q.opts.Now()
	rk := keysFor(route)
	until := now.Add(d)
	keys := []string{rk.due, rk.leased, rk.dead, rk.live, rk.hold, rk.held, rk.seq, rk.leaseSet(token)}
	args := []any{now.UnixMilli(), until.UnixMilli(), n, token, msgKeyPrefix(rk.tag), q.opts.HeldGrace.Milliseconds(),
		q.opts.HeldRecheck.Milliseconds(), route}
	single := !q.cluster()
	if single {
		// The script clears the dirty mark and sets the index entry.
		keys = append(keys, dueDirtyKey, dueIndexKey, dueSeqKey, changesKey)
	} else if err := q.rdb.SRem(ctx, dueDirtyKey, route).Err(); err != nil {
		// Clear the route's dirty mark before looking: a change stored
		// after this look marks it again.
		return LeaseResult{}, fmt.Errorf("lease %s: %w", route, err)
	}
	// Forgotten before looking, as the dirty mark: a change that cannot
	// be marked after this look keeps the route again.
	script := leaseScript
	if trial {
		args = append(args, "1")
	}
	if ack != nil {
		script = ackLeaseScript
		keys = append(keys, msgKey(ack.ID))
		args = append(args, ack.ID, ack.token, reply, q.opts.DeliveredRetention.Milliseconds())
	}
	q.mu.Lock()
	wasUnmarked := q.unmarked[route]
	delete(q.unmarked, route)
	orphans := q.orphans[route]
	delete(q.orphans, route)
	q.mu.Unlock()
	if len(orphans) > 0 {
		if err := q.releaseOrphans(ctx, route, orphans, now); err != nil {
			return LeaseResult{}, fmt.Errorf("lease %s: %w", route, err)
		}
	}
	res, err := script.Run(ctx, q.rdb, keys, args...).Slice()
	if err == nil && len(res) == 1 {
		// The ack found its lease lost, and nothing was looked at.
		if !single {
			q.markOrKeep(context.WithoutCancel(ctx), route) // the dirty mark cleared above
		}
		err = ErrLeaseLost
	}
	if err != nil {
		q.mu.Lock()
		if wasUnmarked {
			q.unmarked[route] = true
		}
		if ack == nil {
			// The lease may have run all the same: its messages are
			// handed back at the route's next Lease, which DueRoutes
			// asks for.
			q.orphans[route] = append(q.orphans[route], token)
			q.unmarked[route] = true
		}
		q.mu.Unlock()
		if ack != nil {
			return LeaseResult{}, fmt.Errorf("ack %s and lease %s: %w", ack.ID, route, err)
		}
		return LeaseResult{}, fmt.Errorf("lease %s: %w", route, err)
	}
	if ack != nil {
		ack.Attempts++
		ack.LastError = reply
		ack.State = Delivered
	}
	next, seq, at := res[0].(int64), res[2].(int64), res[4].(int64)
	if !single {
		// The messages are leased now and belong to the caller, whatever
		// follows: dropping them would leave them sent by nobody until
		// the lease ran out. So a cancelled ctx (a shutdown) does not
		// stop the index update, and a failed one marks the route dirty
		// for the next pass instead of failing the Lease.
		ictx := context.WithoutCancel(ctx)
		if err := q.index(ictx, route, seq, at); err != nil {
			q.markOrKeep(ictx, route) // Redis has just refused the update
		}
	}
	var out LeaseResult
	switch {
	case next == -2:
		out.Held = true
	case next >= 0:
		out.NextDue = fromMillis(next)
	}
	for _, raw := range res[1].([]any) {
		f := raw.([]any)
		s := func(i int) string { v, _ := f[i].(string); return v }
		m := &Message{
			ID:        s(0),
			Route:     s(1),
			App:       s(2),
			From:      s(3),
			To:        splitRcpts(s(4)),
			Body:      []byte(s(5)),
			Submitted: fromMillis(atoi(s(6))),
			Expires:   fromMillis(atoi(s(7))),
			Attempts:  int(atoi(s(8))),
			LastError: s(9),
			State:     Leased,
			Updated:   now.UTC(),
			LeaseEnd:  until.UTC(),
		}
		if len(f) > 10 && s(10) != "" {
			// The token's lease returned again ends when its first run
			// set, not a lease length after this call.
			m.LeaseEnd = fromMillis(atoi(s(10)))
		}
		m.Size = len(m.Body)
		out.Leases = append(out.Leases, &Lease{Message: m, token: token})
	}
	return out, nil
}

// Extend moves the lease's deadline to now+d.
func (q *Queue) Extend(ctx context.Context, l *Lease, d time.Duration) error {
	now := q.opts.Now()
	rk := keysFor(l.Route)
	until := now.Add(d)
	ok, err := extendScript.Run(ctx, q.rdb, []string{msgKey(l.ID), rk.leased},
		l.ID, l.token, until.UnixMilli(), now.UnixMilli()).Int()
	if err != nil {
		return fmt.Errorf("extend lease of %s: %w", l.ID, err)
	}
	if ok == 0 {
		return fmt.Errorf("extend lease of %s: %w", l.ID, ErrLeaseLost)
	}
	l.LeaseEnd = until.UTC()
	return nil
}

// Ack marks a leased message delivered, with the upstream's reply. Its
// body is dropped; its record is kept for Options.DeliveredRetention.
func (q *Queue) Ack(ctx context.Context, l *Lease, reply string) error {
	_, err := q.settle(ctx, l, "ack", reply, 1, time.Time{})
	return err
}

// Retry returns a leased message to the queue after a failed attempt. The
// attempt is spent and the message is due again after the backoff for its
// attempt count (see Backoff). A message past its lifetime is dead-lettered
// instead; the returned state says which happened.
func (q *Queue) Retry(ctx context.Context, l *Lease, lastErr string) (State, error) {
	due := q.opts.Now().Add(q.Backoff(l.Attempts + 1))
	return q.settle(ctx, l, "retry", lastErr, 1, due)
}

// Defer returns a leased message to the queue, due after delay, without
// spending an attempt: for throttling and for failures that are not the
// message's fault, such as rejected credentials.
func (q *Queue) Defer(ctx context.Context, l *Lease, delay time.Duration, reason string) (State, error) {
	return q.settle(ctx, l, "retry", reason, 0, q.opts.Now().Add(delay))
}

// Fail dead-letters a leased message at once, spending the attempt.
func (q *Queue) Fail(ctx context.Context, l *Lease, reason string) error {
	_, err := q.settle(ctx, l, "dead", reason, 1, time.Time{})
	return err
}

func (q *Queue) settle(ctx context.Context, l *Lease, outcome, reply string, spend int, due time.Time) (State, error) {
	now := q.opts.Now()
	rk := keysFor(l.Route)
	keys := []string{msgKey(l.ID), rk.due, rk.leased, rk.dead, rk.live}
	single := !q.cluster()
	if single {
		keys = append(keys, dueDirtyKey, changesKey) // the script marks the route due and logs the change
	}
	ambiguous := ""
	if l.ambiguous {
		ambiguous = fAmbiguous
	}
	res, err := settleScript.Run(ctx, q.rdb, keys,
		l.ID, l.token, now.UnixMilli(), outcome, reply, spend, due.UnixMilli(),
		q.opts.DeliveredRetention.Milliseconds(), l.Route, ambiguous).Result()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", outcome, l.ID, err)
	}
	st, ok := res.(string)
	if !ok {
		return "", fmt.Errorf("%s %s: %w", outcome, l.ID, ErrLeaseLost)
	}
	l.Attempts += spend
	l.LastError = reply
	switch st {
	case stDelivered:
		l.State = Delivered
	case stDead:
		l.State = Dead
	default:
		l.State = Scheduled
		l.Due = due.UTC()
		// Due again, perhaps before the lease deadline the index holds.
		if !single {
			q.markOrKeep(ctx, l.Route)
		}
	}
	return l.State, nil
}

// Backoff is the delay before the attempt after the given number of spent
// attempts: BackoffBase doubled for each attempt after the first, capped at
// BackoffMax, then jittered down by up to a quarter so that messages that
// failed together do not retry together.
func (q *Queue) Backoff(attempts int) time.Duration {
	d := q.opts.BackoffBase
	for i := 1; i < attempts && d < q.opts.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, q.opts.BackoffMax)
	return d - time.Duration(rand.Int64N(int64(d)/4+1))
}

func splitRcpts(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func atoi(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}
