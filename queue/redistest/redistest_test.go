package redistest_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"holdfast/queue/redistest"
)

func TestServer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := redistest.Start(t)
	if strings.HasSuffix(s.Addr(), ":6379") || !strings.HasPrefix(s.Addr(), "127.0.0.1:") {
		t.Fatalf("Addr() = %q, want a 127.0.0.1 address other than port 6379", s.Addr())
	}
	c := s.Client(t)

	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET = %q, %v; want \"v\"", got, err)
	}
	wantConfig(t, c, "appendonly", "yes")
	wantConfig(t, c, "maxmemory-policy", "noeviction")

	// With appendfsync everysec a write is on disk at most about a second
	// after it was acknowledged.
	time.Sleep(1500 * time.Millisecond)
	s.Kill(t)
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING to a killed server succeeded")
	}
	s.Kill(t)

	addr := s.Addr()
	s.Restart(t)
	if s.Addr() != addr {
		t.Fatalf("Addr() after Restart = %q, want %q", s.Addr(), addr)
	}
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET after restart = %q, %v; want \"v\"", got, err)
	}

	s.Stop(t)
	s.Stop(t)
	s.Kill(t)
}

func TestWithArgs(t *testing.T) {
	t.Parallel()
	s := redistest.Start(t, redistest.WithArgs("--appendonly", "no", "--maxmemory-policy", "allkeys-lru"))
	c := s.Client(t)
	wantConfig(t, c, "appendonly", "no")
	wantConfig(t, c, "maxmemory-policy", "allkeys-lru")
}

func TestCluster(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cl := redistest.StartCluster(t, 3)
	if n := len(cl.Addrs()); n != 3 {
		t.Fatalf("len(Addrs()) = %d, want 3", n)
	}
	c := cl.Client(t)

	slots := map[int64]bool{}
	for i := range 30 {
		key := fmt.Sprintf("key-%d", i)
		if err := c.Set(ctx, key, i, 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", key, err)
		}
		got, err := c.Get(ctx, key).Int()
		if err != nil || got != i {
			t.Fatalf("GET %s = %d, %v; want %d", key, got, err, i)
		}
		slot, err := c.ClusterKeySlot(ctx, key).Result()
		if err != nil {
			t.Fatalf("CLUSTER KEYSLOT %s: %v", key, err)
		}
		slots[slot] = true
	}
	if len(slots) < 2 {
		t.Fatalf("keys used %d slots, want several", len(slots))
	}

	// With 30 keys spread over the slots every master holds some.
	err := c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		info, err := m.ClusterInfo(ctx).Result()
		if err != nil {
			return err
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return fmt.Errorf("%s: CLUSTER INFO without cluster_state:ok:\n%s", m.Options().Addr, info)
		}
		n, err := m.DBSize(ctx).Result()
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("%s holds no keys", m.Options().Addr)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func wantConfig(t *testing.T, c *redis.Client, name, want string) {
	t.Helper()
	got, err := c.ConfigGet(context.Background(), name).Result()
	if err != nil {
		t.Fatalf("CONFIG GET %s: %v", name, err)
	}
	if got[name] != want {
		t.Fatalf("CONFIG GET %s = %q, want %q", name, got[name], want)
	}
}
