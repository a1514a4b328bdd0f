package queue

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"holdfast/queue/redistest"
)

// fullStat counts one route the long way, one call per figure, whatever
// keys the route has: the reference the stats scripts' shortcuts must
// agree with.
var fullStat = redis.NewScript(`
local due, leased, dead, live, hold, moving, now = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], tonumber(ARGV[1])
local ready, scheduled, held, since = 0, 0, 0, -1
local reason = redis.call('GET', hold)
local first = redis.call('ZRANGE', live, 0, 0, 'WITHSCORES')
local oldest = -1
if first[2] then oldest = tonumber(first[2]) end
local total = redis.call('ZCARD', due)
if reason then
  held = total
else
  ready = redis.call('ZCOUNT', due, '-inf', now)
  scheduled = total - ready
  local r = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1)
  if r[2] then since = tonumber(r[2]) end
end
return {ready, scheduled, redis.call('ZCARD', leased), held, redis.call('ZCARD', dead), oldest, reason, since,
  redis.call('SCARD', moving)}
`)

// TestStatsShortcutsAgree: for routes of every shape (empty, one ready or
// scheduled message, several due at once or later, leased, held, dead,
// taken out by a move not finished, and mixes of those) both stats scripts give exactly the figures of the
// full count, oldest and earliest-ready times included, and Summarize
// gives exactly Stats' figures summed by group, those of a move not
// finished included, on a single server and
// one route per run as on Redis Cluster.
func TestStatsShortcutsAgree(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	clock := time.Now().Truncate(time.Millisecond)
	q := New(rdb, Options{Now: func() time.Time { return clock }})
	now := clock.UnixMilli()
	// Each shape lists the due offsets (ms from now) of its queued
	// messages, then how many more to lease, to dead-letter, to take out
	// for a move, and whether to hold the route.
	type shape struct {
		due                 []int64
		lease, dead, moving int
		hold, settle        bool
	}
	shapes := []shape{
		{},
		{settle: true},
		{due: []int64{-5000}},
		{due: []int64{0}},
		{due: []int64{60_000}},
		{due: []int64{-2000, -1000}},
		{due: []int64{-1000, 0}},
		{due: []int64{-2000, 60_000}},
		{due: []int64{60_000, 90_000}},
		{due: []int64{-3000, -2000, -1000, 60_000, 70_000}},
		{due: []int64{-1000}, lease: 1},
		{lease: 2},
		{due: []int64{-1000}, dead: 1},
		{dead: 2},
		{due: []int64{-1000, 60_000}, hold: true},
		{hold: true},
		{dead: 1, hold: true},
		{lease: 1, hold: true},
		{due: []int64{-1000}, dead: 1, hold: true},
		{due: []int64{-1000}, lease: 1, dead: 1, hold: true},
		{moving: 1},
		{due: []int64{-1000, 60_000}, moving: 2},
		{dead: 1, moving: 1, hold: true},
	}
	var routes []string
	for i, sh := range shapes {
		route := fmt.Sprintf("shape%02d", i)
		routes = append(routes, route)
		rk := keysFor(route)
		if sh.settle {
			submitTo(t, q, route)
			l, err := q.Lease(ctx, route, 1, time.Minute)
			if err != nil || len(l.Leases) != 1 {
				t.Fatalf("lease: %v", err)
			}
			if err := q.Ack(ctx, l.Leases[0], "250 OK"); err != nil {
				t.Fatal(err)
			}
		}
		for range sh.lease + sh.dead {
			submitTo(t, q, route)
		}
		if n := sh.lease + sh.dead; n > 0 {
			l, err := q.Lease(ctx, route, n, time.Minute)
			if err != nil || len(l.Leases) != n {
				t.Fatalf("lease %d: %v", n, err)
			}
			for _, ls := range l.Leases[:sh.dead] {
				if err := q.Fail(ctx, ls, "550 no such user"); err != nil {
					t.Fatal(err)
				}
			}
		}
		for j, off := range sh.due {
			id := submitTo(t, q, route)
			// Submit times differ from the order of the due times, so
			// the oldest message is not the first due.
			if err := rdb.ZAddXX(ctx, rk.live, redis.Z{Score: float64(now - int64(10_000*(len(sh.due)-j))), Member: id}).Err(); err != nil {
				t.Fatal(err)
			}
			if err := rdb.ZAddXX(ctx, rk.due, redis.Z{Score: float64(now + off), Member: id}).Err(); err != nil {
				t.Fatal(err)
			}
		}
		for range sh.moving {
			id := submitTo(t, q, route)
			token, unlock, err := q.lockMoves(ctx, route)
			if err != nil {
				t.Fatal(err)
			}
			if err := moveOutScript.Run(ctx, rdb, []string{msgKey(id), rk.due, rk.live, rk.moving, rk.moveLock},
				id, now, route, idemBase(route), idemPrintBase(route), "app:other:"+route,
				token, q.moveLockTTL.Milliseconds()).Err(); err != nil {
				t.Fatal(err)
			}
			unlock()
		}
		if sh.hold {
			if err := q.HoldRoute(ctx, route, "breaker open"); err != nil {
				t.Fatal(err)
			}
		}
	}
	batch, err := q.statsPipeline(ctx, routes, statsBatch, now, false)
	if err != nil {
		t.Fatal(err)
	}
	single, err := q.statsPipeline(ctx, routes, 1, now, false)
	if err != nil {
		t.Fatal(err)
	}
	for i, route := range routes {
		rk := keysFor(route)
		want, err := fullStat.Run(ctx, rdb, []string{rk.due, rk.leased, rk.dead, rk.live, rk.hold, rk.moving}, now).Slice()
		if err != nil {
			t.Fatal(err)
		}
		for name, got := range map[string][]any{"batch": batch, "single": single} {
			if g := got[i*statsFields : (i+1)*statsFields]; !slices.Equal(g, want) {
				t.Errorf("%s %+v: %s script gives %v, want %v", route, shapes[i], name, g, want)
			}
		}
	}
	checkSummary(t, q)
}

func checkSummary(t *testing.T, q *Queue) {
	t.Helper()
	ctx := context.Background()
	st, err := q.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	group := func(r string) string { return fmt.Sprint("g", len(r)%3, r[len(r)-1]%2) }
	want := Summary{Groups: map[string]RouteStats{}, ReadyRoutes: map[string]time.Time{}}
	for _, rs := range st.Routes {
		want.Routes = append(want.Routes, rs.Route)
		if !rs.ReadySince.IsZero() {
			want.ReadyRoutes[rs.Route] = rs.ReadySince
		}
		g := group(rs.Route)
		w := want.Groups[g]
		w.Route = g
		w.Ready += rs.Ready
		w.Scheduled += rs.Scheduled
		w.Leased += rs.Leased
		w.Held += rs.Held
		w.Dead += rs.Dead
		w.Moving += rs.Moving
		want.Groups[g] = w
		if rs.Held > 0 && !rs.Oldest.IsZero() && (want.OldestHeld.IsZero() || rs.Oldest.Before(want.OldestHeld)) {
			want.OldestHeld = rs.Oldest
		}
	}
	want.ReadySince = st.Total.ReadySince
	for _, batch := range []int{statsBatch, 1, 3} {
		s := q.NewSummarizer(group)
		s.counts = map[string]routeCount{}
		if err := s.count(ctx, s.counts, want.Routes, q.opts.Now().UnixMilli(), batch); err != nil {
			t.Fatal(err)
		}
		got := s.sum(want.Routes)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("batch %d: summary %+v, want %+v", batch, got, want)
		}
	}
	got, err := q.NewSummarizer(group).Summarize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got.Routes)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Summarize: %+v, want %+v", got, want)
	}
}
