package queue

import (
	"context"
	"flag"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"holdfast/queue/redistest"
)

var heldMessages = flag.Int("held-messages", 1_000_000, "messages on the held route of BenchmarkReleaseHugeRoute")

// fillScript stores ARGV[3] bare messages of one route, live and due,
// numbered from ARGV[4]: enough for a release to credit.
//
// KEYS[1] due, KEYS[2] live. ARGV[1] message key prefix, ARGV[2] now.
var fillScript = redis.NewScript(`
local now = tonumber(ARGV[2])
for i = tonumber(ARGV[4]), tonumber(ARGV[4]) + tonumber(ARGV[3]) - 1 do
  local id = string.format('%08d', i)
  redis.call('HSET', ARGV[1] .. id, 'route', 'r', 'sub', now, 'exp', now + 86400000, 'st', 'queued')
  redis.call('ZADD', KEYS[1], now, id)
  redis.call('ZADD', KEYS[2], now, id)
end
return 0
`)

// BenchmarkReleaseHugeRoute releases one held route of -held-messages
// messages (default 1,000,000) and reports the slowest script as Redis
// timed it, the slowest and median step as the client saw it (round trip
// included), Redis's mean time per script, and the whole release. The
// target is no script over 50 ms on an unloaded machine.
func BenchmarkReleaseHugeRoute(b *testing.B) {
	ctx := context.Background()
	rdb := redistest.Start(b).Client(b)
	now := time.Date(2026, 2, 14, 11, 30, 0, 0, time.UTC)
	q := New(rdb, Options{Now: func() time.Time { return now }})
	rk := keysFor("huge")
	for i := 0; i < *heldMessages; i += 20000 {
		n := min(20000, *heldMessages-i)
		if err := fillScript.Run(ctx, rdb, []string{rk.due, rk.live}, msgKeyPrefix(rk.tag), now.UnixMilli(), n, i).Err(); err != nil {
			b.Fatal(err)
		}
	}
	// The server's own timing of each script, not the round trip: every
	// call over 1 ms goes to the slow log.
	if err := rdb.ConfigSet(ctx, "slowlog-log-slower-than", "1000").Err(); err != nil {
		b.Fatal(err)
	}
	if err := rdb.ConfigSet(ctx, "slowlog-max-len", "100000").Err(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	var worst, total, script time.Duration
	var steps []time.Duration
	for range b.N {
		b.StopTimer()
		if _, err := q.HoldRouteAt(ctx, "huge", "bench", nil); err != nil {
			b.Fatal(err)
		}
		now = now.Add(time.Minute)
		if err := rdb.SlowLogReset(ctx).Err(); err != nil {
			b.Fatal(err)
		}
		if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		credited, err := q.releaseSteps(ctx, "huge", nil, func(d time.Duration) {
			steps = append(steps, d)
			worst = max(worst, d)
		})
		total += time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		if credited != int64(*heldMessages) {
			b.Fatalf("credited %d of %d", credited, *heldMessages)
		}
		slow, err := rdb.SlowLogGet(ctx, -1).Result()
		if err != nil {
			b.Fatal(err)
		}
		for _, l := range slow {
			if len(l.Args) > 0 && (l.Args[0] == "evalsha" || l.Args[0] == "eval") {
				script = max(script, l.Duration)
			}
		}
	}
	slices.Sort(steps)
	b.ReportMetric(float64(script.Microseconds())/1000, "worst-script-ms")
	b.ReportMetric(float64(worst.Microseconds())/1000, "worst-step-ms")
	b.ReportMetric(float64(steps[len(steps)/2].Microseconds())/1000, "median-step-ms")
	b.ReportMetric(float64(len(steps)/b.N), "steps")
	b.ReportMetric(total.Seconds()/float64(b.N), "release-s")
	// Redis's own mean time per script call, over every step.
	stats, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(meanUsec(stats, "evalsha")/1000, "mean-script-ms")
}

// meanUsec reads usec_per_call of a command from INFO commandstats.
func meanUsec(info, cmd string) float64 {
	for line := range strings.SplitSeq(info, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_"+cmd+":")
		if !ok {
			continue
		}
		for f := range strings.SplitSeq(rest, ",") {
			if v, ok := strings.CutPrefix(f, "usec_per_call="); ok {
				n, _ := strconv.ParseFloat(v, 64)
				return n
			}
		}
	}
	return 0
}
