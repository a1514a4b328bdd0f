package queue

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Summary is the queue's counts by group of routes (a credential, for
// the metrics), with the figures a scrape needs and nothing per route.
type Summary struct {
	// Groups counts each group's messages by state; Route is the group,
	// Oldest, HoldReason and ReadySince stay empty.
	Groups map[string]RouteStats
	// ReadySince is the earliest due time of a ready message, zero when
	// none is ready: as Stats' Total.ReadySince.
	ReadySince time.Time
	// OldestHeld is the submit time of the oldest message on a held
	// route, zero when none is held.
	OldestHeld time.Time
	// Routes are every route counted, in no order.
	Routes []string
	// ReadyRoutes are the routes with a ready message, each with the
	// earliest due time of its ready messages.
	ReadyRoutes map[string]time.Time
}

// SummaryRefresh is how often a Summarizer's owner should call Refresh:
// it bounds how long a change the change log missed (one made by a
// process of an older version, or lost with the log in a Redis restart)
// stays out of the counts. Summarize counts every route itself when no
// Refresh came for twice as long.
const SummaryRefresh = 5 * time.Minute

// Summarizer sums the queue by group of routes, for a scrape that comes
// back every few seconds. Its counts and times are exactly those Stats
// gives, summed by group.
//
// On a single Redis server it keeps each route's counts between calls
// and counts again only the routes that need it: those the change log
// names since the last call (every script that changes a route's
// messages logs the route), those whose next scheduled message has come
// due since, and new ones. A call then costs one round trip for the
// route set and the log, and one pipeline for the routes counted,
// however many routes there are. Refresh counts every route, off the
// scrape's path: its owner calls it at start and every SummaryRefresh. A
// call with no counts yet, or after the log was lost, counts every route
// itself. On Redis Cluster, where the log cannot be written in the
// script that changes a route, every call counts every route and Refresh
// does nothing.
//
// A Summarizer is safe for concurrent use; calls run one at a time.
type Summarizer struct {
	q     *Queue
	group func(route string) string

	// turn is held by one Summarize or Refresh at a time; a caller whose
	// context ends while another holds it gives up, as it would on Redis.
	turn   chan struct{}
	counts map[string]routeCount // by route, from the last call
	epoch  float64               // the change log's start ("@") at the last call
	seq    float64               // the newest change sequence seen
	full   time.Time             // when every route was last counted
}

// routeCount is one route's counts, as the summary scripts return them.
type routeCount struct {
	group                                        string
	ready, scheduled, leased, held, dead, moving int64
	// since is the earliest due time of a ready message, oldestHeld the
	// oldest submit time if held, and until when the next scheduled
	// message comes due (unix ms, -1 for none).
	since, oldestHeld, until int64
}

// LogStart returns when the change log was started (unix ms), or 0 when
// there is none, and always on Redis Cluster, which keeps no log. It
// stays as long as Redis keeps what it holds: a caller that sees it
// change, or go, while it follows the queue knows Redis lost its data
// (restarted without its files, or a replica that lacked them took
// over), and that the messages it no longer finds were lost, not
// delivered.
func (q *Queue) LogStart(ctx context.Context) (float64, error) {
	if q.cluster() {
		return 0, nil
	}
	v, err := q.rdb.ZScore(ctx, changesKey, "@").Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read the change log: %w", err)
	}
	return v, nil
}

// NewSummarizer returns a Summarizer that groups routes with group.
func (q *Queue) NewSummarizer(group func(route string) string) *Summarizer {
	return &Summarizer{q: q, group: group, turn: make(chan struct{}, 1)}
}

// take waits for the turn, or for ctx to end.
func (s *Summarizer) take(ctx context.Context) error {
	select {
	case s.turn <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("summarize: waiting for another count: %w", context.Cause(ctx))
	}
}

func (s *Summarizer) give() { <-s.turn }

// Summarize counts the queue by group; see Summarizer.
func (s *Summarizer) Summarize(ctx context.Context) (Summary, error) {
	if err := s.take(ctx); err != nil {
		return Summary{}, err
	}
	defer s.give()
	q := s.q
	now := q.opts.Now()
	single := !q.cluster()
	full := !single || s.counts == nil || now.Sub(s.full) >= 2*SummaryRefresh
	pipe := q.rdb.Pipeline()
	members := pipe.SMembers(ctx, routesKey) // unsorted: the counts do not depend on the order
	var marks *redis.FloatSliceCmd
	var changes *redis.ZSliceCmd
	if single {
		// The log's start and newest sequence first: a change logged
		// after them is read again next time.
		marks = pipe.ZMScore(ctx, changesKey, "@", "#")
		if !full {
			changes = pipe.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{Key: changesKey, ByScore: true,
				Start: "(" + strconv.FormatFloat(s.seq, 'f', -1, 64), Stop: "+inf"})
		}
	}
	// Errors are read per command below.
	_, _ = pipe.Exec(ctx)
	routes, err := members.Result()
	if err != nil {
		return Summary{}, fmt.Errorf("summarize: list routes: %w", err)
	}
	recount := map[string]bool{}
	var seq float64
	if single {
		m, err := marks.Result()
		if err != nil || len(m) != 2 {
			return Summary{}, fmt.Errorf("summarize: read change log: %w", err)
		}
		// A missing member reads as 0.
		epoch := m[0]
		seq = m[1]
		// The log was started again since the last call, or lost.
		if epoch != s.epoch || seq < s.seq {
			full = true
		}
		s.epoch = epoch
		if changes != nil && !full {
			log, err := changes.Result()
			if err != nil {
				return Summary{}, fmt.Errorf("summarize: read change log: %w", err)
			}
			for _, z := range log {
				if r := z.Member.(string); r != "#" && r != "@" {
					recount[r] = true
				}
			}
		}
	}
	var todo []string
	if full {
		todo = routes
		s.counts = make(map[string]routeCount, len(routes))
	} else {
		present := make(map[string]bool, len(routes))
		nowMs := now.UnixMilli()
		for _, r := range routes {
			present[r] = true
			c, ok := s.counts[r]
			if !ok || recount[r] || (c.until >= 0 && c.until <= nowMs) {
				todo = append(todo, r)
			}
		}
		for r := range s.counts {
			if !present[r] {
				delete(s.counts, r)
			}
		}
	}
	if err := s.count(ctx, s.counts, todo, now.UnixMilli(), q.routeBatch()); err != nil {
		// Counts half-updated: the next call counts every route.
		s.counts = nil
		return Summary{}, fmt.Errorf("summarize: %w", err)
	}
	if full {
		s.full = now
	}
	s.seq = seq
	return s.sum(routes), nil
}

// Refresh counts every route again, without holding up Summarize
// meanwhile; see Summarizer. A change made while it counts is counted
// again by the next Summarize.
func (s *Summarizer) Refresh(ctx context.Context) error {
	q := s.q
	if q.cluster() {
		return nil
	}
	now := q.opts.Now()
	pipe := q.rdb.Pipeline()
	// The log's marks before the routes are counted.
	marks := pipe.ZMScore(ctx, changesKey, "@", "#")
	members := pipe.SMembers(ctx, routesKey)
	_, _ = pipe.Exec(ctx)
	m, err := marks.Result()
	if err != nil || len(m) != 2 {
		return fmt.Errorf("summarize: read change log: %w", err)
	}
	routes, err := members.Result()
	if err != nil {
		return fmt.Errorf("summarize: list routes: %w", err)
	}
	counts := make(map[string]routeCount, len(routes))
	if err := s.count(ctx, counts, routes, now.UnixMilli(), q.routeBatch()); err != nil {
		return fmt.Errorf("summarize: %w", err)
	}
	if err := s.take(ctx); err != nil {
		return err
	}
	defer s.give()
	s.counts, s.epoch, s.seq, s.full = counts, m[0], m[1], now
	return nil
}

// count runs the summary script over the routes and stores their counts
// in counts.
func (s *Summarizer) count(ctx context.Context, counts map[string]routeCount, routes []string, now int64, batch int) error {
	runs, err := s.q.routePipeline(ctx, routes, batch, summaryScript, summaryBatchScript,
		[]any{now}, nil, false)
	if err != nil {
		return err
	}
	i := 0
	for _, run := range runs {
		v, ok := run.(string)
		if !ok || len(v)%summaryBytes != 0 {
			return fmt.Errorf("a summary script returned %T of %d bytes", run, len(v))
		}
		for ; len(v) > 0; v = v[summaryBytes:] {
			if i >= len(routes) {
				return fmt.Errorf("more counts than the %d routes", len(routes))
			}
			num := func(k int) int64 {
				var b uint64
				for j := 7; j >= 0; j-- {
					b = b<<8 | uint64(v[8*k+j])
				}
				return int64(math.Float64frombits(b))
			}
			r := routes[i]
			g := counts[r].group
			if g == "" {
				g = s.group(r)
			}
			counts[r] = routeCount{group: g, ready: num(0), scheduled: num(1), leased: num(2),
				held: num(3), dead: num(4), since: num(5), oldestHeld: num(6), until: num(7), moving: num(8)}
			i++
		}
	}
	if i != len(routes) {
		return fmt.Errorf("counts for %d of %d routes", i, len(routes))
	}
	return nil
}

// sum adds up the stored counts by group.
func (s *Summarizer) sum(routes []string) Summary {
	sum := Summary{Groups: map[string]RouteStats{}, Routes: routes, ReadyRoutes: map[string]time.Time{}}
	earliest := func(t *time.Time, ms int64) {
		if ms >= 0 && (t.IsZero() || fromMillis(ms).Before(*t)) {
			*t = fromMillis(ms)
		}
	}
	for route, c := range s.counts {
		earliest(&sum.ReadySince, c.since)
		if c.since >= 0 {
			sum.ReadyRoutes[route] = fromMillis(c.since)
		}
		earliest(&sum.OldestHeld, c.oldestHeld)
		t := sum.Groups[c.group]
		t.Route = c.group
		t.Ready += c.ready
		t.Scheduled += c.scheduled
		t.Leased += c.leased
		t.Held += c.held
		t.Dead += c.dead
		t.Moving += c.moving
		sum.Groups[c.group] = t
	}
	return sum
}

// logChange records in the change log that the route's counts changed,
// for a change made outside the scripts that log their own (holds,
// releases, the operator's commands). Redis Cluster keeps no log. It is
// best effort: the change itself is made, and a record the log missed is
// counted again by the Summarizer's next full count.
func (q *Queue) logChange(ctx context.Context, route string) {
	if q.cluster() {
		return
	}
	_ = changeScript.Run(ctx, q.rdb, []string{changesKey}, q.opts.Now().UnixMilli(), route).Err()
}

// summaryBytes is how many bytes the summary scripts return per route:
// nine numbers, each a little-endian float64 (Lua's numbers; a count or
// a time in unix ms is exact in one).
const summaryBytes = 9 * 8

// routeSummary is the Lua function both summary scripts share: it appends
// nine numbers for one route to out, packed as summaryBytes bytes: ready, scheduled, leased, held and
// dead counts, the earliest due time of a ready message, the oldest
// submit time if the route is held with messages, when its next
// scheduled message comes due (times in unix ms, -1 for none), and the
// count of its moving set (a move not finished). A full count runs it for
// every route, so it spends as few calls as it can. One EXISTS of the
// due, dead, hold, leased and moving keys tells an empty route (one
// call). When it counts one key and that is the due set, the
// route's only keys are its due and live sets, and its due counts (see
// dueCounts) are all it needs: two calls for the common route, a few
// more when more than one of its messages is due. A held route whose
// only other key is its due set needs its oldest message and its due
// count. Any other route takes the full count, as routeStat does. live
// may be nil: the key is then built from the route's key prefix p, only
// when it is needed.
var routeSummary = movingCount + dueCounts + `
local function summ(due, leased, dead, live, hold, moving, p, now, out)
  local n = #out
  local ready, scheduled, nleased, held, ndead, since, oldest, untl, nmoving = 0, 0, 0, 0, 0, -1, -1, -1, 0
  local keys = redis.call('EXISTS', due, dead, hold, leased, moving)
  if keys == 1 then
    ready, scheduled, since, untl = dueCounts(due, now)
  end
  if keys > 1 or (keys == 1 and ready + scheduled == 0) then
    local first = redis.call('ZRANGE', live or ` + luaRouteKey("p", kindLive) + `, 0, 0, 'WITHSCORES')
    local short = false
    if first[2] then
      if redis.call('EXISTS', hold) == 1 then
        held = redis.call('ZCARD', due)
        if held > 0 then oldest = tonumber(first[2]) end
        -- The hold and the due set are its only keys: nothing leased,
        -- dead or moving.
        short = held > 0 and keys == 2
      else
        ready, scheduled, since, untl = dueCounts(due, now)
      end
      if not short then nleased = redis.call('ZCARD', leased) end
    end
    if not short then
      ndead = redis.call('ZCARD', dead)
      nmoving = movingCount(moving)
    end
  end
  out[n+1] = struct.pack('<ddddddddd', ready, scheduled, nleased, held, ndead, since, oldest, untl, nmoving)
end
`

// summaryScript counts one route (see routeSummary).
//
// KEYS[1] due, KEYS[2] leased, KEYS[3] dead, KEYS[4] live, KEYS[5] hold,
// KEYS[6] moving. ARGV[1] now.
var summaryScript = redis.NewScript(routeSummary + `
local out = {}
summ(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], nil, tonumber(ARGV[1]), out)
return out[1]
`)

// summaryBatchScript counts many routes on a single Redis server (never
// Redis Cluster; see statsBatchScript).
//
// ARGV[1] now, then each route's key prefix.
var summaryBatchScript = redis.NewScript(routeSummary + `
local now = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV do
  local p = ARGV[i]
  summ(` + luaRouteKey("p", kindDue) + `, ` + luaRouteKey("p", kindLeased) + `, ` + luaRouteKey("p", kindDead) + `,
    nil, ` + luaRouteKey("p", kindHold) + `, ` + luaRouteKey("p", kindMoving) + `, p, now, out)
end
return table.concat(out)
`)
