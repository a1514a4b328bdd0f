package queue_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

const day = 24 * time.Hour

// newQueueWith is newQueue with options; Now is set to the returned clock.
func newQueueWith(t *testing.T, opts queue.Options) (*queue.Queue, *clock) {
	t.Helper()
	srv := redistest.Start(t)
	clk := newClock()
	opts.Now = clk.Now
	return queue.New(srv.Client(t), opts), clk
}

func hold(t *testing.T, q *queue.Queue, route, reason string) {
	t.Helper()
	if err := q.HoldRoute(context.Background(), route, reason); err != nil {
		t.Fatalf("hold %s: %v", route, err)
	}
}

func release(t *testing.T, q *queue.Queue, route string) {
	t.Helper()
	if err := q.ReleaseRoute(context.Background(), route); err != nil {
		t.Fatalf("release %s: %v", route, err)
	}
}

func routeStats(t *testing.T, q *queue.Queue, route string) queue.RouteStats {
	t.Helper()
	st, err := q.Stats(context.Background())
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	for _, rs := range st.Routes {
		if rs.Route == route {
			return rs
		}
	}
	t.Fatalf("stats: no route %s in %+v", route, st.Routes)
	return queue.RouteStats{}
}

func TestHeldGraceDefault(t *testing.T) {
	if got := queue.New(nil, queue.Options{}).Options().HeldGrace; got != 5*day {
		t.Fatalf("default HeldGrace = %v, want %v", got, 5*day)
	}
	if got := queue.New(nil, queue.Options{HeldGrace: -time.Hour}).Options().HeldGrace; got != 5*day {
		t.Fatalf("HeldGrace -1h became %v, want the default %v", got, 5*day)
	}
}

// TestReleaseCreditsHeldTime: three days held do not count against the
// five-day lifetime; the message expires at day 8 instead of day 5.
func TestReleaseCreditsHeldTime(t *testing.T) {
	q, clk, _ := newQueue(t)
	ctx := context.Background()
	t0 := clk.Now()
	id := enqueue(t, q, msg("crm", 1))
	hold(t, q, "crm", "breaker open")

	clk.Add(3 * day)
	if res := lease(t, q, "crm", 10, time.Minute); !res.Held || len(res.Leases) != 0 {
		t.Fatalf("held route leased: %+v", res)
	}
	if m := get(t, q, id); m.State != queue.Held || !m.Expires.Equal(t0.Add(5*day)) {
		t.Fatalf("while held: state %s expires %v; want held, %v", m.State, m.Expires, t0.Add(5*day))
	}
	release(t, q, "crm")
	if m := get(t, q, id); m.State != queue.Ready || !m.Expires.Equal(t0.Add(8*day)) {
		t.Fatalf("after release: state %s expires %v; want queued, %v", m.State, m.Expires, t0.Add(8*day))
	}

	clk.Add(4 * day) // day 7: past the original lifetime, within the credited one
	res := lease(t, q, "crm", 10, time.Minute)
	if len(res.Leases) != 1 || res.Leases[0].ID != id || !res.Leases[0].Expires.Equal(t0.Add(8*day)) {
		t.Fatalf("lease at day 7: %+v", res)
	}
	if st, err := q.Retry(ctx, res.Leases[0], "451 4.7.0 Temporary server error"); err != nil || st != queue.Scheduled {
		t.Fatalf("retry at day 7: %v %v", st, err)
	}

	clk.Add(day + time.Second) // day 8 and a second
	if res := lease(t, q, "crm", 10, time.Minute); len(res.Leases) != 0 {
		t.Fatalf("leased after its credited lifetime: %+v", res.Leases)
	}
	m := get(t, q, id)
	if m.State != queue.Dead || !strings.Contains(m.Reason, "queue lifetime exceeded") || !strings.Contains(m.Reason, "451 4.7.0") {
		t.Fatalf("after day 8: state %s reason %q; want dead for its lifetime", m.State, m.Reason)
	}
}

// TestReleaseCreditsFromSubmit: a message enqueued during a hold is credited
// only the time since it was submitted; finished messages are untouched.
func TestReleaseCreditsFromSubmit(t *testing.T) {
	q, clk, _ := newQueue(t)
	ctx := context.Background()
	t0 := clk.Now()
	failed := enqueue(t, q, msg("crm", 1))
	if err := q.Fail(ctx, lease(t, q, "crm", 1, time.Minute).Leases[0], "550 5.1.1 not found"); err != nil {
		t.Fatal(err)
	}
	before := enqueue(t, q, msg("crm", 2))
	hold(t, q, "crm", "breaker open")
	clk.Add(day)
	during := enqueue(t, q, msg("crm", 3))
	clk.Add(2 * day)
	release(t, q, "crm")

	for _, c := range []struct {
		id   string
		want time.Time
	}{
		{failed, t0.Add(5 * day)},
		{before, t0.Add(5*day + 3*day)},
		{during, t0.Add(day + 5*day + 2*day)},
	} {
		if m := get(t, q, c.id); !m.Expires.Equal(c.want) {
			t.Errorf("message submitted at %v, %s: expires %v, want %v", m.Submitted, m.State, m.Expires, c.want)
		}
	}
}

// TestHoldLongerThanGraceFollowsLifetime: with a lifetime and a grace of
// five days each, mail held since its submission is dead-lettered at day
// 10 while the route is still held, not before.
func TestHoldLongerThanGraceFollowsLifetime(t *testing.T) {
	q, clk, _ := newQueue(t)
	ctx := context.Background()
	id := enqueue(t, q, msg("crm", 1))
	l := lease(t, q, "crm", 1, time.Minute).Leases[0]
	if _, err := q.Retry(ctx, l, "451 4.7.0 Temporary server error"); err != nil {
		t.Fatal(err)
	}
	hold(t, q, "crm", "breaker open: AADSTS7000222")
	clk.Add(2 * day)
	later := enqueue(t, q, msg("crm", 2)) // its lifetime and grace end at day 12

	clk.Add(7*day + 21*time.Hour + 36*time.Minute) // day 9.9
	if res := lease(t, q, "crm", 10, time.Minute); !res.Held || len(res.Leases) != 0 {
		t.Fatalf("held route leased: %+v", res)
	}
	if m := get(t, q, id); m.State != queue.Held {
		t.Fatalf("at day 9.9: %s, want held", m.State)
	}

	clk.Add(2*time.Hour + 24*time.Minute) // day 10
	if res := lease(t, q, "crm", 10, time.Minute); !res.Held || len(res.Leases) != 0 {
		t.Fatalf("held route leased: %+v", res)
	}
	m := get(t, q, id)
	if m.State != queue.Dead || !m.Done.Equal(clk.Now()) || m.Attempts != 1 ||
		!strings.Contains(m.Reason, "queue lifetime exceeded while the route was held") || !strings.Contains(m.Reason, "451 4.7.0") {
		t.Fatalf("at day 10: %+v; want dead while held, with the last error", m)
	}
	if m := get(t, q, later); m.State != queue.Held {
		t.Fatalf("message submitted during the hold, at day 10: %s, want held", m.State)
	}
	rs := routeStats(t, q, "crm")
	if rs.Dead != 1 || rs.Held != 1 || rs.Ready != 0 || rs.HoldReason != "breaker open: AADSTS7000222" {
		t.Fatalf("stats at day 10: %+v", rs)
	}
	if dead, err := q.List(ctx, "crm", queue.Dead, 0, 10); err != nil || len(dead) != 1 || dead[0].ID != id {
		t.Fatalf("list dead: %v %v", dead, err)
	}
	if reason, held, err := q.RouteHold(ctx, "crm"); err != nil || !held || reason != "breaker open: AADSTS7000222" {
		t.Fatalf("route hold at day 10: %q %v %v", reason, held, err)
	}

	clk.Add(2*day - time.Millisecond)
	lease(t, q, "crm", 10, time.Minute)
	if m := get(t, q, later); m.State != queue.Held {
		t.Fatalf("later message just before day 12: %s, want held", m.State)
	}
	clk.Add(time.Millisecond)
	lease(t, q, "crm", 10, time.Minute)
	if m := get(t, q, later); m.State != queue.Dead {
		t.Fatalf("later message at day 12: %s, want dead", m.State)
	}
}

// TestHeldExpirySkipsLeased: a message leased before the hold is left to
// its worker, whose report settles it.
func TestHeldExpirySkipsLeased(t *testing.T) {
	q, clk, _ := newQueue(t)
	ctx := context.Background()
	id := enqueue(t, q, msg("crm", 1))
	l := lease(t, q, "crm", 1, 20*day).Leases[0]
	hold(t, q, "crm", "breaker open")
	clk.Add(11 * day)
	lease(t, q, "crm", 10, time.Minute)
	if m := get(t, q, id); m.State != queue.Leased {
		t.Fatalf("leased message while held past its lifetime: %s, want still leased", m.State)
	}
	if st, err := q.Retry(ctx, l, "421 4.3.2 Service not active"); err != nil || st != queue.Dead {
		t.Fatalf("retry past its lifetime: %v %v; want dead", st, err)
	}
}

// TestHeldExpiryIsBounded: one lease call on a held route looks at no more
// than the 100 oldest messages.
func TestHeldExpiryIsBounded(t *testing.T) {
	q, clk, _ := newQueue(t)
	const total = 150
	for i := range total {
		enqueue(t, q, msg("crm", i))
	}
	hold(t, q, "crm", "breaker open")
	clk.Add(10 * day)
	lease(t, q, "crm", 10, time.Minute)
	if rs := routeStats(t, q, "crm"); rs.Dead != 100 || rs.Held != total-100 {
		t.Fatalf("after one lease: %+v; want 100 dead, %d held", rs, total-100)
	}
	lease(t, q, "crm", 10, time.Minute)
	if rs := routeStats(t, q, "crm"); rs.Dead != total || rs.Held != 0 {
		t.Fatalf("after two leases: %+v; want all %d dead", rs, total)
	}
}

// TestReholdKeepsStart: holding a held route changes its reason, not its
// start; a hold after a release starts afresh.
func TestReholdKeepsStart(t *testing.T) {
	q, clk, _ := newQueue(t)
	ctx := context.Background()
	t0 := clk.Now()
	id := enqueue(t, q, msg("crm", 1))
	hold(t, q, "crm", "first")
	clk.Add(2 * day)
	hold(t, q, "crm", "second")
	if reason, held, err := q.RouteHold(ctx, "crm"); err != nil || !held || reason != "second" {
		t.Fatalf("route hold after re-hold: %q %v %v", reason, held, err)
	}
	clk.Add(day)
	release(t, q, "crm")
	if m := get(t, q, id); !m.Expires.Equal(t0.Add(8 * day)) {
		t.Fatalf("after 3 days held: expires %v, want %v", m.Expires, t0.Add(8*day))
	}

	clk.Add(day)
	hold(t, q, "crm", "third")
	clk.Add(day)
	release(t, q, "crm")
	if m := get(t, q, id); !m.Expires.Equal(t0.Add(9 * day)) {
		t.Fatalf("after a second hold of 1 day: expires %v, want %v", m.Expires, t0.Add(9*day))
	}
	release(t, q, "crm") // not held: no credit
	if m := get(t, q, id); !m.Expires.Equal(t0.Add(9 * day)) {
		t.Fatalf("after releasing a route that is not held: expires %v, want %v", m.Expires, t0.Add(9*day))
	}
}

// TestHoldReasonShown: the reason reads the same in RouteHold, Stats, Get
// and List, and disappears on release.
func TestHoldReasonShown(t *testing.T) {
	q, _, _ := newQueue(t)
	ctx := context.Background()
	id := enqueue(t, q, msg("crm", 1))
	const reason = "auth: invalid_client AADSTS7000222"
	hold(t, q, "crm", reason)
	if got, held, err := q.RouteHold(ctx, "crm"); err != nil || !held || got != reason {
		t.Fatalf("route hold: %q %v %v", got, held, err)
	}
	if rs := routeStats(t, q, "crm"); rs.HoldReason != reason || rs.Held != 1 {
		t.Fatalf("stats: %+v", rs)
	}
	if m := get(t, q, id); m.State != queue.Held || m.HoldReason != reason {
		t.Fatalf("get: %+v", m)
	}
	if list, err := q.List(ctx, "crm", queue.Held, 0, 10); err != nil || len(list) != 1 || list[0].HoldReason != reason {
		t.Fatalf("list held: %v %v", list, err)
	}

	release(t, q, "crm")
	if got, held, err := q.RouteHold(ctx, "crm"); err != nil || held || got != "" {
		t.Fatalf("route hold after release: %q %v %v", got, held, err)
	}
	if rs := routeStats(t, q, "crm"); rs.HoldReason != "" || rs.Held != 0 || rs.Ready != 1 {
		t.Fatalf("stats after release: %+v", rs)
	}
	if m := get(t, q, id); m.State != queue.Ready || m.HoldReason != "" {
		t.Fatalf("get after release: %+v", m)
	}

	hold(t, q, "crm", "")
	if got, held, _ := q.RouteHold(ctx, "crm"); !held || got != "held" {
		t.Fatalf("hold without a reason: %q %v; want \"held\"", got, held)
	}
}

// TestHeldGraceOption: a shorter grace caps both the credit on release
// and the time a held message survives.
func TestHeldGraceOption(t *testing.T) {
	q, clk := newQueueWith(t, queue.Options{Lifetime: 2 * day, HeldGrace: day})
	t0 := clk.Now()
	released := enqueue(t, q, msg("crm", 1))
	hold(t, q, "crm", "breaker open")
	clk.Add(3 * day)
	release(t, q, "crm")
	if m := get(t, q, released); !m.Expires.Equal(t0.Add(3 * day)) {
		t.Fatalf("after 3 days held with a 1-day grace: expires %v, want %v", m.Expires, t0.Add(3*day))
	}

	t1 := clk.Now()
	held := enqueue(t, q, msg("crm", 2))
	hold(t, q, "crm", "breaker open")
	clk.Add(3*day - time.Millisecond)
	lease(t, q, "crm", 10, time.Minute)
	if m := get(t, q, held); m.State != queue.Held {
		t.Fatalf("just before lifetime plus grace: %s, want held", m.State)
	}
	clk.Add(time.Millisecond)
	lease(t, q, "crm", 10, time.Minute)
	if m := get(t, q, held); m.State != queue.Dead || !m.Done.Equal(t1.Add(3*day)) {
		t.Fatalf("at lifetime plus grace: %s done %v, want dead", m.State, m.Done)
	}
}

// TestHeldLifetimeCluster runs the held-mail lifetime rule on a Redis
// Cluster, over routes on different slots.
func TestHeldLifetimeCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	clk := newClock()
	q := queue.New(c.Client(t), queue.Options{Now: clk.Now})
	ctx := context.Background()
	t0 := clk.Now()
	routes := []string{"app:contoso", "app:fabrikam", "mbx:alice@contoso.com"}
	ids := map[string]string{}
	for i, r := range routes {
		ids[r] = enqueue(t, q, msg(r, i))
		hold(t, q, r, "breaker open")
		hold(t, q, r, "breaker still open")
	}
	clk.Add(3 * day)
	for _, r := range routes[1:] {
		release(t, q, r)
		if m := get(t, q, ids[r]); m.State != queue.Ready || !m.Expires.Equal(t0.Add(8*day)) {
			t.Fatalf("%s after release: %+v", r, m)
		}
	}
	clk.Add(7 * day)
	if res := lease(t, q, routes[0], 10, time.Minute); !res.Held {
		t.Fatalf("%s leased while held: %+v", routes[0], res)
	}
	if m := get(t, q, ids[routes[0]]); m.State != queue.Dead {
		t.Fatalf("%s at day 10: %s, want dead", routes[0], m.State)
	}
	if reason, held, err := q.RouteHold(ctx, routes[0]); err != nil || !held || reason != "breaker still open" {
		t.Fatalf("route hold: %q %v %v", reason, held, err)
	}
}

// TestLeaseTrial: a breaker's probe leases one message of a held route,
// the earliest, due or not, while the route stays held for everything
// else. A message past its lifetime before its time held is credited is
// not tried (a failed trial would dead-letter it), yet stays alive by
// that credit until lifetime and grace have run out.
func TestLeaseTrial(t *testing.T) {
	q, clk, _ := newQueue(t)
	ctx := context.Background()
	t0 := clk.Now()
	if l, err := q.LeaseTrial(ctx, "crm", time.Minute); err != nil || l != nil {
		t.Fatalf("trial of an empty route: %+v, %v", l, err)
	}
	first := enqueue(t, q, msg("crm", 1))
	clk.Add(time.Millisecond)
	second := enqueue(t, q, msg("crm", 2))
	hold(t, q, "crm", "breaker open")

	l, err := q.LeaseTrial(ctx, "crm", time.Minute)
	if err != nil || l == nil || l.ID != first {
		t.Fatalf("trial: %+v, %v; want %s", l, err, first)
	}
	if res := lease(t, q, "crm", 10, time.Minute); !res.Held || len(res.Leases) != 0 {
		t.Fatalf("held route leased beside the trial: %+v", res)
	}
	// The trial failed on the mailbox's account: back, no attempt spent,
	// due after a delay.
	if _, err := q.Defer(ctx, l, time.Hour, "403 ErrorAccessDenied"); err != nil {
		t.Fatal(err)
	}
	if m := get(t, q, first); m.State != queue.Held || m.Attempts != 0 {
		t.Fatalf("the deferred trial: %s with %d attempts; want held with none", m.State, m.Attempts)
	}
	// The next trial takes the earliest due, now the second message.
	l, err = q.LeaseTrial(ctx, "crm", time.Minute)
	if err != nil || l == nil || l.ID != second {
		t.Fatalf("second trial: %+v, %v; want %s", l, err, second)
	}
	if err := q.Ack(ctx, l, "202 Accepted"); err != nil {
		t.Fatal(err)
	}
	// Not due for an hour, the first is still what a trial takes.
	if l, err = q.LeaseTrial(ctx, "crm", time.Minute); err != nil || l == nil || l.ID != first {
		t.Fatalf("trial of a message not due: %+v, %v; want %s", l, err, first)
	}
	if _, err := q.Defer(ctx, l, 0, "403 ErrorAccessDenied"); err != nil {
		t.Fatal(err)
	}

	// Day 7: past its lifetime of 5 days, alive by the time held, and
	// not tried; a message submitted since is.
	clk.Add(t0.Add(7 * day).Sub(clk.Now()))
	third := enqueue(t, q, msg("crm", 3))
	if l, err = q.LeaseTrial(ctx, "crm", time.Minute); err != nil || l == nil || l.ID != third {
		t.Fatalf("trial at day 7: %+v, %v; want %s", l, err, third)
	}
	if err := q.Ack(ctx, l, "202 Accepted"); err != nil {
		t.Fatal(err)
	}
	if l, err = q.LeaseTrial(ctx, "crm", time.Minute); err != nil || l != nil {
		t.Fatalf("trial at day 7 with only a message past its lifetime: %+v, %v; want none", l, err)
	}
	if m := get(t, q, first); m.State != queue.Held {
		t.Fatalf("at day 7: %s %q; want held", m.State, m.Reason)
	}
	// Day 10 and a second: past lifetime and grace; dead, not tried.
	clk.Add(t0.Add(10*day + time.Second).Sub(clk.Now()))
	if l, err = q.LeaseTrial(ctx, "crm", time.Minute); err != nil || l != nil {
		t.Fatalf("trial past lifetime and grace: %+v, %v; want none", l, err)
	}
	if m := get(t, q, first); m.State != queue.Dead || !strings.Contains(m.Reason, "while the route was held") {
		t.Fatalf("after day 10: %s %q; want dead for its lifetime", m.State, m.Reason)
	}
}
