package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Per-mailbox limits shared by every replica. Exchange Online allows each
// mailbox 3 concurrent SMTP connections and 30 messages a minute; a
// Limiter keeps the whole fleet within such limits. Its keys are in
// keys.go (limitKeys).

// acquireScript takes a connection slot if fewer than the limit are held.
// Slots whose holder did not renew them in time are dropped first.
//
// KEYS[1] conns. ARGV[1] now, ARGV[2] limit, ARGV[3] token, ARGV[4] slot
// expiry, ARGV[5] slot lifetime in ms. Returns 1 when the slot was taken,
// else 0.
var acquireScript = drainScript(`
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
`)

// rateScript records a send if fewer than the limit happened in the last
// window; otherwise it says how long until the oldest one leaves it.
//
// KEYS[1] sends. ARGV[1] now, ARGV[2] limit, ARGV[3] window in ms,
// ARGV[4] token. Returns 0 when the send was recorded, else the wait in ms.
var rateScript = drainScript(`
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
`)

// Limiter enforces per-mailbox connection and send-rate limits across
// replicas.
type Limiter struct {
	rdb redis.UniversalClient
	now func() time.Time
}

// NewLimiter returns a limiter stored in rdb. now is the clock; nil means
// time.Now.
func NewLimiter(rdb redis.UniversalClient, now func() time.Time) *Limiter {
	if now == nil {
		now = time.Now
	}
	return &Limiter{rdb: rdb, now: now}
}

// Slot is a held connection slot.
type Slot struct {
	mailbox string
	token   string
}

// AcquireConn takes one of a mailbox's max connection slots for ttl. It
// returns nil when all are taken. The holder renews the slot with Renew
// while the connection lives and frees it with Release; a slot that is
// neither renewed nor released frees itself after ttl, so a crashed
// replica does not keep it.
func (l *Limiter) AcquireConn(ctx context.Context, mailbox string, max int, ttl time.Duration) (*Slot, error) {
	conns, _ := limitKeys(mailbox)
	now := l.now()
	s := &Slot{mailbox: mailbox, token: newToken()}
	ok, err := acquireScript.Run(ctx, l.rdb, []string{conns},
		now.UnixMilli(), max, s.token, now.Add(ttl).UnixMilli(), ttl.Milliseconds()).Int()
	if err != nil {
		return nil, fmt.Errorf("connection slot for %s: %w", mailbox, err)
	}
	if ok == 0 {
		return nil, nil
	}
	return s, nil
}

// ErrSlotLost is returned by Renew for a slot that expired and was freed:
// another replica may hold it now, so its connection must be closed.
var ErrSlotLost = errors.New("connection slot expired; close its connection")

// renewScript moves a held slot's expiry, and the key's.
//
// KEYS[1] conns. ARGV[1] token, ARGV[2] slot expiry, ARGV[3] slot
// lifetime in ms. Returns 1 when the slot was renewed, 0 when it is no
// longer held.
var renewScript = drainScript(`
local n = redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return n
`)

// Renew extends a held slot to ttl from now.
func (l *Limiter) Renew(ctx context.Context, s *Slot, ttl time.Duration) error {
	conns, _ := limitKeys(s.mailbox)
	until := l.now().Add(ttl).UnixMilli()
	renewed, err := renewScript.Run(ctx, l.rdb, []string{conns}, s.token, until, ttl.Milliseconds()).Int()
	if err != nil {
		return fmt.Errorf("renew connection slot for %s: %w", s.mailbox, err)
	}
	if renewed == 0 {
		return fmt.Errorf("renew connection slot for %s: %w", s.mailbox, ErrSlotLost)
	}
	return nil
}

// Release frees a slot.
func (l *Limiter) Release(ctx context.Context, s *Slot) error {
	conns, _ := limitKeys(s.mailbox)
	if err := l.rdb.ZRem(ctx, conns, s.token).Err(); err != nil {
		return fmt.Errorf("release connection slot for %s: %w", s.mailbox, err)
	}
	return nil
}

// TakeSend records one send of the mailbox if fewer than limit were
// recorded in the last window. Otherwise it records nothing and returns
// how long to wait before trying again.
func (l *Limiter) TakeSend(ctx context.Context, mailbox string, limit int, window time.Duration) (time.Duration, error) {
	_, wait, err := l.ReserveSend(ctx, mailbox, limit, window)
	return wait, err
}

// ReserveSend is TakeSend that also returns the recorded send's token,
// with which ReturnSend gives it back when the send does not happen.
func (l *Limiter) ReserveSend(ctx context.Context, mailbox string, limit int, window time.Duration) (string, time.Duration, error) {
	_, sends := limitKeys(mailbox)
	token := newToken()
	ms, err := rateScript.Run(ctx, l.rdb, []string{sends},
		l.now().UnixMilli(), limit, window.Milliseconds(), token).Int64()
	if err != nil {
		return "", 0, fmt.Errorf("send rate of %s: %w", mailbox, err)
	}
	if ms > 0 {
		return "", time.Duration(ms) * time.Millisecond, nil
	}
	return token, 0, nil
}

// ReturnSend forgets a send recorded by ReserveSend.
func (l *Limiter) ReturnSend(ctx context.Context, mailbox, token string) error {
	_, sends := limitKeys(mailbox)
	if err := l.rdb.ZRem(ctx, sends, token).Err(); err != nil {
		return fmt.Errorf("return send of %s: %w", mailbox, err)
	}
	return nil
}
