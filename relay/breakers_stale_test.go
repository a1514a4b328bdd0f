package relay

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"holdfast/auth"
	"holdfast/breaker"
	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
)

// TestStaleProbeHandedBack: the fleet's record names a newer secret as
// the one that works (another relay's file changed, and its token came),
// and Entra has deleted the secret this relay's older file holds. This
// relay has sent nothing since the breaker opened, so it does not know
// it is stale, and takes the credential's due probe. Its token request is
// refused: it marks itself stale and hands the probe back, due at once
// for another relay, with no failure counted and the open interval kept.
func TestStaleProbeHandedBack(t *testing.T) {
	e := newExchangeEnv(t, 1, func(o *Options) { o.Breakers.OpenInterval = Duration(time.Second) })
	g := e.relays[0].gate
	status := statusOf(t, g.set)
	ctx := t.Context()
	name := credentialBreaker("contoso")
	e.sim.RotateSecret(simTenant, simClientID, "rotated-"+simSecret)
	// The newer secret got its token more than a second after this
	// relay's file was written (see breaker.Material.Stale).
	time.Sleep(1100 * time.Millisecond)
	if err := g.set.Succeeded(ctx, name, "0123456789abcdef"); err != nil {
		t.Fatal(err)
	}
	if err := g.set.Trip(ctx, name, "test"); err != nil {
		t.Fatal(err)
	}
	before := status(name)
	waitFor(t, 10*time.Second, "the relay marked stale", func() bool {
		return slices.Contains(status(name).StaleReplicas, g.replica)
	})
	waitFor(t, 5*time.Second, "the probe handed back", func() bool {
		return strings.Contains(e.logs.String(), "breaker probe handed to another relay")
	})
	after := status(name)
	if after.State != breaker.Open || after.Failures != before.Failures || after.Interval != before.Interval {
		t.Errorf("after the stale relay's probe %+v, want open with the failures and interval of %+v", after, before)
	}
	other := breaker.New(e.f.redis.Client(t), breaker.Options{})
	if ok, err := other.AcquireProbe(ctx, name); err != nil || !ok {
		t.Errorf("another relay's AcquireProbe = %v, %v; want the probe, due at once", ok, err)
	}
}

// TestIssuedWhileRedisDown: a token got with new material while Redis is
// down (a restart, a failover) could not record that material as the one
// that works. The relay records it once Redis is back, not at its next
// token, an hour later: until then a relay with the older secret would
// not be seen as stale, and its refusals would open the fleet's breaker.
func TestIssuedWhileRedisDown(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	g := e.relays[0].gate
	name := credentialBreaker("contoso")
	const fp = "0123456789abcdef"
	// The relay's own token, for its expiry check at start, is recorded
	// first: got later, it would rightly win over the late record.
	waitFor(t, 10*time.Second, "the expiry check's token", func() bool {
		return strings.Contains(e.logs.String(), "credential expiry checked")
	})
	e.f.redis.Stop(t)
	g.issued("contoso", fp)
	if !strings.Contains(e.logs.String(), "cannot record the credential that works") {
		t.Fatal("the record did not fail with Redis down")
	}
	e.f.redis.Restart(t)
	status := statusOf(t, breaker.New(e.f.redis.Client(t), breaker.Options{}))
	waitFor(t, 5*time.Second, "the material that works recorded once Redis is back", func() bool {
		return status(name).GoodFingerprint == fp
	})
}

// TestRefusedStaleUnreadable: a probe refused by Entra while the breaker's
// record cannot be read is neither handed back as stale nor counted as a
// failure of the credential (which would double the open interval): it
// counts as not run, and is tried again soon.
func TestRefusedStaleUnreadable(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	g := e.relays[0].gate
	refused := &auth.TokenError{HTTPStatus: 401, Code: "invalid_client", AADSTS: "AADSTS7000215",
		Fingerprint: "0123456789abcdef", Written: time.Now()}
	stale, err := g.probeRefusedStale(t.Context(), "contoso", refused)
	if stale || err != nil {
		t.Fatalf("with the record readable: stale %v, err %v; want neither", stale, err)
	}
	gone, cancel := context.WithCancel(t.Context())
	cancel()
	if stale, err := g.probeRefusedStale(gone, "contoso", refused); stale || err == nil {
		t.Errorf("with the record unreadable: stale %v, err %v; want an error", stale, err)
	}
	if stale, err := g.probeRefusedStale(gone, "contoso", errors.New("dial tcp: refused")); stale || err != nil {
		t.Errorf("for a failure other than Entra's refusal: stale %v, err %v; want neither", stale, err)
	}
}

// TestStaleFromExpiryRead: the fleet's record names a newer secret as the
// one that works, and Entra has deleted the secret this relay's older
// file holds. The relay's expiry read (at start, on SIGHUP, each check
// interval) gets its Graph token refused: that tells it it is stale, as a
// refused delivery would, so mail submitted next waits for another relay
// without this one trying it, or sending the deleted secret again.
func TestStaleFromExpiryRead(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	r := e.relays[0]
	g := r.gate
	status := statusOf(t, g.set)
	ctx := t.Context()
	name := credentialBreaker("contoso")
	// The relay's own expiry read at start comes first: its token would
	// rightly win over the record below.
	waitFor(t, 10*time.Second, "the expiry check's token", func() bool {
		return strings.Contains(e.logs.String(), "credential expiry checked")
	})
	e.sim.RotateSecret(simTenant, simClientID, "rotated-"+simSecret)
	// The newer secret got its token more than a second after this
	// relay's file was written (see breaker.Material.Stale).
	time.Sleep(1100 * time.Millisecond)
	if err := g.set.Succeeded(ctx, name, "0123456789abcdef"); err != nil {
		t.Fatal(err)
	}
	r.expiry.CheckAll(ctx)
	if got := status(name).StaleReplicas; !slices.Contains(got, g.replica) {
		t.Fatalf("after a refused expiry read, stale replicas %v, want %s listed", got, g.replica)
	}
	refused := e.sim.Counters().Clients[simClientID].TokenErrors
	id := e.submit(t, 0, "billing@contoso.com", "a@example.org", exchangeMessage(1, "billing@contoso.com"))
	// A stale relay does not lease the credential's routes: the message
	// waits for another relay.
	time.Sleep(2 * time.Second)
	if m := e.get(t, id); m.State != queue.Ready || m.Attempts != 0 {
		t.Errorf("message %s %d attempts after 2 s, want it waiting untried for another relay", m.State, m.Attempts)
	}
	if got := e.sim.Counters().Clients[simClientID].TokenErrors - refused; got != 0 {
		t.Errorf("%d more refused token requests after the expiry read, want none", got)
	}
	if st := status(name); st.State != breaker.Closed || st.Failures != 0 {
		t.Errorf("breaker %+v after the stale relay's refusals, want closed with no failure", st)
	}
}

// TestStaleMarkWhileRedisDown: a relay that finds itself stale while
// Redis is down (a restart, a failover), or whose file changes then,
// records it once Redis is back, as it does the material that works:
// `holdfast breaker status` and the status page would otherwise name a
// relay that sends as stale, or miss one that does not, until its next
// change.
func TestStaleMarkWhileRedisDown(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	g := e.relays[0].gate
	name := credentialBreaker("contoso")
	fp := g.x.creds["contoso"].Fingerprint()
	status := func() []string {
		t.Helper()
		// A client of its own: the test's view, whatever the relay's pool holds.
		return statusOf(t, breaker.New(e.f.redis.Client(t), breaker.Options{}))(name).StaleReplicas
	}

	e.f.redis.Stop(t)
	g.markStale("contoso", fp)
	if !strings.Contains(e.logs.String(), "cannot record this relay as stale") {
		t.Fatal("the stale mark did not fail with Redis down")
	}
	e.f.redis.Restart(t)
	waitFor(t, 5*time.Second, "the relay recorded as stale once Redis is back", func() bool {
		return slices.Contains(status(), g.replica)
	})

	// The file changes while Redis is down: the relay sends again, and
	// its mark is taken away once Redis is back.
	e.f.redis.Stop(t)
	g.mu.Lock()
	g.stale["contoso"] = "another file's fingerprint"
	g.mu.Unlock()
	if g.staleFor("contoso") {
		t.Fatal("stale after the file changed")
	}
	if !strings.Contains(e.logs.String(), "cannot record this relay as no longer stale") {
		t.Fatal("taking the mark away did not fail with Redis down")
	}
	e.f.redis.Restart(t)
	waitFor(t, 5*time.Second, "the stale mark taken away once Redis is back", func() bool {
		return !slices.Contains(status(), g.replica)
	})
}

// TestStaleMarkOfEarlierProcessCleared: a relay killed while stale, whose
// file was then replaced, starts again under the same replica name. The
// new process never found itself stale, so it has no mark of its own to
// take away; its breaker poll finds the record naming it stale, which it
// is not, and takes the mark away.
func TestStaleMarkOfEarlierProcessCleared(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	g := e.relays[0].gate
	name := credentialBreaker("contoso")
	status := statusOf(t, breaker.New(e.f.redis.Client(t), breaker.Options{}))
	// The earlier process's mark.
	if err := g.set.MarkStale(t.Context(), name, g.replica, true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the mark under this relay's name taken away", func() bool {
		return !slices.Contains(status(name).StaleReplicas, g.replica)
	})
}

// TestStaleMarkOfGoneRelayRemoved: a relay killed while stale, and
// replaced by a pod of another name, leaves its mark in the credential's
// record. A running relay removes it once the gone relay's name is no
// longer announced and the mark is older than a minute; a recent mark
// stays.
func TestStaleMarkOfGoneRelayRemoved(t *testing.T) {
	e := newExchangeEnv(t, 1, func(o *Options) { o.Breakers.goneStaleEvery = 100 * time.Millisecond })
	name := credentialBreaker("contoso")
	rdb := e.f.redis.Client(t)
	status := statusOf(t, breaker.New(rdb, breaker.Options{}))
	earlier := breaker.New(rdb, breaker.Options{Now: func() time.Time { return time.Now().Add(-time.Hour) }})
	if err := earlier.MarkStale(t.Context(), name, "holdfast-7d9f-gone", true); err != nil {
		t.Fatal(err)
	}
	if err := breaker.New(rdb, breaker.Options{}).MarkStale(t.Context(), name, "holdfast-7d9f-new", true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the gone relay's stale mark removed", func() bool {
		return !slices.Contains(status(name).StaleReplicas, "holdfast-7d9f-gone")
	})
	if got := status(name).StaleReplicas; !slices.Equal(got, []string{"holdfast-7d9f-new"}) {
		t.Fatalf("stale replicas %v, want the recent mark kept", got)
	}
	waitFor(t, 5*time.Second, "the removal logged", func() bool {
		return strings.Contains(e.logs.String(), "removed the stale mark of a relay that no longer runs")
	})
}

// TestProbeOfUnavailableUpstreamKeepsInterval: while the token endpoint
// answers 503, a credential's probes learn nothing of the credential:
// they come again after the same open interval instead of doubling it,
// so the mail goes soon after the endpoint is back.
func TestProbeOfUnavailableUpstreamKeepsInterval(t *testing.T) {
	e := newExchangeEnv(t, 1, func(o *Options) { o.Breakers.OpenInterval = Duration(time.Second) })
	ctx := t.Context()
	name := credentialBreaker("contoso")
	set := e.relays[0].gate.set
	e.sim.SetFault(sim.Fault{TokenUnavailable: true})
	e.relays[0].exchange.creds["contoso"].Invalidate()
	if err := set.Trip(ctx, name, "test"); err != nil {
		t.Fatal(err)
	}
	id := e.submit(t, 0, "billing@contoso.com", "a@example.org", exchangeMessage(1, "billing@contoso.com"))
	// Probes at about 1 and 2 s, then none while the relay leaves the
	// endpoint alone after its 503s (10 s, its own pause); doubling, at
	// 1 and 3 s, and the interval at 4 s.
	time.Sleep(4500 * time.Millisecond)
	st := e.breakerStatus(t, name)
	if st.State != breaker.Open || st.Interval != time.Second {
		t.Fatalf("after 4.5 s of an unavailable token endpoint: %s, interval %v, want open at 1s", st.State, st.Interval)
	}
	if n := strings.Count(e.logs.String(), "breaker probe met an upstream that asks to be tried later"); n < 2 {
		t.Errorf("%d probes in 4.5 s at a 1 s interval, want at least 2", n)
	}
	e.sim.SetFault(sim.Fault{})
	waitFor(t, 15*time.Second, "the held mail delivered once the endpoint is back", func() bool { return e.get(t, id).State == queue.Delivered })
}
