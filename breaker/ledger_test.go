package breaker

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"holdfast/queue/redistest"
)

// runningClock is the time now, moved on by Add: leases lapse in real
// time, and a test skips ahead.
type runningClock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *runningClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *runningClock) Add(d time.Duration) {
	c.mu.Lock()
	c.off += d
	c.mu.Unlock()
}

// noticeFleet is n replicas, each a Set watching the breakers and a
// Webhook tracking its claims, all posting to one receiver that answers
// 503 while down.
type noticeFleet struct {
	admin redis.UniversalClient // for the test's own reads
	clk   *runningClock
	sets  []*Set
	hooks []*Webhook
	rdbs  []redis.UniversalClient
	down  atomic.Bool
	gone  [4]atomic.Bool // by replica: stopped or killed

	watchCtx context.Context
	wg       sync.WaitGroup
	// unwatch[i] stops replica i's Watch and waits for it.
	unwatch [4]func()

	mu  sync.Mutex
	got []string // the IDs posted while up, in order
}

// newNoticeFleet makes n replicas whose claims last lease, renewed every
// lease/3, on a redis-server of their own; the receiver starts down.
// Their Watch starts with watch.
func newNoticeFleet(t *testing.T, n int, lease time.Duration) *noticeFleet {
	t.Helper()
	srv := redistest.Start(t)
	return newNoticeFleetOn(t, n, lease, func() redis.UniversalClient { return srv.Client(t) })
}

// newNoticeFleetOn is newNoticeFleet with each replica's client, and the
// test's, from client.
func newNoticeFleetOn(t *testing.T, n int, lease time.Duration, client func() redis.UniversalClient) *noticeFleet {
	t.Helper()
	f := &noticeFleet{admin: client(), clk: &runningClock{}}
	f.down.Store(true)
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var tr Transition
		if err := json.NewDecoder(r.Body).Decode(&tr); err != nil {
			t.Errorf("webhook body: %v", err)
		}
		// A replica stopped or killed posts nothing more: a POST it
		// had under way when it stopped, which the receiver would
		// otherwise take late, does not count.
		i, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/"))
		if f.down.Load() || f.gone[i].Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		f.mu.Lock()
		f.got = append(f.got, tr.ID)
		f.mu.Unlock()
	}))
	t.Cleanup(rcv.Close)
	ctx, cancel := context.WithCancel(context.Background())
	f.watchCtx = ctx
	t.Cleanup(func() {
		for _, w := range f.hooks {
			w.Close()
		}
		cancel()
		f.wg.Wait()
	})
	for i := range n {
		log := slog.Default().With("replica", i)
		w := newWebhook(rcv.URL+"/"+strconv.Itoa(i), rcv.Client(), log, nil, time.Millisecond)
		w.slowEvery, w.keepEvery = 20*time.Millisecond, lease/3
		rdb := client()
		s := New(rdb, Options{Poll: 50 * time.Millisecond, OnMade: w.Notify, Now: f.clk.Now, Logger: log,
			Replica: "replica-" + string(rune('a'+i))})
		s.noticeLease = lease
		w.Track(s)
		f.sets, f.hooks, f.rdbs = append(f.sets, s), append(f.hooks, w), append(f.rdbs, rdb)
	}
	return f
}

// watch starts the Watch of the replicas named.
func (f *noticeFleet) watch(replicas ...int) {
	for _, i := range replicas {
		ctx, cancel := context.WithCancel(f.watchCtx)
		done := make(chan struct{})
		f.unwatch[i] = func() { cancel(); <-done }
		f.wg.Go(func() {
			defer close(done)
			f.sets[i].Watch(ctx)
		})
	}
}

// stop stops replica i as SIGTERM does: its Watch, then its Webhook,
// which hands its claims back.
func (f *noticeFleet) stop(i int) {
	f.gone[i].Store(true)
	f.unwatch[i]()
	f.hooks[i].Close()
}

func (f *noticeFleet) posted() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.got)
}

// waitPosted waits up to d for want to have been posted, then a little
// longer for a duplicate to show, and fails unless each of want was
// posted once, and each breaker's in the order of want.
func (f *noticeFleet) waitPosted(t *testing.T, d time.Duration, want ...string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for len(f.posted()) < len(want) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	got := f.posted()
	if !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want))) {
		t.Fatalf("posted %v, want %v", got, want)
	}
	breaker := func(id string) string { name, _, _ := strings.Cut(id, "@"); return name }
	of := func(ids []string, name string) []string {
		return slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return breaker(id) != name })
	}
	checked := map[string]bool{}
	for _, id := range want {
		name := breaker(id)
		if !checked[name] && !slices.Equal(of(got, name), of(want, name)) {
			t.Errorf("posted %v: %s's out of order, want %v", got, name, of(want, name))
		}
		checked[name] = true
	}
}

// crash stops replica i as SIGKILL would: its Webhook stops without
// handing its claims back (its Redis client is closed first).
func (f *noticeFleet) crash(i int) {
	f.gone[i].Store(true)
	f.rdbs[i].Close()
	f.hooks[i].Close()
}

// poster waits until a replica's webhook is posting a transition, and
// returns it: the replica whose script made the transition, or another
// that saw it first at a poll.
func (f *noticeFleet) poster(t *testing.T) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for i, w := range f.hooks {
			w.mu.Lock()
			busy := w.current != nil
			w.mu.Unlock()
			if busy {
				return i
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no webhook is posting")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestNoticeKeptWhileTrying: a replica that keeps trying a receiver that
// is down for many times the claim's lease keeps its claim: no other
// replica takes the notice over, and it is posted once.
func TestNoticeKeptWhileTrying(t *testing.T) {
	f := newNoticeFleet(t, 3, 1500*time.Millisecond)
	f.watch(0, 1, 2)
	if err := f.sets[0].Trip(t.Context(), "cred:contoso", "test"); err != nil {
		t.Fatal(err)
	}
	f.poster(t)
	time.Sleep(4500 * time.Millisecond) // three leases
	f.down.Store(false)
	f.waitPosted(t, 2*time.Second, "cred:contoso@1")
}

// TestNoticeReleasedAtClose: a replica stopped (SIGTERM) while its notice
// waits for the receiver hands the claim back; another replica posts it
// at its next poll, not a lease later.
func TestNoticeReleasedAtClose(t *testing.T) {
	f := newNoticeFleet(t, 2, time.Hour)
	f.watch(0, 1)
	if err := f.sets[0].Trip(t.Context(), "cred:contoso", "test"); err != nil {
		t.Fatal(err)
	}
	f.stop(f.poster(t))
	f.down.Store(false)
	f.waitPosted(t, 2*time.Second, "cred:contoso@1")
}

// TestNoticeTakenOverInOrder: a replica killed with two transitions of a
// breaker and one of another still to post (the receiver down): once its
// claims lapse, another replica posts all three, each once, the
// breaker's two in the order they were made. Also on a Redis Cluster,
// where the breakers and the list of claims are in three slots, and on
// a Redis past its maxmemory (a queue grown while a breaker held it).
func TestNoticeTakenOverInOrder(t *testing.T) {
	t.Run("single", func(t *testing.T) { takenOverInOrder(t, newNoticeFleet(t, 2, time.Second)) })
	t.Run("full", func(t *testing.T) {
		srv := redistest.Start(t)
		if err := srv.Client(t).ConfigSet(t.Context(), "maxmemory", "1").Err(); err != nil {
			t.Fatal(err)
		}
		takenOverInOrder(t, newNoticeFleetOn(t, 2, time.Second, func() redis.UniversalClient { return srv.Client(t) }))
	})
	t.Run("cluster", func(t *testing.T) {
		c := redistest.StartCluster(t, 3)
		takenOverInOrder(t, newNoticeFleetOn(t, 2, time.Second, func() redis.UniversalClient { return c.Client(t) }))
	})
}

func takenOverInOrder(t *testing.T, f *noticeFleet) {
	// Replica 1 watches only once replica 0 is gone, so that replica 0
	// claims every notice.
	f.watch(0)
	ctx := t.Context()
	for _, step := range []func() error{
		func() error { return f.sets[0].Trip(ctx, "cred:contoso", "test") },
		func() error { return f.sets[0].Trip(ctx, "cred:fabrikam", "test") },
		func() error { return f.sets[0].Reset(ctx, "cred:contoso") },
	} {
		f.clk.Add(time.Millisecond) // distinct times
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	if i := f.poster(t); i != 0 {
		t.Fatalf("replica %d posts; want replica 0, the only one watching", i)
	}
	for _, name := range []string{"cred:contoso", "cred:fabrikam"} {
		for field, v := range f.admin.HGetAll(ctx, claimsKey(name)).Val() {
			if by := strings.Fields(v)[1]; by != f.sets[0].id {
				t.Fatalf("claim %s %s is %s's before the kill, want replica 0's", name, field, by)
			}
		}
	}
	f.crash(0)
	f.watch(1)
	f.down.Store(false)
	f.waitPosted(t, 5*time.Second, "cred:contoso@1", "cred:fabrikam@1", "cred:contoso@2")
	if n := f.admin.ZCard(ctx, noticesKey).Val(); n != 0 {
		t.Errorf("%d claims still listed once every notice was posted", n)
	}
}

// TestNoticeTooOldNotTaken: a notice whose transition is older than the
// webhook's patience when its claim lapses is dropped, not posted late.
func TestNoticeTooOldNotTaken(t *testing.T) {
	f := newNoticeFleet(t, 2, time.Second)
	for _, w := range f.hooks {
		// The poster keeps trying it, and the taker would post it.
		w.patience = 2 * noticePatience
	}
	f.watch(0, 1)
	ctx := t.Context()
	f.clk.Add(-noticePatience - time.Minute)
	if err := f.sets[0].Trip(ctx, "cred:contoso", "test"); err != nil {
		t.Fatal(err)
	}
	f.crash(f.poster(t))
	f.down.Store(false)
	deadline := time.Now().Add(5 * time.Second)
	for f.admin.ZCard(ctx, noticesKey).Val() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the lapsed claim is still listed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	f.waitPosted(t, 0)
}

// TestNoticeListedByClaimant: a replica that sees a transition another
// has claimed, with its clock an hour ahead, leaves the claim's listing
// as the claimant made it, by Redis's clock: a takeover is not put off.
func TestNoticeListedByClaimant(t *testing.T) {
	srv := redistest.Start(t)
	made := func(Transition) {}
	a := New(srv.Client(t), Options{OnMade: made})
	ahead := New(srv.Client(t), Options{OnMade: made, Now: func() time.Time { return time.Now().Add(time.Hour) }})
	tr := Transition{ID: "cred:contoso@1", Name: "cred:contoso", To: Open, Generation: 1,
		At: time.Now().Truncate(time.Millisecond)}
	if !a.claim(tr) {
		t.Fatal("the first claim was refused")
	}
	rdb := srv.Client(t)
	member := noticeMember(tr)
	before := rdb.ZScore(t.Context(), noticesKey, member).Val()
	if ahead.claim(tr) {
		t.Fatal("a second claim of the same transition was granted")
	}
	if after := rdb.ZScore(t.Context(), noticesKey, member).Val(); after != before {
		t.Errorf("the claim's listing moved from %v to %v by a replica that did not claim it", before, after)
	}
}
