package queue_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

// clock is a controlled clock for lifetimes, backoff and leases.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 2, 14, 11, 30, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newQueue(t *testing.T) (*queue.Queue, *clock, *redistest.Server) {
	t.Helper()
	srv := redistest.Start(t)
	clk := newClock()
	return queue.New(srv.Client(t), queue.Options{Now: clk.Now}), clk, srv
}

func msg(route string, n int) queue.Submission {
	return queue.Submission{
		Route: route,
		App:   "crm",
		From:  "billing@contoso.com",
		To:    []string{fmt.Sprintf("user%d@example.org", n), "cc@example.org"},
		Body:  []byte(fmt.Sprintf("Subject: test %d\r\n\r\nbody %d\r\n", n, n)),
	}
}

func enqueue(t *testing.T, q *queue.Queue, m queue.Submission) string {
	t.Helper()
	id, dup, err := q.Enqueue(context.Background(), m)
	if err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	if dup {
		t.Fatalf("enqueue: unexpected duplicate")
	}
	return id
}

func lease(t *testing.T, q *queue.Queue, route string, n int, d time.Duration) queue.LeaseResult {
	t.Helper()
	res, err := q.Lease(context.Background(), route, n, d)
	if err != nil {
		t.Fatalf("lease: %v", err)
	}
	return res
}

func get(t *testing.T, q *queue.Queue, id string) *queue.Message {
	t.Helper()
	m, err := q.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("get %s: %v", id, err)
	}
	return m
}

func TestLifecycle(t *testing.T) {
	q, clk, _ := newQueue(t)
	ctx := context.Background()
	in := msg("crm", 1)
	id := enqueue(t, q, in)
	if !queue.ValidID(id) {
		t.Fatalf("id %q is not valid", id)
	}

	m := get(t, q, id)
	if m.State != queue.Ready || m.From != in.From || strings.Join(m.To, ",") != strings.Join(in.To, ",") ||
		m.Size != len(in.Body) || !m.Submitted.Equal(clk.Now()) || !m.Expires.Equal(clk.Now().Add(5*24*time.Hour)) {
		t.Fatalf("after enqueue: %+v", m)
	}

	res := lease(t, q, "crm", 10, time.Minute)
	if len(res.Leases) != 1 || string(res.Leases[0].Body) != string(in.Body) || res.Leases[0].ID != id {
		t.Fatalf("lease: %+v", res)
	}
	if got := get(t, q, id); got.State != queue.Leased || !got.LeaseEnd.Equal(clk.Now().Add(time.Minute)) {
		t.Fatalf("after lease: %+v", got)
	}
	if again := lease(t, q, "crm", 10, time.Minute); len(again.Leases) != 0 {
		t.Fatalf("a leased message was leased again: %+v", again.Leases)
	}

	if err := q.Ack(ctx, res.Leases[0], "250 2.0.0 OK"); err != nil {
		t.Fatalf("ack: %v", err)
	}
	m = get(t, q, id)
	if m.State != queue.Delivered || m.Attempts != 1 || m.LastError != "250 2.0.0 OK" || !m.Done.Equal(clk.Now()) {
		t.Fatalf("after ack: %+v", m)
	}
	st, err := q.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Total != (queue.RouteStats{}) {
		t.Fatalf("stats after delivery: %+v", st.Total)
	}
}

func TestIdempotencyKey(t *testing.T) {
	q, _, _ := newQueue(t)
	ctx := context.Background()
	m := msg("crm", 1)
	m.IdempotencyKey = "order-42"
	first := enqueue(t, q, m)
	id, dup, err := q.Enqueue(ctx, m)
	if err != nil || !dup || id != first {
		t.Fatalf("second enqueue with the same key: id %q dup %v err %v; want %q, true", id, dup, err, first)
	}
	m.IdempotencyKey = "order-43"
	if other := enqueue(t, q, m); other == first {
		t.Fatal("a different key returned the same id")
	}
	st, _ := q.Stats(ctx)
	if st.Total.Ready != 2 {
		t.Fatalf("ready = %d, want 2", st.Total.Ready)
	}
}

func TestIdempotencyFingerprint(t *testing.T) {
	q, _, srv := newQueue(t)
	ctx := context.Background()
	m := msg("crm", 1)
	m.IdempotencyKey, m.Fingerprint = "invoice-7", "aa"
	first := enqueue(t, q, m)
	// The key's value stays the bare id, which relays that do not know
	// fingerprints read during a rolling upgrade.
	var ids []string
	for _, k := range srv.Client(t).Keys(ctx, "hf:*:i:crm:invoice-7").Val() {
		ids = append(ids, srv.Client(t).Get(ctx, k).Val())
	}
	if len(ids) != 1 || ids[0] != first {
		t.Fatalf("idempotency key values %q, want [%s]", ids, first)
	}

	m.Fingerprint = "bb"
	id, dup, err := q.Enqueue(ctx, m)
	if !errors.Is(err, queue.ErrKeyReused) || id != first || dup {
		t.Fatalf("same key, other fingerprint: id %q dup %v err %v; want %q and ErrKeyReused", id, dup, err, first)
	}
	for _, print := range []string{"aa", ""} {
		m.Fingerprint = print
		if id, dup, err := q.Enqueue(ctx, m); err != nil || !dup || id != first {
			t.Fatalf("same key, fingerprint %q: id %q dup %v err %v; want %q, true", print, id, dup, err, first)
		}
	}

	// A key stored without a fingerprint (as before fingerprints were
	// kept) matches any later submission under it.
	m.IdempotencyKey, m.Fingerprint = "invoice-8", ""
	second := enqueue(t, q, m)
	m.Fingerprint = "cc"
	if id, dup, err := q.Enqueue(ctx, m); err != nil || !dup || id != second {
		t.Fatalf("key without a fingerprint: id %q dup %v err %v; want %q, true", id, dup, err, second)
	}
	st, _ := q.Stats(ctx)
	if st.Total.Ready != 2 {
		t.Fatalf("ready = %d, want 2", st.Total.Ready)
	}
}

func TestEnqueueRefusesBadInput(t *testing.T) {
	q, _, _ := newQueue(t)
	for name, m := range map[string]queue.Submission{
		"no recipients":                 {Route: "crm", From: "a@b.c", Body: []byte("x")},
		"bad route":                     {Route: "has space", From: "a@b.c", To: []string{"x@y.z"}},
		"injected address":              {Route: "crm", From: "a@b.c\r\nBcc: x@y.z", To: []string{"x@y.z"}},
		"fingerprint with a line break": {Route: "crm", From: "a@b.c", To: []string{"x@y.z"}, IdempotencyKey: "k", Fingerprint: "a\nb"},
	} {
		if _, _, err := q.Enqueue(context.Background(), m); err == nil {
			t.Errorf("%s: enqueue succeeded", name)
		}
	}
}

// TestConcurrentWorkersNeverShareALease has many workers lease from one
// route at once: every message must be leased exactly once.
func TestConcurrentWorkersNeverShareALease(t *testing.T) {
	q, _, _ := newQueue(t)
	const total = 300
	for i := range total {
		enqueue(t, q, msg("crm", i))
	}
	var (
		mu   sync.Mutex
		seen = map[string]int{}
		wg   sync.WaitGroup
	)
	for range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				res, err := q.Lease(context.Background(), "crm", 7, time.Minute)
				if err != nil {
					t.Error(err)
					return
				}
				if len(res.Leases) == 0 {
					return
				}
				mu.Lock()
				for _, l := range res.Leases {
					seen[l.ID]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != total {
		t.Fatalf("leased %d distinct messages, want %d", len(seen), total)
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("message %s leased %d times", id, n)
		}
	}
}

// TestCrashedWorkerLeaseIsReclaimed: a worker that dies holding a lease
// neither loses the message nor its history, and cannot settle it late.
func TestCrashedWorkerLeaseIsReclaimed(t *testing.T) {
	q, clk, _ := newQueue(t)
	ctx := context.Background()
	id := enqueue(t, q, msg("crm", 1))

	first := lease(t, q, "crm", 1, time.Minute).Leases[0]
	if _, err := q.Retry(ctx, first, "451 4.7.0 Temporary server error"); err != nil {
		t.Fatal(err)
	}
	clk.Add(2 * time.Hour)
	crashed := lease(t, q, "crm", 1, time.Minute).Leases[0] // this worker "dies"

	clk.Add(30 * time.Second)
	if res := lease(t, q, "crm", 1, time.Minute); len(res.Leases) != 0 {
		t.Fatal("a live lease was taken over")
	}
	clk.Add(31 * time.Second)
	res := lease(t, q, "crm", 1, time.Minute)
	if len(res.Leases) != 1 || res.Leases[0].ID != id {
		t.Fatalf("expired lease not reclaimed: %+v", res)
	}
	again := res.Leases[0]
	if again.Attempts != 2 || !strings.Contains(again.LastError, "lease expired") {
		t.Fatalf("history after reclaim: attempts %d, last error %q; want 2 and a lease-expired note", again.Attempts, again.LastError)
	}
	if err := q.Ack(ctx, crashed, "250 late"); !errors.Is(err, queue.ErrLeaseLost) {
		t.Fatalf("late ack by the crashed worker: %v, want ErrLeaseLost", err)
	}
	if err := q.Extend(ctx, crashed, time.Minute); !errors.Is(err, queue.ErrLeaseLost) {
		t.Fatalf("late extend by the crashed worker: %v, want ErrLeaseLost", err)
	}
	if err := q.Ack(ctx, again, "250 ok"); err != nil {
		t.Fatalf("ack by the new holder: %v", err)
	}
}

func TestExtendKeepsLease(t *testing.T) {
	q, clk, _ := newQueue(t)
	enqueue(t, q, msg("crm", 1))
	l := lease(t, q, "crm", 1, time.Minute).Leases[0]
	clk.Add(50 * time.Second)
	if err := q.Extend(context.Background(), l, time.Minute); err != nil {
		t.Fatal(err)
	}
	clk.Add(50 * time.Second)
	if res := lease(t, q, "crm", 1, time.Minute); len(res.Leases) != 0 {
		t.Fatal("an extended lease was reclaimed")
	}
	if err := q.Ack(context.Background(), l, "ok"); err != nil {
		t.Fatal(err)
	}
}

func TestRetryBacksOff(t *testing.T) {
	q, clk, _ := newQueue(t)
	ctx := context.Background()
	id := enqueue(t, q, msg("crm", 1))
	want := []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute}
	for i, base := range want {
		l := lease(t, q, "crm", 1, time.Minute).Leases[0]
		if st, err := q.Retry(ctx, l, "421 4.3.2 Service not active"); err != nil || st != queue.Scheduled {
			t.Fatalf("retry %d: %v %v", i, st, err)
		}
		m := get(t, q, id)
		wait := m.Due.Sub(clk.Now())
		if m.State != queue.Scheduled || m.Attempts != i+1 || wait > base || wait < base*3/4-time.Millisecond {
			t.Fatalf("after retry %d: state %s attempts %d wait %v; want scheduled, %d, within [%v, %v]",
				i, m.State, m.Attempts, wait, i+1, base*3/4, base)
		}
		if res := lease(t, q, "crm", 1, time.Minute); len(res.Leases) != 0 || !res.NextDue.Equal(m.Due) {
			t.Fatalf("leased before due, or wrong next due: %+v", res)
		}
		clk.Add(wait)
	}
}

func TestBackoffCapAndJitter(t *testing.T) {
	q := queue.New(nil, queue.Options{BackoffBase: time.Minute, BackoffMax: time.Hour})
	for attempts := 1; attempts < 40; attempts++ {
		want := time.Minute << min(attempts-1, 10)
		want = min(want, time.Hour)
		for range 20 {
			got := q.Backoff(attempts)
			if got > want || got < want*3/4 {
				t.Fatalf("Backoff(%d) = %v, want within [%v, %v]", attempts, got, want*3/4, want)
			}
		}
	}
}

func TestDeferSpendsNoAttempt(t *testing.T) {
	q, clk, _ := newQueue(t)
	id := enqueue(t, q, msg("crm", 1))
	l := lease(t, q, "crm", 1, time.Minute).Leases[0]
	if _, err := q.Defer(context.Background(), l, 90*time.Second, "432 4.3.2 Concurrent connections limit exceeded"); err != nil {
		t.Fatal(err)
	}
	m := get(t, q, id)
	if m.Attempts != 0 || !m.Due.Equal(clk.Now().Add(90*time.Second)) || m.State != queue.Scheduled {
		t.Fatalf("after defer: %+v", m)
	}
}

// TestHeldRoute: a held route is never leased, spends no attempts and its
// backoff does not grow; other routes keep flowing.
func TestHeldRoute(t *testing.T) {
	q, clk, _ := newQueue(t)
	ctx := context.Background()
	held := enqueue(t, q, msg("app:contoso", 1))
	other := enqueue(t, q, msg("app:fabrikam", 2))
	if err := q.HoldRoute(ctx, "app:contoso", "invalid_client AADSTS7000222"); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		res := lease(t, q, "app:contoso", 10, time.Minute)
		if !res.Held || len(res.Leases) != 0 {
			t.Fatalf("held route leased: %+v", res)
		}
		clk.Add(time.Hour)
	}
	if res := lease(t, q, "app:fabrikam", 10, time.Minute); len(res.Leases) != 1 || res.Leases[0].ID != other {
		t.Fatalf("another route was blocked: %+v", res)
	}
	m := get(t, q, held)
	if m.State != queue.Held || m.Attempts != 0 || m.HoldReason != "invalid_client AADSTS7000222" {
		t.Fatalf("held message: %+v", m)
	}
	st, _ := q.Stats(ctx)
	var rs queue.RouteStats
	for _, r := range st.Routes {
		if r.Route == "app:contoso" {
			rs = r
		}
	}
	if rs.Held != 1 || rs.Ready != 0 || rs.HoldReason == "" || rs.OldestAge(clk.Now()) != 5*time.Hour {
		t.Fatalf("stats of held route: %+v", rs)
	}
	if list, _ := q.List(ctx, "app:contoso", queue.Held, 0, 10); len(list) != 1 || list[0].ID != held {
		t.Fatalf("list held: %+v", list)
	}

	if err := q.ReleaseRoute(ctx, "app:contoso"); err != nil {
		t.Fatal(err)
	}
	res := lease(t, q, "app:contoso", 10, time.Minute)
	if len(res.Leases) != 1 || res.Leases[0].Attempts != 0 {
		t.Fatalf("after release: %+v", res)
	}
}

func TestLifetimeExpiry(t *testing.T) {
	q, clk, _ := newQueue(t)
	ctx := context.Background()
	// Expires while waiting: dead-lettered when next due, without an
	// attempt.
	waiting := enqueue(t, q, msg("crm", 1))
	l := lease(t, q, "crm", 1, time.Minute).Leases[0]
	if _, err := q.Retry(ctx, l, "451 4.7.0 Temporary server error"); err != nil {
		t.Fatal(err)
	}
	clk.Add(5*24*time.Hour + time.Second)
	if res := lease(t, q, "crm", 10, time.Minute); len(res.Leases) != 0 {
		t.Fatalf("expired message leased: %+v", res.Leases)
	}
	m := get(t, q, waiting)
	if m.State != queue.Dead || m.Attempts != 1 || !strings.Contains(m.Reason, "lifetime") || !strings.Contains(m.Reason, "451 4.7.0") {
		t.Fatalf("expired message: %+v", m)
	}

	// Expires during its last attempt: the retry dead-letters it.
	last := enqueue(t, q, msg("crm", 2))
	l = lease(t, q, "crm", 1, time.Minute).Leases[0]
	clk.Add(5 * 24 * time.Hour)
	if st, err := q.Retry(ctx, l, "421 4.3.2 Service not active"); err != nil || st != queue.Dead {
		t.Fatalf("retry past lifetime: %v %v", st, err)
	}
	if m := get(t, q, last); m.State != queue.Dead {
		t.Fatalf("state %s", m.State)
	}
}

func TestDeadLettersRequeueDeleteList(t *testing.T) {
	q, clk, _ := newQueue(t)
	ctx := context.Background()
	var ids []string
	for i := range 5 {
		ids = append(ids, enqueue(t, q, msg("crm", i)))
	}
	res := lease(t, q, "crm", 3, time.Minute)
	for _, l := range res.Leases {
		if err := q.Fail(ctx, l, "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found"); err != nil {
			t.Fatal(err)
		}
	}
	dead, err := q.List(ctx, "crm", queue.Dead, 0, 2)
	if err != nil || len(dead) != 2 {
		t.Fatalf("list dead page 1: %v %v", len(dead), err)
	}
	rest, _ := q.List(ctx, "crm", queue.Dead, 2, 2)
	if len(rest) != 1 || rest[0].ID == dead[0].ID || rest[0].ID == dead[1].ID {
		t.Fatalf("list dead page 2: %+v", rest)
	}
	if ready, _ := q.List(ctx, "crm", queue.Ready, 0, 10); len(ready) != 2 {
		t.Fatalf("list ready: %d", len(ready))
	}

	target := dead[0]
	if target.Reason == "" || target.State != queue.Dead {
		t.Fatalf("dead letter: %+v", target)
	}
	clk.Add(6 * 24 * time.Hour) // past the original lifetime
	if err := q.Requeue(ctx, target.ID); err != nil {
		t.Fatal(err)
	}
	if err := q.Requeue(ctx, target.ID); err == nil {
		t.Fatal("requeue of a queued message succeeded")
	}
	m := get(t, q, target.ID)
	if m.State != queue.Ready || m.Attempts != 1 || !m.Expires.After(clk.Now()) {
		t.Fatalf("requeued: %+v", m)
	}
	got := lease(t, q, "crm", 10, time.Minute)
	found := false
	for _, l := range got.Leases {
		found = found || l.ID == target.ID
	}
	if !found {
		t.Fatal("requeued message not leasable")
	}

	if err := q.Delete(ctx, ids[4]); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Get(ctx, ids[4]); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
	if err := q.Delete(ctx, ids[4]); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := q.Get(ctx, "not-an-id"); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("get of a malformed id: %v", err)
	}
}

func TestFlush(t *testing.T) {
	q, clk, _ := newQueue(t)
	ctx := context.Background()
	id := enqueue(t, q, msg("crm", 1))
	l := lease(t, q, "crm", 1, time.Minute).Leases[0]
	if _, err := q.Retry(ctx, l, "421"); err != nil {
		t.Fatal(err)
	}
	n, err := q.Flush(ctx, "crm")
	if err != nil || n != 1 {
		t.Fatalf("flush: %d %v", n, err)
	}
	res := lease(t, q, "crm", 1, time.Minute)
	if len(res.Leases) != 1 || res.Leases[0].ID != id {
		t.Fatalf("flushed message not due: %+v", res)
	}
	_ = clk
}

func TestStatsCountsEveryState(t *testing.T) {
	q, clk, _ := newQueue(t)
	ctx := context.Background()
	for i := range 6 {
		enqueue(t, q, msg("a", i))
	}
	enqueue(t, q, msg("b", 9))
	ls := lease(t, q, "a", 3, time.Minute).Leases
	if _, err := q.Retry(ctx, ls[0], "421"); err != nil {
		t.Fatal(err)
	}
	if err := q.Fail(ctx, ls[1], "550"); err != nil {
		t.Fatal(err)
	}
	clk.Add(10 * time.Second)
	st, err := q.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := queue.RouteStats{Ready: 4, Scheduled: 1, Leased: 1, Dead: 1}
	got := st.Total
	got.Oldest, got.ReadySince = time.Time{}, time.Time{}
	if got != want || len(st.Routes) != 2 || st.Total.OldestAge(clk.Now()) != 10*time.Second {
		t.Fatalf("stats: %+v, want %+v over 2 routes, oldest 10s", st, want)
	}
	// The ready messages have been due since they were enqueued.
	if wait := clk.Now().Sub(st.Total.ReadySince); wait != 10*time.Second {
		t.Errorf("oldest ready message due %v ago, want 10s", wait)
	}
}

func TestDurabilityCheck(t *testing.T) {
	ctx := context.Background()
	good := redistest.Start(t)
	if w, err := queue.CheckDurability(ctx, good.Client(t), true); err != nil || len(w) != 0 {
		t.Fatalf("durable redis: warnings %v, err %v", w, err)
	}
	bad := redistest.Start(t, redistest.WithArgs("--appendonly", "no", "--maxmemory-policy", "allkeys-lru"))
	w, err := queue.CheckDurability(ctx, bad.Client(t), false)
	if err != nil || len(w) != 2 || !strings.Contains(w[0], "appendonly") || !strings.Contains(w[1], "noeviction") {
		t.Fatalf("non-durable redis, not strict: warnings %q, err %v", w, err)
	}
	if _, err := queue.CheckDurability(ctx, bad.Client(t), true); !errors.Is(err, queue.ErrNotDurable) {
		t.Fatalf("strict: %v, want ErrNotDurable", err)
	}
}

// TestSurvivesRedisRestart: acknowledged mail is in the AOF; while Redis
// is down, enqueue fails rather than pretending.
func TestSurvivesRedisRestart(t *testing.T) {
	q, _, srv := newQueue(t)
	ctx := context.Background()
	id := enqueue(t, q, msg("crm", 1))
	time.Sleep(1500 * time.Millisecond) // appendfsync everysec
	srv.Kill(t)
	if _, _, err := q.Enqueue(ctx, msg("crm", 2)); err == nil {
		t.Fatal("enqueue succeeded with redis down")
	}
	srv.Restart(t)
	if m := get(t, q, id); m.State != queue.Ready {
		t.Fatalf("after restart: %+v", m)
	}
	st, _ := q.Stats(ctx)
	if st.Total.Ready != 1 {
		t.Fatalf("ready after restart = %d, want 1", st.Total.Ready)
	}
}

// TestCluster runs the lifecycle on a three-master Redis Cluster, over
// routes that land on different slots.
func TestCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	var rdb redis.UniversalClient = c.Client(t)
	clk := newClock()
	q := queue.New(rdb, queue.Options{Now: clk.Now})
	ctx := context.Background()
	if w, err := queue.CheckDurability(ctx, rdb, true); err != nil {
		t.Fatalf("durability on cluster: %v %v", w, err)
	}
	// A mailbox's wait and its send rate share a slot.
	lim := queue.NewLimiter(rdb, clk.Now)
	if _, err := lim.HoldMailbox(ctx, "alice@contoso.com", "blocked", time.Minute); err != nil {
		t.Fatalf("hold a mailbox on cluster: %v", err)
	}
	if _, wait, err := lim.ReserveSend(ctx, "alice@contoso.com", 30, time.Minute, "blocked"); err != nil || wait != time.Minute {
		t.Fatalf("send of a held mailbox on cluster: wait %v, %v", wait, err)
	}
	if waits, err := lim.MailboxWaits(ctx, []string{"alice@contoso.com", "bob@contoso.com", "carol@contoso.com"}); err != nil || len(waits) != 1 {
		t.Fatalf("mailbox waits on cluster: %+v, %v", waits, err)
	}
	routes := []string{"app:contoso", "app:fabrikam", "app:northwind", "mbx:alice@contoso.com", "mbx:bob@contoso.com"}
	ids := map[string]string{}
	for i, r := range routes {
		m := msg(r, i)
		m.IdempotencyKey = "k" + r
		ids[r] = enqueue(t, q, m)
		if id, dup, err := q.Enqueue(ctx, m); err != nil || !dup || id != ids[r] {
			t.Fatalf("idempotent enqueue on %s: %v %v %v", r, id, dup, err)
		}
	}
	if err := q.HoldRoute(ctx, routes[0], "breaker open"); err != nil {
		t.Fatal(err)
	}
	st, err := q.Stats(ctx)
	if err != nil || st.Total.Ready != 4 || st.Total.Held != 1 || len(st.Routes) != len(routes) {
		t.Fatalf("cluster stats: %+v %v", st, err)
	}
	for _, r := range routes[1:] {
		res := lease(t, q, r, 5, time.Minute)
		if len(res.Leases) != 1 || res.Leases[0].ID != ids[r] {
			t.Fatalf("lease %s: %+v", r, res)
		}
		if _, err := q.Retry(ctx, res.Leases[0], "421"); err != nil {
			t.Fatal(err)
		}
		if n, err := q.Flush(ctx, r); err != nil || n != 1 {
			t.Fatalf("flush %s: %d %v", r, n, err)
		}
		l := lease(t, q, r, 5, time.Minute).Leases[0]
		if err := q.Fail(ctx, l, "550 5.1.1"); err != nil {
			t.Fatal(err)
		}
		if err := q.Requeue(ctx, l.ID); err != nil {
			t.Fatal(err)
		}
		l = lease(t, q, r, 5, time.Minute).Leases[0]
		if err := q.Ack(ctx, l, "250"); err != nil {
			t.Fatal(err)
		}
		if m := get(t, q, l.ID); m.State != queue.Delivered || m.Attempts != 3 {
			t.Fatalf("%s: %+v", r, m)
		}
	}
	if res := lease(t, q, routes[0], 5, time.Minute); !res.Held {
		t.Fatal("held route leased on cluster")
	}
	if err := q.Delete(ctx, ids[routes[0]]); err != nil {
		t.Fatal(err)
	}
	// Dead letters expire in every slot.
	var dead []string
	for _, r := range routes[1:] {
		dead = append(dead, deadLetter(t, q, r, 2)...)
	}
	clk.Add(time.Hour)
	if n, err := q.ExpireDead(ctx, time.Hour, 0); err != nil || n != len(dead) {
		t.Fatalf("expire dead letters on cluster: %d %v, want %d", n, err, len(dead))
	}
	for _, id := range dead {
		if _, err := q.Get(ctx, id); !errors.Is(err, queue.ErrNotFound) {
			t.Fatalf("dead letter %s after expiry on cluster: %v", id, err)
		}
	}
	// The route's bound is counted in the store's own slot.
	capped := queue.New(rdb, queue.Options{Now: clk.Now, MaxPerRoute: 1})
	enqueue(t, capped, msg("capped", 1))
	if _, _, err := capped.Enqueue(ctx, msg("capped", 2)); !errors.Is(err, queue.ErrRouteFull) {
		t.Fatalf("store past a route's bound on cluster: %v, want ErrRouteFull", err)
	}
}

// TestAckNext: a worker acks its message and leases the route's next in
// one call; an ack whose lease was lost leases nothing.
func TestAckNext(t *testing.T) {
	t.Run("server", func(t *testing.T) {
		testAckNext(t, redistest.Start(t).Client(t), "crm")
	})
	t.Run("Cluster", func(t *testing.T) {
		testAckNext(t, redistest.StartCluster(t, 3).Client(t), "app:fabrikam")
	})
}

func testAckNext(t *testing.T, rdb redis.UniversalClient, route string) {
	ctx := context.Background()
	clk := newClock()
	q := queue.New(rdb, queue.Options{Now: clk.Now})
	var ids []string
	for i := range 3 {
		ids = append(ids, enqueue(t, q, msg(route, i)))
		clk.Add(time.Millisecond)
	}
	other := enqueue(t, q, msg("other", 9))

	first := lease(t, q, route, 1, time.Minute).Leases[0]
	res, err := q.AckNext(ctx, first, "250 2.0.0 OK", 1, time.Minute)
	if err != nil || len(res.Leases) != 1 || res.Leases[0].ID != ids[1] {
		t.Fatalf("ack and lease: %+v %v; want %s leased", res, err, ids[1])
	}
	if m := get(t, q, first.ID); m.State != queue.Delivered || m.Attempts != 1 || m.LastError != "250 2.0.0 OK" {
		t.Fatalf("acked message: %+v", m)
	}
	if first.State != queue.Delivered || first.Attempts != 1 {
		t.Fatalf("the caller's lease after the ack: %+v", first.Message)
	}
	second := res.Leases[0]
	if m := get(t, q, second.ID); m.State != queue.Leased || !m.LeaseEnd.Equal(clk.Now().Add(time.Minute)) {
		t.Fatalf("next message: %+v", m)
	}

	// The second lease runs out and another worker takes both messages
	// left: the late ack fails and leases nothing.
	clk.Add(2 * time.Minute)
	taken := lease(t, q, route, 10, time.Minute)
	if len(taken.Leases) != 2 {
		t.Fatalf("the other worker leased %d messages, want 2", len(taken.Leases))
	}
	res, err = q.AckNext(ctx, second, "250 2.0.0 OK", 1, time.Minute)
	if !errors.Is(err, queue.ErrLeaseLost) || len(res.Leases) != 0 {
		t.Fatalf("ack of a lost lease: %+v %v; want ErrLeaseLost and nothing leased", res, err)
	}
	if m := get(t, q, second.ID); m.State != queue.Leased || m.Attempts != 1 {
		t.Fatalf("message whose late ack failed: %+v; want leased by the other worker, its lost attempt counted", m)
	}
	for _, l := range taken.Leases {
		if err := q.Ack(ctx, l, "250"); err != nil {
			t.Fatal(err)
		}
	}
	// Nothing left on the route: the ack leases nothing, and the other
	// route's message is untouched.
	last := taken.Leases[0]
	if m := get(t, q, other); m.State != queue.Ready {
		t.Fatalf("other route's message: %+v", m)
	}
	if _, err := q.AckNext(ctx, last, "250", 1, time.Minute); err != nil {
		t.Fatalf("ack again of an acked message: %v", err)
	}
	st, err := q.Stats(ctx)
	if err != nil || st.Total.Ready != 1 || st.Total.Leased != 0 {
		t.Fatalf("stats at the end: %+v %v; want only the other route's message", st.Total, err)
	}
}

// cancelAfterScript cancels its context once the first script run
// answers, as a shutdown landing between a Lease's script and what
// follows it would.
type cancelAfterScript struct {
	mu     sync.Mutex
	cancel context.CancelFunc
}

func (h *cancelAfterScript) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *cancelAfterScript) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h *cancelAfterScript) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		name := cmd.Name()
		if (name == "evalsha" || name == "eval") && err == nil {
			h.mu.Lock()
			if h.cancel != nil {
				h.cancel()
				h.cancel = nil
			}
			h.mu.Unlock()
		}
		return err
	}
}

// TestLeaseCancelledAfterScript: a Lease whose context is cancelled
// after its script leased the messages still hands them to the caller;
// otherwise they would sit leased, sent by nobody, until the lease ran
// out.
func TestLeaseCancelledAfterScript(t *testing.T) {
	t.Run("server", func(t *testing.T) {
		rdb := redistest.Start(t).Client(t)
		testLeaseCancelledAfterScript(t, rdb, rdb)
	})
	t.Run("Cluster", func(t *testing.T) {
		rdb := redistest.StartCluster(t, 3).Client(t)
		testLeaseCancelledAfterScript(t, rdb, rdb)
	})
}

func testLeaseCancelledAfterScript(t *testing.T, rdb redis.UniversalClient, hooks interface{ AddHook(redis.Hook) }) {
	hook := &cancelAfterScript{}
	hooks.AddHook(hook)
	q := queue.New(rdb, queue.Options{})
	id := enqueue(t, q, msg("crm", 1))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hook.mu.Lock()
	hook.cancel = cancel
	hook.mu.Unlock()
	res, err := q.Lease(ctx, "crm", 1, time.Minute)
	if ctx.Err() == nil {
		t.Fatal("the hook did not cancel the lease's context")
	}
	if err != nil || len(res.Leases) != 1 || res.Leases[0].ID != id {
		t.Fatalf("lease cancelled after its script: %+v, %v; want message %s leased to the caller", res, err, id)
	}
	if err := q.Ack(context.Background(), res.Leases[0], "250 2.0.0 OK"); err != nil {
		t.Fatalf("ack: %v", err)
	}
	if m := get(t, q, id); m.State != queue.Delivered {
		t.Fatalf("state %s, want delivered", m.State)
	}
}

// failDueMark refuses, while on, the writes that mark a route due, as
// Redis does when the due index's slot is on a master that is failing
// over.
type failDueMark struct {
	mu      sync.Mutex
	enabled bool
}

func (h *failDueMark) set(v bool) { h.mu.Lock(); h.enabled = v; h.mu.Unlock() }

func (h *failDueMark) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *failDueMark) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.mu.Lock()
		enabled := h.enabled
		h.mu.Unlock()
		a := cmd.Args()
		if enabled && len(a) > 1 && strings.EqualFold(fmt.Sprint(a[0]), "sadd") && a[1] == "hf:{due}:dirty" {
			err := errors.New("READONLY You can't write against a read only replica.")
			cmd.SetErr(err)
			return err
		}
		return next(ctx, cmd)
	}
}

func (h *failDueMark) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestReleaseMarkFails: a release whose due mark cannot be written is
// still a release, and the route is leased at this process's next look,
// not when the due index's held-route recheck comes (a minute later).
func TestReleaseMarkFails(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	hook := &failDueMark{}
	rdb.AddHook(hook)
	q := queue.New(rdb, queue.Options{})
	id := enqueue(t, q, msg("crm", 1))
	if err := q.HoldRoute(ctx, "crm", "credential breaker open"); err != nil {
		t.Fatal(err)
	}
	if res := lease(t, q, "crm", 1, time.Minute); len(res.Leases) != 0 {
		t.Fatalf("a held route leased %d messages", len(res.Leases))
	}
	hook.set(true)
	if err := q.ReleaseRoute(ctx, "crm"); err != nil {
		t.Fatalf("release with the due mark refused: %v", err)
	}
	hook.set(false)
	routes, _, err := q.DueRoutes(ctx, 10)
	if err != nil || len(routes) != 1 || routes[0] != "crm" {
		t.Fatalf("due routes after the release: %v %v; want crm", routes, err)
	}
	if res := lease(t, q, "crm", 1, time.Minute); len(res.Leases) != 1 || res.Leases[0].ID != id {
		t.Fatalf("lease after the release: %+v; want %s", res, id)
	}
}

// TestEnqueuePastDeadlineStoresNothing: a store that a hung Redis holds
// past its context's deadline (its submitter told 451) stores nothing
// when Redis resumes, so no worker can deliver it before its withdrawal;
// one that Redis runs in time is stored.
func TestEnqueuePastDeadlineStoresNothing(t *testing.T) {
	q, _, srv := newQueue(t)
	ctx := context.Background()
	// In time, under a deadline: stored (and the clock measured).
	short, cancel := context.WithTimeout(ctx, 3*time.Second)
	first, _, err := q.Enqueue(short, msg("r1", 1))
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	srv.Pause(t)
	late, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	id, _, err := q.Enqueue(late, msg("r1", 2))
	cancel()
	if err == nil || id == "" {
		t.Fatalf("enqueue with Redis stopped: %q, %v; want a timeout with the message's id", id, err)
	}
	time.Sleep(500 * time.Millisecond)
	srv.Resume(t)
	// The held store has run by the time Redis answers another command.
	if _, err := q.Get(ctx, first); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Get(ctx, id); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("the store that came past its deadline: Get = %v, want ErrNotFound", err)
	}
}

// replayScript runs the first script it sees twice once armed, with
// between in the middle: go-redis running a script again after its reply
// was lost (a connection reset), while another relay went on meanwhile.
type replayScript struct {
	mu      sync.Mutex
	between func()
}

func (h *replayScript) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *replayScript) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h *replayScript) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		name := cmd.Name()
		if err != nil || name != "evalsha" && name != "eval" {
			return err
		}
		h.mu.Lock()
		between := h.between
		h.between = nil
		h.mu.Unlock()
		if between == nil {
			return err
		}
		between()
		return next(ctx, cmd)
	}
}

// TestEnqueueRunTwice: a store whose script ran twice (its first reply
// lost, and go-redis retried) stores the message once: the second run
// does not put back in the queue a message another relay has delivered
// since the first.
func TestEnqueueRunTwice(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	plain := srv.Client(t)
	hooked := srv.Client(t)
	hook := &replayScript{}
	hooked.AddHook(hook)
	q := queue.New(hooked, queue.Options{})
	other := queue.New(plain, queue.Options{})
	const route = "crm"
	submit := queue.Submission{Route: route, App: "crm", From: "a@contoso.com", To: []string{"b@example.org"}, Body: []byte("x")}
	// The route registered, and the script loaded, first.
	if _, _, err := q.Enqueue(ctx, submit); err != nil {
		t.Fatal(err)
	}
	if res, err := other.Lease(ctx, route, 10, time.Minute); err != nil || len(res.Leases) != 1 {
		t.Fatalf("lease of the first message: %v %+v", err, res)
	} else if err := other.Ack(ctx, res.Leases[0], "250 2.0.0 OK"); err != nil {
		t.Fatal(err)
	}

	var delivered string
	hook.mu.Lock()
	hook.between = func() {
		res, err := other.Lease(ctx, route, 10, time.Minute)
		if err != nil || len(res.Leases) != 1 {
			t.Errorf("lease between the two runs: %v %+v", err, res)
			return
		}
		delivered = res.Leases[0].ID
		if err := other.Ack(ctx, res.Leases[0], "250 2.0.0 OK"); err != nil {
			t.Error(err)
		}
	}
	hook.mu.Unlock()
	id, dup, err := q.Enqueue(ctx, submit)
	if err != nil || dup {
		t.Fatalf("enqueue run twice: %s %v %v", id, dup, err)
	}
	if id != delivered {
		t.Fatalf("enqueue returned %s, the other relay delivered %s", id, delivered)
	}
	m, err := q.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if m.State != queue.Delivered || m.Attempts != 1 {
		t.Errorf("after the second run the message is %s with %d attempts, want delivered with 1", m.State, m.Attempts)
	}
	if res, err := other.Lease(ctx, route, 10, time.Minute); err != nil || len(res.Leases) != 0 {
		t.Errorf("the message is queued again after its delivery: %v %+v", err, res)
	}
}

// TestAckNextAgainLeaseEnd: an ack with the next lease called again after
// its reply was lost (the worker tries until Redis answers) returns the
// lease the first call took, which ends a lease length after that call,
// not after this one: the worker times its extensions and the end of its
// send by it.
func TestAckNextAgainLeaseEnd(t *testing.T) {
	ctx := context.Background()
	// The clock is the real one's, moved on by hand: Redis expires the
	// lease's token set by its own clock.
	clk := &clock{now: time.Now()}
	q := queue.New(redistest.Start(t).Client(t), queue.Options{Now: clk.Now})
	for i := range 2 {
		enqueue(t, q, msg("crm", i))
		clk.Add(time.Millisecond)
	}
	acked := lease(t, q, "crm", 1, 30*time.Second).Leases[0]
	twin := *acked
	next, err := q.AckNext(ctx, acked, "250 OK", 1, 30*time.Second)
	if err != nil || len(next.Leases) != 1 {
		t.Fatalf("ack and lease: %+v %v", next, err)
	}
	clk.Add(20 * time.Second)
	again, err := q.AckNext(ctx, &twin, "250 OK", 1, 30*time.Second)
	if err != nil || len(again.Leases) != 1 || again.Leases[0].ID != next.Leases[0].ID {
		t.Fatalf("ack and lease called again: %+v %v", again, err)
	}
	stored := get(t, q, next.Leases[0].ID).LeaseEnd
	if got := again.Leases[0].LeaseEnd; !got.Equal(stored) {
		t.Fatalf("lease returned again ends at %v, %v after its end in Redis (%v)", got, got.Sub(stored), stored)
	}
}
