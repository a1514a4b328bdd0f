package breaker

import "github.com/redis/go-redis/v9"

// Every script here takes the breaker record as KEYS[1], its spread set
// as KEYS[2] and its attempt state (see Attempts) as KEYS[3]. Times are
// unix ms from the caller's clock, so that every replica and every test
// uses one clock. Scripts that change the record return it as HGETALL
// does. The notice ledger's scripts (ledger.go) take a breaker's claims
// and read Redis's clock.

// flagged returns a script that Redis runs past its maxmemory too (the
// Redis 7 flag allow-oom): a queue that grew while a breaker held its
// mail fills Redis, and only a breaker that can close (probe, reset)
// lets it drain. Each script changes a few fields of one breaker's keys,
// which share one hash slot.
func flagged(src string) *redis.Script {
	return redis.NewScript("#!lua flags=allow-oom\n" + src)
}

// registerScript adds ARGV[1] to the names set KEYS[1].
var registerScript = flagged(`return redis.call('SADD', KEYS[1], ARGV[1])`)

// forgetScript deletes a closed breaker's record (KEYS[1]) and its
// companions (the other KEYS), all but the record's generation and when
// it closed (see Set.Forget), and returns 0; an open one it leaves alone
// and returns 1.
var forgetScript = flagged(`
local rec = redis.call('HMGET', KEYS[1], 'generation', 'since', 'state')
if rec[3] == 'open' then return 1 end
redis.call('DEL', unpack(KEYS))
if rec[1] then redis.call('HSET', KEYS[1], 'generation', rec[1], 'since', rec[2] or '0', 'state', 'closed') end
return 0
`)

// transitions defines the two transitions, prepended to the scripts that
// make them: open(reason, now, interval, next probe) and close(now). Each
// bumps the generation and ends any probe lease. reply(k) returns the
// record as HGETALL does, followed by "moved", "1" when this call made a
// transition: its caller reports it (webhook, pub/sub) for the fleet.
const transitions = `
local moved = false
local function reply(k)
  local r = redis.call('HGETALL', k)
  if moved then
    table.insert(r, 'moved')
    table.insert(r, '1')
  end
  return r
end
local function open(k, reason, now, interval, nextProbe)
  moved = true
  redis.call('HINCRBY', k, 'generation', 1)
  redis.call('HSET', k, 'state', 'open', 'reason', reason, 'since', now,
    'interval', interval, 'next_probe', nextProbe, 'probe_now', '0')
  redis.call('HDEL', k, 'lease_token', 'lease_until', 'lease_asks', 'hold')
end
local function close(k, now)
  moved = true
  redis.call('HINCRBY', k, 'generation', 1)
  redis.call('HSET', k, 'state', 'closed', 'reason', '', 'since', now, 'probe_now', '0')
  redis.call('HDEL', k, 'lease_token', 'lease_until', 'lease_asks', 'hold')
end
`

// failScript counts one failure and opens the breaker when the count
// reaches the threshold, or at once when asked. A failure of a secret or
// certificate other than the one that last got a token (good_fp) does not
// count when the caller's material is older than good_since (or its age
// is not known): the caller's files are stale, and it is told so by
// "stale", "1" after the record. Material written after the working one
// was proven (a new secret that is wrong) counts as any failure does.
//
// ARGV[1] now, ARGV[2] threshold, ARGV[3] open interval ms,
// ARGV[4] next probe (now + open interval), ARGV[5] "1" to open at once,
// ARGV[6] reason, ARGV[7] fingerprint of the material used, or "",
// ARGV[8] when that material was written (unix ms), or "", ARGV[9] the
// slack in ms given to that time (see writtenSlack). The stale test is
// Material.Stale's, which TestStaleAgrees keeps in step with this one.
var failScript = flagged(transitions + `
local k = KEYS[1]
if redis.call('HGET', k, 'state') == 'open' then
  return reply(k)
end
local good = redis.call('HGET', k, 'good_fp')
local since = tonumber(redis.call('HGET', k, 'good_since') or '')
local newer = ARGV[8] ~= '' and since ~= nil and tonumber(ARGV[8]) > since - tonumber(ARGV[9])
if ARGV[7] ~= '' and good and good ~= '' and good ~= ARGV[7] and not newer then
  local r = redis.call('HGETALL', k)
  table.insert(r, 'stale')
  table.insert(r, '1')
  return r
end
local f = redis.call('HINCRBY', k, 'failures', 1)
if f >= tonumber(ARGV[2]) or ARGV[5] == '1' then
  open(k, ARGV[6], ARGV[1], ARGV[3], ARGV[4])
else
  redis.call('HSETNX', k, 'state', 'closed')
end
return reply(k)
`)

// successScript resets the consecutive failure count and the spread of a
// closed breaker, and the refusals its attempts count. A success seen
// while open (a request that started before the breaker opened) changes
// nothing: only a probe closes.
var successScript = flagged(`
local k = KEYS[1]
if redis.call('HGET', k, 'state') == 'closed' then
  if tonumber(redis.call('HGET', k, 'failures') or '0') > 0 then
    redis.call('HSET', k, 'failures', '0')
  end
  if tonumber(redis.call('HGET', KEYS[3], 'refused') or '0') > 0 then
    redis.call('HSET', KEYS[3], 'refused', '0')
  end
  if tonumber(redis.call('HGET', k, 'spread') or '0') > 0 then
    redis.call('HSET', k, 'spread', '0')
    redis.call('DEL', KEYS[2])
  end
end
return redis.call('HGETALL', k)
`)

// spreadScript records a failure of one member (a delegated mailbox) that
// counts on the breaker (its credential) only across distinct members:
// the breaker opens when n distinct members have failed with no success
// between them.
//
// ARGV[1] now, ARGV[2] n, ARGV[3] open interval ms, ARGV[4] next probe,
// ARGV[5] member, ARGV[6] reason of this failure, ARGV[7] how long the
// spread is remembered after its last failure, ms.
var spreadScript = flagged(transitions + `
local k = KEYS[1]
if redis.call('HGET', k, 'state') == 'open' then
  return reply(k)
end
redis.call('SADD', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
local c = redis.call('SCARD', KEYS[2])
if c >= tonumber(ARGV[2]) then
  local members = redis.call('SMEMBERS', KEYS[2])
  table.sort(members)
  local reason = c .. ' mailboxes failed in a row (' .. table.concat(members, ', ') .. '): ' .. ARGV[6]
  redis.call('DEL', KEYS[2])
  open(k, reason, ARGV[1], ARGV[3], ARGV[4])
  redis.call('HSET', k, 'spread', '0')
else
  redis.call('HSET', k, 'spread', c)
  redis.call('HSETNX', k, 'state', 'closed')
end
return reply(k)
`)

// tripScript opens the breaker on an operator's request. An open breaker
// keeps its generation and gets the new reason. With ARGV[5] "1" (Hold)
// the breaker is also marked held: no probe is granted (acquireScript),
// so only a reset closes it.
//
// ARGV[1] now, ARGV[2] open interval ms, ARGV[3] next probe, ARGV[4]
// reason, ARGV[5] "1" to hold.
var tripScript = flagged(transitions + `
local k = KEYS[1]
if redis.call('HGET', k, 'state') == 'open' then
  redis.call('HSET', k, 'reason', ARGV[4])
else
  open(k, ARGV[4], ARGV[1], ARGV[2], ARGV[3])
end
if ARGV[5] == '1' then
  redis.call('HSET', k, 'hold', '1')
  redis.call('HDEL', k, 'lease_token', 'lease_until', 'lease_asks')
end
return reply(k)
`)

// resetScript closes the breaker and clears its failure count.
//
// ARGV[1] now.
var resetScript = flagged(transitions + `
local k = KEYS[1]
if redis.call('HGET', k, 'state') == 'open' then
  close(k, ARGV[1])
end
-- Counts that are not there are not made: what Forget kept stays no
-- record.
for _, f in ipairs({'failures', 'spread'}) do
  if redis.call('HEXISTS', k, f) == 1 then redis.call('HSET', k, f, '0') end
end
redis.call('DEL', KEYS[2])
return reply(k)
`)

// restoreScript raises a record whose generation went back below
// ARGV[1], the generation a replica knew: Redis lost the record (it
// restarted empty, or its keys were flushed), since nothing else lowers
// a generation. A breaker the replica knew open, and not open now, is
// closed above it, as a transition: the holds its routes were fenced
// with at the lost generations are released, and the replicas that knew
// it open hear it closed. One open now (opened again since the loss)
// goes on above it, with no transition of its own: the opening is the
// one told (by its caller, when the script that opened it is what read
// it). One the replica knew closed takes the generation back, as Forget
// keeps it. A record at ARGV[1] or above is left as it
// is: another replica raised it, or the read that seemed older was one
// that raced with a newer.
//
// ARGV[1] the generation known, ARGV[2] now, ARGV[3] "1" when the
// replica knew the breaker open. A reply that raised the record ends with
// the pair raised, 1.
var restoreScript = flagged(transitions + `
local k = KEYS[1]
local known = tonumber(ARGV[1])
if tonumber(redis.call('HGET', k, 'generation') or '0') >= known then return reply(k) end
if redis.call('HGET', k, 'state') == 'open' then
  redis.call('HSET', k, 'generation', known + 1)
elseif ARGV[3] == '1' then
  redis.call('HSET', k, 'generation', known)
  close(k, ARGV[2])
else
  redis.call('HSET', k, 'generation', known, 'state', 'closed')
  if redis.call('HEXISTS', k, 'since') == 0 then redis.call('HSET', k, 'since', ARGV[2]) end
end
local r = reply(k)
table.insert(r, 'raised')
table.insert(r, '1')
return r
`)

// probeNowScript makes the next probe of an open breaker due at once,
// for any replica, or, when ARGV[1] names one, for that replica only
// until ARGV[2] (unix ms), or until ARGV[3] ms after the live lease of
// another probe ends, if that is later: a probe that another replica
// runs (or ran, and died) must not pass the reservation by.
//
// Each request counts one in probe_asks; the probe whose lease is granted
// next answers it (see acquireScript). Returns {1, the new count} if the
// breaker is open, {0, 0} otherwise; {2, 0}, and no probe, when an
// operator holds it (Hold).
var probeNowScript = flagged(`
local k = KEYS[1]
if redis.call('HGET', k, 'state') ~= 'open' then
  return {0, 0}
end
if redis.call('HGET', k, 'hold') == '1' then
  return {2, 0}
end
local asks = redis.call('HINCRBY', k, 'probe_asks', 1)
local untilMs = ARGV[2]
if ARGV[1] ~= '' then
  local after = tonumber(redis.call('HGET', k, 'lease_until') or '0') + tonumber(ARGV[3])
  if after > tonumber(untilMs) then untilMs = string.format('%d', after) end
end
redis.call('HSET', k, 'probe_now', '1', 'probe_by', ARGV[1], 'probe_by_until', untilMs)
return {1, asks}
`)

// leaseScript renews the caller's probe lease until ARGV[3], or, with
// ARGV[2] "release", gives it back with no result: the probe is then due
// at once, for any replica. Fails with "lease lost" when the caller does
// not hold the lease. ARGV[1] token.
var leaseScript = flagged(`
local k = KEYS[1]
if redis.call('HGET', k, 'lease_token') ~= ARGV[1] then
  return redis.error_reply('lease lost')
end
if ARGV[2] == 'release' then
  redis.call('HDEL', k, 'lease_token', 'lease_until', 'lease_asks')
  redis.call('HSET', k, 'probe_now', '1', 'probe_by', '')
else
  redis.call('HSET', k, 'lease_until', ARGV[3])
end
return 1
`)

// goodScript records the fingerprint of the secret or certificate that
// last got a token, and since when it is the one that works (kept while
// the fingerprint stays the same). ARGV[1] fingerprint, ARGV[2] when it
// got its token; ARGV[3] "1" for a record made late (Set.SucceededAt),
// left out when the record names material that got its token later.
var goodScript = flagged(`
local fp = redis.call('HMGET', KEYS[1], 'good_fp', 'good_since')
if fp[1] ~= ARGV[1] and (ARGV[3] ~= '1' or tonumber(fp[2] or '0') < tonumber(ARGV[2])) then
  redis.call('HSET', KEYS[1], 'good_fp', ARGV[1], 'good_since', ARGV[2])
end
return redis.call('HGETALL', KEYS[1])
`)

// acquireScript grants the probe lease to one caller: the breaker is open,
// no lease is live, and the probe is due or was asked for. Returns 1 when
// granted, 0 otherwise.
//
// A probe reserved for one replica (an immediate one, see
// probeNowScript, or a retry, see resultScript) goes to that replica
// only, until its time runs out.
//
// A live lease is not granted again, except to the replica named in it
// (ARGV[5]) from another process (ARGV[4]): the same replica started
// again after it was killed in its probe takes its probe over.
//
// The lease notes the count of requests made before it (probe_asks, as
// lease_asks): its probe starts after them, and its result answers them
// (resultScript). A lease taken over notes the count at the take-over,
// when its new probe starts.
//
// ARGV[1] now, ARGV[2] lease expiry (now + lease), ARGV[3] token,
// ARGV[4] the caller's id (one per Set), ARGV[5] its replica name, or "".
var acquireScript = flagged(`
local k = KEYS[1]
if redis.call('HGET', k, 'state') ~= 'open' or redis.call('HGET', k, 'hold') == '1' then
  return 0
end
local now = tonumber(ARGV[1])
if tonumber(redis.call('HGET', k, 'lease_until') or '0') > now then
  local held = redis.call('HMGET', k, 'lease_replica', 'lease_set')
  if ARGV[5] == '' or held[1] ~= ARGV[5] or held[2] == ARGV[4] then
    return 0
  end
  redis.call('HSET', k, 'lease_token', ARGV[3], 'lease_until', ARGV[2], 'lease_set', ARGV[4],
    'lease_asks', redis.call('HGET', k, 'probe_asks') or '0')
  return 1
end
local now_asked = redis.call('HGET', k, 'probe_now') == '1'
if not now_asked and now < tonumber(redis.call('HGET', k, 'next_probe') or '0') then
  return 0
end
local by = redis.call('HGET', k, 'probe_by')
if by and by ~= '' and by ~= ARGV[4] and now < tonumber(redis.call('HGET', k, 'probe_by_until') or '0') then
  return 0
end
redis.call('HSET', k, 'lease_token', ARGV[3], 'lease_until', ARGV[2], 'probe_now', '0', 'probe_by', '',
  'lease_replica', ARGV[5], 'lease_set', ARGV[4], 'lease_asks', redis.call('HGET', k, 'probe_asks') or '0')
return 1
`)

// resultScript records the prober's result. Success closes the breaker
// and clears the failure count; failure counts one more, keeps it open
// with the new reason and doubles the interval up to the cap. A retry (a
// secret still propagating) counts no failure. Fails with "lease lost" when the caller does not hold the
// lease (it expired and another replica took it, or an operator reset
// the breaker).
//
// A failure with a retry delay (ARGV[6] > 0) keeps the interval: the
// next probe is due after the delay, for the caller's replica (ARGV[7])
// until ARGV[8], as probeNowScript reserves one.
//
// Any result writes, with last_probe, the requests it answers: answered
// is the lease's lease_asks, with the result's time. A request made
// while the probe ran leaves probe_now set, so that a probe after it
// answers it.
//
// ARGV[1] token, ARGV[2] now, ARGV[3] "1" for success, ARGV[4] reason,
// ARGV[5] max interval ms, ARGV[6] retry delay ms (0: double the
// interval), ARGV[7] replica id, ARGV[8] end of its reservation (unix
// ms).
var resultScript = flagged(transitions + `
local k = KEYS[1]
if redis.call('HGET', k, 'lease_token') ~= ARGV[1] then
  return redis.error_reply('lease lost')
end
local asks = redis.call('HGET', k, 'lease_asks') or '0'
redis.call('HDEL', k, 'lease_token', 'lease_until', 'lease_asks')
redis.call('HSET', k, 'last_probe', ARGV[2], 'answered', asks .. ':' .. ARGV[2])
if ARGV[3] == '1' then
  close(k, ARGV[2])
  redis.call('HSET', k, 'failures', '0')
  return reply(k)
end
local retry = tonumber(ARGV[6])
if retry > 0 then
  redis.call('HSET', k, 'reason', ARGV[4], 'next_probe', string.format('%d', tonumber(ARGV[2]) + retry),
    'probe_by', ARGV[7], 'probe_by_until', ARGV[8])
  return reply(k)
end
redis.call('HINCRBY', k, 'failures', 1)
local iv = math.min(tonumber(redis.call('HGET', k, 'interval') or '0') * 2, tonumber(ARGV[5]))
redis.call('HSET', k, 'reason', ARGV[4], 'interval', string.format('%d', iv),
  'next_probe', string.format('%d', tonumber(ARGV[2]) + iv))
return reply(k)
`)
