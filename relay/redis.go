package relay

import (
	"io"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisClient returns a client for the configured Redis: a single node, or
// a Redis Cluster when several addresses are given or Cluster is set.
func RedisClient(o RedisOptions) redis.UniversalClient {
	return followFailover(redis.NewUniversalClient(&redis.UniversalOptions{
		Addrs:         o.Addrs,
		IsClusterMode: o.Cluster,
		Username:      o.Username,
		Password:      o.Password,
		DB:            o.DB,
		DialTimeout:   5 * time.Second,
		ReadTimeout:   10 * time.Second,
		WriteTimeout:  10 * time.Second,
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
