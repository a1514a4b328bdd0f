package queue_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

// fillRedis puts srv past its maxmemory, as a queue that grew during a long
// auth outage does: with maxmemory-policy noeviction, Redis then refuses
// every command flagged denyoom (SET, HSET, ZADD, HINCRBY, SADD, ...) with
// "OOM command not allowed when used memory > 'maxmemory'", and a Lua script
// whose first write is such a command.
func fillRedis(t *testing.T, srv *redistest.Server) {
	t.Helper()
	if err := srv.Client(t).ConfigSet(context.Background(), "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
}

// isOOM says whether err is Redis refusing a write for want of memory.
func isOOM(err error) bool {
	return err != nil && strings.Contains(err.Error(), "OOM")
}

// TestRedisFullDeliveryPath: with Redis full, ingress must refuse (it does),
// storing nothing, and everything that drains the queue must still work,
// since draining is the only thing that frees memory: lease, extend, ack,
// retry, ack-and-next, flush, marking a route due, releasing a held route
// (whose held hour is credited to its messages).
func TestRedisFullDeliveryPath(t *testing.T) {
	q, clk, srv := newQueue(t)
	testDrainWhileFull(t, q, clk, srv.Client(t), "crm", "held", func() { fillRedis(t, srv) })
}

// TestRedisFullDeliveryPathCluster is TestRedisFullDeliveryPath on a
// Redis Cluster, every master full: the scripts declared allow-oom touch
// only their declared keys' slot.
func TestRedisFullDeliveryPathCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	clk := newClock()
	rdb := c.Client(t)
	q := queue.New(rdb, queue.Options{Now: clk.Now})
	testDrainWhileFull(t, q, clk, rdb, "app:contoso", "app:fabrikam", func() {
		for _, n := range c.Nodes() {
			fillRedis(t, n)
		}
	})
}

func testDrainWhileFull(t *testing.T, q *queue.Queue, clk *clock, rdb redis.UniversalClient, route, held string, fill func()) {
	ctx := context.Background()
	for i := range 4 {
		enqueue(t, q, msg(route, i))
	}
	heldID := enqueue(t, q, msg(held, 9))
	hold(t, q, held, "breaker open")
	clk.Add(time.Hour) // held an hour: the release credits that hour to the message
	before := get(t, q, heldID).Expires
	// The dispatcher looks at the held route now and then; it is not due
	// again before HeldRecheck, unless a release marks it.
	if res := lease(t, q, held, 5, time.Minute); !res.Held {
		t.Fatalf("lease of a held route: %+v", res)
	}
	fill()

	id, _, err := q.Enqueue(ctx, msg(route, 5))
	if err == nil {
		t.Fatal("Enqueue succeeded on a full Redis")
	}
	if !isOOM(err) || !queue.RedisFull(err) {
		t.Errorf("Enqueue on a full Redis: %v, want an OOM error that RedisFull knows", err)
	}
	if id != "" {
		if _, err := q.Get(ctx, id); !errors.Is(err, queue.ErrNotFound) {
			t.Errorf("the message refused on a full Redis was stored (Get: %v)", err)
		}
	}

	res := lease(t, q, route, 3, time.Minute)
	if len(res.Leases) != 3 {
		t.Fatalf("lease on a full Redis: %+v", res)
	}
	if err := q.Extend(ctx, res.Leases[0], time.Minute); err != nil {
		t.Errorf("Extend on a full Redis: %v\n(keepLease abandons a send still running at two thirds of delivery.lease)", err)
	}
	if err := q.Ack(ctx, res.Leases[0], "250 2.0.0 OK"); err != nil {
		t.Errorf("Ack on a full Redis: %v", err)
	}
	if st, err := q.Retry(ctx, res.Leases[1], "421 4.7.0 try later"); err != nil || st != queue.Scheduled {
		t.Errorf("Retry on a full Redis: %v, %v", st, err)
	}
	if err := q.MarkAmbiguous(ctx, res.Leases[2].ID); err != nil {
		t.Errorf("MarkAmbiguous on a full Redis: %v\n(the next attempt would not ask whether the message went out)", err)
	}
	if next, err := q.AckNext(ctx, res.Leases[2], "250 2.0.0 OK", 1, time.Minute); err != nil || len(next.Leases) != 1 {
		t.Errorf("AckNext on a full Redis: %+v, %v", next, err)
	}
	if n, err := q.Flush(ctx, route); err != nil || n != 1 {
		t.Errorf("Flush (holdfast queue flush) on a full Redis = %d, %v; want the retried message", n, err)
	}

	if err := q.ReleaseRoute(ctx, held); err != nil {
		t.Errorf("ReleaseRoute on a full Redis: %v\n(the held backlog cannot be released, so it cannot drain and free memory)", err)
	}
	if _, isHeld, err := q.RouteHold(ctx, held); err != nil || isHeld {
		t.Errorf("after the release on a full Redis: held %v (%v)", isHeld, err)
	}
	if got := get(t, q, heldID).Expires; !got.Equal(before.Add(time.Hour)) {
		t.Errorf("released message expires %v, want %v (its held hour credited)", got, before.Add(time.Hour))
	}
	// Another replica, which did not make the release, finds the route
	// due: the mark was written.
	due, _, err := queue.New(rdb, queue.Options{Now: clk.Now}).DueRoutes(ctx, 100)
	if err != nil || !slices.Contains(due, held) {
		t.Errorf("routes due after the release on a full Redis: %q %v; want %s", due, err, held)
	}
	if res := lease(t, q, held, 5, time.Minute); len(res.Leases) != 1 || res.Leases[0].ID != heldID {
		t.Errorf("lease of the released route on a full Redis: %+v", res)
	}
}

// TestRedisFullOperatorCommands: with Redis full, the operator's commands
// that take mail out of Redis or back towards delivery work: requeue,
// delete, the withdrawal of a refused store, the sweep of the due index
// and route pruning.
func TestRedisFullOperatorCommands(t *testing.T) {
	q, clk, srv := newQueue(t)
	ctx := context.Background()
	dead := enqueue(t, q, msg("crm", 1))
	if err := q.Fail(ctx, lease(t, q, "crm", 1, time.Minute).Leases[0], "550 5.1.1 no such user"); err != nil {
		t.Fatal(err)
	}
	gone := enqueue(t, q, msg("crm", 2))
	stored := enqueue(t, q, msg("crm", 3))
	enqueue(t, q, msg("empty", 4))
	l := lease(t, q, "empty", 1, time.Minute).Leases[0]
	if err := q.Ack(ctx, l, "250"); err != nil {
		t.Fatal(err)
	}
	// A route with mail but no due mark nor index entry, as a process
	// that stopped between a store and its mark leaves.
	enqueue(t, q, msg("lost", 5))
	if err := srv.Client(t).Del(ctx, "hf:{due}:dirty").Err(); err != nil {
		t.Fatal(err)
	}
	fillRedis(t, srv)
	refused, _, err := q.Enqueue(ctx, msg("crm", 6))
	if !isOOM(err) || refused == "" {
		t.Fatalf("Enqueue on a full Redis = %q, %v; want its id and an OOM error", refused, err)
	}

	if err := q.Requeue(ctx, dead); err != nil {
		t.Errorf("Requeue on a full Redis: %v", err)
	}
	if err := q.Delete(ctx, gone); err != nil {
		t.Errorf("Delete on a full Redis: %v", err)
	}
	if err := q.Withdraw(ctx, "crm", stored); err != nil {
		t.Errorf("Withdraw of a stored message on a full Redis: %v", err)
	}
	// A store that timed out may still run; its withdrawal marks the id.
	if err := q.Withdraw(ctx, "crm", refused); err != nil {
		t.Errorf("Withdraw of a store not run on a full Redis: %v", err)
	}
	if n, err := q.SweepDue(ctx); err != nil || n == 0 {
		t.Errorf("SweepDue on a full Redis = %d, %v; want the unmarked route marked", n, err)
	}
	// An empty route is seen empty at one call and pruned at a later one.
	if _, err := q.PruneRoutes(ctx, time.Hour); err != nil {
		t.Errorf("PruneRoutes on a full Redis: %v", err)
	}
	clk.Add(2 * time.Hour)
	if pruned, err := q.PruneRoutes(ctx, time.Hour); err != nil || !slices.Equal(pruned, []string{"empty"}) {
		t.Errorf("PruneRoutes on a full Redis = %q, %v; want [empty]", pruned, err)
	}
}

// TestRedisFullLimiter: with Redis full, a delivery still takes and keeps
// a connection slot, and counts its send and recipients.
func TestRedisFullLimiter(t *testing.T) {
	srv := redistest.Start(t)
	l := queue.NewLimiter(srv.Client(t), nil)
	ctx := context.Background()
	fillRedis(t, srv)
	const mbx = "alice@contoso.com"
	slot, err := l.AcquireConn(ctx, mbx, 3, time.Minute)
	if err != nil || slot == nil {
		t.Fatalf("AcquireConn on a full Redis = %v, %v", slot, err)
	}
	if err := l.Renew(ctx, slot, 2*time.Minute); err != nil {
		t.Errorf("Renew on a full Redis: %v\n(the sender warns and the slot lapses while its connection lives)", err)
	}
	if wait, err := l.TakeSend(ctx, mbx, 30, time.Minute); err != nil || wait != 0 {
		t.Errorf("TakeSend on a full Redis = %v, %v", wait, err)
	}
	if wait, err := l.ReserveRecipients(ctx, mbx, "m1", 2, 10000, 24*time.Hour); err != nil || wait != 0 {
		t.Errorf("ReserveRecipients on a full Redis = %v, %v", wait, err)
	}
	if err := l.Release(ctx, slot); err != nil {
		t.Errorf("Release on a full Redis: %v", err)
	}
}

// TestMemoryUse: the memory figures follow what the queue stores, and
// name maxmemory as set, on a single server and on every master of a
// Cluster.
func TestMemoryUse(t *testing.T) {
	ctx := context.Background()
	q, _, srv := newQueue(t)
	rdb := srv.Client(t)
	if err := rdb.ConfigSet(ctx, "maxmemory", "256mb").Err(); err != nil {
		t.Fatal(err)
	}
	before, err := queue.MemoryUse(ctx, rdb)
	if err != nil || len(before) != 1 || before[0].Max != 256<<20 || before[0].Used <= 0 || before[0].Addr != srv.Addr() {
		t.Fatalf("memory use: %+v %v, want one node with maxmemory 256 MiB", before, err)
	}
	m := msg("crm", 1)
	m.Body = []byte(strings.Repeat("x", 100<<10))
	for range 100 {
		enqueue(t, q, m)
	}
	after, err := queue.MemoryUse(ctx, rdb)
	if err != nil {
		t.Fatal(err)
	}
	if grew := after[0].Used - before[0].Used; grew < 9<<20 {
		t.Fatalf("used memory grew by %d bytes for 10,240,000 bytes of mail", grew)
	}

	c := redistest.StartCluster(t, 3)
	nodes, err := queue.MemoryUse(ctx, c.Client(t))
	if err != nil || len(nodes) != 3 {
		t.Fatalf("cluster memory use: %+v %v, want 3 masters", nodes, err)
	}
	for _, n := range nodes {
		if n.Used <= 0 || n.Max != 0 || n.Addr == "" {
			t.Fatalf("cluster node: %+v", n)
		}
	}
}
