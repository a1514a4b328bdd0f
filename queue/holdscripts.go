package queue

import "github.com/redis/go-redis/v9"

// The scripts that hold, release and prune routes. A hold or release
// carries a fence: the generation, per breaker, of the breaker records
// its caller acted on. The route's fence hash keeps the newest generation
// applied per breaker; a call with an older generation of any breaker
// than the one applied is stale and changes nothing, so a release decided
// on an old "closed" cannot undo a hold decided on a newer "open".

// fenceLua defines fenced(k, from): whether the name/generation pairs in
// ARGV[from..] are all at least as new as those applied to the fence hash
// k; and apply(k, from), which records them.
const fenceLua = `
local function fenced(k, from)
  for i = from, #ARGV, 2 do
    local cur = tonumber(redis.call('HGET', k, ARGV[i]) or '-1')
    if tonumber(ARGV[i + 1]) < cur then return false end
  end
  return true
end
local function apply(k, from)
  for i = from, #ARGV, 2 do
    redis.call('HSET', k, ARGV[i], ARGV[i + 1])
  end
end
`

// holdScript holds a route, or updates the reason of a held one. The hold
// start is only set when the route was not held, so a second hold keeps
// the first one's start.
//
// KEYS[1] hold, KEYS[2] held (hold start), KEYS[3] fence.
// ARGV[1] reason, ARGV[2] now, ARGV[3..] fence: breaker name, generation.
//
// Returns 1 when the route was newly held, 0 when it already was, -1 when
// the fence is stale. A hold adds state rather than draining any, so it
// is not a drainScript: with Redis full it fails (as does registerRoute
// before it), and the relay's reconciliation tries it again.
var holdScript = redis.NewScript(fenceLua + `
if not fenced(KEYS[3], 3) then return -1 end
apply(KEYS[3], 3)
local fresh = redis.call('EXISTS', KEYS[1]) == 0
if fresh then
  redis.call('SET', KEYS[2], ARGV[2])
else
  redis.call('SET', KEYS[2], ARGV[2], 'NX')
end
redis.call('SET', KEYS[1], ARGV[1])
if fresh then return 1 end
return 0
`)

// releaseChunkScript does one step of a route's release: it credits the
// live messages one ZSCAN step returns with the time they spent held, and
// when the scan is complete ends the hold. Each message gets
// min(now - max(hold start, submit), grace) added to its expiry, less
// what an earlier, interrupted release of the same hold already gave it
// (fields "hs", the hold start it was credited for, and "hc", how much).
// The fence is checked at every step, so a newer hold stops a release
// half-way; the route then stays held.
//
// KEYS[1] live, KEYS[2] hold, KEYS[3] held (hold start), KEYS[4] fence.
// ARGV[1] now, ARGV[2] held grace in ms, ARGV[3] message key prefix,
// ARGV[4] scan cursor ("0" to start), ARGV[5] scan count, ARGV[6..]
// fence: breaker name, generation.
//
// Returns {status, next cursor, credited}: status 1 when the route is no
// longer held, 0 when more steps are needed (from next cursor), -1 when
// the fence is stale.
var releaseChunkScript = drainScript(fenceLua + `
if not fenced(KEYS[4], 6) then return {-1, '0', 0} end
local now = tonumber(ARGV[1])
local grace = tonumber(ARGV[2])
local start = tonumber(redis.call('GET', KEYS[3]))
local credited = 0
local cursor = '0'
if start and redis.call('EXISTS', KEYS[2]) == 1 then
  local res = redis.call('ZSCAN', KEYS[1], ARGV[4], 'COUNT', ARGV[5])
  cursor = res[1]
  local live = res[2]
  for i = 1, #live, 2 do
    local total = math.min(now - math.max(start, tonumber(live[i + 1])), grace)
    local key = ARGV[3] .. live[i]
    if total > 0 then
      local m = redis.call('HMGET', key, 'route', 'hs', 'hc')
      if m[1] then
        local given = 0
        if tonumber(m[2]) == start then given = tonumber(m[3]) or 0 end
        if total > given then
          redis.call('HINCRBY', key, 'exp', total - given)
          redis.call('HSET', key, 'hs', start, 'hc', total)
          credited = credited + 1
        end
      end
    end
  end
end
if cursor ~= '0' then return {0, cursor, credited} end
apply(KEYS[4], 6)
redis.call('DEL', KEYS[2], KEYS[3])
return {1, '0', credited}
`)

// pruneScript deletes what is left of a route that has no message at
// all (none live, due, leased, dead or in its moving set): its hold and
// fence, and on a single server its lease sequence with the due index's
// entries for it.
// The sequence and the index's copy of it go together or not at all: a
// sequence started again under an older copy would have the route's
// index updates ignored (see setIndex). On Redis Cluster they are in
// different slots, so both stay.
//
// KEYS[1] due, KEYS[2] leased, KEYS[3] dead, KEYS[4] live, KEYS[5]
// moving, KEYS[6] hold, KEYS[7] held, KEYS[8] fence; on a single server
// also KEYS[9] the lease sequence, KEYS[10] the index's sequences,
// KEYS[11] the index and KEYS[12] its dirty set. ARGV[1] the route.
//
// Returns 1 when the route was empty, 0 otherwise.
var pruneScript = drainScript(`
for i = 1, 4 do
  if redis.call('ZCARD', KEYS[i]) > 0 then return 0 end
end
if redis.call('SCARD', KEYS[5]) > 0 then return 0 end
redis.call('DEL', KEYS[6], KEYS[7], KEYS[8])
if KEYS[9] then
  redis.call('DEL', KEYS[9])
  redis.call('HDEL', KEYS[10], ARGV[1])
  redis.call('ZREM', KEYS[11], ARGV[1])
  redis.call('SREM', KEYS[12], ARGV[1])
end
return 1
`)
