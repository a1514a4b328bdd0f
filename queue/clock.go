package queue

import (
	"context"
	"sync"
	"time"
)

// A store that a hung Redis runs after its submitter gave up (the client
// was told 451, nothing kept) must store nothing: otherwise a worker may
// lease and deliver it before its withdrawal runs, and the client's retry
// delivers it again. So Enqueue gives the script its context's deadline,
// in Redis's clock, and the script stores nothing past it. The offset of
// Redis's clock from this process's is measured with TIME at most once
// a clockEvery; Redis Cluster, whose nodes' clocks may differ, gets no
// deadline, and neither does a process that has not measured it yet.
// Withdraw remains for stores that ran in time and whose reply was lost.

// clockEvery is how often the offset of Redis's clock is measured again.
const clockEvery = time.Minute

// deadlineMargin is taken off a store's deadline: a store Redis runs
// that close to it is refused too, for the offset's error and the reply's
// way back.
const deadlineMargin = 100 * time.Millisecond

// redisClock is the offset of Redis's clock from this process's.
type redisClock struct {
	mu     sync.Mutex
	offset time.Duration
	at     time.Time // when it was measured; zero: not yet, or to be measured again
}

// storeDeadline returns the deadline of a store under ctx in Redis's
// clock (unix ms), or 0 for none.
func (q *Queue) storeDeadline(ctx context.Context) int64 {
	dl, ok := ctx.Deadline()
	if !ok || q.cluster() {
		return 0
	}
	off, ok := q.clockOffset(ctx)
	if !ok {
		return 0
	}
	return dl.Add(off).Add(-deadlineMargin).UnixMilli()
}

// clockOffset returns the offset of Redis's clock, measured again when it
// is older than clockEvery. Without a measurement it reports false.
func (q *Queue) clockOffset(ctx context.Context) (time.Duration, bool) {
	c := &q.clock
	c.mu.Lock()
	off, at := c.offset, c.at
	c.mu.Unlock()
	if !at.IsZero() && time.Since(at) < clockEvery {
		return off, true
	}
	before := time.Now()
	t, err := q.rdb.Time(ctx).Result()
	if err != nil {
		return 0, false
	}
	after := time.Now()
	off = t.Sub(before.Add(after.Sub(before) / 2))
	c.mu.Lock()
	c.offset, c.at = off, after
	c.mu.Unlock()
	return off, true
}

// clockSuspect makes the next store measure the offset again: Redis said
// a store came past its deadline while this process's clock says it did
// not (a failover to a server whose clock is off from the last one's).
func (q *Queue) clockSuspect() {
	q.clock.mu.Lock()
	q.clock.at = time.Time{}
	q.clock.mu.Unlock()
}
