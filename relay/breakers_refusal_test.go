package relay

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"holdfast/auth"
	"holdfast/breaker"
	"holdfast/queue"
	"holdfast/relay/upstream"
)

// refusingSource is a token source that asks Entra on every call, and is
// refused after a short wait.
type refusingSource struct{ asked atomic.Int32 }

func (s *refusingSource) Token(context.Context) (*oauth2.Token, error) {
	s.asked.Add(1)
	time.Sleep(20 * time.Millisecond)
	return nil, &auth.TokenError{HTTPStatus: 401, Code: "invalid_client", AADSTS: "AADSTS7000222",
		Description: "The provided client secret keys for app '…' are expired."}
}

func (s *refusingSource) Invalidate() {}

// TestTokenRefusalHoldsConcurrentRequests: sends that ask for a token at
// the same moment put one request before Entra, not one each. The first
// is refused; the others wait as throttled, spending no attempt, while
// the refusal reaches the breaker. Before, every send already past the
// refusal check asked too: a relay still on an old secret sent more than
// one refused request after a rotation.
func TestTokenRefusalHoldsConcurrentRequests(t *testing.T) {
	f := newFixture(t)
	g := &gate{set: breaker.New(f.redis.Client(t), breaker.Options{}), q: f.queue, log: discardLogger()}
	src := &refusingSource{}
	const sends = 10
	start := make(chan struct{})
	errs := make([]error, sends)
	var wg sync.WaitGroup
	for i := range sends {
		wg.Go(func() {
			<-start
			_, errs[i] = g.token(context.Background(), "app:contoso:box1@contoso.com", src)
		})
	}
	close(start)
	wg.Wait()
	if n := src.asked.Load(); n != 1 {
		t.Errorf("%d token requests reached Entra, want 1", n)
	}
	var refused, held int
	for _, err := range errs {
		var te *auth.TokenError
		switch {
		case errors.As(err, &te):
			refused++
		case upstream.ClassOf(err) == upstream.Throttled:
			held++
		default:
			t.Errorf("send's error %v, want the refusal or a throttled wait", err)
		}
	}
	if refused != 1 || held != sends-1 {
		t.Errorf("%d sends refused and %d held, want 1 and %d", refused, held, sends-1)
	}
}

// TestTransitionLogLevels: a breaker that opens is logged as a warning, one
// that closes again as news: an alert on warnings fires for the outage,
// not for its end.
func TestTransitionLogLevels(t *testing.T) {
	logs := &syncBuffer{}
	g := &gate{log: slog.New(slog.NewTextHandler(logs, nil)), reconcileNow: make(chan struct{}, 1)}
	g.transition(breaker.Transition{Name: "cred:contoso", To: breaker.Open, Reason: "invalid_client AADSTS7000222"})
	g.transition(breaker.Transition{Name: "cred:contoso", To: breaker.Closed})
	out := logs.String()
	for _, want := range []string{`level=WARN msg="breaker open" breaker=cred:contoso`, `level=INFO msg="breaker closed" breaker=cred:contoso`} {
		if !strings.Contains(out, want) {
			t.Errorf("logs lack %q:\n%s", want, out)
		}
	}
}

// TestHoldReasonFollowsProbe: mail held by an operator's trip says so;
// once a probe fails, the held mail says why Entra refused, as the
// breaker does, and the failed probe counts as a failure in a row.
func TestHoldReasonFollowsProbe(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	ctx := context.Background()
	set := e.relays[0].gate.set
	brk := credentialBreaker("contoso")
	if err := set.Trip(ctx, brk, "tripped by an operator"); err != nil {
		t.Fatal(err)
	}
	id := e.submit(t, 0, "billing@contoso.com", "a@example.org", exchangeMessage(1, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the message held", func() bool { return e.get(t, id).State == queue.Held })
	if m := e.get(t, id); !strings.Contains(m.HoldReason, "tripped by an operator") {
		t.Fatalf("hold reason after the trip: %q", m.HoldReason)
	}

	e.sim.ExpireSecret(simTenant, simClientID)
	e.relays[0].exchange.creds["contoso"].Invalidate()
	if open, err := set.ProbeNow(ctx, brk); err != nil || !open {
		t.Fatalf("probe now: open %v, %v", open, err)
	}
	waitFor(t, 10*time.Second, "the failed probe's reason on the held mail", func() bool {
		return strings.Contains(e.get(t, id).HoldReason, "AADSTS7000222")
	})
	st, err := set.Status(ctx, brk)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != breaker.Open || !strings.Contains(st.Reason, "AADSTS7000222") || st.Failures != 1 {
		t.Errorf("breaker after a failed probe: state %v, failures %d, reason %q; want open, 1, AADSTS7000222", st.State, st.Failures, st.Reason)
	}
	if m := e.get(t, id); m.State != queue.Held || m.Attempts != 0 {
		t.Errorf("message after the failed probe: state %v, attempts %d; want held, 0", m.State, m.Attempts)
	}
}
