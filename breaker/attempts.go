package breaker

import (
	"context"
	"fmt"
	"strconv"
	"time"
)

// Attempts bound how many upstream attempts of one credential are in
// doubt at a time, fleet-wide: a breaker opens after Threshold counted
// failures, but attempts started together by many sessions on many
// replicas would each reach the upstream before the first failure is
// counted. So an attempt that could be refused (an AUTH with the
// credential's token) first takes a place. A first attempt may take one
// while its in-flight and refused attempts since the last success stay
// under Threshold-1 (at least 1); the last place is kept for a retry with
// a new token after a refusal, which is how a revoked or stale cached
// token is cured. Once the refusals reach that bound (Threshold for a
// retry) and no attempt is in doubt, no place is given until an attempt
// succeeds or the breaker changes state: the caller counts a failure with
// the last refusal's reply instead, and the breaker opens without another request reaching
// the upstream. So at most Threshold refusals reach it before the breaker
// opens, however many sessions and replicas try. While the breaker is
// open no place is given (Held): the attempt waits with the mail it
// carries, and the breaker's probe, which takes no place, decides.
//
// A refusal cured by a new token is recorded too: each replica is told
// once, at its next place, to fetch a new token before its AUTH rather
// than find its own cached one refused.
//
// Each attempt names its member (the mailbox it authenticates as): an
// upstream may refuse a good credential at one member alone (Exchange
// answers an app-only token at a mailbox the app has no permission on as
// it answers a bad token). While every refusal since the last success
// was at one member, an attempt at another member may take the last
// place, which then tests the credential elsewhere, and a first attempt
// at that member gets RefusedHere rather than Refused: the caller counts
// a failure of the member, not of the credential. A refusal at a second
// member (or at an unnamed one) makes the bound apply as above, so still
// at most Threshold refusals reach the upstream before the breaker
// opens, unless the credential worked at that member lately (below).
//
// Several members may lose the permission at once (an administrator
// narrows the app's scope). A refusal at a member the credential worked
// at within a day, while every refusal since the last success was at
// fewer than Threshold-1 members, joins them and is that member's alone
// (BlameFewMembers): not counted, and the next attempt at another member
// tests the credential as above. Refusals at Threshold-1 members, then,
// let one more attempt elsewhere decide; each of them but the first adds
// one refusal to the bound, so at most 2×Threshold-2 reach the upstream
// before the breaker opens (4 for the default 3), besides those at
// members it never worked at (above). Relays of an earlier version,
// during an upgrade, take such a refusal as they did: counted.
//
// The members an attempt succeeded at within a day are kept. A refusal
// at a member that is not one of them (a mailbox that has not sent with
// the credential lately, such as one added without the app's permission)
// is that member's alone while the members so refused since the last
// success are at most half of those it worked at: it is not counted
// against the credential, and ExitAttempt says so, for the caller to
// count a failure of the member. A credential revoked or deprived of its
// permission is refused at the members it worked at too, which count as
// above, and at more new members than half of those only where it
// worked at few. Before any success (a fresh start, a Redis that lost its
// data), every refusal counts, as above.

// worksFor is how long a member an attempt succeeded at is kept as one
// where the credential works; worksKeep bounds how many are kept.
const (
	worksFor  = 24 * time.Hour
	worksKeep = 10000
)

// AttemptTTL is how long a place is kept without RenewAttempt: a place
// whose holder was killed during its attempt lapses within it. A holder
// renews its place about every AttemptTTL/3 while the attempt lasts.
const AttemptTTL = 3 * time.Second

// Verdict is what EnterAttempt decides.
type Verdict int

const (
	// Go: attempt now, and give the place back with ExitAttempt.
	Go Verdict = iota
	// Wait: other attempts are in doubt; ask again shortly.
	Wait
	// Refused: too many attempts in a row were refused; count a failure
	// with Attempt.Reply, without an attempt.
	Refused
	// GoFresh: attempt now with a new token, not the cached one: the
	// last refusal was of a cached token, and the retry that would have
	// tested a new one ended without a verdict.
	GoFresh
	// Held: the breaker is open; hold the mail. Attempt.Reply is the
	// breaker's reason.
	Held
	// RefusedHere: every refusal since the last success was at this
	// attempt's member, or at few members with it, too many in a row;
	// count a failure of the member with Attempt.Reply, without an
	// attempt.
	RefusedHere
)

// Attempt is EnterAttempt's answer.
type Attempt struct {
	Verdict Verdict
	// Reply is the last refusal's reply with Refused and RefusedHere,
	// the breaker's reason with Held.
	Reply string
	// CuredAt is when a cached token was last refused and a new one
	// worked (zero: never since the breaker's last transition).
	CuredAt time.Time
}

// Outcome is how an attempt ended, for ExitAttempt.
type Outcome int

const (
	// Neutral: the attempt says nothing of the credential (the
	// connection failed, a mailbox's own refusal).
	Neutral Outcome = iota
	// Succeeded: the credential worked.
	Succeeded
	// Cured: the credential worked with a new token after its cached one
	// was refused.
	Cured
	// Failed: the upstream refused the credential.
	Failed
	// FailedStale: the upstream refused a cached token, which a new one
	// may cure.
	FailedStale
)

// amongLua defines among(lone, member): whether member is one of the
// members in lone (the attempt state's field, one a line), and how many
// there are.
const amongLua = `
local function among(lone, member)
  local listed, n = false, 0
  for m in string.gmatch(lone, '[^\n]+') do
    n = n + 1
    if m == member then listed = true end
  end
  return listed, n
end
`

// enterScript gives a place for one attempt (see Attempts).
//
// KEYS[1] the record, KEYS[2] the places (token -> expiry, unix ms),
// KEYS[3] the attempt state (gen, refused, stale, reply, cured, and
// lone: the members every refusal since the last success was at, one a
// line, or "" once they were at more, or at an unnamed one).
// ARGV[1] now, ARGV[2] threshold, ARGV[3] the place's token, ARGV[4] its
// lifetime in ms, ARGV[5] "1" for a retry with a new token, ARGV[6] the
// attempt's member ("" for none).
//
// Returns {verdict, reply, cured}: verdict 0 go, 1 wait, 2 refused, 3 go
// with a new token, 4 held: the breaker is open (reply: its reason), 5
// refused at this member (and the few others listed) alone.
var enterScript = flagged(amongLua + `
local rec = redis.call('HMGET', KEYS[1], 'state', 'generation', 'reason')
local gen = rec[2] or '0'
local st = redis.call('HMGET', KEYS[3], 'gen', 'refused', 'reply', 'cured', 'lone')
if st[1] ~= gen then
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[3], 'gen', gen, 'refused', 0)
  st = {gen, '0', '', '0', ''}
end
local cured = st[4] or '0'
if rec[1] == 'open' then return {4, rec[3] or '', cured} end
local now, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local refused = tonumber(st[2] or '0')
local lone = st[5] or ''
if refused == 0 then lone = '' end
-- here: at one of the few members every refusal was at; elsewhere: at
-- another.
local listed = among(lone, ARGV[6])
local here = listed
local elsewhere = lone ~= '' and ARGV[6] ~= '' and not listed
local stale = redis.call('HGET', KEYS[3], 'stale') == '1'
if here or (ARGV[5] ~= '1' and not elsewhere) then limit = math.max(1, limit - 1) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local inflight = redis.call('ZCARD', KEYS[2])
local verdict = 0
if refused >= limit and inflight == 0 then
  if here then return {5, st[3] or '', cured} end
  -- Nothing in doubt that may cure it. After a cached token's refusal
  -- whose retry told nothing, one more attempt tests a new token.
  if not stale or refused >= tonumber(ARGV[2]) then
    return {2, st[3] or '', cured}
  end
  verdict = 3
elseif refused + inflight >= limit then
  return {1, '', cured}
end
-- A test elsewhere after a cached token's refusal uses a new token.
if elsewhere and stale then verdict = 3 end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {verdict, '', cured}
`)

// exitScript gives a place back with the attempt's outcome.
//
// KEYS as enterScript's, KEYS[4] the members it worked at (member ->
// unix ms), KEYS[5] the members it was refused at, where it had not
// worked, since the last success. ARGV[1] now, ARGV[2] the place's token, ARGV[3] the outcome
// (see Outcome), ARGV[4] the refusal's reply, ARGV[5] the attempt's
// member, ARGV[6] how long a member is kept in KEYS[4] (ms), ARGV[7] how
// many are kept.
//
// ARGV[8] how many members the refusals since the last success may be
// at while each is the member's alone.
//
// Returns the Blame of a refusal (see Attempts): 1 for a member the
// credential has not worked at, 2 for one of few it worked at, else 0.
var exitScript = flagged(amongLua + `
redis.call('ZREM', KEYS[2], ARGV[2])
local outcome = tonumber(ARGV[3])
if outcome == 0 then return 0 end
local now = tonumber(ARGV[1])
local gen = redis.call('HGET', KEYS[1], 'generation') or '0'
if redis.call('HGET', KEYS[3], 'gen') ~= gen then
  redis.call('DEL', KEYS[3], KEYS[5])
  redis.call('HSET', KEYS[3], 'gen', gen, 'refused', 0)
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[6]))
if outcome >= 3 and ARGV[5] ~= '' and not redis.call('ZSCORE', KEYS[4], ARGV[5]) then
  local works = redis.call('ZCARD', KEYS[4])
  if works > 0 then
    redis.call('SADD', KEYS[5], ARGV[5])
    redis.call('PEXPIRE', KEYS[5], ARGV[6])
    if redis.call('SCARD', KEYS[5]) * 2 <= works then return 1 end
  end
end
if outcome >= 3 then
  local st = redis.call('HMGET', KEYS[3], 'refused', 'lone')
  local lone = st[2] or ''
  if tonumber(st[1] or '0') == 0 then lone = '' end
  local listed, few = among(lone, ARGV[5])
  -- Another member it worked at, while every refusal since the last
  -- success was at fewer than ARGV[8] such: the member's alone until a
  -- test elsewhere tells.
  if lone ~= '' and ARGV[5] ~= '' and not listed and few < tonumber(ARGV[8])
      and redis.call('ZSCORE', KEYS[4], ARGV[5]) then
    redis.call('HSET', KEYS[3], 'lone', lone .. '\n' .. ARGV[5])
    return 2
  end
  local n = redis.call('HINCRBY', KEYS[3], 'refused', 1)
  if n == 1 then lone = ARGV[5] elseif not listed then lone = '' end
  redis.call('HSET', KEYS[3], 'reply', ARGV[4], 'stale', outcome == 4 and '1' or '0', 'lone', lone)
  return 0
end
redis.call('HSET', KEYS[3], 'refused', 0, 'stale', '0', 'lone', '')
redis.call('DEL', KEYS[5])
if outcome == 2 then redis.call('HSET', KEYS[3], 'cured', ARGV[1]) end
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[4], now, ARGV[5])
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -tonumber(ARGV[7]) - 1)
  redis.call('PEXPIRE', KEYS[4], ARGV[6])
end
return 0
`)

// EnterAttempt asks for a place for one attempt at member under the
// breaker name (see Attempts); retry says it retries with a new token
// after a refusal. token names the place; ExitAttempt gives it back.
func (s *Set) EnterAttempt(ctx context.Context, name, token, member string, retry bool) (Attempt, error) {
	if err := validName(name); err != nil {
		return Attempt{}, err
	}
	r := "0"
	if retry {
		r = "1"
	}
	v, err := enterScript.Run(ctx, s.rdb, []string{recordKey(name), placesKey(name), attemptKey(name)},
		ms(s.o.Now()), s.o.Threshold, token, AttemptTTL.Milliseconds(), r, member).Slice()
	if err != nil {
		return Attempt{}, fmt.Errorf("breaker %s: enter attempt: %w", name, err)
	}
	if len(v) != 3 {
		return Attempt{}, fmt.Errorf("breaker %s: enter attempt: %d values", name, len(v))
	}
	verdict, _ := v[0].(int64)
	a := Attempt{Verdict: Verdict(verdict)}
	a.Reply, _ = v[1].(string)
	cured, _ := v[2].(string)
	if n, _ := strconv.ParseInt(cured, 10, 64); n > 0 {
		a.CuredAt = time.UnixMilli(n)
	}
	return a, nil
}

// renewScript keeps a place for another lifetime, and the places' key as
// long: the key's expiry is always the latest place's.
//
// KEYS[1] the places. ARGV[1] now, ARGV[2] the token, ARGV[3] the
// lifetime in ms.
var renewScript = flagged(`
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
`)

// RenewAttempt keeps the place token took for another AttemptTTL; a
// place that lapsed meanwhile is not taken again.
func (s *Set) RenewAttempt(ctx context.Context, name, token string) error {
	if err := validName(name); err != nil {
		return err
	}
	err := renewScript.Run(ctx, s.rdb, []string{placesKey(name)}, ms(s.o.Now()), token, AttemptTTL.Milliseconds()).Err()
	if err != nil {
		return fmt.Errorf("breaker %s: renew attempt: %w", name, err)
	}
	return nil
}

// Blame is whose failure a refusal is, as ExitAttempt takes it.
type Blame int

const (
	// BlameCredential: the refusal counts against the credential.
	BlameCredential Blame = iota
	// BlameNewMember: the member's alone: the credential has not worked
	// there within a day, while it has at others.
	BlameNewMember
	// BlameFewMembers: the member's alone: the credential worked there
	// within a day, and every refusal since its last success was at few
	// members; an attempt at another member tests it.
	BlameFewMembers
)

// fewMembers is how many members the refusals since the last success may
// be at, each the member's alone (BlameFewMembers) but the first's:
// Threshold-1, so that a larger threshold leaves room for more.
func (s *Set) fewMembers() int { return max(1, s.o.Threshold-1) }

// ExitAttempt gives back the place token took at member, with the
// attempt's outcome; reply is the upstream's refusal, for Failed. It
// returns the time it recorded, which a Cured outcome stores as
// Attempt.CuredAt, and whose failure a refusal is (see Attempts): one
// not counted against the credential is for the caller to count against
// the member.
func (s *Set) ExitAttempt(ctx context.Context, name, token, member string, o Outcome, reply string) (at time.Time, blame Blame, err error) {
	if err := validName(name); err != nil {
		return time.Time{}, BlameCredential, err
	}
	now := time.UnixMilli(ms(s.o.Now()))
	n, err := exitScript.Run(ctx, s.rdb, []string{recordKey(name), placesKey(name), attemptKey(name), worksKey(name), unprovenKey(name)},
		ms(now), token, int(o), reply, member, worksFor.Milliseconds(), worksKeep, s.fewMembers()).Int()
	if err != nil {
		return now, BlameCredential, fmt.Errorf("breaker %s: exit attempt: %w", name, err)
	}
	return now, Blame(n), nil
}

// Threshold is how many counted failures in a row open a breaker.
func (s *Set) Threshold() int { return s.o.Threshold }
