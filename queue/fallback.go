package queue

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// SetGraphFallback records, fleet-wide, that the route's mail goes by
// Graph instead of SMTP until the time given, unless an earlier decision
// still stands, and forgets the routes whose time has passed. It returns
// until when the route's mail goes by Graph, and whether this call
// decided it.
func (q *Queue) SetGraphFallback(ctx context.Context, route string, until time.Time) (time.Time, bool, error) {
	res, err := setFallbackScript.Run(ctx, q.rdb, []string{graphFallbackKey}, q.opts.Now().UnixMilli(),
		until.UnixMilli(), route).Int64Slice()
	if err != nil || len(res) != 2 {
		return time.Time{}, false, fmt.Errorf("graph fallback of %s: %w", route, err)
	}
	return time.UnixMilli(res[0]), res[1] == 1, nil
}

// setFallbackScript sets a route's fallback unless one stands.
//
// KEYS[1] the fallback routes. ARGV[1] now, ARGV[2] until, ARGV[3] the
// route. Returns {until, 1 when set here}.
var setFallbackScript = drainScript(`
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
local cur = redis.call('ZSCORE', KEYS[1], ARGV[3])
if cur then return {tonumber(cur), 0} end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
return {tonumber(ARGV[2]), 1}
`)

// GraphFallbacks returns the routes whose mail goes by Graph now, with
// until when.
func (q *Queue) GraphFallbacks(ctx context.Context) (map[string]time.Time, error) {
	zs, err := q.rdb.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{Key: graphFallbackKey, ByScore: true,
		Start: strconv.FormatInt(q.opts.Now().UnixMilli(), 10), Stop: "+inf"}).Result()
	if err != nil {
		return nil, fmt.Errorf("graph fallbacks: %w", err)
	}
	out := make(map[string]time.Time, len(zs))
	for _, z := range zs {
		r, _ := z.Member.(string)
		out[r] = time.UnixMilli(int64(z.Score))
	}
	return out, nil
}
