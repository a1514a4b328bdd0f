package queue

import (
	"context"
	"fmt"
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
}

// Summarize counts the messages of every route by the group each belongs
// to, in one pipelined round trip (one per cluster node on Redis
// Cluster) after the one that lists the routes. Its counts and times are
// exactly those Stats gives, summed by group, but it costs Redis less: a
// route with waiting mail and nothing leased, dead or held costs two to
// four calls, and only counts come back, not eight values per route.
func (q *Queue) Summarize(ctx context.Context, group func(route string) string) (Summary, error) {
	// Unsorted: the counts do not depend on the order.
	routes, err := q.rdb.SMembers(ctx, routesKey).Result()
	if err != nil {
		return Summary{}, fmt.Errorf("summarize: list routes: %w", err)
	}
	return q.summarize(ctx, routes, group, q.routeBatch())
}

func (q *Queue) summarize(ctx context.Context, routes []string, group func(route string) string, batch int) (Summary, error) {
	idx := map[string]int{}
	var names []string
	of := make([]any, len(routes))
	for i, r := range routes {
		g := group(r)
		n, ok := idx[g]
		if !ok {
			n = len(names) + 1
			idx[g] = n
			names = append(names, g)
		}
		of[i] = n
	}
	sum := Summary{Groups: make(map[string]RouteStats, len(names)), Routes: routes}
	runs, err := q.routePipeline(ctx, routes, batch, summaryScript, summaryBatchScript,
		[]any{q.opts.Now().UnixMilli(), len(names)}, func(i int) []any { return of[i : i+1] }, false)
	if err != nil {
		return Summary{}, fmt.Errorf("summarize: %w", err)
	}
	earliest := func(t *time.Time, ms int64) {
		if ms >= 0 && (t.IsZero() || fromMillis(ms).Before(*t)) {
			*t = fromMillis(ms)
		}
	}
	for _, v := range runs {
		if len(v) != 2+summaryFields*len(names) {
			return Summary{}, fmt.Errorf("summarize: %d values for %d groups", len(v), len(names))
		}
		num := func(j int) int64 { n, _ := v[j].(int64); return n }
		earliest(&sum.ReadySince, num(0))
		earliest(&sum.OldestHeld, num(1))
		for g, name := range names {
			b := 2 + g*summaryFields
			t := sum.Groups[name]
			t.Route = name
			t.Ready += num(b)
			t.Scheduled += num(b + 1)
			t.Leased += num(b + 2)
			t.Held += num(b + 3)
			t.Dead += num(b + 4)
			sum.Groups[name] = t
		}
	}
	return sum, nil
}

// summaryFields is how many counts the summary scripts return per group.
const summaryFields = 5

// routeSummary is the Lua function both summary scripts share: it adds
// one route's counts to its group's in out, whose first two values are
// the earliest due time of a ready message and the oldest submit time on
// a held route (-1 for none), then five counts per group: ready,
// scheduled, leased, held, dead. A scrape runs it for every route, so
// it spends as few calls as it can. One EXISTS of the due, dead, hold and
// leased keys tells an empty route (one call). When it counts one key
// and that is the due set, the route's only keys are its due and live
// sets, and its due counts (see dueCounts) are all it needs: two calls
// for the common route, a few more when more than one of its messages is
// due. A held route whose only other key is its due set needs its
// oldest message and its due count. Any other route takes the full
// count, as routeStat does. live may be nil: the key is then built from
// the route's key prefix p, only when it is needed.
const routeSummary = dueCounts + `
local function add(out, g, ready, scheduled, nleased, held, ndead, since)
  if since >= 0 and (out[1] < 0 or since < out[1]) then out[1] = since end
  local b = 2 + (g - 1) * 5
  out[b+1], out[b+2], out[b+3] = out[b+1] + ready, out[b+2] + scheduled, out[b+3] + nleased
  out[b+4], out[b+5] = out[b+4] + held, out[b+5] + ndead
end

local function summ(due, leased, dead, live, hold, p, g, now, out)
  local keys = redis.call('EXISTS', due, dead, hold, leased)
  if keys == 0 then return end
  local ready, scheduled, since = 0, 0, -1
  if keys == 1 then
    ready, scheduled, since = dueCounts(due, now)
    if ready + scheduled > 0 then
      add(out, g, ready, scheduled, 0, 0, 0, since)
      return
    end
  end
  local nleased, held, ndead = 0, 0, 0
  local first = redis.call('ZRANGE', live or (p .. 'live'), 0, 0, 'WITHSCORES')
  if first[2] then
    if redis.call('EXISTS', hold) == 1 then
      held = redis.call('ZCARD', due)
      local oldest = tonumber(first[2])
      if held > 0 and (out[2] < 0 or oldest < out[2]) then out[2] = oldest end
      if held > 0 and keys == 2 then
        -- The hold and the due set are its only keys: nothing leased or dead.
        add(out, g, 0, 0, 0, held, 0, -1)
        return
      end
    else
      ready, scheduled, since = dueCounts(due, now)
    end
    nleased = redis.call('ZCARD', leased)
  end
  ndead = redis.call('ZCARD', dead)
  add(out, g, ready, scheduled, nleased, held, ndead, since)
end

local function zeros(groups)
  local out = {-1, -1}
  for i = 3, 2 + 5 * groups do out[i] = 0 end
  return out
end
`

// summaryScript adds up one route's counts (see routeSummary).
//
// KEYS[1] due, KEYS[2] leased, KEYS[3] dead, KEYS[4] live, KEYS[5] hold.
// ARGV[1] now, ARGV[2] the number of groups, ARGV[3] the route's group
// (from 1).
var summaryScript = redis.NewScript(routeSummary + `
local out = zeros(tonumber(ARGV[2]))
summ(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], nil, tonumber(ARGV[3]), tonumber(ARGV[1]), out)
return out
`)

// summaryBatchScript adds up the counts of many routes on a single Redis
// server (never Redis Cluster; see statsBatchScript).
//
// ARGV[1] now, ARGV[2] the number of groups, then for each route its key
// prefix and its group (from 1).
var summaryBatchScript = redis.NewScript(routeSummary + `
local now = tonumber(ARGV[1])
local out = zeros(tonumber(ARGV[2]))
for i = 3, #ARGV, 2 do
  local p = ARGV[i]
  summ(p .. 'due', p .. 'leased', p .. 'dead', nil, p .. 'hold', p, tonumber(ARGV[i+1]), now, out)
end
return out
`)
