package breaker

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// seenLog records what OnTransition reports, as "open@3".
type seenLog struct {
	mu  sync.Mutex
	got []string
}

func (l *seenLog) add(tr Transition) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got = append(l.got, tr.To.String()+"@"+strconv.FormatInt(tr.Generation, 10))
}

func (l *seenLog) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.got)
}

// watched starts n Sets on one Redis; the one at index w reports its
// transitions to the returned log.
func watched(t *testing.T, n, w int) ([]*Set, *clock, *seenLog) {
	t.Helper()
	log := &seenLog{}
	sets, clk := replicas(t, n, func(i int, o *Options) {
		if i == w {
			o.OnTransition = log.add
		}
	})
	return sets, clk, log
}

// listed reports whether a new Set, as the command line makes, lists the
// breaker name in state.
func listed(t *testing.T, s *Set, clk *clock, name string, state State) bool {
	t.Helper()
	list, err := New(s.rdb, Options{Now: clk.Now}).List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(list, func(st Status) bool { return st.Name == name && st.State == state })
}

// TestForgottenBreakerMadeAnew: a breaker forgotten (holdfast breaker
// reset --forget) while relays still use it opens again. Its generations
// go on from the forgotten record's, so the relays that saw the old
// record take the new one as news, and the relay that opens it names it
// again, so that the command line lists it.
func TestForgottenBreakerMadeAnew(t *testing.T) {
	sets, clk, seen := watched(t, 3, 1)
	relay, other, cli := sets[0], sets[1], sets[2]
	ctx := context.Background()
	const name = "cred:contoso"
	fresh := func() {
		t.Helper()
		clk.Add(time.Second)
		for _, s := range []*Set{relay, other} {
			if _, err := s.Fresh(ctx, name); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, step := range []func() error{
		func() error { return relay.Trip(ctx, name, "test") },
		func() error { return cli.Reset(ctx, name) },
		func() error { return cli.Forget(ctx, name) },
		func() error { return relay.Trip(ctx, name, "test again") },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
		fresh()
	}
	if st := other.Cached(name); st.State != Open || st.Generation != 3 {
		t.Errorf("the other relay holds the breaker as %v at generation %d, want open at 3", st.State, st.Generation)
	}
	if got, want := seen.list(), []string{"open@1", "closed@2", "open@3"}; !slices.Equal(got, want) {
		t.Errorf("the other relay saw transitions %v, want %v", got, want)
	}
	if !listed(t, relay, clk, name, Open) {
		t.Errorf("a new Set (the command line) does not list %s open: the relay that opened it again did not name it", name)
	}
}

// TestForgetSeenAsClose: Forget closes an open breaker, then removes its
// record at once. A relay that saw it open, and reads only afterwards,
// sees it close.
func TestForgetSeenAsClose(t *testing.T) {
	sets, clk, seen := watched(t, 3, 1)
	relay, other, cli := sets[0], sets[1], sets[2]
	ctx := context.Background()
	const name = "cred:contoso"
	if err := relay.Trip(ctx, name, "test"); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Second)
	if _, err := other.Fresh(ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := cli.Forget(ctx, name); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Second)
	if _, err := other.Fresh(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := other.List(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := seen.list(), []string{"open@1", "closed@2"}; !slices.Equal(got, want) {
		t.Errorf("the other relay saw transitions %v, want %v", got, want)
	}
	if listed(t, relay, clk, name, Closed) || listed(t, relay, clk, name, Open) {
		t.Errorf("the command line still lists %s after Forget", name)
	}
}

// TestOwnWriteAfterForget: the relay that opens a forgotten breaker again
// before it read anything since the Forget sees its own opening, and
// names the breaker again. Watch's polls and its probe after that report
// each transition once and keep its probe lease.
func TestOwnWriteAfterForget(t *testing.T) {
	sets, clk, seen := watched(t, 2, 0)
	relay, cli := sets[0], sets[1]
	ctx := context.Background()
	const name = "cred:contoso"
	if err := relay.Trip(ctx, name, "test"); err != nil {
		t.Fatal(err)
	}
	if err := relay.Reset(ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := cli.Forget(ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := relay.Trip(ctx, name, "test again"); err != nil {
		t.Fatal(err)
	}
	if st := relay.Cached(name); st.State != Open || st.Generation != 3 {
		t.Errorf("the relay holds the breaker it opened again as %v at generation %d, want open at 3", st.State, st.Generation)
	}
	if !listed(t, relay, clk, name, Open) {
		t.Errorf("the command line does not list %s open", name)
	}
	for range 3 {
		clk.Add(time.Second)
		if _, err := relay.Fresh(ctx, name); err != nil {
			t.Fatal(err)
		}
		if _, err := relay.List(ctx); err != nil { // Watch's poll
			t.Fatal(err)
		}
	}
	clk.Add(31 * time.Second)
	if ok, err := relay.AcquireProbe(ctx, name); err != nil || !ok {
		t.Fatalf("AcquireProbe = %v, %v", ok, err)
	}
	if _, err := relay.List(ctx); err != nil { // a poll while the probe runs
		t.Fatal(err)
	}
	if err := relay.ProbeResult(ctx, name, nil); err != nil {
		t.Fatalf("the probe's success was refused: %v", err)
	}
	if got, want := seen.list(), []string{"open@1", "closed@2", "open@3", "closed@4"}; !slices.Equal(got, want) {
		t.Errorf("the relay saw transitions %v, want %v", got, want)
	}
}

// TestLateEmptyReadIgnored: a read that found no record, answered after
// this Set recorded the breaker's opening, changes nothing: the opening
// is reported once.
func TestLateEmptyReadIgnored(t *testing.T) {
	sets, _, seen := watched(t, 1, 0)
	s := sets[0]
	ctx := context.Background()
	const name = "cred:contoso"
	answered, proceed := make(chan struct{}), make(chan struct{})
	s.rdb.(*redis.Client).AddHook(holdReadHook{once: &sync.Once{}, answered: answered, proceed: proceed})
	done := make(chan error, 1)
	go func() {
		_, err := s.Fresh(ctx, name)
		done <- err
	}()
	<-answered // Redis answered "no record"; the reply waits
	if err := s.RecordAs(ctx, name, errExpired, Material{}); err != nil {
		t.Fatal(err)
	}
	close(proceed)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := s.Status(ctx, name); err != nil {
		t.Fatal(err)
	}
	if got, want := seen.list(), []string{"open@1"}; !slices.Equal(got, want) {
		t.Errorf("transitions %v, want %v", got, want)
	}
}

// holdReadHook holds the reply of the first pipelined HGETALL of one
// record until proceed is closed, once Redis has answered it. The first
// waits for the test to take answered, however late the test gets there.
type holdReadHook struct {
	once              *sync.Once
	answered, proceed chan struct{}
}

func (holdReadHook) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (holdReadHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h holdReadHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		if len(cmds) == 1 && cmds[0].Name() == "hgetall" {
			h.once.Do(func() {
				h.answered <- struct{}{}
				<-h.proceed
			})
		}
		return err
	}
}

// TestReadLeavesNoTrace: reading a breaker that has no record (an
// operator's look at a mailbox no route uses) does not add it to what the
// Set lists.
func TestReadLeavesNoTrace(t *testing.T) {
	sets, _ := replicas(t, 1, nil)
	s := sets[0]
	ctx := context.Background()
	if st, err := s.Status(ctx, "mbx:nobody@example.com"); err != nil || st.State != Closed {
		t.Fatalf("Status = %+v, %v; want closed", st, err)
	}
	list, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 0 {
		t.Errorf("List = %v after reading a breaker with no record, want none", list)
	}
}

// TestReadOfForgottenLeavesNoTrace: what Forget keeps of a record is no
// record to a Set that did not know the breaker: a look at it adds
// nothing to what the Set lists.
func TestReadOfForgottenLeavesNoTrace(t *testing.T) {
	sets, _ := replicas(t, 3, nil)
	relay, cli, look := sets[0], sets[1], sets[2]
	ctx := context.Background()
	const name = "mbx:old@contoso.com"
	if err := relay.Trip(ctx, name, "mistyped"); err != nil {
		t.Fatal(err)
	}
	if err := cli.Forget(ctx, name); err != nil {
		t.Fatal(err)
	}
	if st, err := look.Status(ctx, name); err != nil || st.State != Closed || st.Generation != 2 {
		t.Fatalf("Status after Forget = %+v, %v; want closed at generation 2", st, err)
	}
	list, err := look.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 0 {
		t.Errorf("List = %v after a look at a forgotten breaker, want none", list)
	}
}

// TestForgetCloseNotice: the close that Forget makes is told with its
// time, and a relay that stops with the notice unposted leaves it to
// another, which takes it over.
func TestForgetCloseNotice(t *testing.T) {
	var mu sync.Mutex
	var made, taken []Transition
	sets, clk := replicas(t, 3, func(i int, o *Options) {
		o.OnMade = func(tr Transition) {
			mu.Lock()
			defer mu.Unlock()
			if i == 0 {
				made = append(made, tr)
			} else if i == 2 {
				taken = append(taken, tr)
			}
		}
	})
	relay, cli, other := sets[0], sets[1], sets[2]
	ctx := context.Background()
	const name = "mbx:old@contoso.com"
	if err := cli.Trip(ctx, name, "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := relay.Fresh(ctx, name); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Second)
	if err := cli.Forget(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := relay.Fresh(ctx, name); err != nil { // after the forget script
		t.Fatal(err)
	}
	mu.Lock()
	notices := slices.Clone(made)
	mu.Unlock()
	var closed bool
	for _, tr := range notices {
		if tr.At.IsZero() {
			t.Errorf("notice %s has no time", tr.ID)
		}
		closed = closed || tr.To == Closed
	}
	if !closed {
		t.Fatalf("the relay told no close: %+v", notices)
	}
	relay.ReleaseNotices(ctx, notices) // it stops with them unposted
	for i := range 2 {
		if err := other.takeOver(ctx, i == 0); err != nil {
			t.Fatalf("takeOver: %v", err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.ContainsFunc(taken, func(tr Transition) bool { return tr.To == Closed }) {
		t.Errorf("the other relay took over %+v, want the close among them", taken)
	}
}

// TestForgetLeavesReopened: a breaker that opens again between Forget's
// reset and its removal of the record is kept, open and listed.
func TestForgetLeavesReopened(t *testing.T) {
	sets, clk := replicas(t, 1, nil)
	s := sets[0]
	ctx := context.Background()
	const name = "cred:contoso"
	if err := s.Trip(ctx, name, "test"); err != nil {
		t.Fatal(err)
	}
	keys := []string{recordKey(name), spreadKey(name), placesKey(name), attemptKey(name), worksKey(name), unprovenKey(name), notifiedKey(name)}
	if n, err := forgetScript.Run(ctx, s.rdb, keys).Int(); err != nil || n != 1 {
		t.Fatalf("forget script on an open breaker = %d, %v; want 1", n, err)
	}
	if !listed(t, s, clk, name, Open) {
		t.Errorf("the open breaker is not listed open after the forget script left it alone")
	}
}

// TestResetOfUnknownLeavesNoTrace: a reset of a name with no record (a
// mistyped mailbox) makes none, and neither the Set that reset it nor
// another lists it; a reset of a forgotten breaker leaves it forgotten.
func TestResetOfUnknownLeavesNoTrace(t *testing.T) {
	sets, _ := replicas(t, 2, nil)
	cli, other := sets[0], sets[1]
	ctx := context.Background()
	const typo, old = "mbx:alcie@contoso.com", "mbx:old@contoso.com"
	if err := cli.Trip(ctx, old, "mistyped"); err != nil {
		t.Fatal(err)
	}
	if err := cli.Forget(ctx, old); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{typo, old} {
		if err := cli.Reset(ctx, name); err != nil {
			t.Fatalf("Reset(%s): %v", name, err)
		}
	}
	for i, s := range []*Set{cli, other} {
		list, err := s.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 0 {
			t.Errorf("Set %d lists %v after resets of names with no record, want none", i, list)
		}
	}
	if st, err := other.Status(ctx, typo); err != nil || st.State != Closed || st.Generation != 0 {
		t.Errorf("Status(%s) = %+v, %v; want closed, never recorded", typo, st, err)
	}
}

// TestRecordLostWithRedis: Redis restarts empty (or is flushed) while a
// breaker is open. The next read of any replica finds the record gone
// and raises it above the generation it knew, closed: every replica
// hears the close, and a fence taken from the new generation is newer
// than those of the lost ones. A breaker lost while closed takes its
// generation back, so the replicas take its next opening as news.
func TestRecordLostWithRedis(t *testing.T) {
	const open, closed = "mbx:a@contoso.com", "mbx:b@contoso.com"
	var mu sync.Mutex
	seen := [2]map[string][]string{{}, {}}
	sets, _ := replicas(t, 2, func(i int, o *Options) {
		o.OnTransition = func(tr Transition) {
			mu.Lock()
			defer mu.Unlock()
			seen[i][tr.Name] = append(seen[i][tr.Name], fmt.Sprintf("%s@%d", tr.To, tr.Generation))
		}
	})
	a, b := sets[0], sets[1]
	ctx := context.Background()
	if err := a.Trip(ctx, open, "held"); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		record(t, a, closed, credErr)
	}
	if err := a.Reset(ctx, closed); err != nil {
		t.Fatal(err)
	}
	for _, s := range sets {
		if _, err := s.Fresh(ctx, open, closed); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}

	st, err := b.Fresh(ctx, open, closed)
	if err != nil {
		t.Fatal(err)
	}
	if st[0].State != Closed || st[0].Generation != 2 || st[1].State != Closed || st[1].Generation != 2 {
		t.Fatalf("after the loss, b reads %s@%d and %s@%d; want closed@2 for both", st[0].State, st[0].Generation, st[1].State, st[1].Generation)
	}
	if ok, err := a.Allow(ctx, open); !ok || err != nil {
		if _, err := a.Fresh(ctx, open); err != nil {
			t.Fatal(err)
		}
	}
	if got := a.Cached(open); got.State != Closed || got.Generation != 2 {
		t.Errorf("a, after reading again: %s@%d, want closed@2", got.State, got.Generation)
	}
	// The breaker known closed opens anew, above its old generation.
	for range 3 {
		record(t, a, closed, credErr)
	}
	if _, err := b.Fresh(ctx, closed); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for i := range seen {
		if got, want := seen[i][open], []string{"open@1", "closed@2"}; !slices.Equal(got, want) {
			t.Errorf("replica %d saw %s go %v, want %v", i, open, got, want)
		}
		want := []string{"open@1", "closed@2", "open@3"}
		if i == 1 {
			want = want[2:] // b first read it closed
		}
		if got := seen[i][closed]; !slices.Equal(got, want) {
			t.Errorf("replica %d saw %s go %v, want %v", i, closed, got, want)
		}
	}
}

// TestRecordLostOneNotice: Redis loses a closed breaker's record, and the
// next failure opens it at once (an expired secret). The opening is
// raised above the generation the replicas knew before the fleet hears of
// it, and is told once, at the raised generation.
func TestRecordLostOneNotice(t *testing.T) {
	made := &seenLog{}
	sets, _ := replicas(t, 2, func(_ int, o *Options) { o.OnMade = made.add })
	a, b := sets[0], sets[1]
	ctx := context.Background()
	const name = "cred:contoso"
	if err := a.Trip(ctx, name, "x"); err != nil {
		t.Fatal(err)
	}
	if err := a.Reset(ctx, name); err != nil {
		t.Fatal(err)
	}
	for _, s := range sets {
		if _, err := s.Fresh(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	before := len(made.list())
	record(t, a, name, errExpired)
	if _, err := b.Fresh(ctx, name); err != nil {
		t.Fatal(err)
	}
	if got, want := made.list()[before:], []string{"open@3"}; !slices.Equal(got, want) {
		t.Errorf("notices of the opening after the loss: %q, want %q", got, want)
	}
}

// TestStaleReadIsNotALoss: a read that raced with a newer one (List's
// pipeline read before another goroutine took a newer record) is older
// than what the Set knows, as a record Redis lost would be; the restore
// finds Redis at the newer generation and changes nothing, and nothing
// says Redis lost a record.
func TestStaleReadIsNotALoss(t *testing.T) {
	var logs bytes.Buffer // the Set runs no goroutine of its own here
	sets, _ := replicas(t, 1, func(_ int, o *Options) {
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	a := sets[0]
	ctx := context.Background()
	const name = "mbx:a@contoso.com"
	if err := a.Trip(ctx, name, "held"); err != nil {
		t.Fatal(err)
	}
	stale, err := a.rdb.HGetAll(ctx, recordKey(name)).Result()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Reset(ctx, name); err != nil {
		t.Fatal(err)
	}
	got := a.take(ctx, parseMap(name, stale), isRecord(stale))
	if got.State != Closed || got.Generation != 2 {
		t.Errorf("take of the stale read returned %s@%d, want closed@2", got.State, got.Generation)
	}
	if st := a.Cached(name); st.State != Closed || st.Generation != 2 {
		t.Errorf("after the stale read the Set holds %s@%d, want closed@2", st.State, st.Generation)
	}
	if strings.Contains(logs.String(), "record lost") {
		t.Errorf("a read that raced was logged as a record Redis lost:\n%s", logs.String())
	}
	// A record Redis did lose is said so, once.
	if err := a.rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := a.Fresh(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if n := strings.Count(logs.String(), "record lost"); n != 1 {
		t.Errorf("after a flush, %d warnings of a lost record, want 1:\n%s", n, logs.String())
	}
}
