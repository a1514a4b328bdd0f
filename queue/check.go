package queue

import (
	"context"
	"errors"
	"fmt"
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
// warning, not an error: the check cannot tell.
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
	var err error
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, check)
	case *redis.Client:
		err = check(ctx, c)
	default:
		warnings = append(warnings, fmt.Sprintf("cannot check durability of a %T", rdb))
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
	get := func(name string) (string, bool) {
		v, err := c.ConfigGet(ctx, name).Result()
		if err != nil {
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
	return warnings, nil
}
