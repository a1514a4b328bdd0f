package queue

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
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

// rateScript records a send if the mailbox has no wait of the kinds
// asked and fewer than the limit sends happened in the last window;
// otherwise it says how long until the wait ends or the oldest send
// leaves the window.
//
// KEYS[1] sends, KEYS[2] waits. ARGV[1] now, ARGV[2] limit, ARGV[3]
// window in ms, ARGV[4] token, ARGV[5...] the kinds of wait that hold
// this send. Returns 0 when the send was recorded, the wait in ms when
// the rate is spent, or minus the wait in ms when a wait of the mailbox
// holds the send.
var rateScript = drainScript(`
local now = tonumber(ARGV[1])
local held = 0
for i = 5, #ARGV do
  local untilMs = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0')
  if untilMs > now then held = math.max(held, untilMs - now) end
end
if held > 0 then return -held end
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

// holdMailboxScript records a wait of one kind of a mailbox, keeping
// the later end when the kind waits already. The key lives until its
// last wait ends, by the caller's clock, as every end here is.
//
// KEYS[1] waits. ARGV[1] now, ARGV[2] kind, ARGV[3] end of the wait
// (unix ms). Returns 1 when the kind did not wait already, else 0.
var holdMailboxScript = drainScript(`
local prev = tonumber(redis.call('HGET', KEYS[1], ARGV[2]) or '0')
local untilMs = tonumber(ARGV[3])
if untilMs > prev then redis.call('HSET', KEYS[1], ARGV[2], ARGV[3]) end
local last = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do last = math.max(last, tonumber(v)) end
local now = tonumber(ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.max(1, last - now))
if prev > now then return 0 end
return 1
`)

// endWaitsScript removes every wait of a mailbox at once.
//
// KEYS[1] waits. Returns the waits removed, as HGETALL gives them.
var endWaitsScript = drainScript(`
local waits = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return waits
`)

// Limiter enforces per-mailbox connection and send-rate limits across
// replicas.
type Limiter struct {
	rdb redis.UniversalClient
	now func() time.Time
	// recheck, when above 0, bounds the wait ReserveSend returns for a
	// mailbox's wait (see WithWaitRecheck).
	recheck time.Duration
}

// NewLimiter returns a limiter stored in rdb. now is the clock; nil means
// time.Now.
func NewLimiter(rdb redis.UniversalClient, now func() time.Time) *Limiter {
	if now == nil {
		now = time.Now
	}
	return &Limiter{rdb: rdb, now: now}
}

// WithWaitRecheck returns a copy of l whose ReserveSend answers a send
// held by a wait of the mailbox (HoldMailbox) with at most d, not the
// rest of the wait: its caller asks again within d, and so finds a wait
// that EndMailboxWaits ended early. A wait of the send rate is answered
// whole.
func (l *Limiter) WithWaitRecheck(d time.Duration) *Limiter {
	c := *l
	c.recheck = d
	return &c
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

// HoldMailbox asks every replica to leave the mailbox's sends of one
// kind alone for d from now, as the upstream asked one of them: a send
// that ReserveSend holds for that kind waits instead. A later end than
// the one recorded wins. It reports whether the kind did not wait
// already.
func (l *Limiter) HoldMailbox(ctx context.Context, mailbox, kind string, d time.Duration) (bool, error) {
	if d <= 0 {
		return false, nil
	}
	now := l.now()
	n, err := holdMailboxScript.Run(ctx, l.rdb, []string{mailboxWaitsKey(mailbox)},
		now.UnixMilli(), kind, now.Add(d).UnixMilli()).Int()
	if err != nil {
		return false, fmt.Errorf("hold %s: %w", mailbox, err)
	}
	return n == 1, nil
}

// MailboxWait is a wait of a mailbox that HoldMailbox recorded.
type MailboxWait struct {
	Mailbox string
	Kind    string
	Until   time.Time
}

// MailboxWaits returns the waits of the mailboxes that have not ended,
// by mailbox and kind, in one round trip.
func (l *Limiter) MailboxWaits(ctx context.Context, mailboxes []string) ([]MailboxWait, error) {
	if len(mailboxes) == 0 {
		return nil, nil
	}
	pipe := l.rdb.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(mailboxes))
	for i, m := range mailboxes {
		cmds[i] = pipe.HGetAll(ctx, mailboxWaitsKey(m))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("mailbox waits: %w", err)
	}
	now := l.now()
	var out []MailboxWait
	for i, c := range cmds {
		out = liveWaits(out, mailboxes[i], c.Val(), now)
	}
	sortWaits(out)
	return out, nil
}

// liveWaits appends to out the waits of mailbox among fields (kind ->
// until, unix ms) that have not ended at now.
func liveWaits(out []MailboxWait, mailbox string, fields map[string]string, now time.Time) []MailboxWait {
	for kind, v := range fields {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || !time.UnixMilli(ms).After(now) {
			continue
		}
		out = append(out, MailboxWait{Mailbox: mailbox, Kind: kind, Until: time.UnixMilli(ms)})
	}
	return out
}

func sortWaits(waits []MailboxWait) {
	slices.SortFunc(waits, func(a, b MailboxWait) int {
		return cmp.Or(cmp.Compare(a.Mailbox, b.Mailbox), cmp.Compare(a.Kind, b.Kind))
	})
}

// EndMailboxWaits ends every wait of the mailboxes now, for the whole
// fleet, as an operator does once the cause is dealt with (Exchange
// released the mailbox, or raised its quota): ReserveSend no longer
// holds their sends, and a limiter of WithWaitRecheck tells its caller
// within its recheck. It returns the waits it ended that had not ended
// yet, by mailbox and kind, in one round trip; with an error, those of
// the mailboxes whose end did run.
func (l *Limiter) EndMailboxWaits(ctx context.Context, mailboxes []string) ([]MailboxWait, error) {
	if len(mailboxes) == 0 {
		return nil, nil
	}
	pipe := l.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(mailboxes))
	for i, m := range mailboxes {
		// Eval, not EvalSha: a pipeline cannot load the script on a
		// NOSCRIPT, and this runs on an operator's command alone.
		cmds[i] = endWaitsScript.Eval(ctx, pipe, []string{mailboxWaitsKey(m)})
	}
	_, err := pipe.Exec(ctx)
	now := l.now()
	var out []MailboxWait
	for i, c := range cmds {
		kv, cerr := c.StringSlice()
		if cerr != nil {
			continue // not ended; Exec's error says why
		}
		fields := make(map[string]string, len(kv)/2)
		for j := 0; j+1 < len(kv); j += 2 {
			fields[kv[j]] = kv[j+1]
		}
		out = liveWaits(out, mailboxes[i], fields, now)
	}
	sortWaits(out)
	if err != nil {
		return out, fmt.Errorf("end mailbox waits: %w", err)
	}
	return out, nil
}

// ReserveSend is TakeSend that also returns the recorded send's token,
// with which ReturnSend gives it back when the send does not happen.
// While the mailbox waits for one of the kinds in holds (HoldMailbox),
// it records nothing and returns the rest of the longest such wait, or
// the limiter's recheck when that is shorter (WithWaitRecheck).
func (l *Limiter) ReserveSend(ctx context.Context, mailbox string, limit int, window time.Duration, holds ...string) (string, time.Duration, error) {
	_, sends := limitKeys(mailbox)
	token := newToken()
	args := []any{l.now().UnixMilli(), limit, window.Milliseconds(), token}
	for _, h := range holds {
		args = append(args, h)
	}
	ms, err := rateScript.Run(ctx, l.rdb, []string{sends, mailboxWaitsKey(mailbox)}, args...).Int64()
	if err != nil {
		return "", 0, fmt.Errorf("send rate of %s: %w", mailbox, err)
	}
	switch {
	case ms < 0 && l.recheck > 0:
		return "", min(time.Duration(-ms)*time.Millisecond, l.recheck), nil
	case ms < 0:
		return "", time.Duration(-ms) * time.Millisecond, nil
	case ms > 0:
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
