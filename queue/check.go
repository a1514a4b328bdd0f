package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// ErrNotDurable is returned by CheckDurability in strict mode when Redis
// could lose or evict accepted mail.
var ErrNotDurable = errors.New("redis is not configured to keep mail durably")

// CheckDurability checks that every Redis node (every master on Redis
// Cluster) has AOF on, appendfsync other than "no", and maxmemory-policy
// noeviction, without which accepted mail can be lost on restart or a host
// crash, or evicted under memory pressure, and that it runs Redis 7.0 or
// later, without which no message is stored or delivered.
// It returns one warning per problem found. With strict, any problem is
// also an error wrapping ErrNotDurable.
//
// A node that refuses CONFIG GET (managed services often rename it) gives a
// warning, not an error: the check cannot tell. One that does not answer
// it in time fails the check, with an error that does not wrap
// ErrNotDurable: a Redis slow for a moment is not one found not durable.
func CheckDurability(ctx context.Context, rdb redis.UniversalClient, strict bool) ([]string, error) {
	var (
		mu       sync.Mutex
		warnings []string
	)
	check := func(ctx context.Context, c *redis.Client) error {
		w, err := checkNode(ctx, c)
		mu.Lock()
		warnings = append(warnings, w...)
		mu.Unlock()
		return err
	}
	err := forEachNode(ctx, rdb, check)
	if errors.Is(err, errUnknownClient) {
		warnings, err = append(warnings, fmt.Sprintf("cannot check durability of a %T", rdb)), nil
	}
	if err != nil {
		return warnings, fmt.Errorf("check redis durability: %w", err)
	}
	if strict && len(warnings) > 0 {
		return warnings, fmt.Errorf("%w: %s", ErrNotDurable, strings.Join(warnings, "; "))
	}
	return warnings, nil
}

func checkNode(ctx context.Context, c *redis.Client) ([]string, error) {
	addr := c.Options().Addr
	if err := c.Ping(ctx).Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", addr, err)
	}
	var warnings []string
	// The queue's scripts carry Redis 7 flags (see full.go): an older
	// Redis refuses every one of them.
	if info, err := c.Info(ctx, "server").Result(); err == nil {
		if v := infoValue(info, "redis_version"); v != "" && !versionAtLeast(v, 7, 0) {
			warnings = append(warnings, fmt.Sprintf("%s: Redis %s: Holdfast needs Redis 7.0 or later; upgrade Redis", addr, v))
		}
	}
	// A refusal (an error reply) is a warning: the check cannot tell. Any
	// other error (a timeout, a connection lost) fails the check, which
	// then says nothing of the configuration.
	var failed error
	get := func(name string) (string, bool) {
		if failed != nil {
			return "", false
		}
		v, err := c.ConfigGet(ctx, name).Result()
		var reply redis.Error
		switch {
		case err != nil && !errors.As(err, &reply):
			failed = fmt.Errorf("%s: CONFIG GET %s: %w", addr, name, err)
			return "", false
		case err != nil:
			warnings = append(warnings, fmt.Sprintf("%s: cannot read %s (%v); check it by hand (with redis.strict, turn strict off once checked)", addr, name, err))
			return "", false
		}
		return v[name], true
	}
	if v, ok := get("appendonly"); ok && v != "yes" {
		warnings = append(warnings, fmt.Sprintf("%s: appendonly is %q: accepted mail is lost if Redis restarts; set appendonly yes", addr, v))
	}
	if v, ok := get("appendfsync"); ok && v == "no" {
		warnings = append(warnings, fmt.Sprintf("%s: appendfsync is \"no\": the kernel decides when the AOF reaches the disk, and a host crash loses the mail of the last 30 seconds or more; set appendfsync everysec or always", addr))
	}
	if v, ok := get("maxmemory-policy"); ok && v != "noeviction" {
		warnings = append(warnings, fmt.Sprintf("%s: maxmemory-policy is %q: Redis may evict queued mail under memory pressure; set maxmemory-policy noeviction", addr, v))
	}
	if failed != nil {
		return nil, failed
	}
	return warnings, nil
}

// NodeMemory is one Redis server's memory use, from INFO memory.
type NodeMemory struct {
	Addr string
	// Used is used_memory, what Redis compares with its maxmemory.
	Used int64
	// Max is maxmemory; 0 when none is set.
	Max int64
}

// MemoryUse reads the memory use of the Redis server, or of every
// master of a Redis Cluster. A queue whose Redis reaches its maxmemory
// refuses new mail (see full.go).
func MemoryUse(ctx context.Context, rdb redis.UniversalClient) ([]NodeMemory, error) {
	var (
		mu  sync.Mutex
		out []NodeMemory
	)
	read := func(ctx context.Context, c *redis.Client) error {
		info, err := c.Info(ctx, "memory").Result()
		if err != nil {
			return fmt.Errorf("%s: %w", c.Options().Addr, err)
		}
		used, err1 := strconv.ParseInt(infoValue(info, "used_memory"), 10, 64)
		max, err2 := strconv.ParseInt(infoValue(info, "maxmemory"), 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return fmt.Errorf("%s: INFO memory: %w", c.Options().Addr, err)
		}
		mu.Lock()
		out = append(out, NodeMemory{Addr: c.Options().Addr, Used: used, Max: max})
		mu.Unlock()
		return nil
	}
	if err := forEachNode(ctx, rdb, read); err != nil {
		return nil, fmt.Errorf("redis memory use: %w", err)
	}
	slices.SortFunc(out, func(a, b NodeMemory) int { return strings.Compare(a.Addr, b.Addr) })
	return out, nil
}

// errUnknownClient is forEachNode's error for a client that is neither a
// single server's nor a Cluster's.
var errUnknownClient = errors.New("not a Redis client or Cluster client")

// forEachNode runs fn on the Redis server, or at once on every master of
// a Redis Cluster.
func forEachNode(ctx context.Context, rdb redis.UniversalClient, fn func(context.Context, *redis.Client) error) error {
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		return c.ForEachMaster(ctx, fn)
	case *redis.Client:
		return fn(ctx, c)
	}
	return fmt.Errorf("%w: %T", errUnknownClient, rdb)
}
