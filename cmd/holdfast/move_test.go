package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

// TestQueueMove: the mail waiting on the route of a credential taken
// out of the configuration moves to the route of the one configured,
// more than a batch of it, after a count; a message being sent stays; a
// target whose credential is not configured, and a move without --yes
// and no terminal to ask on, are refused with nothing moved.
func TestQueueMove(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfigCredentials(t, srv.Addr(), "new")
	q := queue.New(srv.Client(t), queue.Options{})
	ctx := t.Context()
	const from, to = "app:old:billing@contoso.com", "app:new:billing@contoso.com"
	for i := range 601 {
		if _, _, err := q.Enqueue(ctx, queue.Submission{Route: from, App: "crm", From: "billing@contoso.com",
			To: []string{fmt.Sprintf("r%d@example.org", i)}, Body: []byte(fmt.Sprintf("Subject: %d\r\n\r\nx\r\n", i))}); err != nil {
			t.Fatal(err)
		}
	}
	sending := leaseOne(ctx, t, q, from)
	if err := q.HoldRoute(ctx, from, `credential "old" of route app:old:billing@contoso.com is not configured`); err != nil {
		t.Fatal(err)
	}

	if r := runCmd(t, "queue", "move", "--config", cfg, "--route", from, "--to", "app:gone:billing@contoso.com", "--yes"); r.code != exitUsage ||
		!strings.Contains(r.stderr, `credential "gone" is not configured`) {
		t.Errorf("move to an unconfigured credential's route: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := runCmd(t, "queue", "move", "--config", cfg, "--route", from, "--to", to); r.code != exitError ||
		!strings.Contains(r.stderr, "600 messages waiting on "+from+" to "+to+" would be moved; run again with --yes") {
		t.Errorf("move without --yes and no terminal: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r := runCmd(t, "queue", "move", "--config", cfg, "--route", from, "--to", to, "--yes")
	if r.code != exitOK {
		t.Fatalf("move: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{
		"moved 600 messages from " + from + " to " + to + "\n",
		"1 being sent stay on " + from,
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("move output lacks %q:\n%s", want, r.stdout)
		}
	}
	st, err := q.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, rs := range st.Routes {
		switch rs.Route {
		case from:
			if rs.Held+rs.Ready+rs.Scheduled != 0 || rs.Leased != 1 {
				t.Errorf("%s after the move: %+v", from, rs)
			}
		case to:
			if rs.Ready != 600 {
				t.Errorf("%s after the move: %+v, want 600 ready", to, rs)
			}
		}
	}
	if m, err := q.Get(ctx, sending.ID); err != nil || m.Route != from || m.State != queue.Leased {
		t.Errorf("the message being sent: %+v %v", m, err)
	}
	if r := runCmd(t, "queue", "move", "--config", cfg, "--route", from, "--to", to, "--yes"); r.code != exitOK ||
		!strings.Contains(r.stdout, "no messages waiting on "+from) {
		t.Errorf("move again: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestQueueDrainNamesCutMove: a message left in a route's moving set by
// a move cut half-way waits for no relay: drain, of its route or of the
// whole queue, says so and fails instead of reporting an empty queue,
// and queue stats names it; the next move finishes it, and drain then
// succeeds.
func TestQueueDrainNamesCutMove(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfigCredentials(t, srv.Addr(), "new")
	q := queue.New(srv.Client(t), queue.Options{})
	const from, to = "app:old:billing@contoso.com", "app:new:billing@contoso.com"
	enqueueEach(t, q, from, to)
	cutMove(t, srv, from, to)
	fakeWorkersAfter(t, q, to, 300*time.Millisecond)

	const named = "1 messages stopped half-way in a move off " + from + ": finish it with holdfast queue move --route " + from + " --to ROUTE"
	for _, args := range [][]string{{"--route", from}, nil} {
		r := runCmd(t, append([]string{"queue", "drain", "--config", cfg, "--timeout", "5s"}, args...)...)
		if r.code != exitError || !strings.Contains(r.stdout, named) ||
			!strings.HasSuffix(r.stderr, "the queue is not empty: 1 in a move not finished\n") {
			t.Errorf("drain %v with a message in a cut move: exit %d, want %d and %q\n%s%s", args, r.code, exitError, named, r.stdout, r.stderr)
		}
	}
	r := runCmd(t, "queue", "stats", "--config", cfg)
	if want := "route " + from + ": 1 messages stopped half-way in a move"; r.code != exitOK || !strings.Contains(r.stdout, want) {
		t.Errorf("stats: exit %d, stdout lacks %q:\n%s%s", r.code, want, r.stdout, r.stderr)
	}

	if r := runCmd(t, "queue", "move", "--config", cfg, "--route", from, "--to", to, "--yes"); r.code != exitOK ||
		!strings.Contains(r.stdout, "moved 1 messages from "+from+" to "+to) {
		t.Fatalf("move again: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := runCmd(t, "queue", "drain", "--config", cfg, "--timeout", "5s"); r.code != exitOK {
		t.Errorf("drain once the move is finished: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestQueuePurgeCutMove: purge of a route deletes the messages of a move
// cut half-way off it too: they are the route's mail, which queue stats
// shows, and left behind the next move of the route would send them.
func TestQueuePurgeCutMove(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfigCredentials(t, srv.Addr(), "new")
	q := queue.New(srv.Client(t), queue.Options{})
	ctx := t.Context()
	const from, to = "app:old:billing@contoso.com", "app:new:billing@contoso.com"
	enqueueEach(t, q, from, from, to)
	cutMove(t, srv, from, to)
	r := runCmd(t, "queue", "purge", "--config", cfg, "--route", from, "--yes")
	if r.code != exitOK || !strings.Contains(r.stdout, "deleted 2 messages") {
		t.Errorf("purge: exit %d, want %d and 2 deleted\n%s%s", r.code, exitOK, r.stdout, r.stderr)
	}
	st, err := q.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, rs := range st.Routes {
		if rs.Route == from && rs.Undelivered()+rs.Moving != 0 {
			t.Errorf("%s after the purge: %+v, want no message", from, rs)
		}
	}
	if n, err := q.MoveRoute(ctx, from, to, 100); err != nil || n.Total() != 0 {
		t.Errorf("move of %s after the purge: %+v moved, %v; want none", from, n, err)
	}
}

// cutMove cuts the move of route from's first ready message to route to
// half-way: to, holding a message already, refuses the store of a queue
// that bounds a route to one. The message stays in from's moving set.
func cutMove(t *testing.T, srv *redistest.Server, from, to string) {
	t.Helper()
	full := queue.New(srv.Client(t), queue.Options{MaxPerRoute: 1})
	ms, err := full.List(t.Context(), from, queue.Ready, 0, 1)
	if err != nil || len(ms) != 1 {
		t.Fatalf("list: %v %v", ms, err)
	}
	if _, err := full.Move(t.Context(), ms[0].ID, to); !errors.Is(err, queue.ErrRouteFull) {
		t.Fatalf("move to a full route: %v, want ErrRouteFull", err)
	}
}

// TestQueuePurgeStaleMovingEntry: entries of a route's moving set whose
// message is gone (lost with a write Redis did not keep), a page of
// purge's listing of them and sorting before the messages of a cut
// move, do not end purge's paging: the messages after them are deleted
// too.
func TestQueuePurgeStaleMovingEntry(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfigCredentials(t, srv.Addr(), "new")
	rdb := srv.Client(t)
	q := queue.New(rdb, queue.Options{})
	ctx := t.Context()
	const from, to = "app:old:billing@contoso.com", "app:new:billing@contoso.com"
	enqueueEach(t, q, to)
	cut := func(n int) []string {
		t.Helper()
		for range n {
			enqueueEach(t, q, from)
			cutMove(t, srv, from, to)
		}
		ms, err := q.List(ctx, from, queue.Moving, 0, 2*n+purgeBatch)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, m := range ms {
			ids = append(ids, m.ID)
		}
		return ids
	}
	stale := cut(purgeBatch)
	for _, id := range stale {
		loseMessage(t, rdb, id)
	}
	time.Sleep(2 * time.Millisecond) // ids sort by their millisecond
	live := cut(2)
	if len(stale) != purgeBatch || len(live) != 2 {
		t.Fatalf("%d and %d messages moving, want %d and 2", len(stale), len(live), purgeBatch)
	}

	r := runCmd(t, "queue", "purge", "--config", cfg, "--route", from, "--yes")
	if r.code != exitOK {
		t.Errorf("purge: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, id := range live {
		if _, err := q.Get(ctx, id); !errors.Is(err, queue.ErrNotFound) {
			t.Errorf("message %s of a cut move after the purge: %v, want deleted\n%s", id, err, r.stdout)
		}
	}
}

// loseMessage deletes the key that holds message id, as Redis may lose
// a write, and leaves the sets that name it.
func loseMessage(t *testing.T, rdb redis.UniversalClient, id string) {
	t.Helper()
	keys, err := rdb.Keys(t.Context(), "*"+id).Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("the key of %s: %v, %v", id, keys, err)
	}
	if err := rdb.Del(t.Context(), keys[0]).Err(); err != nil {
		t.Fatal(err)
	}
}

// TestQueueListMoving: the messages of a cut move are listed, by the
// state moving, as many as queue stats counts, an entry of the moving
// set whose message is gone left out of both; and purge takes that
// state.
func TestQueueListMoving(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfigCredentials(t, srv.Addr(), "new")
	rdb := srv.Client(t)
	q := queue.New(rdb, queue.Options{})
	const from, to = "app:old:billing@contoso.com", "app:new:billing@contoso.com"
	enqueueEach(t, q, from, from, from, from, to)
	for range 3 {
		cutMove(t, srv, from, to)
	}
	ms, err := q.List(t.Context(), from, queue.Moving, 0, 10)
	if err != nil || len(ms) != 3 {
		t.Fatalf("moving: %v, %v", ms, err)
	}
	loseMessage(t, rdb, ms[1].ID)

	var listed []messageJSON
	r := runCmd(t, "queue", "list", "--config", cfg, "--route", from, "--state", "moving", "--json")
	if r.code != exitOK || json.Unmarshal([]byte(r.stdout), &listed) != nil {
		t.Fatalf("list --state moving: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	var ids []string
	for _, m := range listed {
		if m.State != "moving" || m.Route != from {
			t.Errorf("listed %+v, want moving on %s", m, from)
		}
		ids = append(ids, m.ID)
	}
	if want := []string{ms[0].ID, ms[2].ID}; !slices.Equal(ids, want) {
		t.Errorf("list --state moving: %v, want %v, the messages of the cut moves still there", ids, want)
	}
	var stats struct {
		Routes []statsJSON `json:"routes"`
		Total  statsJSON   `json:"total"`
	}
	r = runCmd(t, "queue", "stats", "--config", cfg, "--json")
	if r.code != exitOK || json.Unmarshal([]byte(r.stdout), &stats) != nil {
		t.Fatalf("stats: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if stats.Total.Moving != int64(len(ids)) {
		t.Errorf("stats: %d moving, list: %d; want the same", stats.Total.Moving, len(ids))
	}
	if r := runCmd(t, "queue", "list", "--config", cfg, "--route", from, "--state", "moving", "--offset", "1"); r.code != exitOK ||
		!strings.HasPrefix(r.stdout, "ID") || !strings.Contains(r.stdout, ms[2].ID) || strings.Contains(r.stdout, ms[0].ID) {
		t.Errorf("list --state moving --offset 1: exit %d, want %s alone\n%s%s", r.code, ms[2].ID, r.stdout, r.stderr)
	}

	if r := runCmd(t, "queue", "purge", "--config", cfg, "--route", from, "--state", "moving", "--yes"); r.code != exitOK ||
		!strings.Contains(r.stdout, "deleted 2 messages in state moving") {
		t.Errorf("purge --state moving: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := runCmd(t, "queue", "list", "--config", cfg, "--route", from, "--state", "queued"); r.code != exitOK ||
		strings.Count(r.stdout, "\n") != 2 {
		t.Errorf("the waiting message after purge --state moving: exit %d, want it listed\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestQueueMoveCountsEarlierTarget: a message of a move cut half-way to
// one route, which the application sent again there under its
// Idempotency-Key, is finished there by the next move, to another route:
// the command counts it apart, on the route where it is, and counts as
// moved to the new route only the messages stored there.
func TestQueueMoveCountsEarlierTarget(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfigCredentials(t, srv.Addr(), "first", "second")
	q := queue.New(srv.Client(t), queue.Options{})
	ctx := t.Context()
	const from, first, second = "app:old:billing@contoso.com", "app:first:billing@contoso.com", "app:second:billing@contoso.com"
	keyed := queue.Submission{Route: from, App: "crm", From: "billing@contoso.com", To: []string{"ann@example.org"},
		Body: []byte("Subject: order 1\r\n\r\nx\r\n"), IdempotencyKey: "order-1", Fingerprint: "fp1"}
	if _, _, err := q.Enqueue(ctx, keyed); err != nil {
		t.Fatal(err)
	}
	enqueueEach(t, q, first)
	cutMove(t, srv, from, first)
	keyed.Route = first
	if _, dup, err := q.Enqueue(ctx, keyed); err != nil || dup {
		t.Fatalf("the application's retry on %s: dup %v, %v", first, dup, err)
	}
	time.Sleep(2 * time.Millisecond)
	enqueueEach(t, q, from)

	r := runCmd(t, "queue", "move", "--config", cfg, "--route", from, "--to", second, "--yes")
	if want := "moved 1 messages from " + from + " to " + second + "; finished 1 of an earlier move on " + first + "\n"; r.code != exitOK ||
		!strings.Contains(r.stdout, want) {
		t.Errorf("move: exit %d, want %q\n%s%s", r.code, want, r.stdout, r.stderr)
	}
	st, err := q.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, rs := range st.Routes {
		got[rs.Route] = rs.Undelivered() + rs.Moving
	}
	if got[from] != 0 || got[first] != 2 || got[second] != 1 {
		t.Errorf("after the move: %v, want none on %s, 2 on %s (1 there before), 1 on %s", got, from, first, second)
	}
}

// TestQueueMoveWhileAnotherRuns: a queue move of a route while another
// move of it runs (paused here as it takes its message out) is refused,
// naming the route and when the running move's lock lapses, with nothing
// moved; the running move then finishes, the message moved once.
func TestQueueMoveWhileAnotherRuns(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfigCredentials(t, srv.Addr(), "new", "other")
	rdb := srv.Client(t)
	const from, to, other = "app:old:billing@contoso.com", "app:new:billing@contoso.com", "app:other:billing@contoso.com"
	q := queue.New(rdb, queue.Options{})
	enqueueEach(t, q, from)
	resume := pausedMove(t, rdb, q, from, to, false)
	r := runCmd(t, "queue", "move", "--config", cfg, "--route", from, "--to", other, "--yes")
	res := resume()
	want := "another queue move of " + from + " is running: nothing moved; run this one again once it ends (if it was killed, its lock of the route lapses in "
	if r.code != exitError || !strings.Contains(r.stderr, want) || strings.Contains(r.stdout, "moved") {
		t.Errorf("move while another runs: exit %d, want %d and %q\n%s%s", r.code, exitError, want, r.stdout, r.stderr)
	}
	if res.err != nil || res.n.To != 1 || res.n.Total() != 1 {
		t.Errorf("the running move: %+v, %v; want 1 moved to %s", res.n, res.err, to)
	}
	st, err := q.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, rs := range st.Routes {
		if n := rs.Undelivered() + rs.Moving; (rs.Route == to) != (n == 1) || n > 1 {
			t.Errorf("%s after the moves: %d messages; want the one message on %s alone", rs.Route, n, to)
		}
	}
}

// moveResult is what a MoveRoute returned.
type moveResult struct {
	n   queue.Moved
	err error
}

// pausedMove runs MoveRoute of up to 100 messages from route from to
// route to over q on a goroutine, and returns once pauseOn (added to rdb,
// q's client; after as pauseOn's) paused it at its first take-out. The
// function it returns lets the move go on and returns what it returned.
func pausedMove(t *testing.T, rdb *redis.Client, q *queue.Queue, from, to string, after bool) (resume func() moveResult) {
	t.Helper()
	paused, resumed := make(chan struct{}), make(chan struct{})
	rdb.AddHook(pauseOn{arg: to, paused: paused, resume: resumed, after: after})
	done := make(chan moveResult)
	go func() {
		n, err := q.MoveRoute(t.Context(), from, to, 100)
		done <- moveResult{n, err}
	}()
	<-paused
	return func() moveResult {
		close(resumed)
		return <-done
	}
}

// pauseOn pauses the first script run that names arg among its arguments
// (a move's take-out names the route it moves to) until resume closes:
// before it runs, or with after, once it has run without error.
type pauseOn struct {
	arg            string
	paused, resume chan struct{}
	after          bool
}

func (pauseOn) DialHook(next redis.DialHook) redis.DialHook { return next }

func (pauseOn) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h pauseOn) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		name := cmd.Name()
		if (name != "evalsha" && name != "eval") || !slices.ContainsFunc(cmd.Args(), func(a any) bool { return a == h.arg }) {
			return next(ctx, cmd)
		}
		var err error
		if h.after {
			// A script not loaded yet (NOSCRIPT) has not run.
			if err = next(ctx, cmd); err != nil {
				return err
			}
		}
		select {
		case <-h.paused:
		default:
			close(h.paused)
			<-h.resume
		}
		if !h.after {
			err = next(ctx, cmd)
		}
		return err
	}
}

// TestQueuePurgeWhileMoveRuns: a purge of a route while a move of it
// runs, the move paused with a message taken out, deletes none of the
// messages the move may take and says why: a message the operator asked
// to be deleted is not moved instead. The move then moves it once, and a
// purge after the move deletes it.
func TestQueuePurgeWhileMoveRuns(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfigCredentials(t, srv.Addr(), "new")
	rdb := srv.Client(t)
	const from, to = "app:old:billing@contoso.com", "app:new:billing@contoso.com"
	q := queue.New(rdb, queue.Options{})
	enqueueEach(t, q, from, from)
	resume := pausedMove(t, rdb, q, from, to, true)
	r := runCmd(t, "queue", "purge", "--config", cfg, "--route", from, "--yes")
	res := resume()
	want := "a queue move of " + from + " is running: its mail is not deleted while it runs; run the purge again once it ends (if it was killed, its lock of the route lapses in "
	if r.code != exitError || !strings.Contains(r.stderr, want) {
		t.Errorf("purge while a move runs: exit %d, want %d and %q\n%s%s", r.code, exitError, want, r.stdout, r.stderr)
	}
	st, err := q.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	on := map[string]int64{}
	for _, rs := range st.Routes {
		on[rs.Route] = rs.Undelivered() + rs.Moving
	}
	if res.err != nil || int64(res.n.Total()) != on[to] || on[from]+on[to] != 2 {
		t.Errorf("after a purge while a move ran: the move %+v, %v; %d on %s, %d on %s; want the 2 messages kept, each counted where it is\n%s%s",
			res.n, res.err, on[from], from, on[to], to, r.stdout, r.stderr)
	}
	if r := runCmd(t, "queue", "purge", "--config", cfg, "--route", to, "--yes"); r.code != exitOK ||
		!strings.Contains(r.stdout, fmt.Sprintf("deleted %d messages", on[to])) {
		t.Errorf("purge after the move: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
