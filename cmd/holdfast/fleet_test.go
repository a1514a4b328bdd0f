package main

import (
	"fmt"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"holdfast/cmd/o365sim/sim"
	"holdfast/relay"
)

// The fleet tests: the breaker among relay processes as a real fleet runs
// them (issue "The breaker in a real fleet").

// checkOnce fails the test unless every message 0…n-1 was delivered
// exactly once.
func (f *incFleet) checkOnce(n int) {
	f.tb.Helper()
	seen := map[string]int{}
	for _, r := range f.sim.Received() {
		seen[r.MessageID]++
	}
	for i := range n {
		if c := seen[incMessageID(i)]; c != 1 {
			f.tb.Errorf("message %d delivered %d times, want once", i, c)
		}
	}
	if len(seen) != n {
		f.tb.Errorf("%d distinct messages delivered, want %d", len(seen), n)
	}
}

// waitHeld waits until the queue holds n messages, counting those still
// leased with the held ones when leased is true (a send that leased its
// message before the hold, and waits for a connection slot, settles it as
// held later).
func (f *incFleet) waitHeld(n int, leased bool, d time.Duration) {
	f.tb.Helper()
	deadline := time.Now().Add(d)
	for {
		st, err := f.q.Stats(f.tb.Context())
		held := st.Total.Held
		if leased {
			held += st.Total.Leased
		}
		if err == nil && held == int64(n) && st.Total.Ready+st.Total.Scheduled == 0 {
			return
		}
		if time.Now().After(deadline) {
			f.tb.Fatalf("after %v the queue holds %+v (%v), want %d held", d, st.Total, err, n)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// expireUntilOpen submits messages 0…before-1 and waits for them to be
// delivered; then (after also, when not nil) expires the secret and, once
// the relays' tokens are due for renewal, submits the next outage
// messages, and waits for the credential's breaker to open.
func (f *incFleet) expireUntilOpen(sub *incSubmitter, polls []*incPoller, before, outage int, also func()) {
	f.tb.Helper()
	for n := range before {
		sub.submit(n)
	}
	f.waitDelivered(before, 10*time.Second)
	if also != nil {
		also()
	}
	tExpiry := time.Now()
	f.sim.ExpireSecret(incTenant, incClientID)
	time.Sleep(incQuiet)
	for n := before; n < before+outage; n++ {
		sub.submit(n)
		time.Sleep(20 * time.Millisecond)
	}
	incWait(f.tb, 10*time.Second, "the credential's breaker open", func() bool {
		for _, p := range polls {
			if _, ok := p.first(tExpiry, isOpen); ok {
				return true
			}
		}
		return false
	})
}

// TestResetWhileOffline: an operator resets a tripped breaker while no
// relay runs; the first relay to start releases its held mail, all of it
// delivered within 5 s.
func TestResetWhileOffline(t *testing.T) {
	const before, held = 20, 30
	f := startIncFleet(t, incFleetOptions{mailboxes: 5})
	sub := f.startSubmitter(4, func(n int) string { return f.mailboxes[n%len(f.mailboxes)] })
	for n := range before {
		sub.submit(n)
	}
	f.waitDelivered(before, 10*time.Second)
	f.cli(0, "breaker", "trip", incCred)
	for n := before; n < before+held; n++ {
		sub.submit(n)
	}
	sub.close()
	sub.results(t, before+held)
	f.waitHeld(held, false, 5*time.Second)
	for _, r := range f.relays {
		r.stop(t)
	}
	f.cli(0, "breaker", "reset", incCred)
	start := time.Now()
	f.restart(0)
	f.waitDelivered(before+held, time.Until(start.Add(5*time.Second)))
	t.Logf("start to all held mail delivered: %v", time.Since(start).Round(time.Millisecond))
	time.Sleep(300 * time.Millisecond) // room for a duplicate to show
	f.checkOnce(before + held)
}

// TestTripLatency: mail flows through three relays when an operator trips
// the credential's breaker. Once "holdfast breaker trip" has returned, no
// relay begins a delivery (MAIL FROM at Exchange), and everything
// submitted after it is held; a reset (or the first probe, which succeeds)
// delivers it all exactly once.
func TestTripLatency(t *testing.T) {
	// total bounds the feed, which runs until well after the trip
	// returned (the command may take a while on a loaded machine).
	const total = 3000
	f := startIncFleet(t, incFleetOptions{mailboxes: 5, relays: 3})
	sub := f.startSubmitter(6, func(n int) string { return f.mailboxes[n%len(f.mailboxes)] })
	n := 0
	for ; n < 100; n++ {
		sub.submit(n)
	}
	f.waitDelivered(50, 10*time.Second)
	// Keep mail flowing while the operator trips the breaker.
	stop := make(chan struct{})
	fed := make(chan int)
	go func() {
		i := n
		defer func() { fed <- i }()
		for ; i < total; i++ {
			select {
			case <-stop:
				return
			default:
			}
			sub.submit(i)
			time.Sleep(10 * time.Millisecond)
		}
	}()
	time.Sleep(200 * time.Millisecond)
	f.cli(0, "breaker", "trip", incCred)
	tripped := time.Now()
	// The first probe succeeds, and the checks below come before it. It
	// is due an open interval after the trip took effect, which may be
	// well before the command returned on a loaded machine: read when.
	var st relay.BreakerStatus
	if code, err := f.do(1, "GET", "/v1/breakers/"+incCred, incAdminToken, "", &st); err != nil || code != http.StatusOK || st.State != "open" {
		t.Fatalf("breaker after the trip: %d %v %+v", code, err, st)
	}
	if left := time.Until(st.NextProbe); left < incOpenInterval/2 {
		t.Fatalf("the first probe is due %v after 'holdfast breaker trip' returned: too soon to check anything", left)
	}
	time.Sleep(time.Until(st.NextProbe) / 2)
	close(stop)
	n = <-fed
	sub.close()
	subs := sub.results(t, n)
	received := f.sim.Received()
	delivered := len(received)
	f.waitHeld(n-delivered, true, time.Until(st.NextProbe.Add(-incOpenInterval/8)))

	var last time.Time
	late := 0
	for _, r := range received {
		if r.Started.After(last) {
			last = r.Started
		}
		if !r.Started.Before(tripped) {
			late++
		}
	}
	t.Logf("last delivery began %v before the trip returned", tripped.Sub(last).Round(time.Microsecond))
	if late > 0 {
		t.Errorf("%d deliveries began after 'holdfast breaker trip' returned", late)
	}
	after := 0
	for _, s := range subs {
		if s.at.After(tripped) {
			after++
		}
	}
	if after == 0 {
		t.Fatal("nothing was submitted after the trip: the test proves nothing")
	}
	f.cli(1, "breaker", "reset", incCred)
	f.waitDelivered(n, 10*time.Second)
	time.Sleep(300 * time.Millisecond)
	f.checkOnce(n)
	f.checkRunning()
}

// TestStaggeredRotation: three relays, each with its own secret file, as
// pods mounting a Secret. The secret expires and the breaker opens; then
// the new secret reaches the relays' files one at a time, 10 s apart,
// with the old secret deleted (AADSTS7000215) or kept, expired
// (AADSTS7000222). The breaker never opens again after the first file
// changes; the first delivery comes within 2 s of it; every message is
// delivered exactly once; and a relay still on the old secret sends at
// most one refused token request.
func TestStaggeredRotation(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rotate func(s *sim.Sim)
	}{
		{"old deleted", func(s *sim.Sim) { s.RotateSecret(incTenant, incClientID, incRotated) }},
		{"old kept expired", func(s *sim.Sim) {
			s.AddSecret(incTenant, incClientID, sim.Secret{Value: incRotated, ExpiresAt: time.Now().Add(180 * 24 * time.Hour)})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { staggeredRotation(t, tc.rotate) })
	}
}

func staggeredRotation(t *testing.T, rotate func(s *sim.Sim)) {
	const (
		before  = 30
		outage  = 60
		stagger = 10 * time.Second
		during  = 60 // submitted while the files change, one every 0.5 s
	)
	f := startIncFleet(t, incFleetOptions{mailboxes: 5, relays: 3, ownSecrets: true})
	polls := f.pollBreaker(incCred)
	sub := f.startSubmitter(6, func(n int) string { return f.mailboxes[n%len(f.mailboxes)] })
	f.expireUntilOpen(sub, polls, before, outage, nil)
	f.waitHeld(before+outage-f.delivered(), true, 5*time.Second)

	// The rotation reaches one file at a time, with mail flowing.
	rotate(f.sim)
	var tFirst time.Time
	feed := make(chan struct{})
	go func() {
		defer close(feed)
		for i := range during {
			sub.submit(before + outage + i)
			time.Sleep(stagger * 2 / during)
		}
	}()
	for i, path := range f.secretFiles {
		if i > 0 {
			time.Sleep(stagger)
		}
		incWriteFile(t, path, incRotated+"\n")
		if i == 0 {
			tFirst = time.Now()
			first := time.Time{}
			incWait(t, 2*time.Second, "a delivery within 2 s of the first file change", func() bool {
				for _, r := range f.sim.Received() {
					if r.Started.After(tFirst) {
						first = r.Started
						return true
					}
				}
				return false
			})
			t.Logf("first file change to first delivery: %v", first.Sub(tFirst).Round(time.Millisecond))
		}
	}
	<-feed
	sub.close()
	total := before + outage + during
	sub.results(t, total)
	f.waitDelivered(total, 15*time.Second)
	time.Sleep(300 * time.Millisecond)
	f.checkOnce(total)
	f.checkRunning()

	// Never open again after the first file change.
	for _, p := range polls {
		p.checkErrors(t)
		p.checkClosedForGood(t, tFirst)
	}
	// The status endpoint listed the relays still on the old secret.
	staleSeen := map[string]bool{}
	for _, p := range polls {
		for _, o := range p.between(tFirst, time.Now()) {
			for _, r := range o.st.StaleReplicas {
				staleSeen[r] = true
			}
		}
	}
	others := 0
	for r := range staleSeen {
		if r != "relay-2" && r != "relay-3" {
			others++
		}
	}
	if others > 0 || len(staleSeen) == 0 {
		t.Errorf("/v1/breakers listed %v as stale, want some of relay-2 and relay-3 (the relays' replica names)", staleSeen)
	}
	t.Logf("listed as stale during the rotation: %v", staleSeen)
	// Once the new secret has worked somewhere (the credential's breaker
	// closed), each relay still on the old secret is refused once at
	// most (a request in flight at the close is counted). Before that, no relay can
	// tell its secret from the one that works, and any relay's probe or
	// delivery is refused (AADSTS7000215 or 7000222) as during the
	// outage; relay-1 is, too, until it sees its file change.
	var closedAt time.Time
	for _, r := range f.relays {
		for _, e := range r.logEntries("breaker transition") {
			if e.Breaker == incCred && e.To == "closed" && (closedAt.IsZero() || e.Time.Before(closedAt)) {
				closedAt = e.Time
			}
		}
	}
	if closedAt.IsZero() {
		t.Fatal("no relay logged the credential's breaker closing")
	}
	refusedAfter := map[string]int{}
	for _, r := range f.relays {
		refusedAfter[r.name] += r.loggedAfter("token request rejected", closedAt)
	}
	for _, r := range f.relays {
		if n := refusedAfter[r.name]; n > 1 {
			t.Errorf("%s: %d refused token requests after the new secret worked, want at most 1", r.name, n)
		}
	}
	t.Logf("refused token requests after the new secret worked: %v", refusedAfter)
}

// TestBrokenProbeMailbox: the credential's first mailbox has SMTP AUTH
// disabled (535 5.7.139) during an expiry and a rotation. The credential's
// breaker closes within 2 s of the rotation, probing with another
// mailbox; the other mailboxes' mail is delivered, and the broken
// mailbox's mail stays held on its own breaker.
func TestBrokenProbeMailbox(t *testing.T) {
	const before, outage = 20, 40
	f := startIncFleet(t, incFleetOptions{mailboxes: 5})
	broken := f.mailboxes[0]
	polls := f.pollBreaker(incCred)
	sub := f.startSubmitter(4, func(n int) string { return f.mailboxes[n%len(f.mailboxes)] })
	f.expireUntilOpen(sub, polls, before, outage, func() { f.sim.DisableSMTPAuth(broken, true) })
	sub.close()
	sub.results(t, before+outage)
	time.Sleep(incPropagation)

	f.sim.RotateSecret(incTenant, incClientID, incRotated)
	incWriteFile(t, f.secretFile, incRotated+"\n")
	tRotation := time.Now()
	incWait(t, 2*time.Second+incReload, "the credential's breaker closed", func() bool {
		for _, p := range polls {
			if _, ok := p.first(tRotation, isClosed); ok {
				return true
			}
		}
		return false
	})
	var closedAt time.Time
	for _, p := range polls {
		if o, ok := p.first(tRotation, isClosed); ok && (closedAt.IsZero() || o.st.Since.Before(closedAt)) {
			closedAt = o.st.Since
		}
	}
	// The file is re-read every incReload; the breaker closes within 2 s
	// of the relay seeing it.
	t.Logf("rotation to the credential's breaker closed: %v", closedAt.Sub(tRotation).Round(time.Millisecond))
	if lag := closedAt.Sub(tRotation); lag > 2*time.Second {
		t.Errorf("the credential's breaker closed %v after the rotation, want within 2s", lag)
	}

	wantOthers := 0
	for i := range before + outage {
		if f.mailboxes[i%len(f.mailboxes)] != broken {
			wantOthers++
		}
	}
	incWait(t, 10*time.Second, "the other mailboxes' mail delivered", func() bool {
		got := 0
		for _, r := range f.sim.Received() {
			if r.Mailbox != broken {
				got++
			}
		}
		return got == wantOthers
	})
	mbx := "mbx:" + broken
	route := "app:contoso:" + broken
	incWait(t, 10*time.Second, "the broken mailbox's mail held on its own breaker", func() bool {
		reason, held, err := f.q.RouteHold(t.Context(), route)
		return err == nil && held && strings.Contains(reason, mbx)
	})
	var st struct {
		State string `json:"state"`
	}
	if code, err := f.do(0, "GET", "/v1/breakers/"+mbx, incAdminToken, "", &st); err != nil || code != 200 || st.State != "open" {
		t.Errorf("GET /v1/breakers/%s: %d %v %+v, want open", mbx, code, err, st)
	}
	if _, ok := polls[0].last(); ok {
		if o, _ := polls[0].last(); !isClosed(o.st) {
			t.Errorf("the credential's breaker is %s at the end, want closed", o.st.State)
		}
	}
	f.checkRunning()
}

// TestPropagatingSecret: the new secret is written to the relays' file
// at once, but Entra refuses it (AADSTS7000215) for 20 s while it
// propagates. The probes of those 20 s are retried on a short schedule
// that does not double the breaker's open interval, and the first
// delivery comes within 3 s of the propagation's end. The configured
// max_interval is the default 5 minutes, so that doubling would show.
func TestPropagatingSecret(t *testing.T) { testPropagatingSecret(t, false) }

// TestPropagatingSecretRefusedAsExpired: the same, with Entra refusing
// the new secret as expired (AADSTS7000222) while it propagates, as it
// does at times.
func TestPropagatingSecretRefusedAsExpired(t *testing.T) { testPropagatingSecret(t, true) }

func testPropagatingSecret(t *testing.T, refusedAsExpired bool) {
	const (
		before, outage = 10, 30
		propagation    = 20 * time.Second
	)
	f := startIncFleet(t, incFleetOptions{mailboxes: 3, edit: func(_ int, config string) string {
		return strings.Replace(config, "max_interval: "+incMaxInterval.String(), "max_interval: 5m", 1)
	}})
	polls := f.pollBreaker(incCred)
	sub := f.startSubmitter(4, func(n int) string { return f.mailboxes[n%len(f.mailboxes)] })
	f.expireUntilOpen(sub, polls, before, outage, nil)
	sub.close()
	sub.results(t, before+outage)

	// The rotation: a new secret, not yet propagated, in the file at once.
	tChange := time.Now()
	tValid := tChange.Add(propagation)
	f.sim.AddSecret(incTenant, incClientID, sim.Secret{Value: incRotated,
		ExpiresAt: tChange.Add(180 * 24 * time.Hour), ValidFrom: tValid, RefusedAsExpired: refusedAsExpired})
	atChange := f.counters()
	var interval string
	if o, ok := polls[0].last(); ok {
		interval = o.st.ProbeInterval
	}
	incWriteFile(t, f.secretFile, incRotated+"\n")

	f.firstDeliveryAfterPropagation(t, tChange, tValid)
	t.Logf("token requests refused meanwhile: %d", f.counters().TokenErrors-atChange.TokenErrors)
	f.waitDelivered(before+outage, 15*time.Second)
	f.checkOnce(before + outage)

	// The open interval did not grow while the secret propagated, and
	// the breaker closed once, never to open again.
	for _, p := range polls {
		p.checkErrors(t)
		for _, o := range p.between(tChange, tValid) {
			if o.st.State == "open" && o.st.ProbeInterval != interval {
				t.Errorf("relay-%d: probe interval %s at %v after the file changed, want %s as before",
					p.relay+1, o.st.ProbeInterval, o.at.Sub(tChange).Round(time.Millisecond), interval)
				break
			}
		}
		p.checkClosedForGood(t, tChange)
	}
}

// firstDeliveryAfterPropagation waits, up to 10 s past valid, for the
// first message Exchange takes after the rotation at change, and fails
// the test if it came before the new secret propagated at valid, or more
// than 3 s after.
func (f *incFleet) firstDeliveryAfterPropagation(t *testing.T, change, valid time.Time) {
	t.Helper()
	var first time.Time
	incWait(t, time.Until(valid)+10*time.Second, "a delivery after the propagation", func() bool {
		for _, r := range f.sim.Received() {
			if r.Started.After(change) {
				first = r.Started
				return true
			}
		}
		return false
	})
	if first.Before(valid) {
		t.Fatalf("delivered %v before the secret propagated", valid.Sub(first))
	}
	late := first.Sub(valid)
	t.Logf("propagation end to first delivery: %v", late.Round(time.Millisecond))
	if late > 3*time.Second {
		t.Errorf("first delivery %v after the propagation ended, want within 3s", late.Round(time.Millisecond))
	}
}

// checkClosedForGood fails the test unless the poller saw the breaker
// closed after from, and never open again after that.
func (p *incPoller) checkClosedForGood(tb testing.TB, from time.Time) {
	tb.Helper()
	closed, ok := p.first(from, isClosed)
	if !ok {
		tb.Errorf("relay-%d never showed the breaker closed after the rotation", p.relay+1)
		return
	}
	for _, o := range p.between(closed.at, time.Now()) {
		if isOpen(o.st) {
			tb.Errorf("relay-%d: the breaker opened again at %v (%s)", p.relay+1, o.at.Sub(from).Round(time.Millisecond), o.st.Reason)
			return
		}
	}
}

// TestOverlappingSecrets: the app holds two secrets and the relays are
// given both (client_secret_files). The one in use expires while mail
// flows: the relays move to the other without a failed send, so no
// message is held and the breaker never changes state.
func TestOverlappingSecrets(t *testing.T) {
	const total = 120
	var second string
	f := startIncFleet(t, incFleetOptions{mailboxes: 3, edit: func(_ int, config string) string {
		m := regexp.MustCompile(`client_secret_file: "([^"]+)"`).FindStringSubmatch(config)
		if m == nil {
			t.Fatal("no client_secret_file in the relay's configuration")
		}
		second = filepath.Join(filepath.Dir(m[1]), "contoso-second.secret")
		incWriteFile(t, second, incRotated+"\n")
		return strings.Replace(config, m[0], fmt.Sprintf("client_secret_files: [%q, %q]", m[1], second), 1)
	}})
	f.sim.AddSecret(incTenant, incClientID, sim.Secret{Value: incRotated, ExpiresAt: time.Now().Add(180 * 24 * time.Hour)})
	polls := f.pollBreaker(incCred)
	sub := f.startSubmitter(4, func(n int) string { return f.mailboxes[n%len(f.mailboxes)] })
	start := time.Now()
	for n := range total {
		sub.submit(n)
		time.Sleep(50 * time.Millisecond)
		if n == total/3 {
			// The first secret, the one in use, expires now. After a
			// pause the relays' connections have closed and their
			// tokens are due: the next sends need a new token.
			if !f.sim.SetSecretEnd(incTenant, incClientID, incSecret, time.Now()) {
				t.Fatal("the simulator does not know the first secret")
			}
			time.Sleep(incQuiet)
		}
	}
	sub.close()
	sub.results(t, total)
	f.waitDelivered(total, 15*time.Second)
	f.checkOnce(total)
	f.checkRunning()

	refused := f.counters().TokenErrors
	if refused == 0 {
		t.Error("the simulator refused no token request: the expired secret was never tried")
	}
	moved := 0
	for _, r := range f.relays {
		moved += len(r.logLines("client secret in use changed"))
	}
	if moved == 0 {
		t.Error("no relay logged that it moved to the second secret")
	}
	for _, p := range polls {
		p.checkErrors(t)
		for _, o := range p.between(start, time.Now()) {
			if o.st.State != "closed" || o.st.Generation != 0 || o.st.HeldMessages != 0 {
				t.Errorf("relay-%d: breaker %s, generation %d, %d held at %v; want closed, no transition, none held",
					p.relay+1, o.st.State, o.st.Generation, o.st.HeldMessages, o.at.Sub(start).Round(time.Millisecond))
				break
			}
		}
	}
	t.Logf("token requests refused: %d; relays that moved to the second secret: %d", refused, moved)
}
