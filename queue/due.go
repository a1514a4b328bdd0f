package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// The due-route index tells the dispatcher which routes need a lease now,
// so that a pass costs one Lease per route with due mail rather than one
// per route. A route's index entry is the time it next needs a lease: its
// earliest due message or, sooner, its earliest lease deadline (an
// expired lease is reclaimed by a Lease). A held route is not due; its
// entry is HeldRecheck away, when a Lease dead-letters its messages past
// their lifetime. A route with nothing queued or leased has no entry.
//
// Each Lease sets its route's entry from what it found, in the same order
// as the leases ran (a per-route sequence fences a late update). Every
// other change that can make mail due sooner (a new message, a message
// handed back, a released hold, a requeue or flush) marks the route dirty
// after it is stored; the dispatcher leases dirty routes as if due, and
// Lease clears the mark before it looks. Redis Cluster keeps the index on
// one slot ({due}) and the routes on theirs, so the two cannot change in
// one script: a process that stops between the two steps is covered by
// SweepDue, which marks dirty every route with mail but no entry.

// markDue marks routes dirty: the dispatcher looks at them on its next
// pass. It works with Redis full too (see drainScript): a route marked
// after a release, a flush or a requeue is one whose mail can drain.
func (q *Queue) markDue(ctx context.Context, routes ...string) error {
	if len(routes) == 0 {
		return nil
	}
	if err := q.add(ctx, dueDirtyKey, "", routes...); err != nil {
		return fmt.Errorf("mark routes due: %w", err)
	}
	return nil
}

// markOrKeep marks a route due, or, when Redis cannot be written (the
// index's slot away in a Redis Cluster failover), keeps it for
// DueRoutes.
func (q *Queue) markOrKeep(ctx context.Context, route string) {
	if err := q.markDue(ctx, route); err != nil {
		q.mu.Lock()
		q.unmarked[route] = true
		q.mu.Unlock()
	}
}

// indexLua is setIndex, which sets a route's index entry unless a later
// lease already did: index and seqs are the index and sequences keys, seq
// the lease's sequence, at when the route next needs a lease (unix ms;
// negative: never, the entry is removed). It returns 1 when the entry was
// set, 0 when a later lease's stands. indexScript runs it after a Lease
// on Redis Cluster; on a single server the lease script runs it itself.
const indexLua = `
local function setIndex(index, seqs, route, seq, at)
  local last = tonumber(redis.call('HGET', seqs, route) or '0')
  if seq <= last then return 0 end
  redis.call('HSET', seqs, route, seq)
  if at < 0 then
    redis.call('ZREM', index, route)
  else
    redis.call('ZADD', index, at, route)
  end
  return 1
end
`

// indexScript runs setIndex (see indexLua).
//
// KEYS[1] index, KEYS[2] sequences. ARGV[1] route, ARGV[2] the lease's
// sequence, ARGV[3] when the route next needs a lease.
var indexScript = drainScript(indexLua + `
return setIndex(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
`)

// dueScript reads the routes due by now: the dirty ones, then the
// index's, and the index's earliest entry after now.
//
// KEYS[1] index, KEYS[2] dirty. ARGV[1] now, ARGV[2] most routes of each
// kind.
//
// Returns {dirty routes, due routes, next entry after now or -1}.
var dueScript = redis.NewScript(`
local dirty = redis.call('SRANDMEMBER', KEYS[2], tonumber(ARGV[2]))
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local nxt = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local at = -1
if nxt[2] then at = tonumber(nxt[2]) end
return {dirty, due, at}
`)

// DueRoutes returns up to max routes that need a lease now (each once),
// and when the earliest other route will (zero when none is indexed).
// Reading does not change the index: a route stays due until a Lease on
// it.
func (q *Queue) DueRoutes(ctx context.Context, max int) ([]string, time.Time, error) {
	now := q.opts.Now()
	res, err := dueScript.Run(ctx, q.rdb, []string{dueIndexKey, dueDirtyKey}, now.UnixMilli(), max).Slice()
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("due routes: %w", err)
	}
	seen := map[string]bool{}
	var out []string
	for _, list := range res[:2] {
		for _, r := range list.([]any) {
			s, _ := r.(string)
			if s != "" && !seen[s] && len(out) < max {
				seen[s] = true
				out = append(out, s)
			}
		}
	}
	// Routes this process could not mark.
	q.mu.Lock()
	for r := range q.unmarked {
		if !seen[r] && len(out) < max {
			seen[r] = true
			out = append(out, r)
		}
	}
	q.mu.Unlock()
	var next time.Time
	if at := res[2].(int64); at >= 0 {
		next = fromMillis(at)
	}
	return out, next, nil
}

// index records what a Lease found on its route.
func (q *Queue) index(ctx context.Context, route string, seq int64, at int64) error {
	err := indexScript.Run(ctx, q.rdb, []string{dueIndexKey, dueSeqKey}, route, seq, at).Err()
	if err != nil {
		return fmt.Errorf("index route %s: %w", route, err)
	}
	return nil
}

// sweepBatch is how many routes SweepDue checks per round trip.
const sweepBatch = 500

// SweepDue marks dirty every route that has queued or leased mail, or a
// hold, but no index entry, and every route not held whose entry is later
// than its earliest due message, and returns how many it marked. It
// repairs the index after a process stopped between storing a change and
// marking its route; the dispatcher runs it at start and then rarely. A
// route marked dirty already is left alone: the dispatcher looks at it
// on its next pass, and one it leaves alone (its mailbox waits) keeps its
// mark, with an entry that may well be later than its new mail.
func (q *Queue) SweepDue(ctx context.Context) (int, error) {
	routes, err := q.Routes(ctx)
	if err != nil {
		return 0, err
	}
	var lost []string
	for len(routes) > 0 {
		batch := routes[:min(sweepBatch, len(routes))]
		routes = routes[len(batch):]
		pipe := q.rdb.Pipeline()
		// A route needs an entry while it has queued or leased mail, or
		// a hold (an empty set does not exist).
		needs := make([]*redis.IntCmd, len(batch))
		held := make([]*redis.IntCmd, len(batch))
		heads := make([]*redis.ZSliceCmd, len(batch))
		scores := make([]*redis.FloatCmd, len(batch))
		marked := make([]*redis.BoolCmd, len(batch))
		for i, r := range batch {
			rk := keysFor(r)
			needs[i] = pipe.Exists(ctx, rk.due, rk.leased, rk.hold)
			held[i] = pipe.Exists(ctx, rk.hold)
			heads[i] = pipe.ZRangeWithScores(ctx, rk.due, 0, 0)
			scores[i] = pipe.ZScore(ctx, dueIndexKey, r)
			marked[i] = pipe.SIsMember(ctx, dueDirtyKey, r)
		}
		_, _ = pipe.Exec(ctx) // each command's error is read below
		for i, r := range batch {
			for _, c := range []redis.Cmder{needs[i], held[i], heads[i], marked[i]} {
				if err := c.Err(); err != nil {
					return 0, fmt.Errorf("sweep due index: %w", err)
				}
			}
			score, err := scores[i].Result()
			switch {
			case marked[i].Val():
			case err == nil:
				// An entry later than the route's earliest due message
				// (not held) is one a lost mark left behind.
				if h := heads[i].Val(); held[i].Val() == 0 && len(h) == 1 && h[0].Score < score {
					lost = append(lost, r)
				}
			case !errors.Is(err, redis.Nil):
				return 0, fmt.Errorf("sweep due index: %w", err)
			case needs[i].Val() > 0:
				lost = append(lost, r)
			}
		}
	}
	return len(lost), q.markDue(ctx, lost...)
}
