package breaker

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"holdfast/queue/redistest"
)

// clock is a controllable clock shared by the replicas of a test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.UnixMilli(1_800_000_000_000)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// replicas returns n Sets on one redis-server, each with its own client,
// sharing a controlled clock. edit, if not nil, changes each Set's options.
func replicas(t *testing.T, n int, edit func(i int, o *Options)) ([]*Set, *clock) {
	t.Helper()
	srv := redistest.Start(t)
	clk := newClock()
	sets := make([]*Set, n)
	for i := range sets {
		o := Options{Now: clk.Now}
		if edit != nil {
			edit(i, &o)
		}
		sets[i] = New(srv.Client(t), o)
	}
	return sets, clk
}

// failure is a Failure as the relay's classification would report it.
type failure struct {
	counts, now bool
	reason      string
}

func (f *failure) Error() string         { return f.reason }
func (f *failure) BreakerCounts() bool   { return f.counts }
func (f *failure) BreakerOpensNow() bool { return f.now }
func (f *failure) BreakerReason() string { return f.reason }

var (
	credErr    = &failure{counts: true, reason: "535 5.7.3 Authentication unsuccessful"}
	mailboxErr = &failure{counts: true,
		reason: "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant"}
	errExpired = fmt.Errorf("token request: %w", &failure{counts: true, now: true, reason: expiredReason})
)

const expiredReason = "invalid_client AADSTS7000222: The provided client secret keys for app '3f1b8a52' are expired."

func status(t *testing.T, s *Set, name string) Status {
	t.Helper()
	st, err := s.Status(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func allow(t *testing.T, s *Set, name string) bool {
	t.Helper()
	ok, err := s.Allow(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func record(t *testing.T, s *Set, name string, err error) {
	t.Helper()
	if rerr := s.Record(context.Background(), name, err); rerr != nil {
		t.Fatal(rerr)
	}
}

func TestTripsAfterThresholdAcrossReplicas(t *testing.T) {
	sets, clk := replicas(t, 2, nil)
	a, b := sets[0], sets[1]
	const name = "app:contoso"

	record(t, a, name, credErr)
	record(t, a, name, credErr)
	if st := status(t, b, name); st.State != Closed || st.Failures != 2 {
		t.Fatalf("after 2 failures on A: %+v, want closed with 2 failures", st)
	}
	if !allow(t, a, name) || !allow(t, b, name) {
		t.Fatal("Allow = false before the threshold")
	}
	record(t, b, name, credErr)
	if st := status(t, a, name); st.State != Open || st.Failures != 3 || st.Generation != 1 {
		t.Fatalf("after 2+1 failures: %+v, want open, 3 failures, generation 1", st)
	}
	if allow(t, b, name) {
		t.Fatal("B: Allow = true right after it opened the breaker")
	}
	clk.Add(a.o.Poll)
	if allow(t, a, name) {
		t.Fatal("A: Allow = true one Poll after the breaker opened")
	}
	// Further failures while open change nothing.
	record(t, a, name, credErr)
	if st := status(t, a, name); st.Failures != 3 || st.Generation != 1 {
		t.Fatalf("failure while open changed the record: %+v", st)
	}
}

func TestMailboxFailuresCount(t *testing.T) {
	sets, _ := replicas(t, 1, nil)
	for range 3 {
		record(t, sets[0], "mbx:alice", mailboxErr)
	}
	if st := status(t, sets[0], "mbx:alice"); st.State != Open {
		t.Fatalf("after 3 mailbox failures: %+v, want open", st)
	}
	if st := status(t, sets[0], "app:contoso"); st.State != Closed || st.Generation != 0 {
		t.Fatalf("another breaker changed: %+v", st)
	}
}

func TestSecretExpiredOpensAtOnce(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    error
		reason string
	}{
		{"wrapped", errExpired, expiredReason},
		{"bare", errors.Unwrap(errExpired), expiredReason},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sets, _ := replicas(t, 2, nil)
			record(t, sets[0], "app:contoso", tc.err)
			st := status(t, sets[1], "app:contoso")
			if st.State != Open || st.Failures != 1 || st.Reason != tc.reason {
				t.Fatalf("after one expired-secret error: %+v, want open, 1 failure, reason %q", st, tc.reason)
			}
			if allow(t, sets[1], "app:contoso") {
				t.Fatal("Allow = true")
			}
		})
	}
}

func TestNonCountingClassesNeverCount(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"throttled 432", &failure{reason: "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"}},
		{"throttled 429", &failure{reason: "429"}},
		{"transient 421", &failure{reason: "421 4.3.2 Service not available"}},
		{"permanent 550", &failure{reason: "550 5.1.1 RESOLVER.ADR.RecipNotFound"}},
		{"network", fmt.Errorf("dial smtp.office365.com:587: %w", context.DeadlineExceeded)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sets, _ := replicas(t, 1, nil)
			s := sets[0]
			for range 10 {
				record(t, s, "app:contoso", tc.err)
			}
			if st := status(t, s, "app:contoso"); st.State != Closed || st.Failures != 0 || st.Generation != 0 {
				t.Fatalf("after 10 %v: %+v, want closed with no failures", tc.err, st)
			}
			// No local breaker at all: nothing counted one.
			if e := s.brks["app:contoso"]; e != nil && e.local.Counts().TotalFailures != 0 {
				t.Fatalf("local breaker counted: %+v", e.local.Counts())
			}
		})
	}
}

func TestSuccessResetsCount(t *testing.T) {
	sets, clk := replicas(t, 2, nil)
	a, b := sets[0], sets[1]
	const name = "app:contoso"
	record(t, a, name, credErr)
	record(t, a, name, credErr)
	record(t, b, name, nil) // B never read the record: the success goes to Redis
	if st := status(t, a, name); st.Failures != 0 {
		t.Fatalf("after a success on B: %d failures, want 0", st.Failures)
	}
	record(t, a, name, credErr)
	record(t, a, name, credErr)
	record(t, a, name, nil)
	record(t, b, name, credErr)
	record(t, b, name, credErr)
	if st := status(t, a, name); st.State != Closed || st.Failures != 2 {
		t.Fatalf("2 failures, success, 2 failures: %+v, want closed with 2", st)
	}
	// A stale zero count does not stop a success from resetting.
	clk.Add(a.o.Poll)
	record(t, a, name, nil)
	if st := status(t, b, name); st.Failures != 0 {
		t.Fatalf("after a success on A: %d failures, want 0", st.Failures)
	}
}

func TestAcquireProbeSingleWinner(t *testing.T) {
	sets, clk := replicas(t, 2, nil)
	a, b := sets[0], sets[1]
	ctx := context.Background()
	const name = "app:contoso"
	if ok, err := a.AcquireProbe(ctx, name); ok || err != nil {
		t.Fatalf("AcquireProbe on a closed breaker = %v, %v", ok, err)
	}
	record(t, a, name, errExpired)
	clk.Add(30*time.Second - time.Millisecond)
	if ok, _ := b.AcquireProbe(ctx, name); ok {
		t.Fatal("AcquireProbe granted before the open interval")
	}
	clk.Add(time.Millisecond)

	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := range 20 {
		s := sets[i%2]
		wg.Go(func() {
			ok, err := s.AcquireProbe(ctx, name)
			if err != nil {
				t.Error(err)
			}
			if ok {
				wins.Add(1)
			}
		})
	}
	wg.Wait()
	if n := wins.Load(); n != 1 {
		t.Fatalf("%d of 20 concurrent callers on two replicas got the probe, want 1", n)
	}
}

func TestProbeLeaseExpires(t *testing.T) {
	sets, clk := replicas(t, 2, nil)
	a, b := sets[0], sets[1]
	ctx := context.Background()
	const name = "app:contoso"
	if err := a.Trip(ctx, name, "test"); err != nil {
		t.Fatal(err)
	}
	clk.Add(30 * time.Second)
	if ok, _ := a.AcquireProbe(ctx, name); !ok {
		t.Fatal("A did not get the due probe")
	}
	clk.Add(a.ProbeLease() - time.Millisecond)
	if ok, _ := b.AcquireProbe(ctx, name); ok {
		t.Fatal("B got the probe while A's lease is live")
	}
	clk.Add(time.Millisecond)
	if ok, _ := b.AcquireProbe(ctx, name); !ok {
		t.Fatal("B did not get the probe after A's lease expired")
	}
	if err := a.ProbeResult(ctx, name, nil); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("A's late ProbeResult = %v, want ErrLeaseLost", err)
	}
	if st := status(t, a, name); st.State != Open {
		t.Fatalf("A's late result changed the record: %+v", st)
	}
	if err := b.ProbeResult(ctx, name, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.ProbeResult(ctx, name, nil); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("second ProbeResult = %v, want ErrLeaseLost", err)
	}
}

// TestProbeLeaseRenewed: a prober that renews its lease keeps it past
// ProbeLease; once it stops (a killed process), the lease lapses within
// ProbeLease of the last renewal. A renewal by a replica that lost the
// lease fails with ErrLeaseLost.
func TestProbeLeaseRenewed(t *testing.T) {
	sets, clk := replicas(t, 2, nil)
	a, b := sets[0], sets[1]
	ctx := context.Background()
	const name = "cred:contoso"
	probing(t, a, clk, name)
	for range 5 {
		clk.Add(a.ProbeLease() / 2)
		if err := a.RenewProbe(ctx, name); err != nil {
			t.Fatal(err)
		}
		if ok, _ := b.AcquireProbe(ctx, name); ok {
			t.Fatal("B got the probe while A renews its lease")
		}
	}
	clk.Add(a.ProbeLease())
	if ok, _ := b.AcquireProbe(ctx, name); !ok {
		t.Fatal("B did not get the probe a lease after A's last renewal")
	}
	if err := a.RenewProbe(ctx, name); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("A's renewal after B took the probe = %v, want ErrLeaseLost", err)
	}
	if err := b.ProbeResult(ctx, name, nil); err != nil {
		t.Fatal(err)
	}
}

// TestProbeReservedPastLease: a replica whose file changed asks for the
// probe while another replica's lease is live (a prober that was killed
// in its probe): when the lease lapses, the probe is the asker's, not a
// third replica's, which may still have the old secret.
func TestProbeReservedPastLease(t *testing.T) {
	sets, clk := replicas(t, 3, nil)
	dead, asker, other := sets[0], sets[1], sets[2]
	ctx := context.Background()
	const name = "cred:contoso"
	probing(t, dead, clk, name)
	if _, err := asker.ProbeNowHere(ctx, name); err != nil {
		t.Fatal(err)
	}
	clk.Add(dead.ProbeLease() + time.Millisecond)
	if ok, _ := other.AcquireProbe(ctx, name); ok {
		t.Fatal("a third replica took the probe reserved for the one whose file changed, once the dead lease lapsed")
	}
	if ok, _ := asker.AcquireProbe(ctx, name); !ok {
		t.Fatal("the replica whose file changed did not get the probe once the dead lease lapsed")
	}
}

// TestProbeTakenOverByRestartedReplica: a replica killed while it held
// a probe's lease is started again (the same replica name, a new
// process): it takes the probe over at once, while another replica
// still waits for the lease, and the dead process's result is refused.
func TestProbeTakenOverByRestartedReplica(t *testing.T) {
	sets, clk := replicas(t, 3, func(i int, o *Options) { o.Replica = []string{"relay-1", "relay-1", "relay-2"}[i] })
	dead, again, other := sets[0], sets[1], sets[2]
	ctx := context.Background()
	const name = "cred:contoso"
	probing(t, dead, clk, name)
	if ok, _ := other.AcquireProbe(ctx, name); ok {
		t.Fatal("relay-2 got the probe while relay-1's lease is live")
	}
	if ok, _ := dead.AcquireProbe(ctx, name); ok {
		t.Fatal("relay-1's own process got its live probe again")
	}
	if ok, _ := again.AcquireProbe(ctx, name); !ok {
		t.Fatal("relay-1 started again did not take over the probe its killed process held")
	}
	if err := dead.ProbeResult(ctx, name, nil); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("the killed process's result = %v, want ErrLeaseLost", err)
	}
	if ok, _ := other.AcquireProbe(ctx, name); ok {
		t.Fatal("relay-2 got the probe relay-1 took over")
	}
	if err := again.ProbeResult(ctx, name, nil); err != nil {
		t.Fatal(err)
	}
}

// TestReleaseProbe: a prober that gives its lease back leaves the probe
// due at once for another replica, with nothing counted and the interval
// kept; its result afterwards is refused.
func TestReleaseProbe(t *testing.T) {
	sets, clk := replicas(t, 2, nil)
	a, b := sets[0], sets[1]
	ctx := context.Background()
	const name = "cred:contoso"
	probing(t, a, clk, name)
	before := status(t, a, name)
	if err := a.ReleaseProbe(ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := a.ProbeResult(ctx, name, nil); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("ProbeResult after ReleaseProbe = %v, want ErrLeaseLost", err)
	}
	after := status(t, a, name)
	if after.State != Open || after.Failures != before.Failures || after.Interval != before.Interval {
		t.Fatalf("after the release %+v, want as before: %+v", after, before)
	}
	if ok, _ := b.AcquireProbe(ctx, name); !ok {
		t.Fatal("B did not get the probe A gave back")
	}
	if err := a.ReleaseProbe(ctx, name); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("A's second release = %v, want ErrLeaseLost", err)
	}
}

func TestProbeNow(t *testing.T) {
	sets, _ := replicas(t, 2, nil)
	a, b := sets[0], sets[1]
	ctx := context.Background()
	const name = "app:contoso"
	if open, err := a.ProbeNow(ctx, name); open || err != nil {
		t.Fatalf("ProbeNow on a closed breaker = %v, %v; want false, nil", open, err)
	}
	record(t, a, name, errExpired)
	if ok, _ := b.AcquireProbe(ctx, name); ok {
		t.Fatal("probe granted right after opening")
	}
	if open, err := a.ProbeNow(ctx, name); !open || err != nil {
		t.Fatalf("ProbeNow = %v, %v; want true, nil", open, err)
	}
	if ok, _ := b.AcquireProbe(ctx, name); !ok {
		t.Fatal("probe not granted after ProbeNow")
	}
	if ok, _ := a.AcquireProbe(ctx, name); ok {
		t.Fatal("a second replica got the requested probe")
	}
	// The request was used: after a failed probe the interval applies again.
	if err := b.ProbeResult(ctx, name, credErr); err != nil {
		t.Fatal(err)
	}
	if ok, _ := a.AcquireProbe(ctx, name); ok {
		t.Fatal("probe granted after a failed probe without waiting")
	}
}

// TestProbeAnswered: each request for a probe (AskProbe) gets the next
// number, and a probe's result answers the requests made before its
// lease was granted (Status.Answered). A request made while a probe runs
// is answered by a probe after it; a lease taken over or given back
// counts from its new grant.
func TestProbeAnswered(t *testing.T) {
	sets, _ := replicas(t, 4, func(i int, o *Options) { o.Replica = []string{"relay-1", "relay-2", "relay-2", ""}[i] })
	a, b, bAgain, op := sets[0], sets[1], sets[2], sets[3]
	ctx := context.Background()
	const name = "cred:contoso"
	ask := func(want int64) {
		t.Helper()
		if n, err := op.AskProbe(ctx, name); n != want || err != nil {
			t.Fatalf("AskProbe = %d, %v; want %d, nil", n, err, want)
		}
	}
	answered := func(state State, want int64) {
		t.Helper()
		if st := status(t, op, name); st.State != state || !st.AnsweredKnown || st.Answered != want {
			t.Fatalf("%+v; want %s, answered %d", st, state, want)
		}
	}
	acquire := func(s *Set, who string) {
		t.Helper()
		if ok, err := s.AcquireProbe(ctx, name); !ok || err != nil {
			t.Fatalf("%s did not get the probe: %v, %v", who, ok, err)
		}
	}
	ask(0) // closed: nothing to probe
	record(t, a, name, errExpired)
	if st := status(t, op, name); st.AnsweredKnown || st.Answered != 0 {
		t.Fatalf("answered before any probe result: %+v", st)
	}
	ask(1)
	acquire(a, "relay-1")
	ask(2) // while relay-1's probe runs
	if err := a.ProbeResult(ctx, name, credErr); err != nil {
		t.Fatal(err)
	}
	answered(Open, 1)

	acquire(b, "relay-2") // for request 2
	ask(3)
	acquire(bAgain, "relay-2 started again")
	if err := bAgain.ProbeResult(ctx, name, credErr); err != nil {
		t.Fatal(err)
	}
	answered(Open, 3)

	ask(4)
	acquire(a, "relay-1")
	if err := a.ReleaseProbe(ctx, name); err != nil {
		t.Fatal(err)
	}
	answered(Open, 3)
	acquire(b, "relay-2")
	if err := b.ProbeResult(ctx, name, nil); err != nil {
		t.Fatal(err)
	}
	answered(Closed, 4)

	// A held breaker is not probed: its request gets no number.
	if err := op.Hold(ctx, name, "held by an operator"); err != nil {
		t.Fatal(err)
	}
	if n, err := op.AskProbe(ctx, name); n != 0 || !errors.Is(err, ErrHeld) {
		t.Fatalf("AskProbe of a held breaker = %d, %v; want 0 and ErrHeld", n, err)
	}
	if err := op.Reset(ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := op.Trip(ctx, name, "tripped by an operator"); err != nil {
		t.Fatal(err)
	}
	ask(5)
	acquire(a, "relay-1")
	if err := a.ProbeResult(ctx, name, credErr); err != nil {
		t.Fatal(err)
	}
	answered(Open, 5)

	// A result of a relay of an earlier version, during an upgrade or
	// after a rollback, writes last_probe alone: the answered count of
	// the result before does not count for it.
	st := status(t, op, name)
	later := st.LastProbe.Add(time.Second).UnixMilli()
	if err := op.rdb.HSet(ctx, recordKey(name), "last_probe", later).Err(); err != nil {
		t.Fatal(err)
	}
	if st := status(t, op, name); st.AnsweredKnown || st.Answered != 0 || st.LastProbe.UnixMilli() != later {
		t.Fatalf("after an earlier version's result: %+v; want no answered count", st)
	}
}

func TestProbeFailureDoublesInterval(t *testing.T) {
	sets, clk := replicas(t, 1, nil)
	s := sets[0]
	ctx := context.Background()
	const name = "app:contoso"
	record(t, s, name, errExpired)
	if st := status(t, s, name); st.Interval != 30*time.Second {
		t.Fatalf("first interval %v, want 30s", st.Interval)
	}
	for i, want := range []time.Duration{60 * time.Second, 2 * time.Minute, 4 * time.Minute, 5 * time.Minute, 5 * time.Minute} {
		st := status(t, s, name)
		clk.Add(st.NextProbe.Sub(clk.Now()))
		if ok, err := s.AcquireProbe(ctx, name); !ok || err != nil {
			t.Fatalf("probe %d: AcquireProbe = %v, %v", i, ok, err)
		}
		probeErr := &failure{counts: true,
			reason: fmt.Sprintf("invalid_client AADSTS7000215: Invalid client secret provided (%d).", i)}
		if err := s.ProbeResult(ctx, name, probeErr); err != nil {
			t.Fatal(err)
		}
		now := clk.Now()
		st = status(t, s, name)
		wantReason := fmt.Sprintf("invalid_client AADSTS7000215: Invalid client secret provided (%d).", i)
		if st.State != Open || st.Interval != want || !st.NextProbe.Equal(now.Add(want)) ||
			!st.LastProbe.Equal(now) || st.Reason != wantReason || st.Generation != 1 {
			t.Fatalf("after failed probe %d: %+v; want open, interval %v, next probe %v, reason %q, generation 1",
				i, st, want, now.Add(want), wantReason)
		}
	}
}

func TestProbeSuccessCloses(t *testing.T) {
	sets, clk := replicas(t, 2, nil)
	a, b := sets[0], sets[1]
	ctx := context.Background()
	const name = "app:contoso"
	for range 3 {
		record(t, a, name, credErr)
	}
	if allow(t, a, name) {
		t.Fatal("Allow = true while open")
	}
	clk.Add(30 * time.Second)
	if ok, _ := b.AcquireProbe(ctx, name); !ok {
		t.Fatal("no probe")
	}
	if err := b.ProbeResult(ctx, name, nil); err != nil {
		t.Fatal(err)
	}
	st := status(t, b, name)
	if st.State != Closed || st.Generation != 2 || st.Failures != 0 || st.Reason != "" ||
		!st.Since.Equal(clk.Now()) || !st.LastProbe.Equal(clk.Now()) {
		t.Fatalf("after a successful probe: %+v", st)
	}
	clk.Add(a.o.Poll)
	if !allow(t, a, name) || !allow(t, b, name) {
		t.Fatal("Allow = false after the breaker closed")
	}
	// A's local breaker starts afresh: it needs the threshold again.
	if c := a.brks[name].local.Counts(); c.ConsecutiveFailures != 0 {
		t.Fatalf("A's local breaker kept its count: %+v", c)
	}
}

func TestTripReset(t *testing.T) {
	sets, clk := replicas(t, 2, nil)
	a, b := sets[0], sets[1]
	ctx := context.Background()
	const name = "app:contoso"
	record(t, a, name, credErr)
	if err := a.Trip(ctx, name, "rotating the secret"); err != nil {
		t.Fatal(err)
	}
	st := status(t, b, name)
	if st.State != Open || st.Reason != "rotating the secret" || st.Generation != 1 || !st.Since.Equal(clk.Now()) {
		t.Fatalf("after Trip: %+v", st)
	}
	clk.Add(b.o.Poll)
	if allow(t, b, name) || b.Cached(name).Reason != "rotating the secret" || b.Cached("other").State != Closed {
		t.Fatalf("Cached after Allow: %+v", b.Cached(name))
	}
	clk.Add(time.Second)
	if err := b.Trip(ctx, name, "still rotating"); err != nil {
		t.Fatal(err)
	}
	if st2 := status(t, a, name); st2.Reason != "still rotating" || st2.Generation != 1 || !st2.Since.Equal(st.Since) {
		t.Fatalf("Trip while open: %+v, want the new reason and the same generation and since", st2)
	}
	if err := b.Reset(ctx, name); err != nil {
		t.Fatal(err)
	}
	st = status(t, a, name)
	if st.State != Closed || st.Reason != "" || st.Failures != 0 || st.Generation != 2 {
		t.Fatalf("after Reset: %+v", st)
	}
	if err := b.Reset(ctx, name); err != nil {
		t.Fatal(err)
	}
	if st := status(t, a, name); st.Generation != 2 {
		t.Fatalf("Reset of a closed breaker changed the generation: %+v", st)
	}
	if err := a.Reset(ctx, "never-seen"); err != nil {
		t.Fatal(err)
	}
	if err := a.Trip(ctx, "bad{name}", "x"); err == nil {
		t.Fatal("Trip accepted a name with a hash tag")
	}
}

func TestOnTransitionOncePerReplica(t *testing.T) {
	var mu sync.Mutex
	seen := make([][]Transition, 2)
	sets, _ := replicas(t, 2, func(i int, o *Options) {
		o.Poll = 10 * time.Millisecond
		o.OnTransition = func(tr Transition) {
			mu.Lock()
			seen[i] = append(seen[i], tr)
			mu.Unlock()
		}
	})
	a, b := sets[0], sets[1]
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for _, s := range sets {
		wg.Go(func() { s.Watch(ctx) })
	}
	defer wg.Wait()
	defer cancel()

	const name = "app:contoso"
	wait := func(n int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			done := len(seen[0]) >= n && len(seen[1]) >= n
			mu.Unlock()
			if done {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %d transitions on each replica: %+v", n, seen)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	for range 3 {
		record(t, a, name, credErr)
	}
	wait(1)
	for range 5 {
		status(t, a, name)
		allow(t, b, name)
	}
	if err := b.Reset(ctx, name); err != nil {
		t.Fatal(err)
	}
	wait(2)
	time.Sleep(50 * time.Millisecond) // several more polls
	mu.Lock()
	defer mu.Unlock()
	for i, trs := range seen {
		if len(trs) != 2 {
			t.Fatalf("replica %d saw %d transitions, want 2: %+v", i, len(trs), trs)
		}
		if trs[0].From != Closed || trs[0].To != Open || trs[0].Generation != 1 || trs[0].Reason != "535 5.7.3 Authentication unsuccessful" {
			t.Errorf("replica %d first transition %+v", i, trs[0])
		}
		if trs[1].From != Open || trs[1].To != Closed || trs[1].Generation != 2 {
			t.Errorf("replica %d second transition %+v", i, trs[1])
		}
	}
}

func TestStatusAndList(t *testing.T) {
	sets, clk := replicas(t, 2, nil)
	a, b := sets[0], sets[1]
	ctx := context.Background()
	opened := clk.Now()
	for range 3 {
		record(t, a, "app:contoso", credErr)
	}
	record(t, b, "mbx:alice", mailboxErr)
	want := Status{Name: "app:contoso", State: Open, Reason: "535 5.7.3 Authentication unsuccessful",
		Since: opened, Failures: 3, Generation: 1, NextProbe: opened.Add(30 * time.Second), Interval: 30 * time.Second}
	if got := status(t, b, "app:contoso"); !reflect.DeepEqual(got, want) {
		t.Fatalf("Status = %+v\nwant     %+v", got, want)
	}
	if got := status(t, b, "unknown"); !reflect.DeepEqual(got, Status{Name: "unknown"}) {
		t.Fatalf("Status of a breaker without a record = %+v", got)
	}
	list, err := b.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The look at "unknown", which has no record, left no trace.
	if len(list) != 2 || !reflect.DeepEqual(list[0], want) || list[1].Name != "mbx:alice" || list[1].Failures != 1 {
		t.Fatalf("List = %+v", list)
	}
}

// TestLocalBreakerWithoutRedis checks that the local breaker decides Allow
// when Redis cannot be reached.
func TestLocalBreakerWithoutRedis(t *testing.T) {
	srv := redistest.Start(t)
	clk := newClock()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1, DialTimeout: time.Second})
	t.Cleanup(func() { _ = rdb.Close() })
	s := New(rdb, Options{Now: clk.Now})
	ctx := context.Background()
	const name = "app:contoso"
	record(t, s, name, credErr)
	srv.Kill(t)
	for range 2 {
		if err := s.Record(ctx, name, credErr); err == nil {
			t.Fatal("Record with Redis down returned nil")
		}
	}
	clk.Add(s.o.Poll)
	if ok, err := s.Allow(ctx, name); ok || err == nil {
		t.Fatalf("Allow with Redis down after 3 failures = %v, %v; want false and an error", ok, err)
	}
}

func TestOptions(t *testing.T) {
	d := DefaultOptions()
	if d.Threshold != 3 || d.OpenInterval != 30*time.Second || d.MaxInterval != 5*time.Minute ||
		d.ProbeLease != 10*time.Second || d.Poll != 500*time.Millisecond || d.Now == nil || d.Logger == nil {
		t.Fatalf("DefaultOptions = %+v", d)
	}
	for _, tc := range []struct {
		field string
		edit  func(*Options)
	}{
		{"Threshold", func(o *Options) { o.Threshold = -1 }},
		{"OpenInterval", func(o *Options) { o.OpenInterval = time.Microsecond }},
		{"MaxInterval", func(o *Options) { o.MaxInterval = time.Second }},
		{"ProbeLease", func(o *Options) { o.ProbeLease = -time.Second }},
		{"Poll", func(o *Options) { o.Poll = -1 }},
	} {
		o := DefaultOptions()
		tc.edit(&o)
		err := o.validate()
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: validate() = %v, want an error naming the field", tc.field, err)
		}
	}
	if err := d.validate(); err != nil {
		t.Fatal(err)
	}
}

// TestCluster runs the main paths against a Redis Cluster: every script
// touches one hash-tagged key, and List reads records across slots.
func TestCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	clk := newClock()
	a := New(c.Client(t), Options{Now: clk.Now})
	b := New(c.Client(t), Options{Now: clk.Now})
	ctx := context.Background()
	names := []string{"app:contoso", "app:fabrikam", "mbx:alice", "mbx:bob"}
	for _, n := range names {
		record(t, a, n, credErr)
		record(t, a, n, credErr)
		record(t, b, n, credErr)
	}
	list, err := b.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != len(names) {
		t.Fatalf("List returned %d breakers, want %d", len(list), len(names))
	}
	for i, st := range list {
		if st.Name != names[i] || st.State != Open || st.Failures != 3 {
			t.Fatalf("List[%d] = %+v", i, st)
		}
	}
	clk.Add(30 * time.Second)
	for _, n := range names {
		okA, _ := a.AcquireProbe(ctx, n)
		okB, _ := b.AcquireProbe(ctx, n)
		if okA == okB {
			t.Fatalf("%s: AcquireProbe A=%v B=%v, want exactly one", n, okA, okB)
		}
		winner := a
		if okB {
			winner = b
		}
		if err := winner.ProbeResult(ctx, n, nil); err != nil {
			t.Fatal(err)
		}
		if st := status(t, a, n); st.State != Closed || st.Generation != 2 {
			t.Fatalf("%s after probe: %+v", n, st)
		}
	}
}

func TestSpreadOpensAcrossDistinctMembers(t *testing.T) {
	sets, clk := replicas(t, 2, nil)
	a, b := sets[0], sets[1]
	ctx := context.Background()
	const cred = "cred:contoso"
	delegated := &failure{counts: true, reason: "535 5.7.3 Authentication unsuccessful"}
	spread := func(s *Set, member string, err error) {
		t.Helper()
		if rerr := s.RecordSpread(ctx, cred, member, err, 3); rerr != nil {
			t.Fatal(rerr)
		}
	}

	// The same mailbox again and again is that mailbox's problem.
	for range 5 {
		spread(a, "alice@contoso.com", delegated)
	}
	if st := status(t, b, cred); st.State != Closed || st.Spread != 1 || st.Failures != 0 {
		t.Fatalf("one mailbox failing: %+v, want closed, spread 1", st)
	}
	// Non-counting failures are ignored.
	spread(a, "bob@contoso.com", &failure{reason: "421"})
	if st := status(t, a, cred); st.Spread != 1 {
		t.Fatalf("a transient failure joined the spread: %+v", st)
	}
	// A success in between breaks the row.
	spread(b, "bob@contoso.com", delegated)
	clk.Add(a.o.Poll)
	record(t, a, cred, nil)
	if st := status(t, a, cred); st.State != Closed || st.Spread != 0 {
		t.Fatalf("after a success: %+v, want spread 0", st)
	}
	// Three distinct mailboxes in a row, over two replicas, open it.
	spread(a, "alice@contoso.com", delegated)
	spread(b, "bob@contoso.com", delegated)
	if st := status(t, a, cred); st.State != Closed || st.Spread != 2 {
		t.Fatalf("two mailboxes: %+v", st)
	}
	spread(a, "carol@contoso.com", delegated)
	st := status(t, b, cred)
	if st.State != Open || st.Generation != 1 || st.Spread != 0 ||
		st.Reason != "3 mailboxes failed in a row (alice@contoso.com, bob@contoso.com, carol@contoso.com): 535 5.7.3 Authentication unsuccessful" {
		t.Fatalf("three mailboxes: %+v", st)
	}
	// A reset clears everything.
	if err := a.Reset(ctx, cred); err != nil {
		t.Fatal(err)
	}
	spread(a, "dave@contoso.com", delegated)
	if st := status(t, a, cred); st.State != Closed || st.Spread != 1 {
		t.Fatalf("after reset: %+v, want a fresh spread of 1", st)
	}
}

// TestFingerprints: once a secret has got a token, failures of another
// one do not count (ErrStale), and the replicas that said so are listed.
func TestFingerprints(t *testing.T) {
	ctx := context.Background()
	sets, _ := replicas(t, 2, nil)
	a, b := sets[0], sets[1]
	const name = "cred:contoso"
	// Before any token, every failure counts.
	old := Material{Fingerprint: "old", Written: time.Now().Add(-time.Hour)}
	if err := a.RecordAs(ctx, name, credErr, old); err != nil {
		t.Fatal(err)
	}
	if err := a.Succeeded(ctx, name, "new"); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if err := b.RecordAs(ctx, name, errExpired, old); !errors.Is(err, ErrStale) {
			t.Fatalf("failure of the old secret: %v, want ErrStale", err)
		}
	}
	if err := b.MarkStale(ctx, name, "relay-2", true); err != nil {
		t.Fatal(err)
	}
	st := status(t, a, name)
	if st.State != Closed || st.GoodFingerprint != "new" || !reflect.DeepEqual(st.StaleReplicas, []string{"relay-2"}) {
		t.Fatalf("after stale failures: %+v, want closed, good fingerprint new, relay-2 stale", st)
	}
	// The secret that works failing counts, and an expired one opens.
	if err := a.RecordAs(ctx, name, errExpired, Material{Fingerprint: "new"}); err != nil {
		t.Fatal(err)
	}
	if st := status(t, b, name); st.State != Open {
		t.Fatalf("after the working secret expired: %+v, want open", st)
	}
	if err := b.MarkStale(ctx, name, "relay-2", false); err != nil {
		t.Fatal(err)
	}
	if st := status(t, b, name); len(st.StaleReplicas) != 0 {
		t.Fatalf("stale replicas after relay-2 rejoined: %v", st.StaleReplicas)
	}
}

// TestWrongNewSecretCounts: material written after the working one first
// got a token (a new secret that is wrong) is not stale: its failures
// count, so a relay whose operator wrote a bad secret opens the breaker
// instead of standing aside for good. Older material stays stale.
func TestWrongNewSecretCounts(t *testing.T) {
	ctx := context.Background()
	sets, _ := replicas(t, 1, nil)
	a := sets[0]
	const name = "cred:contoso"
	if err := a.Succeeded(ctx, name, "good"); err != nil {
		t.Fatal(err)
	}
	st := status(t, a, name)
	if st.GoodFingerprint != "good" || st.GoodSince.IsZero() {
		t.Fatalf("after a success: %+v, want good fingerprint good and its time", st)
	}
	older := Material{Fingerprint: "old", Written: st.GoodSince.Add(-2 * writtenSlack)}
	if !older.Stale(st) {
		t.Fatal("material written before the working one is not stale")
	}
	if err := a.RecordAs(ctx, name, credErr, older); !errors.Is(err, ErrStale) {
		t.Fatalf("failure of older material: %v, want ErrStale", err)
	}
	// Succeeded again with the same fingerprint keeps its time.
	if err := a.Succeeded(ctx, name, "good"); err != nil {
		t.Fatal(err)
	}
	// A file written just after the token can carry a slightly earlier
	// time: file times come from the kernel's coarse clock.
	wrong := Material{Fingerprint: "wrong", Written: st.GoodSince.Add(-5 * time.Millisecond)}
	if wrong.Stale(st) {
		t.Fatal("material written after the working one is stale")
	}
	for range 3 {
		if err := a.RecordAs(ctx, name, credErr, wrong); err != nil {
			t.Fatalf("failure of newer material: %v, want counted", err)
		}
	}
	if st := status(t, a, name); st.State != Open {
		t.Fatalf("after 3 failures of a newer wrong secret: %+v, want open", st)
	}
}

// TestStaleAgrees: Material.Stale, which a replica asks of its cached
// record, gives the answer failScript gives in Redis for every case,
// down to the millisecond at the slack's edge.
func TestStaleAgrees(t *testing.T) {
	ctx := context.Background()
	sets, _ := replicas(t, 1, nil)
	a := sets[0]
	const good = "cred:good"
	if err := a.Succeeded(ctx, good, "good"); err != nil {
		t.Fatal(err)
	}
	since := status(t, a, good).GoodSince
	edge := since.Add(-writtenSlack)
	cases := map[string]Material{
		"no fingerprint":       {Written: since.Add(-time.Hour)},
		"the working one":      {Fingerprint: "good", Written: since.Add(-time.Hour)},
		"age unknown":          {Fingerprint: "other"},
		"an hour older":        {Fingerprint: "other", Written: since.Add(-time.Hour)},
		"at the slack's edge":  {Fingerprint: "other", Written: edge},
		"within the edge's ms": {Fingerprint: "other", Written: edge.Add(500 * time.Microsecond)},
		"a ms past the edge":   {Fingerprint: "other", Written: edge.Add(time.Millisecond)},
		"within the slack":     {Fingerprint: "other", Written: since.Add(-5 * time.Millisecond)},
		"newer":                {Fingerprint: "other", Written: since.Add(time.Minute)},
	}
	i := 0
	for what, m := range cases {
		// A breaker of its own per case, so that no failure opens another's.
		i++
		name := fmt.Sprintf("cred:case%d", i)
		if err := a.Succeeded(ctx, name, "good"); err != nil {
			t.Fatal(err)
		}
		st := status(t, a, name)
		st.GoodSince = since
		if err := a.rdb.HSet(ctx, recordKey(name), "good_since", ms(since)).Err(); err != nil {
			t.Fatal(err)
		}
		err := a.RecordAs(ctx, name, credErr, m)
		if err != nil && !errors.Is(err, ErrStale) {
			t.Fatalf("%s: %v", what, err)
		}
		if got, want := m.Stale(st), errors.Is(err, ErrStale); got != want {
			t.Errorf("%s: Material.Stale says %v, failScript says %v", what, got, want)
		}
	}
}

// TestProbeRetryKeepsInterval: a probe retried for a secret still
// propagating is due after the delay, for the same replica first, and
// leaves the open interval as it was; a normal failure afterwards doubles
// it as usual.
func TestProbeRetryKeepsInterval(t *testing.T) {
	sets, clk := replicas(t, 2, nil)
	a, b := sets[0], sets[1]
	ctx := context.Background()
	const name = "cred:contoso"
	record(t, a, name, errExpired)
	failures := status(t, a, name).Failures
	notYet := &failure{counts: true, reason: "invalid_client AADSTS7000215: Invalid client secret provided."}
	for i, after := range []time.Duration{time.Second, 2 * time.Second, 3 * time.Second} {
		if i == 0 {
			// A's file changed: the first probe is asked for at once.
			if _, err := a.ProbeNowHere(ctx, name); err != nil {
				t.Fatal(err)
			}
		}
		if ok, err := a.AcquireProbe(ctx, name); !ok || err != nil {
			t.Fatalf("retry %d: A's AcquireProbe = %v, %v", i, ok, err)
		}
		if err := a.ProbeRetry(ctx, name, notYet, after); err != nil {
			t.Fatal(err)
		}
		st := status(t, a, name)
		if st.State != Open || st.Interval != 30*time.Second || !st.NextProbe.Equal(clk.Now().Add(after)) || st.Reason != notYet.reason ||
			st.Failures != failures {
			t.Fatalf("after retry %d: %+v; want open, interval 30s, next probe in %v, still %d failures", i, st, after, failures)
		}
		clk.Add(after)
		// Due now, and kept for A: B may not take it.
		if ok, _ := b.AcquireProbe(ctx, name); ok {
			t.Fatalf("retry %d: B took the retry kept for A", i)
		}
	}
	// A does not come back for it: B may, once the reservation ends.
	clk.Add(probeHere)
	if ok, _ := b.AcquireProbe(ctx, name); !ok {
		t.Fatal("B did not get the retry after A's reservation ended")
	}
	if err := b.ProbeResult(ctx, name, credErr); err != nil {
		t.Fatal(err)
	}
	if st := status(t, a, name); st.Interval != time.Minute || st.Failures != failures+1 {
		t.Fatalf("a normal failure after retries: interval %v, %d failures; want 1m (30s doubled once) and %d", st.Interval, st.Failures, failures+1)
	}
	if err := a.ProbeRetry(ctx, name, nil, time.Second); err == nil {
		t.Fatal("ProbeRetry without a failure was taken")
	}
}

// TestProbeResultAfterRedisBlip: a probe result that could not be written
// (Redis away for a moment) can be written again by the replica holding
// the probe: its lease is not forgotten with the failed write, which would
// leave the breaker open until the lease ran out.
func TestProbeResultAfterRedisBlip(t *testing.T) {
	srv := redistest.Start(t, redistest.WithArgs("--appendfsync", "always"))
	clk := newClock()
	s := New(srv.Client(t), Options{Now: clk.Now})
	ctx := context.Background()
	const name = "app:contoso"
	for range 3 {
		record(t, s, name, credErr)
	}
	clk.Add(30 * time.Second)
	if ok, err := s.AcquireProbe(ctx, name); !ok || err != nil {
		t.Fatalf("no probe: %v", err)
	}
	srv.Kill(t)
	if err := s.ProbeResult(ctx, name, nil); err == nil || errors.Is(err, ErrLeaseLost) {
		t.Fatalf("probe result with Redis down: %v, want a Redis error", err)
	}
	srv.Restart(t)
	if err := s.ProbeResult(ctx, name, nil); err != nil {
		t.Fatalf("probe result written again: %v", err)
	}
	if st := status(t, s, name); st.State != Closed {
		t.Fatalf("after the probe result: %+v, want closed", st)
	}
}

// TestTransitionFound: a replica that starts while a breaker is open
// finds it open (Transition.Found), while changes it sees happen, and a
// breaker that opens after it started, are not found.
func TestTransitionFound(t *testing.T) {
	srv := redistest.Start(t)
	clk := newClock()
	var mu sync.Mutex
	var got []Transition
	newSet := func() *Set {
		return New(srv.Client(t), Options{Now: clk.Now, Poll: time.Nanosecond, OnTransition: func(tr Transition) {
			mu.Lock()
			got = append(got, tr)
			mu.Unlock()
		}})
	}
	a := newSet()
	for range 3 {
		record(t, a, "cred:old", credErr)
	}
	clk.Add(time.Second)
	b := newSet()
	for range 3 {
		record(t, a, "cred:new", credErr)
	}
	mu.Lock()
	got = nil
	mu.Unlock()
	allow(t, b, "cred:old")
	allow(t, b, "cred:new")
	if err := a.Reset(t.Context(), "cred:old"); err != nil {
		t.Fatal(err)
	}
	allow(t, b, "cred:old")

	mu.Lock()
	defer mu.Unlock()
	want := []struct {
		name  string
		to    State
		found bool
	}{{"cred:old", Open, true}, {"cred:new", Open, false}, {"cred:old", Closed, false}}
	if len(got) != len(want) {
		t.Fatalf("replica b saw %+v, want %d transitions", got, len(want))
	}
	for i, w := range want {
		if got[i].Name != w.name || got[i].To != w.to || got[i].Found != w.found {
			t.Errorf("transition %d: %s to %s found %v, want %s to %s found %v", i, got[i].Name, got[i].To, got[i].Found, w.name, w.to, w.found)
		}
	}
}

// probing opens breaker name with an expired secret, lets its probe
// fall due and has s take it.
func probing(t *testing.T, s *Set, clk *clock, name string) {
	t.Helper()
	record(t, s, name, errExpired)
	clk.Add(s.o.OpenInterval)
	if ok, err := s.AcquireProbe(context.Background(), name); err != nil || !ok {
		t.Fatalf("the due probe was not taken: %v, %v", ok, err)
	}
}

// TestSucceededAtLate: a record of the material that works made late,
// for a token got while Redis did not answer, does not replace material
// that got its token since.
func TestSucceededAtLate(t *testing.T) {
	ctx := context.Background()
	sets, clk := replicas(t, 2, nil)
	a, b := sets[0], sets[1]
	const name = "cred:contoso"
	issued := clk.Now()
	clk.Add(time.Second)
	if err := a.Succeeded(ctx, name, "newer"); err != nil {
		t.Fatal(err)
	}
	if err := b.SucceededAt(ctx, name, "older", issued); err != nil {
		t.Fatal(err)
	}
	if st := status(t, a, name); st.GoodFingerprint != "newer" {
		t.Errorf("after a late record of older material the good fingerprint is %q, want newer", st.GoodFingerprint)
	}
	later := clk.Now().Add(time.Second)
	if err := b.SucceededAt(ctx, name, "latest", later); err != nil {
		t.Fatal(err)
	}
	if st := status(t, a, name); st.GoodFingerprint != "latest" || !st.GoodSince.Equal(later) {
		t.Errorf("after a late record of newer material: %q since %v, want latest since %v", st.GoodFingerprint, st.GoodSince, later)
	}
}

// TestDropGoneStale: the stale mark of a replica that no longer announces
// itself is removed once older than the given age; a running replica's
// mark, and a recent one, stay.
func TestDropGoneStale(t *testing.T) {
	ctx := context.Background()
	names := []string{"relay-1", "relay-2", "relay-3"}
	sets, clk := replicas(t, 3, func(i int, o *Options) { o.Replica = names[i] })
	const name = "cred:contoso"
	if err := sets[0].Trip(ctx, name, "test"); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := sets[i].MarkStale(ctx, name, names[i], true); err != nil {
			t.Fatal(err)
		}
	}
	clk.Add(2 * time.Minute)
	if err := sets[2].MarkStale(ctx, name, names[2], true); err != nil {
		t.Fatal(err)
	}
	if err := sets[0].newAnnouncer().announce(ctx); err != nil { // relay-1 runs; relay-2 and relay-3 do not
		t.Fatal(err)
	}
	dropped, err := sets[0].DropGoneStale(ctx, name, names, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(dropped, []string{"relay-2"}) {
		t.Fatalf("dropped %v, want [relay-2]", dropped)
	}
	if st := status(t, sets[0], name); !slices.Equal(st.StaleReplicas, []string{"relay-1", "relay-3"}) {
		t.Fatalf("stale replicas %v, want [relay-1 relay-3]", st.StaleReplicas)
	}
	// relay-2 comes back, still stale: its new mark stays.
	if err := sets[1].newAnnouncer().announce(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sets[1].MarkStale(ctx, name, names[1], true); err != nil {
		t.Fatal(err)
	}
	clk.Add(2 * time.Minute)
	if dropped, err := sets[0].DropGoneStale(ctx, name, names, time.Minute); err != nil || !slices.Equal(dropped, []string{"relay-3"}) {
		t.Fatalf("second pass dropped %v %v, want [relay-3]", dropped, err)
	}
	if st := status(t, sets[0], name); !slices.Equal(st.StaleReplicas, []string{"relay-1", "relay-2"}) {
		t.Fatalf("stale replicas %v, want [relay-1 relay-2]", st.StaleReplicas)
	}
}

// TestHold: a breaker an operator holds grants no probe, due or asked
// for, so nothing but Reset closes it; a trip afterwards is probed again.
func TestHold(t *testing.T) {
	ctx := context.Background()
	sets, clk := replicas(t, 2, func(i int, o *Options) { o.Replica = fmt.Sprintf("relay-%d", i+1) })
	a, b := sets[0], sets[1]
	const name = "cred:contoso"
	if err := a.Hold(ctx, name, "held by an operator: tenant migration"); err != nil {
		t.Fatal(err)
	}
	st := status(t, b, name)
	if st.State != Open || !st.Held || st.Reason != "held by an operator: tenant migration" {
		t.Fatalf("after hold: %+v", st)
	}
	clk.Add(time.Hour) // every probe long due
	for _, s := range sets {
		if ok, err := s.AcquireProbe(ctx, name); err != nil || ok {
			t.Fatalf("probe of a held breaker granted: %v %v", ok, err)
		}
	}
	if open, err := b.ProbeNow(ctx, name); !open || !errors.Is(err, ErrHeld) {
		t.Fatalf("ProbeNow of a held breaker: %v %v, want true and ErrHeld", open, err)
	}
	if ok, _ := a.AcquireProbe(ctx, name); ok {
		t.Fatal("probe granted after ProbeNow of a held breaker")
	}
	// A trip of a held breaker keeps the hold.
	if err := b.Trip(ctx, name, "tripped"); err != nil {
		t.Fatal(err)
	}
	if st := status(t, a, name); !st.Held {
		t.Fatalf("a trip released the hold: %+v", st)
	}
	if err := b.Reset(ctx, name); err != nil {
		t.Fatal(err)
	}
	if st := status(t, a, name); st.State != Closed || st.Held {
		t.Fatalf("after reset: %+v", st)
	}
	// Tripped again, without a hold: probed as any open breaker.
	if err := a.Trip(ctx, name, "tripped"); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Hour)
	if ok, err := b.AcquireProbe(ctx, name); err != nil || !ok {
		t.Fatalf("probe of a tripped breaker: %v %v", ok, err)
	}
	if err := b.ProbeResult(ctx, name, nil); err != nil {
		t.Fatal(err)
	}
	if st := status(t, a, name); st.State != Closed {
		t.Fatalf("a successful probe left the tripped breaker %s", st.State)
	}
	// A hold of a breaker whose probe is under way ends that probe's
	// lease: its success does not close the breaker.
	if err := a.Trip(ctx, name, "tripped"); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Hour)
	if ok, err := b.AcquireProbe(ctx, name); err != nil || !ok {
		t.Fatalf("probe: %v %v", ok, err)
	}
	if err := a.Hold(ctx, name, "held"); err != nil {
		t.Fatal(err)
	}
	if err := b.ProbeResult(ctx, name, nil); err == nil {
		t.Fatal("the result of a probe begun before the hold was taken")
	}
	if st := status(t, a, name); st.State != Open || !st.Held {
		t.Fatalf("after a probe begun before the hold succeeded: %+v", st)
	}
	// A relay of an earlier version, which does not know holds, closes
	// the held breaker after a probe, leaving the field: the breaker's
	// next opening by failures is not held.
	if err := a.rdb.HSet(ctx, recordKey(name), "state", "closed").Err(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := a.Record(ctx, name, credErr); err != nil {
			t.Fatal(err)
		}
	}
	if st := status(t, b, name); st.State != Open || st.Held {
		t.Fatalf("opened by failures after an old relay closed a hold: %+v, want open and not held", st)
	}
	clk.Add(time.Hour)
	if ok, err := b.AcquireProbe(ctx, name); err != nil || !ok {
		t.Fatalf("probe of the breaker opened by failures: %v %v", ok, err)
	}
}
