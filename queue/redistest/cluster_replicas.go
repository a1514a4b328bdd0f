package redistest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// StartClusterWithReplicas starts a Redis Cluster of masters masters, each
// with one replica (2 × masters nodes), joined with redis-cli --cluster
// create --cluster-replicas 1. A master that stops is replaced by its
// replica after the node timeout (5 s). Every node is stopped when the
// test ends.
func StartClusterWithReplicas(t testing.TB, masters int) *Cluster {
	t.Helper()
	return startCluster(t, masters, 1)
}

// Role returns "master" or "slave", as INFO replication says.
func (s *Server) Role(t testing.TB) string {
	t.Helper()
	rc := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1, PoolSize: 1})
	defer rc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	info, err := rc.Info(ctx, "replication").Result()
	if err != nil {
		t.Fatalf("redistest: INFO replication on %s: %v", s.Addr(), err)
	}
	role, _ := infoField(info, "role")
	return role
}

// ReplicaOf returns the node that replicates master.
func (c *Cluster) ReplicaOf(t testing.TB, master *Server) *Server {
	t.Helper()
	for _, n := range c.nodes {
		if n == master || n.Role(t) != "slave" {
			continue
		}
		rc := redis.NewClient(&redis.Options{Addr: n.Addr(), MaxRetries: -1, PoolSize: 1})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		info, err := rc.Info(ctx, "replication").Result()
		cancel()
		rc.Close()
		if err != nil {
			t.Fatalf("redistest: INFO replication on %s: %v", n.Addr(), err)
		}
		if port, _ := infoField(info, "master_port"); port == fmt.Sprint(master.port) {
			return n
		}
	}
	t.Fatalf("redistest: no replica of %s", master.Addr())
	return nil
}

// Promote waits up to d for replica to become a master and for the
// cluster, seen from it, to be healthy again. If the cluster has not
// promoted it by itself within half of d (its master's failure is
// detected after the node timeout, 5 s), Promote sends it CLUSTER
// FAILOVER TAKEOVER, as an operator would.
func (c *Cluster) Promote(t testing.TB, replica *Server, d time.Duration) (takeover bool) {
	t.Helper()
	start := time.Now()
	rc := redis.NewClient(&redis.Options{Addr: replica.Addr(), MaxRetries: -1, PoolSize: 1})
	defer rc.Close()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		info, err := rc.ClusterInfo(ctx).Result()
		cancel()
		if err == nil && replica.Role(t) == "master" && strings.Contains(info, "cluster_state:ok") {
			return takeover
		}
		if !takeover && time.Since(start) > d/2 {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err := rc.Do(ctx, "CLUSTER", "FAILOVER", "TAKEOVER").Err()
			cancel()
			if err != nil {
				t.Fatalf("redistest: CLUSTER FAILOVER TAKEOVER on %s: %v", replica.Addr(), err)
			}
			takeover = true
		}
		if time.Since(start) > d {
			t.Fatalf("redistest: %s not promoted with a healthy cluster within %v (%v):\n%s", replica.Addr(), d, err, info)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
