package relay

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"holdfast/breaker"
	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
	"holdfast/relay/o365"
)

// TestBreakerBurst: 20 parallel sessions of one credential, on 20
// app-only routes, meet a revoked token. At most the breaker's threshold
// of AUTH failures reach Exchange: the first refusal of the token makes
// the other sessions holding it wait for the verdict of the retry with a
// new token; past a refusal at another mailbox, a session tries the token
// only with one of the fleet-wide places, which the threshold bounds.
// Every message is then delivered exactly once.
//
// With three and five relays sharing the queue, each holds its own
// token; every relay's workers take the mail together, and the count
// holds fleet-wide, more relays than the threshold included. "denied"
// takes the app's permission away instead, so that the new token each
// session fetches after the refusal is refused too; the breaker opens,
// and once the permission is back and the breaker reset, the mail goes.
func TestBreakerBurst(t *testing.T) {
	for _, c := range []struct {
		replicas int
		denied   bool
	}{{1, false}, {3, false}, {5, false}, {1, true}, {3, true}} {
		name := fmt.Sprintf("relays=%d", c.replicas)
		if c.denied {
			name += "/denied"
		}
		t.Run(name, func(t *testing.T) { breakerBurst(t, c.replicas, c.denied) })
	}
}

func breakerBurst(t *testing.T, replicas int, denied bool) {
	const sessions = 20
	threshold := breaker.DefaultOptions().Threshold
	e := newExchangeEnv(t, replicas, func(o *Options) {
		o.Delivery.Workers = sessions
		o.Queue.BackoffBase = Duration(100 * time.Millisecond)
		o.Queue.BackoffMax = Duration(400 * time.Millisecond)
		for i := range o.Apps {
			for n := 1; n <= sessions; n++ {
				box := fmt.Sprintf("box%d@contoso.com", n)
				o.Apps[i].SenderMailboxes[box] = box
			}
		}
	})
	// A delivery first, so that the relays hold tokens that worked.
	for _, r := range e.relays {
		if _, err := r.exchange.creds["contoso"].Token(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	warm := e.submit(t, 0, "billing@contoso.com", "r@example.org", exchangeMessage(0, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the first delivery", func() bool { return e.get(t, warm).State == queue.Delivered })
	// Exchange answers AUTH in tens of milliseconds, not at once: the
	// sessions meet the revoked token together.
	e.sim.SetFault(sim.Fault{AuthDelay: 50 * time.Millisecond})
	before := e.sim.Counters().Clients[simClientID]

	if !e.sim.RevokeAppTokens(simTenant, simClientID) || (denied && !e.sim.DenySendAsApp(simTenant, simClientID, true)) {
		t.Fatal("the simulator does not know the app")
	}
	// The messages are accepted while the relay is not delivering, so
	// that the workers take them together.
	if err := e.relays[0].gate.set.Trip(t.Context(), credentialBreaker("contoso"), "burst test"); err != nil {
		t.Fatal(err)
	}
	ids := make([]string, sessions)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for n := range sessions {
		wg.Go(func() {
			from := fmt.Sprintf("box%d@contoso.com", n+1)
			id, err := e.trySubmit(0, from, fmt.Sprintf("r%d@example.org", n), exchangeMessage(n+1, from))
			mu.Lock()
			defer mu.Unlock()
			ids[n] = id
			if err != nil {
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("submissions failed: %v", errs)
	}
	set := e.relays[0].gate.set
	if err := set.Reset(t.Context(), credentialBreaker("contoso")); err != nil {
		t.Fatal(err)
	}
	if denied {
		waitFor(t, 15*time.Second, "the breaker open", func() bool {
			st, err := set.Status(t.Context(), credentialBreaker("contoso"))
			return err == nil && st.State == breaker.Open
		})
		// The failures that reached Exchange before it opened.
		mid := e.sim.Counters().Clients[simClientID]
		t.Logf("before the breaker opened: %d AUTH attempts, %d failed", mid.SMTPAuthAttempts-before.SMTPAuthAttempts,
			mid.SMTPAuthFailures-before.SMTPAuthFailures)
		if n := mid.SMTPAuthFailures - before.SMTPAuthFailures; n > threshold {
			t.Errorf("%d AUTH failures reached Exchange before the breaker opened; want at most the threshold, %d", n, threshold)
		}
		// The sends in flight when it opened report their failures as
		// they end; a report landing after the reset below would count
		// against the reset breaker and open it again. So the reset
		// waits until no message is leased: each send's failure was
		// recorded before its message was handed back.
		waitFor(t, 10*time.Second, "no send in flight", func() bool {
			for _, id := range ids {
				if e.get(t, id).State == queue.Leased {
					return false
				}
			}
			return true
		})
		e.sim.DenySendAsApp(simTenant, simClientID, false)
		before = mid
		if err := set.Reset(t.Context(), credentialBreaker("contoso")); err != nil {
			t.Fatal(err)
		}
	}

	waitFor(t, 15*time.Second, "every message delivered", func() bool {
		return e.allDelivered(t, ids)
	})
	after := e.sim.Counters().Clients[simClientID]
	failures := after.SMTPAuthFailures - before.SMTPAuthFailures
	t.Logf("%d AUTH attempts, %d failed, %d token requests", after.SMTPAuthAttempts-before.SMTPAuthAttempts, failures, after.TokenRequests-before.TokenRequests)
	if failures > threshold {
		t.Errorf("%d AUTH failures reached Exchange; want at most the threshold, %d", failures, threshold)
	}
	got := map[string]int{}
	for _, r := range e.sim.Received() {
		got[r.MessageID]++
	}
	for n := range sessions + 1 {
		if id := fmt.Sprintf("<m%d@test>", n); got[id] != 1 {
			t.Errorf("%s delivered %d times", id, got[id])
		}
	}
}

// TestFreshAuthCures: after two relays' cached tokens were refused, the
// next AUTH is told to try a new token (breaker.GoFresh). When it works,
// that is a cure the other relays must hear of, so that they replace
// their own cached tokens before their AUTHs instead of having each
// refused in turn.
func TestFreshAuthCures(t *testing.T) {
	e := newExchangeEnv(t, 2, nil)
	ctx := t.Context()
	cred := credentialBreaker("contoso")
	other := e.relays[1].gate.set
	for _, tok := range []string{"p1", "p2"} {
		if a, err := other.EnterAttempt(ctx, cred, tok, "", false); err != nil || a.Verdict != breaker.Go {
			t.Fatalf("place %s: %+v %v", tok, a, err)
		}
	}
	for _, tok := range []string{"p1", "p2"} {
		if _, _, err := other.ExitAttempt(ctx, cred, tok, "", breaker.FailedStale, "535 5.7.3 Authentication unsuccessful"); err != nil {
			t.Fatal(err)
		}
	}

	turn, err := e.relays[0].gate.authTurn("app:contoso:box1@contoso.com")(ctx, true)
	if err != nil || !turn.Refresh {
		t.Fatalf("AUTH after two stale refusals: %+v %v; want a place with a new token", turn, err)
	}
	turn.Exit(o365.AuthOK, nil)

	a, err := other.EnterAttempt(ctx, cred, "p3", "", false)
	if err != nil || a.Verdict != breaker.Go {
		t.Fatalf("place after the new token worked: %+v %v", a, err)
	}
	if a.CuredAt.IsZero() {
		t.Fatal("the new token worked, but the other relays are not told to replace their cached tokens (no cure recorded)")
	}
}
