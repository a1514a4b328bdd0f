package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// AuthThrottle counts failed authentications per client IP and per user
// name in Redis, so that every replica shares one count, in the spirit of
// Postfix's anvil: past Max failures within Window, further attempts from
// that IP or for that user are refused without checking the password,
// until the window, which starts at the first failure, passes. A success
// resets nothing: neither its own count nor another IP's.
//
// A user's block does not refuse the IPs that authenticated as that user
// within KnownFor: otherwise anyone who knows an application's user name
// could lock the application out by guessing from other addresses. Those
// IPs stay under their own IP count.
type AuthThrottle struct {
	rdb    redis.UniversalClient
	max    int64
	window time.Duration

	mu sync.Mutex
	// recorded is when this process last recorded each user and IP as
	// known, so that a success writes to Redis once per knownRefresh.
	recorded map[[2]string]time.Time
}

// KnownFor is how long an IP that authenticated as a user is exempt from
// that user's block.
const KnownFor = 7 * 24 * time.Hour

// knownRefresh is how often a process records again a user and IP that
// keep authenticating.
const knownRefresh = time.Hour

// maxRecorded bounds the process's memory of recorded users and IPs.
const maxRecorded = 10000

// NewAuthThrottle returns a throttle allowing max failures per window.
func NewAuthThrottle(rdb redis.UniversalClient, max int, window time.Duration) *AuthThrottle {
	return &AuthThrottle{rdb: rdb, max: int64(max), window: window, recorded: map[[2]string]time.Time{}}
}

// Known reports whether ip authenticated as user within KnownFor.
func (a *AuthThrottle) Known(ctx context.Context, ip, user string) (bool, error) {
	if ip == "" || user == "" {
		return false, nil
	}
	at, err := a.rdb.ZScore(ctx, authKnownKey(user), ip).Result()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("auth throttle: %w", err)
	}
	return time.Since(time.UnixMilli(int64(at))) < KnownFor, nil
}

// Remember records that ip authenticated as user, unless this process did
// within knownRefresh. The caller calls it after every verified success,
// and only then: Succeeded also takes back attempts that were never
// checked.
func (a *AuthThrottle) Remember(ctx context.Context, ip, user string) error {
	if ip == "" || user == "" {
		return nil
	}
	now := time.Now()
	k := [2]string{user, ip}
	a.mu.Lock()
	if t, ok := a.recorded[k]; ok && now.Sub(t) < knownRefresh {
		a.mu.Unlock()
		return nil
	}
	if len(a.recorded) >= maxRecorded {
		clear(a.recorded)
	}
	a.recorded[k] = now
	a.mu.Unlock()
	key := authKnownKey(user)
	pipe := a.rdb.Pipeline()
	pipe.ZAdd(ctx, key, redis.Z{Score: float64(now.UnixMilli()), Member: ip})
	pipe.ZRemRangeByScore(ctx, key, "-inf", strconv.FormatInt(now.Add(-KnownFor).UnixMilli(), 10))
	pipe.PExpire(ctx, key, KnownFor)
	if _, err := pipe.Exec(ctx); err != nil {
		a.mu.Lock()
		delete(a.recorded, k)
		a.mu.Unlock()
		return fmt.Errorf("auth throttle: %w", err)
	}
	return nil
}

// Block is a refusal: who is blocked and for how long yet.
type Block struct {
	Kind  string // "ip" or "user"
	Name  string
	Until time.Duration // time left in the window
}

// Blocked reports whether ip or user (either may be "") has used up its
// failures. It returns nil when neither is blocked.
func (a *AuthThrottle) Blocked(ctx context.Context, ip, user string) (*Block, error) {
	type probe struct {
		kind, name string
		n          *redis.StringCmd
		ttl        *redis.DurationCmd
	}
	var probes []probe
	pipe := a.rdb.Pipeline()
	for _, p := range []probe{{kind: "ip", name: ip}, {kind: "user", name: user}} {
		if p.name == "" {
			continue
		}
		k := authFailKey(p.kind, p.name)
		p.n, p.ttl = pipe.Get(ctx, k), pipe.PTTL(ctx, k)
		probes = append(probes, p)
	}
	if len(probes) == 0 {
		return nil, nil
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("auth throttle: %w", err)
	}
	for _, p := range probes {
		n, err := p.n.Int64()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("auth throttle: %w", err)
		}
		if n >= a.max {
			if p.kind == "user" {
				if ok, err := a.Known(ctx, ip, user); err != nil || ok {
					return nil, err
				}
			}
			return &Block{Kind: p.kind, Name: p.name, Until: max(p.ttl.Val(), 0)}, nil
		}
	}
	return nil, nil
}

// Failed counts a failed authentication from ip for user (either may be
// "").
func (a *AuthThrottle) Failed(ctx context.Context, ip, user string) error {
	for _, k := range []struct{ kind, name string }{{"ip", ip}, {"user", user}} {
		if k.name == "" {
			continue
		}
		if err := countScript.Run(ctx, a.rdb, []string{authFailKey(k.kind, k.name)}, a.window.Milliseconds()).Err(); err != nil {
			return fmt.Errorf("auth throttle: %w", err)
		}
	}
	return nil
}

// Attempt counts an authentication about to be checked as a failure before
// it is checked, and returns the block that refuses it when the count
// went past Max. Counting first makes the limit hold for attempts that
// run at the same time, even on several replicas: at most Max checks run
// per window. A check that then succeeds calls Succeeded.
func (a *AuthThrottle) Attempt(ctx context.Context, ip, user string) (*Block, error) {
	for _, k := range []struct{ kind, name string }{{"ip", ip}, {"user", user}} {
		if k.name == "" {
			continue
		}
		res, err := countScript.Run(ctx, a.rdb, []string{authFailKey(k.kind, k.name)}, a.window.Milliseconds()).Int64Slice()
		if err != nil {
			return nil, fmt.Errorf("auth throttle: %w", err)
		}
		if len(res) == 2 && res[0] > a.max {
			if k.kind == "user" {
				if ok, err := a.Known(ctx, ip, user); err != nil || ok {
					return nil, err
				}
			}
			return &Block{Kind: k.kind, Name: k.name, Until: time.Duration(max(res[1], 0)) * time.Millisecond}, nil
		}
	}
	return nil, nil
}

// Succeeded takes back the count of an Attempt whose check succeeded, or
// that could not be checked. It changes no other count: a success from
// one IP does not clear another's.
func (a *AuthThrottle) Succeeded(ctx context.Context, ip, user string) error {
	for _, k := range []struct{ kind, name string }{{"ip", ip}, {"user", user}} {
		if k.name == "" {
			continue
		}
		if err := succeedScript.Run(ctx, a.rdb, []string{authFailKey(k.kind, k.name)}).Err(); err != nil {
			return fmt.Errorf("auth throttle: %w", err)
		}
	}
	return nil
}

// countScript counts one failure, or one attempt (see Attempt): KEYS[1]
// the counter, ARGV[1] the window in ms. The window starts at the first
// count. Returns {count, ms left in the window}.
var countScript = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if n == 1 or ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
`)

// succeedScript takes back one attempt: KEYS[1] the counter. A counter
// that has expired meanwhile is left alone.
var succeedScript = redis.NewScript(`
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 1 then
  redis.call('DECR', KEYS[1])
elseif n == 1 then
  redis.call('DEL', KEYS[1])
end
return n
`)

// Unblock clears the failures of a client IP (kind "ip") or a user name
// (kind "user"), and reports whether there were any.
func (a *AuthThrottle) Unblock(ctx context.Context, kind, name string) (bool, error) {
	if kind != "ip" && kind != "user" {
		return false, fmt.Errorf("auth throttle: unknown kind %q (ip or user)", kind)
	}
	n, err := a.rdb.Del(ctx, authFailKey(kind, name)).Result()
	if err != nil {
		return false, fmt.Errorf("auth throttle: %w", err)
	}
	return n > 0, nil
}
