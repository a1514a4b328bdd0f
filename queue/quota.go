package queue

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The recipient log of a mailbox is a sorted set: members "id:n" scored
// by send time (unix ms, always positive), and one member "#total" whose
// score is minus the recipients of the others. A reservation reads the
// total, not the log: the log of a busy mailbox holds up to 10,000
// members. Members older than the window leave it, and the total, at the
// next reservation. A log written before the total was kept (no "#total"
// member) is summed once.
const recipientsLua = `
local function count(member)
  return tonumber(string.match(member, ':(%d+)$')) or 0
end

-- used drops the members older than cutoff and returns the recipients
-- of those left, from the total.
local function used(key, cutoff)
  local t = redis.call('ZSCORE', key, '#total')
  local n = 0
  if t then
    n = -tonumber(t)
    local old = redis.call('ZRANGEBYSCORE', key, '(0', cutoff)
    for _, m in ipairs(old) do n = n - count(m) end
  else
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, '(' .. cutoff, '+inf')) do n = n + count(m) end
  end
  redis.call('ZREMRANGEBYSCORE', key, '(0', cutoff)
  return n
end
`

// reserveRecipientsScript counts one message's recipients against a
// mailbox's rolling quota, unless they would take it over the limit.
//
// KEYS[1] the mailbox's recipient log. ARGV[1] now (unix ms), ARGV[2]
// window (ms), ARGV[3] member, ARGV[4] n, ARGV[5] limit (0: no limit).
// Returns 0 when counted, or how many ms until enough recipients leave
// the window for these to fit.
var reserveRecipientsScript = drainScript(recipientsLua + `
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local n, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local total = used(KEYS[1], now - window)
if limit > 0 and n <= limit then
  local over = total + n - limit
  if over > 0 then
    redis.call('ZADD', KEYS[1], -total, '#total')
    local entries = redis.call('ZRANGEBYSCORE', KEYS[1], '(0', '+inf', 'WITHSCORES')
    for i = 1, #entries, 2 do
      over = over - count(entries[i])
      if over <= 0 then
        return math.max(1, tonumber(entries[i + 1]) + window - now)
      end
    end
    return window
  end
end
if redis.call('ZADD', KEYS[1], now, ARGV[3]) == 1 then total = total + n end
redis.call('ZADD', KEYS[1], -total, '#total')
redis.call('PEXPIRE', KEYS[1], window)
return 0
`)

// releaseRecipientsScript takes a reservation back out of the log and
// its total. KEYS[1] the log, ARGV[1] member, ARGV[2] n.
var releaseRecipientsScript = drainScript(`
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 and redis.call('ZSCORE', KEYS[1], '#total') then
  redis.call('ZINCRBY', KEYS[1], tonumber(ARGV[2]), '#total')
end
return 0
`)

func recipientsMember(id string, n int) string { return id + ":" + strconv.Itoa(n) }

// ReserveRecipients counts, fleet-wide, message id's n recipients against
// mailbox's rolling quota of limit recipients per window (Exchange
// Online's 10,000 per 24 hours), before the message is sent. When they
// would go over, nothing is counted and it returns how long until enough
// earlier recipients leave the window. A limit of 0, or a message with
// more recipients than the limit, is always counted: the upstream
// decides.
func (l *Limiter) ReserveRecipients(ctx context.Context, mailbox, id string, n, limit int, window time.Duration) (time.Duration, error) {
	if n <= 0 {
		return 0, nil
	}
	ms, err := reserveRecipientsScript.Run(ctx, l.rdb, []string{recipientsKey(mailbox)},
		l.now().UnixMilli(), window.Milliseconds(), recipientsMember(id, n), n, limit).Int64()
	if err != nil {
		return 0, fmt.Errorf("count recipients of %s: %w", mailbox, err)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// ReleaseRecipients takes back a reservation whose message was not sent.
func (l *Limiter) ReleaseRecipients(ctx context.Context, mailbox, id string, n int) error {
	if err := releaseRecipientsScript.Run(ctx, l.rdb, []string{recipientsKey(mailbox)}, recipientsMember(id, n), n).Err(); err != nil {
		return fmt.Errorf("release recipients of %s: %w", mailbox, err)
	}
	return nil
}

// QuotaFreesIn returns how long until the oldest recipients counted for
// mailbox leave the rolling window: when a spent quota has room again.
// It is zero when nothing is counted.
func (l *Limiter) QuotaFreesIn(ctx context.Context, mailbox string, window time.Duration) (time.Duration, error) {
	now := l.now()
	oldest, err := l.rdb.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{
		Key: recipientsKey(mailbox), Start: strconv.FormatInt(now.Add(-window).UnixMilli()+1, 10), Stop: "+inf",
		ByScore: true, Count: 1,
	}).Result()
	if err != nil {
		return 0, fmt.Errorf("recipient quota of %s: %w", mailbox, err)
	}
	if len(oldest) == 0 {
		return 0, nil
	}
	at := time.UnixMilli(int64(oldest[0].Score))
	return max(0, at.Add(window).Sub(now)), nil
}
