package queue

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// countRecipientsScript logs one sent message's recipients and drops
// entries older than the window.
//
// KEYS[1] the mailbox's recipient log. ARGV[1] now (unix ms), ARGV[2]
// window (ms), ARGV[3] member ("id:n").
var countRecipientsScript = redis.NewScript(`
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`)

// CountRecipients records, fleet-wide, that mailbox sent message id to n
// recipients now, for a rolling quota over window (Exchange Online's
// 10,000 recipients per 24 hours).
func (l *Limiter) CountRecipients(ctx context.Context, mailbox, id string, n int, window time.Duration) error {
	if n <= 0 {
		return nil
	}
	member := id + ":" + strconv.Itoa(n)
	if err := countRecipientsScript.Run(ctx, l.rdb, []string{recipientsKey(mailbox)},
		l.now().UnixMilli(), window.Milliseconds(), member).Err(); err != nil {
		return fmt.Errorf("count recipients of %s: %w", mailbox, err)
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
