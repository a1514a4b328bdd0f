package queue

import (
	"context"
	"fmt"
	"time"
)

// expireDeadBatch is the most dead letters one call of expireDeadScript
// deletes, so that a route with many does not block Redis for long.
const expireDeadBatch = 500

// expireDeadScript deletes a route's dead letters that died at or before
// a time (the dead set is scored by the time of death).
//
// KEYS[1] dead. ARGV[1] the cutoff, unix ms; ARGV[2] the message key
// prefix; ARGV[3] the most to delete.
//
// Returns how many it took out of the dead set. A message whose hash is
// in another state than dead (none should be) is taken out of the set
// but kept.
var expireDeadScript = drainScript(`
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local key = ARGV[2] .. id
  if redis.call('HGET', key, 'st') == 'dead' then redis.call('DEL', key) end
end
return #ids
`)

// claimScript sets KEYS[1] for ARGV[1] ms unless it is set, while Redis
// is full too (a pass that frees memory must run then). Returns 1 when
// it set it.
var claimScript = drainScript(`
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 1 end
return 0
`)

// ExpireDead deletes, in every route, the dead letters dead for age or
// longer, and returns how many it deleted. One pass counts for the fleet
// for every: a call within every of another process's pass, or of its
// own, deletes nothing and returns 0 (every 0: it always runs). Processes
// that run at once delete each dead letter once.
func (q *Queue) ExpireDead(ctx context.Context, age, every time.Duration) (int, error) {
	if age <= 0 {
		return 0, fmt.Errorf("expire dead letters: age %v is not positive", age)
	}
	if every > 0 {
		// A little less than every, so that the claimant's own next
		// pass, timed by its own clock, finds the claim lapsed.
		claimed, err := claimScript.Run(ctx, q.rdb, []string{deadSweepKey}, max(1, every.Milliseconds()*9/10)).Int()
		if err != nil {
			return 0, fmt.Errorf("expire dead letters: %w", err)
		}
		if claimed == 0 {
			return 0, nil
		}
	}
	routes, err := q.Routes(ctx)
	if err != nil {
		return 0, fmt.Errorf("expire dead letters: %w", err)
	}
	cutoff := q.opts.Now().Add(-age).UnixMilli()
	total := 0
	for _, r := range routes {
		rk := keysFor(r)
		for {
			n, err := expireDeadScript.Run(ctx, q.rdb, []string{rk.dead}, cutoff, msgKeyPrefix(rk.tag), expireDeadBatch).Int()
			if err != nil {
				return total, fmt.Errorf("expire dead letters of %s: %w", r, err)
			}
			total += n
			if n > 0 {
				q.logChange(ctx, r)
			}
			if n < expireDeadBatch {
				break
			}
		}
	}
	return total, nil
}
