package queue

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"holdfast/queue/redistest"
)

// scriptRuns counts the summary script runs a client sends.
type scriptRuns struct{ n atomic.Int64 }

func (r *scriptRuns) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *scriptRuns) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (r *scriptRuns) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			if c.Name() == "evalsha" || c.Name() == "eval" {
				r.n.Add(1)
			}
		}
		return next(ctx, cmds)
	}
}

// TestSummarizerFollowsChanges drives forty routes through every change
// the queue makes (enqueue, lease, ack, retry, dead letter, lease expiry,
// lifetime expiry, hold, release, requeue, delete, flush, prune) under a
// clock that moves, and checks after every step that the Summarizer,
// which counts only what changed, gives exactly a full count's summary.
// A warm call with nothing changed runs no count at all.
func TestSummarizerFollowsChanges(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	runs := &scriptRuns{}
	rdb.AddHook(runs)
	var mu sync.Mutex
	clock := time.Now().Truncate(time.Millisecond)
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	advance := func(d time.Duration) { mu.Lock(); clock = clock.Add(d); mu.Unlock() }
	q := New(rdb, Options{Now: now, Lifetime: 3 * time.Minute, HeldGrace: time.Minute, HeldRecheck: time.Second})
	group := func(r string) string { return fmt.Sprint("g", r[len(r)-1]%3) }
	s := q.NewSummarizer(group)
	rng := rand.New(rand.NewPCG(1, 2))
	routes := make([]string, 40)
	for i := range routes {
		routes[i] = fmt.Sprintf("r%02d", i)
	}
	var leases []*Lease
	check := func(step int, op string) {
		t.Helper()
		got, err := s.Summarize(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want, err := q.NewSummarizer(group).Summarize(ctx)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(got.Routes)
		slices.Sort(want.Routes)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("step %d, after %s: incremental summary\n%+v\nfull count\n%+v", step, op, got, want)
		}
	}
	ops := map[string]int{}
	for step := range 1500 {
		r := routes[rng.IntN(len(routes))]
		op := ""
		switch k := rng.IntN(14); {
		case k < 3:
			op = "enqueue"
			submitTo(t, q, r)
		case k < 5:
			op = "lease"
			d := time.Minute
			if rng.IntN(3) == 0 {
				d = 2 * time.Second // left to expire
			}
			l, err := q.Lease(ctx, r, 1+rng.IntN(3), d)
			if err != nil {
				t.Fatal(err)
			}
			leases = append(leases, l.Leases...)
		case k < 8 && len(leases) > 0:
			i := rng.IntN(len(leases))
			l := leases[i]
			leases = slices.Delete(leases, i, i+1)
			var err error
			switch rng.IntN(4) {
			case 0:
				op, err = "ack", q.Ack(ctx, l, "250 OK")
			case 3:
				op = "ack and lease"
				var next LeaseResult
				next, err = q.AckNext(ctx, l, "250 OK", 1+rng.IntN(2), time.Minute)
				leases = append(leases, next.Leases...)
			case 1:
				op = "retry"
				_, err = q.Defer(ctx, l, time.Duration(rng.IntN(20))*time.Second, "451 later")
			default:
				op, err = "fail", q.Fail(ctx, l, "550 no")
			}
			if err != nil && !errors.Is(err, ErrLeaseLost) {
				t.Fatal(err)
			}
		case k == 8:
			op = "hold"
			if err := q.HoldRoute(ctx, r, "breaker open"); err != nil {
				t.Fatal(err)
			}
		case k == 9:
			op = "release"
			if err := q.ReleaseRoute(ctx, r); err != nil {
				t.Fatal(err)
			}
		case k == 10:
			op = "requeue or delete"
			dead, err := rdb.ZRange(ctx, keysFor(r).dead, 0, 0).Result()
			if err != nil {
				t.Fatal(err)
			}
			if len(dead) > 0 && rng.IntN(2) == 0 {
				err = q.Requeue(ctx, dead[0])
			} else if ids, _ := rdb.ZRange(ctx, keysFor(r).live, 0, 0).Result(); len(ids) > 0 {
				err = q.Delete(ctx, ids[0])
			}
			if err != nil {
				t.Fatal(err)
			}
		case k == 11:
			op = "flush"
			if _, err := q.Flush(ctx, r); err != nil {
				t.Fatal(err)
			}
		case k == 12:
			op = "prune"
			if _, err := q.PruneRoutes(ctx, 0); err != nil {
				t.Fatal(err)
			}
		default:
			op = "time"
			advance(time.Duration(rng.IntN(15_000)) * time.Millisecond)
		}
		if op == "" {
			continue
		}
		ops[op]++
		check(step, op)
	}
	t.Logf("operations: %v", ops)
	for _, op := range []string{"enqueue", "lease", "ack", "retry", "fail", "hold", "release", "flush", "prune", "time"} {
		if ops[op] == 0 {
			t.Errorf("no %s in the run", op)
		}
	}

	// Warm and nothing changed: no count runs.
	if _, err := s.Summarize(ctx); err != nil {
		t.Fatal(err)
	}
	before := runs.n.Load()
	if _, err := s.Summarize(ctx); err != nil {
		t.Fatal(err)
	}
	if n := runs.n.Load() - before; n != 0 {
		t.Errorf("a call with nothing changed ran %d count scripts, want 0", n)
	}

	// Refresh counts every route without a Summarize: a Summarizer
	// refreshed first then counts only what changed after.
	fresh := q.NewSummarizer(group)
	if err := fresh.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	for _, r := range routes[:5] {
		submitTo(t, q, r)
	}
	before = runs.n.Load()
	s = fresh
	check(-1, "a refresh and five enqueues")
	// check ran this Summarizer (one script for the five routes) and a
	// full count (one script for all 40 on a single server).
	if n := runs.n.Load() - before; n != 2 {
		t.Errorf("after a refresh, the call and a full count ran %d count scripts, want 2", n)
	}

	// A lost change log (a flush, a restart without it) makes the next
	// call count every route.
	submitTo(t, q, routes[0])
	if err := rdb.Del(ctx, changesKey).Err(); err != nil {
		t.Fatal(err)
	}
	check(-1, "the log was deleted")
}
