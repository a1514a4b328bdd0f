package queue

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// Redis full. With maxmemory-policy noeviction (the durable setting),
// a Redis past its maxmemory refuses every command that may grow memory
// with "OOM command not allowed when used memory > 'maxmemory'". A queue
// that grew through a long hold reaches it, and then only delivering,
// dead-lettering or deleting mail frees memory. So new mail is refused,
// and everything that takes mail already queued towards delivery or out
// of Redis still runs: the scripts that do are declared with the Redis 7
// flag allow-oom (drainScript). What they add is small and bounded (a
// member per route or per connection, a field per message), and a
// delivery drops the message's body.
//
// The enqueue script is declared with no flags (storeScript): Redis then
// refuses it whole before it runs, so an OOM reply to an Enqueue means
// that nothing was stored.

// drainScript returns a script that Redis runs even past its maxmemory.
// A script with a shebang must declare every key it touches in one slot,
// as every queue script does on Redis Cluster.
func drainScript(src string) *redis.Script {
	return redis.NewScript("#!lua flags=allow-oom\n" + src)
}

// storeScript returns a script that Redis refuses whole, before it runs,
// when it is past its maxmemory.
func storeScript(src string) *redis.Script {
	return redis.NewScript("#!lua\n" + src)
}

// RedisFull reports whether err is Redis refusing a write because it
// reached its maxmemory (an OOM reply). A refused Enqueue stored nothing.
func RedisFull(err error) bool {
	return redis.IsOOMError(err)
}

// addScript adds members to a set (markDue's dirty routes, the route
// set), or, with ARGV[1] not empty, one member scored ARGV[1] to a
// sorted set, while Redis is full too.
//
// KEYS[1] the set. ARGV[1] the score or "", ARGV[2..] the members.
var addScript = drainScript(`
if ARGV[1] ~= '' then return redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2]) end
local n = 0
for i = 2, #ARGV do n = n + redis.call('SADD', KEYS[1], ARGV[i]) end
return n
`)

// add adds members to the set key, or one member scored score to the
// sorted set key when score is not empty, while Redis is full too.
func (q *Queue) add(ctx context.Context, key, score string, members ...string) error {
	args := make([]any, 0, len(members)+1)
	args = append(args, score)
	for _, m := range members {
		args = append(args, m)
	}
	return addScript.Run(ctx, q.rdb, []string{key}, args...).Err()
}
