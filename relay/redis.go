package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/redis/go-redis/v9"
)

// RedisClient returns a client for the configured Redis: a single node, or
// a Redis Cluster when several addresses are given or Cluster is set.
//
// The timeouts are chosen, not left to go-redis: DialTimeout, ReadTimeout
// and WriteTimeout come from the options (5s, 3s, 3s by default), and a
// context's deadline also bounds each command's network I/O
// (ContextTimeoutEnabled), so that a hung Redis fails an ingress write at
// its deadline and /readyz within a second.
func RedisClient(o RedisOptions) redis.UniversalClient {
	return followFailover(redis.NewUniversalClient(&redis.UniversalOptions{
		Addrs:                 o.Addrs,
		IsClusterMode:         o.Cluster,
		Username:              o.Username,
		Password:              o.Password,
		DB:                    o.DB,
		DialTimeout:           o.DialTimeout.D(),
		ReadTimeout:           o.ReadTimeout.D(),
		WriteTimeout:          o.WriteTimeout.D(),
		ContextTimeoutEnabled: true,
	}))
}

// NewLogger returns the logger the options ask for, writing to w.
func NewLogger(o LogOptions, w io.Writer) *slog.Logger {
	level, err := parseLevel(o.Level)
	if err != nil {
		level = slog.LevelInfo
	}
	ho := &slog.HandlerOptions{Level: level}
	if o.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, ho))
	}
	return slog.New(slog.NewTextHandler(w, ho))
}

// pingRedis reports whether Redis answers PING within ctx, saying what is
// wrong when it does not.
func pingRedis(ctx context.Context, rdb redis.UniversalClient) error {
	err := rdb.Ping(ctx).Err()
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		return fmt.Errorf("redis did not answer PING in time (hung, stopped or overloaded): %w", err)
	}
	return fmt.Errorf("redis unreachable: %w", err)
}
