package relay

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"holdfast/breaker"
	"holdfast/queue"
)

// holdReads counts the reads of routes' hold keys a client sends.
type holdReads struct{ n atomic.Int64 }

func (h *holdReads) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *holdReads) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.count([]redis.Cmder{cmd})
		return next(ctx, cmd)
	}
}

func (h *holdReads) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.count(cmds)
		return next(ctx, cmds)
	}
}

func (h *holdReads) count(cmds []redis.Cmder) {
	for _, c := range cmds {
		if a := c.Args(); c.Name() == "get" && len(a) > 1 && strings.HasSuffix(fmt.Sprint(a[1]), ":hold") {
			h.n.Add(1)
		}
	}
}

// TestReconcileReadsOpenRoutesOnly: with every breaker closed, a relay's
// reconciliation of held routes, twice a second, does not read the hold
// of each of its 20 routes each time: only every reconcileFull, and
// after a transition. A hold left with both breakers closed is still
// released by the next full pass.
func TestReconcileReadsOpenRoutesOnly(t *testing.T) {
	const routes = 20
	e := newBoxesEnv(t, routes, routes, 8, nil)
	var ids []string
	for n := 1; n <= routes; n++ {
		from := fmt.Sprintf("box%d@contoso.com", n)
		ids = append(ids, e.submit(t, 0, from, fmt.Sprintf("a%d@example.org", n), exchangeMessage(n, from)))
	}
	waitFor(t, 20*time.Second, "every mailbox's mail delivered", func() bool { return e.allDelivered(t, ids) })

	reads := &holdReads{}
	e.relays[0].rdb.AddHook(reads)
	time.Sleep(3 * time.Second) // 6 polls
	// A pass over every route reads 20 holds; one a poll would be 120.
	t.Logf("reads of the routes' holds in 3 s: %d", reads.n.Load())
	if n := reads.n.Load(); n > 2*routes {
		t.Errorf("%d reads of the routes' holds in 3 s with no breaker open, want at most %d (two full passes)", n, 2*routes)
	}

	route := e.get(t, ids[0]).Route
	if err := e.f.queue.HoldRoute(t.Context(), route, "credential: breaker cred:contoso open: left over"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, reconcileFull+5*time.Second, "the left-over hold released", func() bool {
		_, held, err := e.f.queue.RouteHold(t.Context(), route)
		return err == nil && !held
	})

	// The credential's breaker opens: its 20 routes are held, told in a
	// line a breaker, not a line a route.
	if err := e.relays[0].gate.set.Trip(t.Context(), credentialBreaker("contoso"), "test"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "every route held", func() bool {
		all, err := e.f.queue.Routes(t.Context())
		if err != nil {
			return false
		}
		held, err := e.f.queue.HeldRoutes(t.Context(), all)
		return err == nil && len(held) == routes
	})
	time.Sleep(200 * time.Millisecond)
	logs := e.logs.String()
	if n := strings.Count(logs, `level=INFO msg="route held"`); n != 0 {
		t.Errorf("%d log lines at INFO for routes held, want none: one a breaker", n)
	}
	if !strings.Contains(logs, `msg="routes held" component=breaker breaker=cred:contoso`) {
		t.Errorf("no line for the routes the credential's breaker held:\n%s", logs)
	}
}

// TestForgottenMailboxHoldReleased: a route held by a mailbox breaker
// that an operator then forgets (holdfast breaker reset --forget mbx:…)
// is released by the next full reconciliation: its fence, at the
// breaker's generation, is met by the generation Forget keeps.
func TestForgottenMailboxHoldReleased(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	set := breaker.New(f.redis.Client(t), breaker.Options{})
	g := &gate{set: set, q: f.queue, log: discardLogger()}
	cli := breaker.New(f.redis.Client(t), breaker.Options{})
	route := grantRoutePrefix + "contoso:alice@contoso.com"
	const mbx = "mbx:alice@contoso.com"
	if _, _, err := f.queue.Enqueue(ctx, queue.Submission{Route: route, App: "crm", From: "alice@contoso.com",
		To: []string{"b@example.org"}, Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if err := set.Trip(ctx, mbx, "test"); err != nil {
		t.Fatal(err)
	}
	if err := g.reconcile(ctx, true); err != nil {
		t.Fatal(err)
	}
	if _, held, err := f.queue.RouteHold(ctx, route); err != nil || !held {
		t.Fatalf("route not held under the open breaker: %v", err)
	}
	if err := cli.Forget(ctx, mbx); err != nil {
		t.Fatal(err)
	}
	if _, err := set.Fresh(ctx, mbx); err != nil { // the relay reads it on the event
		t.Fatal(err)
	}
	if err := g.reconcile(ctx, true); err != nil {
		t.Fatal(err)
	}
	if reason, held, _ := f.queue.RouteHold(ctx, route); held {
		t.Errorf("route still held after Forget and a full reconciliation: %q", reason)
	}
}
