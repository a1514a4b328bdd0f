package relay

import (
	"slices"
	"strings"
	"testing"
	"time"

	"holdfast/breaker"
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
