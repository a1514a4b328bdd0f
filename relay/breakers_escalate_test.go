package relay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"holdfast/auth"
	"holdfast/breaker"
	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
	"holdfast/relay/o365"
	"holdfast/relay/upstream"

	"golang.org/x/oauth2"
)

// TestDelegatedRejectionsEscalate: Exchange's 535 5.7.3 to delegated
// tokens of distinct mailboxes of one credential, in a row, opens the
// credential's breaker; repeats on one mailbox, other mailbox failures
// and failures broken by a success do not.
func TestDelegatedRejectionsEscalate(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	g := &gate{set: breaker.New(f.redis.Client(t), breaker.Options{}), q: f.queue, log: discardLogger(), escalate: 3}
	rejected := &upstream.Error{Class: upstream.Mailbox, Code: 535, Enhanced: "5.7.3", Text: "Authentication unsuccessful [AM0PR04CA0001]"}
	disabled := &upstream.Error{Class: upstream.Mailbox, Code: 535, Enhanced: "5.7.139", Text: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox."}
	route := func(mailbox string) string { return grantRoutePrefix + "contoso:" + mailbox }
	cred := func() breaker.Status {
		t.Helper()
		st, err := g.set.Status(ctx, "cred:contoso")
		if err != nil {
			t.Fatal(err)
		}
		return st
	}

	// One mailbox failing again and again opens only its own breaker.
	for range 3 {
		g.failed(ctx, route("alice@contoso.com"), rejected)
	}
	if st, _ := g.set.Status(ctx, "mbx:alice@contoso.com"); st.State != breaker.Open {
		t.Fatalf("alice's breaker: %+v, want open", st)
	}
	if st := cred(); st.State != breaker.Closed || st.Spread != 1 {
		t.Fatalf("credential after one mailbox: %+v", st)
	}
	// SMTP AUTH disabled on a mailbox is the mailbox's setting, and an
	// app-only route's 535 counts on the credential the usual way.
	g.failed(ctx, route("bob@contoso.com"), disabled)
	if st := cred(); st.State != breaker.Closed || st.Spread != 1 {
		t.Fatalf("5.7.139 joined the spread: %+v", st)
	}
	// A delivery under the credential breaks the row.
	g.failed(ctx, route("carol@contoso.com"), rejected)
	g.delivered(ctx, route("dave@contoso.com"))
	if st := cred(); st.State != breaker.Closed || st.Spread != 0 {
		t.Fatalf("after a delivery: %+v, want the spread cleared", st)
	}
	for _, m := range []string{"alice@contoso.com", "carol@contoso.com", "erin@contoso.com"} {
		g.failed(ctx, route(m), rejected)
	}
	st := cred()
	if st.State != breaker.Open || st.Reason != "3 mailboxes failed in a row (alice@contoso.com, carol@contoso.com, erin@contoso.com): 535 5.7.3 Authentication unsuccessful [AM0PR04CA0001]" {
		t.Fatalf("after three mailboxes in a row: %+v, want the credential open", st)
	}
	// App-only routes are not escalated: their 535 is already the
	// credential's.
	if o365.DelegatedTokenRefused(&upstream.Error{Class: upstream.Credential, Code: 535, Enhanced: "5.7.3"}) {
		t.Fatal("an app-only 535 counted as a delegated rejection")
	}
}

// refusingTokens is a token source that Entra refuses, counting requests.
type refusingTokens struct{ requests int }

func (r *refusingTokens) Token(context.Context) (*oauth2.Token, error) {
	r.requests++
	return nil, &auth.TokenError{HTTPStatus: 401, Code: "invalid_client", AADSTS: "AADSTS7000215", Description: "Invalid client secret provided."}
}

func (r *refusingTokens) Invalidate() {}

// TestRefusedCredentialsAskOncePerHold: after Entra refuses a credential,
// the sends already past the breaker check wait as throttled, without a
// request and without counting a failure, until the refusal is a
// refusalHold old or the files change.
func TestRefusedCredentialsAskOncePerHold(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	g := &gate{set: breaker.New(f.redis.Client(t), breaker.Options{}), q: f.queue, log: discardLogger(), escalate: 3}
	src := &refusingTokens{}
	const route = appRoutePrefix + "contoso:noreply@contoso.com"
	if _, err := g.token(ctx, route, src); upstream.ClassOf(err) != upstream.Transient || src.requests != 1 {
		// ClassOf of a bare *auth.TokenError: classified later, by o365.
		t.Fatalf("first request: %v, %d requests", err, src.requests)
	}
	_, err := g.token(ctx, route, src)
	if upstream.ClassOf(err) != upstream.Throttled || upstream.RetryAfterOf(err) <= 0 || src.requests != 1 {
		t.Fatalf("within the hold: %v (%v), %d requests; want throttled with no request", err, upstream.ClassOf(err), src.requests)
	}
	// Another credential is not held.
	if _, err := g.token(ctx, appRoutePrefix+"fabrikam:noreply@contoso.com", src); src.requests != 2 || upstream.ClassOf(err) == upstream.Throttled {
		t.Fatalf("another credential: %v, %d requests", err, src.requests)
	}
	g.forgetRefusals()
	if g.token(ctx, route, src); src.requests != 3 {
		t.Fatalf("after the files changed: %d requests, want 3", src.requests)
	}
}

// TestAppOnlyRefusalAtOneMailbox: an app-only token that Exchange refuses
// at one mailbox (535 5.7.3: the service principal has no FullAccess on
// it) while it works at the others. The refusals also count on that
// mailbox's breaker, which opens and holds its mail; the credential's
// breaker, which the same refusals may open first, is closed by a probe
// at a mailbox that has not failed, and the other mailboxes' mail flows
// with the broken one's held rather than with the whole credential
// opening and closing by turns.
func TestAppOnlyRefusalAtOneMailbox(t *testing.T) {
	const broken = "box10@contoso.com"
	e := newBox10Env(t, func(o *Options) {
		o.Breakers.OpenInterval = Duration(time.Second)
		o.Breakers.MaxInterval = Duration(2 * time.Second)
	})
	set := e.relays[0].gate.set
	status := statusOf(t, set)

	var held []string
	for n := range 6 {
		held = append(held, e.submit(t, n%2, broken, fmt.Sprintf("h%d@example.org", n), exchangeMessage(100+n, broken)))
	}
	waitFor(t, 20*time.Second, "the broken mailbox's breaker open", func() bool {
		return status(mailboxBreaker(broken)).State == breaker.Open
	})
	waitFor(t, 20*time.Second, "the credential's breaker closed", func() bool {
		return status(credentialBreaker("contoso")).State == breaker.Closed
	})

	// The healthy mailboxes' mail now goes, while the broken one's waits.
	var ids []string
	for n := range 27 {
		from := fmt.Sprintf("box%d@contoso.com", n%9+1)
		ids = append(ids, e.submit(t, n%2, from, fmt.Sprintf("r%d@example.org", n), exchangeMessage(n, from)))
	}
	waitFor(t, 20*time.Second, "the healthy mailboxes' mail delivered", func() bool {
		return e.allDelivered(t, ids)
	})
	if st := status(credentialBreaker("contoso")); st.State != breaker.Closed {
		t.Errorf("credential breaker %+v after the healthy mail went, want closed", st)
	}
	for _, id := range held {
		if m := e.get(t, id); m.State == queue.Delivered || m.State == queue.Dead {
			t.Errorf("%s of the broken mailbox is %s, want held", id, m.State)
		}
	}
}

// TestProbeRoutesFallBackToFailingMailboxes: a credential's probe prefers
// mailboxes with no failure; when every mailbox has failed lately it
// tests the one that failed least, not a token alone (which an app-only
// token refused at every mailbox would pass), and it never picks a
// mailbox whose own breaker is open.
func TestProbeRoutesFallBackToFailingMailboxes(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	g := &gate{set: breaker.New(f.redis.Client(t), breaker.Options{}), q: f.queue, log: discardLogger(), escalate: 3}
	refused := &upstream.Error{Class: upstream.Credential, Code: 535, Enhanced: "5.7.3", Text: "Authentication unsuccessful"}
	a, b, c := "app:contoso:a@contoso.com", "app:contoso:b@contoso.com", "app:contoso:c@contoso.com"
	routes := []string{a, b, c}
	fail := func(route string, n int) {
		for range n {
			g.failed(ctx, route, refused)
		}
	}
	want := func(step string, exp ...string) {
		t.Helper()
		if got, _ := g.probeRoutes(ctx, routes); !slices.Equal(got, exp) {
			t.Fatalf("%s: probe routes %v, want %v", step, got, exp)
		}
	}
	want("no failures", a, b, c)
	fail(a, 1)
	want("a failed", b, c)
	fail(b, 2)
	fail(c, 1)
	want("every mailbox failed", a, c, b)
	fail(a, 2)
	if st, _ := g.set.Status(ctx, mailboxBreaker("a@contoso.com")); st.State != breaker.Open {
		t.Fatalf("a's breaker %+v after three refusals, want open", st)
	}
	want("a open", c, b)
}

// TestCredentialProbePastDisabledMailbox: when the only mailbox with mail
// has failed on its own account (535 5.7.139, SMTP AUTH disabled for it),
// the credential's probe tries it, and on that mailbox's failure tests
// the credential by a token, as with no mailbox to try: the credential's
// breaker closes at its first probe instead of failing on the mailbox.
func TestCredentialProbePastDisabledMailbox(t *testing.T) {
	const box = "box3@contoso.com"
	e := newExchangeEnvSim(t, 1, func(c *sim.Config) {
		for i := range c.Tenants[0].Mailboxes {
			if c.Tenants[0].Mailboxes[i].Address == box {
				c.Tenants[0].Mailboxes[i].SMTPAuthDisabled = true
			}
		}
	}, func(o *Options) {
		o.Breakers.OpenInterval = Duration(time.Second)
		for i := range o.Apps {
			o.Apps[i].SenderMailboxes[box] = box
		}
	})
	set := e.relays[0].gate.set
	status := statusOf(t, set)
	// The credential's breaker is open and the mail held, so only the
	// probe goes to Exchange; the mailbox failed once before.
	if err := set.Trip(t.Context(), credentialBreaker("contoso"), "test"); err != nil {
		t.Fatal(err)
	}
	e.submit(t, 0, box, "r@example.org", exchangeMessage(1, box))
	disabled := &upstream.Error{Class: upstream.Mailbox, Code: 535, Enhanced: "5.7.139", Text: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox."}
	if err := set.Record(t.Context(), mailboxBreaker(box), disabled); err != nil {
		t.Fatal(err)
	}
	const probed = `msg="breaker probed" component=breaker breaker=cred:contoso`
	waitFor(t, 15*time.Second, "the credential's breaker closed by a probe", func() bool {
		// The probe's line is written after its result.
		return status(credentialBreaker("contoso")).State == breaker.Closed &&
			strings.Contains(e.logs.String(), probed+" ok=true")
	})
	probes := 0
	for line := range strings.SplitSeq(e.logs.String(), "\n") {
		if strings.Contains(line, probed) {
			probes++
		}
	}
	if probes != 1 {
		t.Errorf("%d probes of the credential before it closed, want 1:\n%s", probes, e.logs.String())
	}
}

// statusOf returns a reader of breakers' states in set that fails the
// test when Redis cannot be read.
func statusOf(t *testing.T, set *breaker.Set) func(name string) breaker.Status {
	return func(name string) breaker.Status {
		t.Helper()
		st, err := set.Status(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
}

// TestAppOnlyRefusalLeavesCredentialClosed: one mailbox the app has no
// permission on gets mail together with nine healthy ones, on two
// relays. Exchange refuses the token at that mailbox alone; its AUTHs
// are then refused there without a try and count on its own breaker,
// which opens, while the healthy mailboxes' AUTHs go on. The
// credential's breaker never opens, so no healthy message waits for a
// probe.
func TestAppOnlyRefusalLeavesCredentialClosed(t *testing.T) {
	const broken = "box10@contoso.com"
	e := newBox10Env(t, nil)
	status := statusOf(t, e.relays[0].gate.set)
	var held, ids []string
	for n := range 36 {
		if n%4 == 0 {
			held = append(held, e.submit(t, n%2, broken, fmt.Sprintf("h%d@example.org", n), exchangeMessage(100+n, broken)))
			continue
		}
		from := fmt.Sprintf("box%d@contoso.com", n%9+1)
		ids = append(ids, e.submit(t, n%2, from, fmt.Sprintf("r%d@example.org", n), exchangeMessage(n, from)))
	}
	waitFor(t, 20*time.Second, "the healthy mailboxes' mail delivered and the broken mailbox's breaker open", func() bool {
		return e.allDelivered(t, ids) && status(mailboxBreaker(broken)).State == breaker.Open
	})
	if st := status(credentialBreaker("contoso")); st.Generation != 0 {
		t.Errorf("credential breaker %+v: it opened (generation %d) for one mailbox's refusals", st, st.Generation)
	}
	for _, id := range held {
		if m := e.get(t, id); m.State == queue.Delivered || m.State == queue.Dead {
			t.Errorf("%s of the broken mailbox is %s, want held", id, m.State)
		}
	}
}

// newBox10Env is two relays sending from box1…box10, of which the
// simulator's app may not send as box10: its service principal lacks the
// permission there, and Exchange answers its token 535 5.7.3 at box10
// alone. change, when set, edits the relays' options further.
func newBox10Env(t *testing.T, change func(*Options)) *exchangeEnv {
	t.Helper()
	return newBoxesEnv(t, 9, 10, 4, change)
}

// newBoxesEnv is two relays, with workers delivery workers each, sending
// from box1…box<total>, of which the simulator's app has the permission
// on box1…box<permitted> only.
func newBoxesEnv(t *testing.T, permitted, total, workers int, change func(*Options)) *exchangeEnv {
	t.Helper()
	box := func(n int) string { return fmt.Sprintf("box%d@contoso.com", n) }
	return newExchangeEnvSim(t, 2, func(c *sim.Config) {
		var boxes []string
		for n := 1; n <= permitted; n++ {
			boxes = append(boxes, box(n))
		}
		c.Tenants[0].Apps[0].SendAsMailboxes = append(boxes, "noreply@contoso.com", "billing@contoso.com")
	}, func(o *Options) {
		o.Delivery.Workers = workers
		o.Queue.BackoffBase = Duration(200 * time.Millisecond)
		o.Queue.BackoffMax = Duration(time.Second)
		for i := range o.Apps {
			for n := 1; n <= total; n++ {
				o.Apps[i].SenderMailboxes[box(n)] = box(n)
			}
		}
		if change != nil {
			change(o)
		}
	})
}

// TestMailboxesWithoutPermission: of 24 mailboxes that send, four
// came without the app's permission (a new hire's mailbox, a shared one
// the admin forgot). The healthy ones have sent, and keep their sessions
// open; then each of the four gets mail at once. Exchange refuses the
// token at the four alone: that is not the credential's failure while
// the mailboxes that sent with it lately still do, so its breaker stays
// closed, each of the four opens its own, and the healthy mail goes on.
func TestMailboxesWithoutPermission(t *testing.T) {
	const healthy, broken = 20, 4
	box := func(n int) string { return fmt.Sprintf("box%d@contoso.com", n) }
	e := newBoxesEnv(t, healthy, healthy+broken, 8, nil)
	status := statusOf(t, e.relays[0].gate.set)
	var first []string
	for n := 1; n <= healthy; n++ {
		first = append(first, e.submit(t, n%2, box(n), fmt.Sprintf("a%d@example.org", n), exchangeMessage(n, box(n))))
	}
	waitFor(t, 20*time.Second, "the healthy mailboxes' first mail delivered", func() bool { return e.allDelivered(t, first) })

	var held, later []string
	for n := healthy + 1; n <= healthy+broken; n++ {
		for k := range 2 {
			held = append(held, e.submit(t, k, box(n), fmt.Sprintf("h%d.%d@example.org", n, k), exchangeMessage(100+10*n+k, box(n))))
		}
	}
	for n := 1; n <= healthy; n++ {
		later = append(later, e.submit(t, n%2, box(n), fmt.Sprintf("b%d@example.org", n), exchangeMessage(200+n, box(n))))
	}
	waitFor(t, 20*time.Second, "the healthy mail delivered and the four mailboxes' breakers open", func() bool {
		if !e.allDelivered(t, later) {
			return false
		}
		for n := healthy + 1; n <= healthy+broken; n++ {
			if status(mailboxBreaker(box(n))).State != breaker.Open {
				return false
			}
		}
		return true
	})
	if st := status(credentialBreaker("contoso")); st.Generation != 0 {
		t.Errorf("credential breaker %+v: it opened (generation %d) for mailboxes without the app's permission", st, st.Generation)
	}
	for _, id := range held {
		if m := e.get(t, id); m.State == queue.Delivered || m.State == queue.Dead {
			t.Errorf("%s of a mailbox without the permission is %s, want held", id, m.State)
		}
	}
}

// TestWorkedMailboxesLosePermission: of 20 mailboxes that have sent, two
// lose the app's permission at once (an administrator narrows the app's
// scope), and each gets mail on both relays. Exchange refuses the token
// at both: the refusals at the second are kept to it, and the credential
// is tested at a third mailbox before its breaker counts them, so its
// breaker stays closed, the two mailboxes' breakers open, and the healthy
// mail goes at once.
func TestWorkedMailboxesLosePermission(t *testing.T) {
	const total = 20
	box := func(n int) string { return fmt.Sprintf("box%d@contoso.com", n) }
	e := newBoxesEnv(t, total, total, 8, nil)
	status := statusOf(t, e.relays[0].gate.set)
	var first []string
	for n := 1; n <= total; n++ {
		first = append(first, e.submit(t, n%2, box(n), fmt.Sprintf("a%d@example.org", n), exchangeMessage(n, box(n))))
	}
	waitFor(t, 20*time.Second, "every mailbox's first mail delivered", func() bool { return e.allDelivered(t, first) })
	// Exchange looks at the permission at AUTH: the sessions open before
	// it was taken away would still send. They close idle after 2 s.
	time.Sleep(2500 * time.Millisecond)

	broken := []string{box(total - 1), box(total)}
	for _, b := range broken {
		if !e.sim.SetSendAs(simTenant, simClientID, b, false) {
			t.Fatal("the simulator does not know the app")
		}
	}
	var held []string
	for i, b := range broken {
		for k := range 2 {
			held = append(held, e.submit(t, k, b, fmt.Sprintf("h%d.%d@example.org", i, k), exchangeMessage(100+10*i+k, b)))
		}
	}
	waitFor(t, 20*time.Second, "the two mailboxes' breakers open", func() bool {
		return status(mailboxBreaker(broken[0])).State == breaker.Open && status(mailboxBreaker(broken[1])).State == breaker.Open
	})
	var later []string
	for n := 1; n <= total-2; n++ {
		later = append(later, e.submit(t, n%2, box(n), fmt.Sprintf("b%d@example.org", n), exchangeMessage(200+n, box(n))))
	}
	waitFor(t, 10*time.Second, "the healthy mail delivered", func() bool { return e.allDelivered(t, later) })
	if st := status(credentialBreaker("contoso")); st.Generation != 0 {
		t.Errorf("credential breaker %+v: it opened (generation %d) for two mailboxes that lost the permission", st, st.Generation)
	}
	for _, id := range held {
		if m := e.get(t, id); m.State == queue.Delivered || m.State == queue.Dead {
			t.Errorf("%s of a mailbox without the permission is %s, want held", id, m.State)
		}
	}
}

// TestMailboxProbeWaitsForCredential: a mailbox's breaker is open (the
// app lacks its permission there) when the credential's secret expires
// and its breaker opens. The mailbox's probe, due meanwhile, would fetch
// a token Entra refuses and count the credential's failure on the
// mailbox, with the credential's reason: it waits instead, and runs once
// the credential's breaker closes (probeMailboxesNow).
func TestMailboxProbeWaitsForCredential(t *testing.T) {
	const broken = "box10@contoso.com"
	e := newBox10Env(t, func(o *Options) { o.Breakers.OpenInterval = Duration(time.Second) })
	g := e.relays[0].gate
	status := statusOf(t, g.set)
	mbx := mailboxBreaker(broken)
	e.submit(t, 0, broken, "a@example.org", exchangeMessage(1, broken))
	waitFor(t, 20*time.Second, "the mailbox's breaker open", func() bool { return status(mbx).State == breaker.Open })

	e.sim.ExpireSecret(simTenant, simClientID)
	if err := g.set.Trip(t.Context(), credentialBreaker("contoso"), "the secret expired"); err != nil {
		t.Fatal(err)
	}
	before := status(mbx)
	probed := func() int {
		n := 0
		for _, l := range strings.Split(e.logs.String(), "\n") {
			if strings.Contains(l, `msg="breaker probed"`) && strings.Contains(l, " breaker="+mbx+" ") {
				n++
			}
		}
		return n
	}
	probes := probed()
	// Several of the mailbox's open intervals (1 s, doubling on each
	// failed probe).
	time.Sleep(4 * time.Second)
	after := status(mbx)
	if after.Failures != before.Failures || after.Reason != before.Reason {
		t.Errorf("mailbox breaker went from %d failures (%q) to %d (%q) while the credential's was open; want it untouched",
			before.Failures, before.Reason, after.Failures, after.Reason)
	}
	if n := probed() - probes; n != 0 {
		t.Errorf("the mailbox was probed %d times while the credential's breaker was open, want none", n)
	}
	// Once the credential works again and its breaker closes, the
	// mailbox's probe runs at once.
	e.sim.RotateSecret(simTenant, simClientID, simSecret)
	if err := g.set.Reset(t.Context(), credentialBreaker("contoso")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the mailbox probed after the credential's breaker closed", func() bool { return probed() > probes })
}

// TestMailboxProbeAfterCredentialOpened: a mailbox's probe that was due
// in the same sweep as the token refusal that opened its credential's
// breaker finds the breaker open in this relay's view and does not run:
// it would fetch a token Entra refuses.
func TestMailboxProbeAfterCredentialOpened(t *testing.T) {
	const broken = "box10@contoso.com"
	e := newBox10Env(t, nil)
	g := e.relays[0].gate
	mbx := mailboxBreaker(broken)
	e.submit(t, 0, broken, "a@example.org", exchangeMessage(1, broken))
	waitFor(t, 20*time.Second, "the mailbox's breaker open", func() bool { return g.set.Cached(mbx).State == breaker.Open })
	e.sim.ExpireSecret(simTenant, simClientID)
	if err := g.set.Trip(t.Context(), credentialBreaker("contoso"), "the secret expired"); err != nil {
		t.Fatal(err)
	}
	refused := e.sim.Counters().Clients[simClientID].TokenErrors
	if err := g.probe(t.Context(), mbx); !errors.Is(err, errProbeNotRun) {
		t.Errorf("the mailbox's probe under an open credential breaker = %v, want it not run", err)
	}
	if n := e.sim.Counters().Clients[simClientID].TokenErrors - refused; n != 0 {
		t.Errorf("%d token requests refused by the mailbox's probe, want none", n)
	}
}

// TestBreakerLostWithRedis: an operator holds a mailbox's breaker, and
// Redis then restarts empty (or is flushed): the hold is lost, as
// everything in Redis is. Both relays knew the breaker open; mail
// accepted after the loss is delivered, not held under a breaker no
// record shows (before, a relay held the route with the generation it
// knew, and every release, fenced by the new record's lower generation,
// was refused, so the mail waited for good while "holdfast breaker
// status" showed the breaker closed).
func TestBreakerLostWithRedis(t *testing.T) {
	const box = "billing@contoso.com"
	e := newExchangeEnv(t, 2, nil)
	ctx := t.Context()
	mbx := mailboxBreaker(box)
	if err := e.relays[0].gate.set.Hold(ctx, mbx, "held by an operator"); err != nil {
		t.Fatal(err)
	}
	held := e.submit(t, 0, box, "h@example.org", exchangeMessage(0, box))
	for _, r := range e.relays {
		waitFor(t, 10*time.Second, "the breaker open on every relay", func() bool { return r.gate.set.Cached(mbx).State == breaker.Open })
	}
	waitFor(t, 10*time.Second, "the message held", func() bool { return e.get(t, held).State != queue.Ready })
	if err := e.f.redis.Client(t).FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for n := 1; n <= 6; n++ {
		ids = append(ids, e.submit(t, n%2, box, fmt.Sprintf("r%d@example.org", n), exchangeMessage(n, box)))
	}
	waitFor(t, 15*time.Second, "the mail accepted after the loss delivered", func() bool { return e.allDelivered(t, ids) })
	for i, r := range e.relays {
		if st := r.gate.set.Cached(mbx); st.State != breaker.Closed || st.Generation < 2 {
			t.Errorf("relay %d holds %s as %s@%d, want closed above the lost generation 1", i, mbx, st.State, st.Generation)
		}
	}
}
