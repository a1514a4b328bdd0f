package queue

import "github.com/redis/go-redis/v9"

// The scripts below are the only code that changes more than one key. All
// times are unix milliseconds from the caller's clock, so tests can drive
// the queue with a controlled clock. Every KEYS entry of one call shares one
// hash tag. Message keys are built inside the scripts from the tag's
// message prefix (ARGV) and the id; they share the same tag. The scripts
// that take mail towards delivery or out of Redis, or keep a lease, are
// declared with drainScript: Redis runs them past its maxmemory too. The
// enqueue script (storeScript) it then refuses. See full.go.

// changeLua defines logChange(log, route, now): it records in the change
// log (changesKey) that the route's counts changed. The log keeps each
// route once, scored by a sequence that grows with every change, so a
// Summarizer asks for the routes changed since the sequence it last saw.
// Member "#" holds the newest sequence, and "@" the time the log was
// started, which tells a reader that the log was lost and started again
// (a Redis restart without the key, a flush). Only a single server keeps
// the log: on Redis Cluster it lives in another slot than the route.
const changeLua = `
local function logChange(log, route, now)
  local seq = redis.call('ZINCRBY', log, 1, '#')
  if seq == '1' then redis.call('ZADD', log, now, '@') end
  redis.call('ZADD', log, seq, route)
end
`

// changeScript records a change of a route made by a script that cannot
// take the log's key: holds, releases and the operator's commands.
//
// KEYS[1] the change log. ARGV[1] now, ARGV[2] the route.
var changeScript = drainScript(changeLua + `
logChange(KEYS[1], ARGV[2], ARGV[1])
return 1
`)

// enqueueScript stores a new message, due now, unless its id was
// withdrawn (an Enqueue that runs after its caller gave up on it and
// withdrew it; see withdrawScript).
//
// KEYS[1] message hash, KEYS[2] due, KEYS[3] live, KEYS[4] the id's
// withdrawal mark, then the idempotency key and its fingerprint's key
// when ARGV[10] is not empty, then the due index's dirty set and the
// change log when ARGV[11] is "1" (on a single server: on Redis Cluster
// they are in another slot, and Enqueue marks the route in a call of its
// own).
// ARGV[1] id, ARGV[2] route, ARGV[3] app, ARGV[4] from, ARGV[5] recipients
// joined by "\n", ARGV[6] body, ARGV[7] now, ARGV[8] expiry time,
// ARGV[9] idempotency key lifetime in ms, ARGV[10] idempotency key,
// ARGV[11] "1" to mark the route dirty, ARGV[12] the submission's
// fingerprint ("" for none), ARGV[13] the store's deadline in Redis's
// clock, unix ms (0: none; see clock.go), ARGV[14] the most messages the
// route's live set may hold (0: no bound).
//
// An id is new to each Enqueue, so a message already stored under it was
// stored by this same script, run again (go-redis runs a command again
// when its reply was lost): the run changes nothing, whatever became of
// the message since, but for a write of a field as it is, so that a WAIT
// after it covers the first run's writes; it returns {id, 0}.
//
// Returns {id, 0} for a new message, {existing id, 1} when the
// idempotency key was seen before with the same fingerprint (or where
// either has none, as keys stored before fingerprints), {existing id, 3}
// when it was seen with another, {id, 2} when the id was withdrawn, or
// {id, 4} when it ran past its deadline, or {id, 5} when the route holds
// as many messages as it may; with 2, 4 and 5 nothing is stored.
// Redis past its maxmemory refuses it whole, before it runs (storeScript).
var enqueueScript = storeScript(changeLua + `
local upd = redis.call('HGET', KEYS[1], 'upd')
if upd then
  -- A write all the same, of what is there: WAIT and WAITAOF after it
  -- wait for the replicas to have the first run's (Redis 7.2 and later
  -- move a client's replication offset only with a write of its own).
  redis.call('HSET', KEYS[1], 'upd', upd)
  return {ARGV[1], 0}
end
local deadline = tonumber(ARGV[13])
if deadline and deadline > 0 then
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > deadline then return {ARGV[1], 4} end
end
if redis.call('EXISTS', KEYS[4]) == 1 then return {ARGV[1], 2} end
local idem = ARGV[10] ~= ''
if idem then
  local existing = redis.call('GET', KEYS[5])
  if existing then
    local print = redis.call('GET', KEYS[6])
    if print and ARGV[12] ~= '' and print ~= ARGV[12] then return {existing, 3} end
    return {existing, 1}
  end
end
local cap = tonumber(ARGV[14])
if cap and cap > 0 and redis.call('ZCARD', KEYS[3]) >= cap then return {ARGV[1], 5} end
redis.call('HSET', KEYS[1],
  'route', ARGV[2], 'app', ARGV[3], 'from', ARGV[4], 'to', ARGV[5],
  'body', ARGV[6], 'size', string.len(ARGV[6]),
  'sub', ARGV[7], 'exp', ARGV[8], 'att', 0, 'st', 'queued', 'upd', ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[1])
if idem then
  redis.call('SET', KEYS[5], ARGV[1], 'PX', ARGV[9])
  if ARGV[12] ~= '' then redis.call('SET', KEYS[6], ARGV[12], 'PX', ARGV[9]) end
  redis.call('HSET', KEYS[1], 'idem', ARGV[10])
end
if ARGV[11] == '1' then
  redis.call('SADD', KEYS[#KEYS - 1], ARGV[2])
  logChange(KEYS[#KEYS], ARGV[2], ARGV[7])
end
return {ARGV[1], 0}
`)

// leaseScript reclaims the route's expired leases, then leases up to n due
// messages. A due message past its expiry is dead-lettered instead of
// leased.
//
// A held route leases nothing. Instead it dead-letters those of its 100
// oldest live messages that are not leased and whose lifetime has run out
// even counting the time held, up to the held grace, as not spent: now >=
// exp + min(now - max(hold start, submit), grace). A hold without a start
// time (set before the start was recorded) is given one now.
//
// A lease is idempotent: run again with the same token (as a client's
// retry after a lost reply does), it changes nothing and returns the
// messages the first run leased that this token still holds.
//
// KEYS[1] due, KEYS[2] leased, KEYS[3] dead, KEYS[4] live, KEYS[5] hold,
// KEYS[6] held (hold start), KEYS[7] lease sequence, KEYS[8] the token's
// lease set; on a single server also KEYS[9] the due index's dirty set,
// KEYS[10] the index, KEYS[11] its sequences, KEYS[12] the change log:
// the script then clears the route's dirty mark first, sets its index
// entry last (see due.go), which Lease does in calls of their own on
// Redis Cluster, and logs a change when it moved a message.
// ARGV[1] now, ARGV[2] lease deadline, ARGV[3] n, ARGV[4] lease token,
// ARGV[5] message key prefix, ARGV[6] held grace in ms, ARGV[7] the held
// recheck in ms, ARGV[8] the route, ARGV[9] "1" for a trial: one
// message is leased, held or not yet due, the earliest of the route's
// first ten whose lifetime has not run out, time held not counted
// (after a held route's messages past even the held credit are
// dead-lettered as above).
//
// Returns {next, leased, seq, deadline, at}: next is the due time of the
// earliest message left in the queue (-1 when none, -2 when the route is
// held); leased is a list of {id, route, app, from, to, body, sub, exp,
// att, err} entries, each followed by its lease's end when the token's
// lease is returned again; seq is the route's lease sequence after this lease;
// deadline is the earliest lease deadline on the route (-1 when none); at
// is when the route next needs a lease, its index entry (-1: none).
var leaseScript = drainScript(indexLua + changeLua + leaseLua + `
return lease(KEYS, ARGV)
`)

// leaseLua defines lease(KEYS, ARGV, changed), the body of leaseScript,
// for the scripts that lease; changed says the caller changed the route
// already, so that a change is logged even when the lease moves nothing.
const leaseLua = `
local function lease(KEYS, ARGV, changed)
local now = tonumber(ARGV[1])
local prefix = ARGV[5]
local single = KEYS[9] ~= nil
local moved = changed or false
local trial = ARGV[9] == '1'
if single then redis.call('SREM', KEYS[9], ARGV[8]) end

-- entry is what the lease returns for message id, from the first nine
-- fields of an HMGET in the order route, app, from, to, body, sub, exp,
-- att, err.
local function entry(id, m)
  return {id, m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9] or ''}
end

local function summary(leased)
  local seq = redis.call('INCR', KEYS[7])
  local deadline = -1
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if first[2] then deadline = tonumber(first[2]) end
  local next = -1
  if redis.call('EXISTS', KEYS[5]) == 1 then
    next = -2
  else
    first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    if first[2] then next = tonumber(first[2]) end
  end
  local at = next
  if next == -2 then
    at = now + tonumber(ARGV[7])
  elseif deadline >= 0 and (at < 0 or deadline < at) then
    at = deadline
  end
  if single then
    setIndex(KEYS[10], KEYS[11], ARGV[8], seq, at)
    if moved then logChange(KEYS[12], ARGV[8], now) end
  end
  return {next, leased, seq, deadline, at}
end

if redis.call('EXISTS', KEYS[8]) == 1 then
  local again = {}
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[8])) do
    local key = prefix .. id
    local m = redis.call('HMGET', key, 'route', 'app', 'from', 'to', 'body', 'sub', 'exp', 'att', 'err', 'lease', 'st', 'lu')
    if m[10] == ARGV[4] and m[11] == 'leased' then
      -- With the lease's end, which the first run set, not ARGV[2].
      local e = entry(id, m)
      table.insert(e, m[12] or '')
      table.insert(again, e)
    end
  end
  return summary(again)
end

-- expire dead-letters a message whose queue lifetime has run out; the
-- caller has taken it out of due.
local function expire(id, key, why, last)
  moved = true
  if not last or last == '' then last = 'no delivery attempt completed' end
  redis.call('ZREM', KEYS[4], id)
  redis.call('ZADD', KEYS[3], now, id)
  redis.call('HSET', key, 'st', 'dead', 'done', now, 'upd', now, 'why', why .. '; last error: ' .. last)
  redis.call('HDEL', key, 'lease', 'lu')
end

local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. now, 'LIMIT', 0, 100)
for _, id in ipairs(expired) do
  moved = true
  redis.call('ZREM', KEYS[2], id)
  local key = prefix .. id
  if redis.call('EXISTS', key) == 1 then
    redis.call('ZADD', KEYS[1], now, id)
    redis.call('HINCRBY', key, 'att', 1)
    -- Its send may have reached the upstream, whose answer nobody read:
    -- the ambiguity flag (fAmbiguous) has the next attempt ask first.
    redis.call('HSET', key, 'st', 'queued', 'lease', '', 'upd', now,
      'err', 'lease expired: the worker stopped before reporting a result', 'amb', '1')
  end
end

local held = redis.call('EXISTS', KEYS[5]) == 1
if held then
  local start = tonumber(redis.call('GET', KEYS[6]))
  if not start then
    start = now
    redis.call('SET', KEYS[6], ARGV[1])
  end
  local grace = tonumber(ARGV[6])
  local oldest = redis.call('ZRANGE', KEYS[4], 0, 99, 'WITHSCORES')
  for i = 1, #oldest, 2 do
    local id, sub = oldest[i], tonumber(oldest[i + 1])
    local key = prefix .. id
    local m = redis.call('HMGET', key, 'st', 'exp', 'err')
    if not m[1] then
      moved = true
      redis.call('ZREM', KEYS[4], id)
      redis.call('ZREM', KEYS[1], id)
    elseif m[1] ~= 'leased' then
      local credit = math.max(0, math.min(now - math.max(start, sub), grace))
      if now >= tonumber(m[2]) + credit then
        redis.call('ZREM', KEYS[1], id)
        expire(id, key, 'queue lifetime exceeded while the route was held', m[3])
      end
    end
  end
  if not trial then return summary({}) end
end

local leased = {}
local ids
if trial then
  -- The earliest of the first ten within their lifetime before any
  -- time held is credited: the credit is given on release, and a
  -- trial that failed would dead-letter the others (settle).
  ids = {}
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, 9)) do
    local exp = tonumber(redis.call('HGET', prefix .. id, 'exp') or '0')
    if exp > now then
      ids = {id}
      break
    end
  end
else
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
end
for _, id in ipairs(ids) do
  moved = true
  local key = prefix .. id
  redis.call('ZREM', KEYS[1], id)
  local m = redis.call('HMGET', key, 'route', 'app', 'from', 'to', 'body', 'sub', 'exp', 'att', 'err')
  if m[1] then
    if tonumber(m[7]) <= now then
      expire(id, key, 'queue lifetime exceeded', m[9])
    else
      redis.call('ZADD', KEYS[2], ARGV[2], id)
      redis.call('HSET', key, 'st', 'leased', 'lease', ARGV[4], 'lu', ARGV[2], 'upd', now)
      redis.call('HDEL', key, 'settled')
      table.insert(leased, entry(id, m))
      redis.call('SADD', KEYS[8], id)
    end
  end
end
if #leased > 0 then
  redis.call('PEXPIREAT', KEYS[8], ARGV[2])
end
return summary(leased)
end
`

// extendScript moves a lease's deadline.
//
// KEYS[1] message hash, KEYS[2] leased.
// ARGV[1] id, ARGV[2] lease token, ARGV[3] new deadline, ARGV[4] now.
//
// Returns 1, or 0 when the lease is no longer held by this token.
var extendScript = drainScript(`
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[2] or redis.call('HGET', KEYS[1], 'st') ~= 'leased' then
  return 0
end
redis.call('ZADD', KEYS[2], 'XX', ARGV[3], ARGV[1])
redis.call('HSET', KEYS[1], 'lu', ARGV[3], 'upd', ARGV[4])
return 1
`)

// settleScript ends a lease.
//
// KEYS[1] message hash, KEYS[2] due, KEYS[3] leased, KEYS[4] dead,
// KEYS[5] live; on a single server also KEYS[6], the due index's dirty
// set, which a message back in the queue marks its route in (ARGV[9]),
// and KEYS[7], the change log; on Redis Cluster settle marks the route
// in a call of its own.
// ARGV[1] id, ARGV[2] lease token, ARGV[3] now, ARGV[4] outcome: "ack",
// "retry" or "dead", ARGV[5] last reply or error, ARGV[6] attempts to add
// (0 or 1), ARGV[7] due time for "retry", ARGV[8] how long a delivered
// message's record is kept, in ms, ARGV[9] the route, ARGV[10] the
// ambiguity flag's field, set to "1" unless the outcome is "ack", or ""
// (absent from the ack-and-lease script's call).
//
// A "retry" of a message past its expiry dead-letters it. Returns the
// state the message is now in, or 0 when the lease is no longer held by
// this token. Settling is idempotent: run again with the same token and
// outcome (as a client's retry after a lost reply does), it changes
// nothing and returns the state the first run left, as long as the
// message was not leased again since.
var settleScript = drainScript(changeLua + settleLua + `
return settle(KEYS, ARGV)
`)

// settleLua defines settle(KEYS, ARGV), the body of settleScript, for the
// scripts that settle.
const settleLua = `
local function settle(KEYS, ARGV)
local done = redis.call('HMGET', KEYS[1], 'settled', 'st')
if done[1] and done[1] == ARGV[2] .. ':' .. ARGV[4] then return done[2] end
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[2] or done[2] ~= 'leased' then
  return 0
end
local now = tonumber(ARGV[3])
local outcome = ARGV[4]
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[1], 'lease', 'lu')
redis.call('HINCRBY', KEYS[1], 'att', tonumber(ARGV[6]))
redis.call('HSET', KEYS[1], 'settled', ARGV[2] .. ':' .. ARGV[4], 'err', ARGV[5], 'upd', now)
if ARGV[10] and ARGV[10] ~= '' and outcome ~= 'ack' then redis.call('HSET', KEYS[1], ARGV[10], '1') end
if KEYS[7] then logChange(KEYS[7], ARGV[9], now) end

if outcome == 'retry' and tonumber(redis.call('HGET', KEYS[1], 'exp')) <= now then
  outcome = 'dead'
  ARGV[5] = 'queue lifetime exceeded; last error: ' .. ARGV[5]
end

if outcome == 'ack' then
  redis.call('ZREM', KEYS[5], ARGV[1])
  redis.call('HSET', KEYS[1], 'st', 'delivered', 'done', now)
  redis.call('HDEL', KEYS[1], 'body')
  redis.call('PEXPIRE', KEYS[1], ARGV[8])
  return 'delivered'
elseif outcome == 'dead' then
  redis.call('ZREM', KEYS[5], ARGV[1])
  redis.call('ZADD', KEYS[4], now, ARGV[1])
  redis.call('HSET', KEYS[1], 'st', 'dead', 'done', now, 'why', ARGV[5])
  return 'dead'
end
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[1])
redis.call('HSET', KEYS[1], 'st', 'queued')
if KEYS[6] then redis.call('SADD', KEYS[6], ARGV[9]) end
return 'queued'
end
`

// ackLeaseScript acks one leased message of a route, as settleScript
// does, then leases from the route as leaseScript does: a worker that
// delivered a message takes the next in the same round trip. When the
// ack finds the lease lost, nothing is leased. Run again with the same
// tokens, it changes nothing and returns what the first run leased.
//
// KEYS: leaseScript's (8, or 12 on a single server), then the acked
// message's hash. ARGV: leaseScript's 8, then the acked message's id,
// its lease token, the upstream's reply and how long a delivered
// message's record is kept, in ms.
//
// Returns {0} when the ack found the lease lost, else leaseScript's
// answer.
var ackLeaseScript = drainScript(indexLua + changeLua + leaseLua + settleLua + `
local n = #KEYS - 1
local lk, la = {}, {}
for i = 1, n do lk[i] = KEYS[i] end
for i = 1, 8 do la[i] = ARGV[i] end
-- The ack's change is logged by the lease, once.
local sk = {KEYS[n + 1], KEYS[1], KEYS[2], KEYS[3], KEYS[4]}
local st = settle(sk, {ARGV[9], ARGV[10], ARGV[1], 'ack', ARGV[11], 1, 0, ARGV[12], ARGV[8]})
if st ~= 'delivered' then return {0} end
return lease(lk, la, true)
`)

// requeueScript moves a dead letter back to the queue, due now, with a new
// queue lifetime. Its attempt history is kept.
//
// KEYS[1] message hash, KEYS[2] due, KEYS[3] dead, KEYS[4] live.
// ARGV[1] id, ARGV[2] now, ARGV[3] new expiry time.
//
// Returns 1, or 0 when the message is not a dead letter.
var requeueScript = drainScript(`
if redis.call('ZREM', KEYS[3], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], redis.call('HGET', KEYS[1], 'sub'), ARGV[1])
redis.call('HSET', KEYS[1], 'st', 'queued', 'exp', ARGV[3], 'upd', ARGV[2])
redis.call('HDEL', KEYS[1], 'why', 'done')
return 1
`)

// releaseScript hands back the messages a lease token still holds: due
// now, without spending an attempt. It is for leases that failed, which
// Redis may have run all the same.
//
// KEYS[1] the token's lease set, KEYS[2] leased, KEYS[3] due. ARGV[1]
// the token, ARGV[2] now, ARGV[3] the prefix of the message keys.
//
// Returns how many messages it handed back.
var releaseScript = drainScript(`
local n = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[3] .. id
  local m = redis.call('HMGET', key, 'lease', 'st')
  if m[1] == ARGV[1] and m[2] == 'leased' then
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZADD', KEYS[3], ARGV[2], id)
    redis.call('HSET', key, 'st', 'queued', 'lease', '', 'upd', ARGV[2])
    redis.call('HDEL', key, 'lu')
    n = n + 1
  end
end
redis.call('DEL', KEYS[1])
return n
`)

// withdrawScript makes sure a message whose Enqueue failed is not stored:
// if it was stored and no worker has leased it, it is deleted; if it was
// not stored yet, its id is marked so that the Enqueue, should it still
// run, stores nothing.
//
// KEYS[1] message hash, KEYS[2] due, KEYS[3] leased, KEYS[4] dead,
// KEYS[5] live, KEYS[6] the id's withdrawal mark. ARGV[1] id, ARGV[2] how
// long the mark is kept, in ms.
//
// Returns 1 when the message was deleted, 0 when it was not stored, or
// -1 when it was stored and a worker has leased or settled it since.
var withdrawScript = drainScript(removeLua + `
local st = redis.call('HGET', KEYS[1], 'st')
if st and st ~= 'queued' then return -1 end
redis.call('SET', KEYS[6], '1', 'PX', ARGV[2])
if not st then return 0 end
return remove(KEYS, ARGV[1])
`)

// deleteScript removes a message from its route, a move's moving set
// included, and deletes it, unless a move running off the route may take
// it (see lockMoves): a message waiting, or moving, while the route's move
// lock is held stays, so that it is not moved once deleted.
//
// KEYS[1] message hash, KEYS[2] due, KEYS[3] leased, KEYS[4] dead,
// KEYS[5] live, KEYS[6] moving, KEYS[7] the route's move lock. ARGV[1] id.
//
// Returns {1}, {0} when there was no such message, or {2, the lock's time
// left in ms} when a move holds the lock.
var deleteScript = drainScript(removeLua + `
local st = redis.call('HGET', KEYS[1], '` + fState + `')
if (st == '` + stQueued + `' or st == '` + stMoving + `') and redis.call('EXISTS', KEYS[7]) == 1 then
  return {2, redis.call('PTTL', KEYS[7])}
end
redis.call('SREM', KEYS[6], ARGV[1])
return {remove(KEYS, ARGV[1])}
`)

// removeLua defines remove(KEYS, id), for the scripts that delete a
// message: it takes id out of its route's sets (KEYS[2] to KEYS[5]: due,
// leased, dead, live) and deletes its hash (KEYS[1]). Returns 1, or 0
// when there was no hash.
const removeLua = `
local function remove(KEYS, id)
  for i = 2, 5 do redis.call('ZREM', KEYS[i], id) end
  return redis.call('DEL', KEYS[1])
end
`

// flushScript makes every scheduled message of a route due now.
//
// KEYS[1] due. ARGV[1] now. Returns how many messages it moved.
var flushScript = drainScript(`
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[1], id) end
return #ids
`)

// movingCount is a Lua function the stats and summary scripts share: it
// counts the messages of a route's moving set that are moving on that
// route, as List lists them: an entry whose message is gone, or no
// longer moving there, is not counted. A move leaves few messages in the
// set.
var movingCount = `
local function movingCount(moving)
  local n = 0
  for _, id in ipairs(redis.call('SMEMBERS', moving)) do
    local m = redis.call('HMGET', ` + movingMsgKey + `, '` + fState + `', '` + fRoute + `')
    if m[1] == '` + stMoving + `' and m[2] and ` + luaRouteKey(luaRouteBase(movingRoutePrefix, "m[2]"), kindMoving) + ` == moving then
      n = n + 1
    end
  end
  return n
end
`

var movingMsgKey, movingRoutePrefix = luaTagKeys("id")

// dueCounts is a Lua function the stats and summary scripts share: it
// counts the due set of a route that is not held and returns its ready
// and scheduled messages, the earliest due time of a ready one and the
// earliest due time of a scheduled one (-1 for none). The first two
// members tell most routes' counts (one message, or none due yet, or only
// the first due); ZCARD and ZCOUNT run only when they do not, and the
// earliest scheduled one is looked up only when some are ready and some
// scheduled.
const dueCounts = `
local function dueCounts(due, now)
  local head = redis.call('ZRANGE', due, 0, 1, 'WITHSCORES')
  if not head[2] then return 0, 0, -1, -1 end
  local total = 1
  if head[4] then total = redis.call('ZCARD', due) end
  local earliest = tonumber(head[2])
  if earliest > now then return 0, total, -1, earliest end
  if not head[4] then return 1, 0, earliest, -1 end
  local second = tonumber(head[4])
  if second > now then return 1, total - 1, earliest, second end
  local ready = redis.call('ZCOUNT', due, '-inf', now)
  local untl = -1
  if ready < total then
    untl = tonumber(redis.call('ZRANGEBYSCORE', due, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)[2])
  end
  return ready, total - ready, earliest, untl
end
`

// routeStat is the Lua function both stats scripts share: it appends
// nine values for one route to out: ready, scheduled, leased, held,
// dead, oldest submit time or -1, hold reason or false, earliest due time
// of a ready message or -1, and the messages in its moving set. A scrape
// runs it for every route, so it spends as few calls as it can: an empty
// route (no message waiting, no dead letter, not held, none in a move)
// costs one call; a route whose only key is its live set (messages
// waiting, none leased or dead, not held: the common case) costs three,
// and up to five when more than one of its messages is due; any other
// route reads its hold reason and counts its leased, dead and moving
// messages as well.
var routeStat = movingCount + dueCounts + `
local function stat(due, leased, dead, live, hold, moving, now, out)
  local n = #out
  local keys = redis.call('EXISTS', live, dead, hold, leased, moving)
  if keys == 0 then
    out[n+1], out[n+2], out[n+3], out[n+4], out[n+5], out[n+6], out[n+7], out[n+8], out[n+9] = 0, 0, 0, 0, 0, -1, false, -1, 0
    return
  end
  local ready, scheduled, nleased, held, ndead, oldest, since, nmoving = 0, 0, 0, 0, 0, -1, -1, 0
  local reason = false
  local first = redis.call('ZRANGE', live, 0, 0, 'WITHSCORES')
  if keys > 1 or not first[2] then
    reason = redis.call('GET', hold)
    ndead = redis.call('ZCARD', dead)
    nmoving = movingCount(moving)
    if first[2] then nleased = redis.call('ZCARD', leased) end
  end
  if first[2] then
    oldest = tonumber(first[2])
    if reason then
      held = redis.call('ZCARD', due)
    else
      ready, scheduled, since = dueCounts(due, now)
    end
  end
  out[n+1], out[n+2], out[n+3], out[n+4] = ready, scheduled, nleased, held
  out[n+5], out[n+6], out[n+7], out[n+8], out[n+9] = ndead, oldest, reason, since, nmoving
end
`

// statsScript counts one route's messages by state (see routeStat).
//
// KEYS[1] due, KEYS[2] leased, KEYS[3] dead, KEYS[4] live, KEYS[5] hold,
// KEYS[6] moving. ARGV[1] now.
var statsScript = redis.NewScript(routeStat + `
local out = {}
stat(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], tonumber(ARGV[1]), out)
return out
`)

// statsBatchScript counts the messages of many routes on a single Redis
// server (never Redis Cluster, where every key a script reads must be
// declared and in one slot). It builds each route's keys from the route's
// key prefix, which is a fifth of the bytes of its five key names.
//
// ARGV[1] now, ARGV[2...] the routes' key prefixes (routeKeyPrefix(tag)
// + route + ":").
var statsBatchScript = redis.NewScript(routeStat + `
local now = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV do
  local p = ARGV[i]
  stat(` + luaRouteKey("p", kindDue) + `, ` + luaRouteKey("p", kindLeased) + `, ` + luaRouteKey("p", kindDead) + `,
    ` + luaRouteKey("p", kindLive) + `, ` + luaRouteKey("p", kindHold) + `, ` + luaRouteKey("p", kindMoving) + `, now, out)
end
return out
`)

// getScript reads a message with its due time and its route's hold reason
// in one atomic step.
//
// KEYS[1] message hash. ARGV[1] the prefix of the route keys of the
// message's tag ("hf:{T}:r:"), ARGV[2] the id, ARGV[3..] the hash fields
// to read.
//
// Returns the field values, then the due time (false unless queued), then
// the route's hold reason (false unless held), then the record's time to
// live in ms (-1 when it has none); or an empty list when there is no such
// message.
var getScript = redis.NewScript(`
local route = redis.call('HGET', KEYS[1], 'route')
if not route then return {} end
local out = redis.call('HMGET', KEYS[1], unpack(ARGV, 3))
local base = ` + luaRouteBase("ARGV[1]", "route") + `
out[#out + 1] = redis.call('ZSCORE', ` + luaRouteKey("base", kindDue) + `, ARGV[2]) or ''
out[#out + 1] = redis.call('GET', ` + luaRouteKey("base", kindHold) + `) or ''
out[#out + 1] = redis.call('PTTL', KEYS[1])
return out
`)
