package queue

import (
	"context"
	"slices"
	"testing"
	"time"

	"holdfast/queue/redistest"
)

// TestPruneLeavesNothing: on a single server a pruned route leaves no key
// and no field behind (its lease sequence and the due index's copy of
// it), and a route of the same name used again afterwards is indexed as
// a new one.
func TestPruneLeavesNothing(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	now := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	q := New(rdb, Options{Now: func() time.Time { return now }})
	const route = "mbx:contoso:gone@contoso.com"
	for range 3 {
		submitTo(t, q, route)
		res, err := q.Lease(ctx, route, 1, time.Minute)
		if err != nil || len(res.Leases) != 1 {
			t.Fatalf("lease: %+v %v", res, err)
		}
		if err := q.Ack(ctx, res.Leases[0], "250 ok"); err != nil {
			t.Fatal(err)
		}
	}
	now = now.Add(2 * time.Minute)
	if _, err := q.Lease(ctx, route, 1, time.Minute); err != nil { // finds it empty
		t.Fatal(err)
	}
	for range 2 {
		if _, err := q.PruneRoutes(ctx, time.Hour); err != nil {
			t.Fatal(err)
		}
		now = now.Add(2 * time.Hour)
	}
	if routes, _ := q.Routes(ctx); len(routes) != 0 {
		t.Fatalf("routes after pruning: %v", routes)
	}
	rk := keysFor(route)
	keys, err := rdb.Keys(ctx, "*"+rk.base+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 0 {
		t.Errorf("keys of the pruned route left: %v", keys)
	}
	for _, k := range []string{dueSeqKey, dueIndexKey, dueDirtyKey, changesKey, idleRoutesKey} {
		var member bool
		switch typ, _ := rdb.Type(ctx, k).Result(); typ {
		case "hash":
			member, _ = rdb.HExists(ctx, k, route).Result()
		case "zset":
			_, err := rdb.ZScore(ctx, k, route).Result()
			member = err == nil
		case "set":
			member, _ = rdb.SIsMember(ctx, k, route).Result()
		}
		if member {
			t.Errorf("%s still names the pruned route", k)
		}
	}

	// Used again: its first lease starts the sequence again and sets
	// its index entry (to the lease deadline).
	submitTo(t, q, route)
	res, err := q.Lease(ctx, route, 1, time.Minute)
	if err != nil || len(res.Leases) != 1 {
		t.Fatalf("lease after pruning: %+v %v", res, err)
	}
	routes, next, err := q.DueRoutes(ctx, 10)
	if err != nil || len(routes) != 0 || !next.Equal(now.Add(time.Minute)) {
		t.Fatalf("index after the new lease: %v next %v %v, want the lease deadline %v", routes, next, err, now.Add(time.Minute))
	}
	if all, err := q.Routes(ctx); err != nil || !slices.Contains(all, route) {
		t.Fatalf("the route used again is not in the route set: %v %v", all, err)
	}
}
