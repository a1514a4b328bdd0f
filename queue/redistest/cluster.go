package redistest

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// clusterCreateTimeout bounds the run of redis-cli --cluster create.
	clusterCreateTimeout = 30 * time.Second
	// clusterReadyTimeout bounds the wait for every node to report a
	// healthy cluster.
	clusterReadyTimeout = 20 * time.Second
	// clusterSlots is the number of hash slots in a Redis Cluster.
	clusterSlots = 16384

	missingCLI = `redis-cli not found on PATH: install it (Debian: apt-get install redis-tools, which redis-server depends on) or run "make test", which installs it`
)

// Cluster is a Redis Cluster of master nodes owned by one test.
type Cluster struct {
	nodes []*Server
}

// StartCluster starts masters redis-server nodes with cluster mode on,
// joins them with redis-cli --cluster create and no replicas, and waits
// until every node reports cluster_state:ok with all slots assigned. Each
// node is a Server as started by Start and is stopped when the test ends.
// Redis Cluster needs at least 3 masters.
func StartCluster(t testing.TB, masters int) *Cluster {
	t.Helper()
	return startCluster(t, masters, 0)
}

// startCluster starts masters × (1 + replicas) nodes and joins them with
// redis-cli --cluster create --cluster-replicas replicas.
func startCluster(t testing.TB, masters, replicas int) *Cluster {
	t.Helper()
	if masters < 3 {
		t.Fatalf("redistest: a Redis Cluster needs at least 3 masters, got %d", masters)
	}
	lookPath(t, "redis-server", missingServer)
	cli := lookPath(t, "redis-cli", missingCLI)

	c := &Cluster{}
	for range masters * (1 + replicas) {
		c.nodes = append(c.nodes, Start(t, withCluster()))
	}

	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), clusterCreateTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redistest: redis-cli --cluster create: %v\n%s", err, out)
	}
	if err := c.waitReady(); err != nil {
		t.Fatalf("redistest: %v", err)
	}
	return c
}

// Addrs returns the addresses of the nodes.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addrs[i] = n.Addr()
	}
	return addrs
}

// Nodes returns the nodes of the cluster, for tests that kill or restart
// one of them.
func (c *Cluster) Nodes() []*Server {
	return append([]*Server(nil), c.nodes...)
}

// Client returns a cluster client for the cluster. It is closed when the
// test ends.
func (c *Cluster) Client(t testing.TB) *redis.ClusterClient {
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	t.Cleanup(func() {
		// The test may have closed the client itself already.
		_ = cc.Close()
	})
	return cc
}

// waitReady waits until every node reports cluster_state:ok, all slots
// assigned and all nodes known.
func (c *Cluster) waitReady() error {
	deadline := time.Now().Add(clusterReadyTimeout)
	for _, n := range c.nodes {
		rc := redis.NewClient(&redis.Options{Addr: n.Addr(), MaxRetries: -1, PoolSize: 1})
		err := waitClusterOK(rc, len(c.nodes), deadline)
		rc.Close()
		if err != nil {
			return fmt.Errorf("cluster node %s: %w", n.Addr(), err)
		}
	}
	return nil
}

// waitClusterOK polls CLUSTER INFO on rc until the node sees a healthy
// cluster of the given size or the deadline passes.
func waitClusterOK(rc *redis.Client, nodes int, deadline time.Time) error {
	want := map[string]string{
		"cluster_state":          "ok",
		"cluster_slots_assigned": strconv.Itoa(clusterSlots),
		"cluster_known_nodes":    strconv.Itoa(nodes),
	}
	var last string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		info, err := rc.ClusterInfo(ctx).Result()
		cancel()
		if err == nil {
			last = info
			if clusterInfoMatches(info, want) {
				return nil
			}
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("cluster info: %w", err)
			}
			return fmt.Errorf("cluster not ready within %v, last CLUSTER INFO:\n%s", clusterReadyTimeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func clusterInfoMatches(info string, want map[string]string) bool {
	for k, v := range want {
		if got, ok := infoField(info, k); !ok || got != v {
			return false
		}
	}
	return true
}
