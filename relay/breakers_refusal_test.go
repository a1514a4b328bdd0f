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
