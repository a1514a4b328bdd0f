//go:build faults

package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"holdfast/breaker"
	"holdfast/queue"
	"holdfast/queue/redistest"
)

// Rotation through faults: the end of the February 2025 outage in the
// fleet users run, with the faults it meets at once. Three replicas, each
// with its own secret file, take mail from an app that keeps submitting.
// The client secret expires and the credential's breaker opens; the mail
// is held. The secret is rotated at Entra (the old one deleted), and then:
//
//   - Redis hangs (SIGSTOP) for rotationHang;
//   - the new secret reaches relay 1's file while Redis hangs, so relay 1
//     cannot ask the fleet for a probe;
//   - relay 1 is killed (SIGKILL) and started again while Redis still
//     hangs, so it starts without Redis and forgets what it could not do;
//   - Redis comes back; the held mail must be flowing within firstWithin;
//   - once the breaker closed, relay 3, still on the old secret, is killed
//     and started again while mail flows;
//   - the new secret reaches relay 2's file, then relay 3's, rotationStagger
//     apart.
//
// Nothing acknowledged is lost or bounced; duplicates stay within what
// was leased at the kills; no 250 is given while Redis hangs; the breaker,
// once closed, stays closed; and a relay process on the old secret sends
// at most one refused token request.
func TestFaultRotationThroughFaults(t *testing.T) {
	const (
		before          = 50
		rate            = 25 // submitted a second from the expiry on
		rotationHang    = 6 * time.Second
		rotationStagger = 10 * time.Second
		firstWithin     = 5 * time.Second
		drainMax        = 60 * time.Second
	)
	f := startFaultFleet(t, incFleetOptions{mailboxes: 10, relays: 3, ownSecrets: true,
		edit: func(n int, config string) string {
			return faultConfig{delivery: []string{"lease: 10s"}}.edit(n, incDefaultIntervals(n, config))
		}})
	watch := watchBreaker(t, f, incCred)
	ledger := &faultLedger{}
	s := &faultSender{f: f, ledger: ledger, from: roundRobin(f.mailboxes), timeout: 10 * time.Second}
	s.start(4, 0, before, 0, alternate(3)).wait()
	f.incFleet.waitDelivered(before, 10*time.Second)

	// The secret expires; once the relays' connections and tokens are due
	// for renewal, the app submits at a steady rate until the end.
	f.sim.ExpireSecret(incTenant, incClientID)
	expired := time.Now()
	time.Sleep(incQuiet)
	load := s.start(6, before, 100_000, rate, alternate(3))
	opened := watch.waitFor(t, breaker.Open, time.Now(), 15*time.Second)
	time.Sleep(time.Second) // mail is held a while

	f.sim.RotateSecret(incTenant, incClientID, incRotated)
	rotated := time.Now()
	atRotation := f.counters()
	st, err := f.stats()
	if err != nil {
		t.Fatal(err)
	}
	heldAtRotation := st.Held
	inFlight := int(st.Leased)

	f.redis.Pause(t)
	paused := time.Now()
	incWriteFile(t, f.secretFiles[0], incRotated+"\n")
	incWait(t, 5*time.Second, "relay-1 to see its file change", func() bool {
		_, ok := f.relays[0].logLine("credential file changed; the next token request uses it")
		return ok
	})
	processes := []*incRelay{f.relays[0], f.relays[1], f.relays[2]}
	f.kill(0)
	f.restart(0)
	incSleepUntil(paused.Add(rotationHang))
	f.redis.Resume(t)
	resumed := time.Now()

	first, ok := firstDeliveryAfter(f, resumed, firstWithin)
	if !ok {
		t.Errorf("no delivery within %v of Redis coming back, with relay 1 started again on the new secret", firstWithin)
	}
	closed := watch.waitFor(t, breaker.Closed, resumed, 10*time.Second)

	// Relay 3, still on the old secret, dies while mail flows.
	if st, err := f.stats(); err == nil {
		inFlight += int(st.Leased)
	} else {
		t.Errorf("read the queue before killing relay 3: %v", err)
	}
	f.kill(2)
	f.restart(2)
	f.mu.Lock()
	processes = append(processes, f.relays[0], f.relays[2])
	f.mu.Unlock()

	for i := 1; i < len(f.secretFiles); i++ {
		incSleepUntil(resumed.Add(time.Duration(i) * rotationStagger))
		incWriteFile(t, f.secretFiles[i], incRotated+"\n")
	}
	time.Sleep(2 * time.Second)
	load.stop()
	c, lost, drain, drained := f.outcome(ledger, drainMax)
	end, err := f.stats()
	if err != nil {
		t.Fatal(err)
	}
	refused := f.counters().TokenErrors - atRotation.TokenErrors
	// The refused token requests each relay process logged after the
	// rotation, in the order of processes.
	names := []string{"relay-1 (killed)", "relay-2", "relay-3 (killed)", "relay-1 (started again, new secret)", "relay-3 (started again, old secret)"}
	perProcess := make([]int, len(processes))
	for i, r := range processes {
		perProcess[i] = r.loggedAfter("token request rejected", rotated)
	}
	ackedWhileHung, refusedWhileHung := 0, map[string]int{}
	for _, r := range ledger.all() {
		answered := r.start.Add(r.took)
		if answered.After(paused.Add(200*time.Millisecond)) && answered.Before(resumed) {
			switch {
			case r.acked():
				ackedWhileHung++
			case r.code == 0:
				refusedWhileHung["no reply (relay 1 killed or starting)"]++
			default:
				refusedWhileHung[fmt.Sprintf("%d %s", r.code, r.enhanced)]++
				if r.code != 451 || r.enhanced != "4.3.0" {
					t.Errorf("message %d got %d %s (%s) while Redis hung, want 451 4.3.0", r.n, r.code, r.enhanced, r.err)
				}
			}
		}
	}

	rows := countRows(c)
	rows = append(rows,
		[]string{"expiry to breaker open", ms(opened.Sub(expired))},
		[]string{"held at the rotation", strconv.FormatInt(heldAtRotation, 10)},
		[]string{"Redis hung (SIGSTOP) for", ms(resumed.Sub(paused))},
		[]string{"acknowledged while Redis hung", strconv.Itoa(ackedWhileHung)},
	)
	for _, k := range slices.Sorted(maps.Keys(refusedWhileHung)) {
		rows = append(rows, []string{"  answered " + k, strconv.Itoa(refusedWhileHung[k])})
	}
	rows = append(rows,

		[]string{"Redis back to first delivery", ms(first.Sub(resumed))},
		[]string{"Redis back to breaker closed (seen in Redis)", ms(closed.Sub(resumed))},
		[]string{"kills (SIGKILL)", "2"},
		[]string{"leased at the kills (bound on duplicates)", strconv.Itoa(inFlight)},
		[]string{"refused token requests after the rotation", strconv.Itoa(refused)},
	)
	for i, n := range perProcess {
		rows = append(rows, []string{"  logged by " + names[i], strconv.Itoa(n)})
	}
	rows = append(rows,
		[]string{"dead letters", strconv.FormatInt(end.Dead, 10)},
		[]string{"drained after the load in", fmt.Sprintf("%s (within %v: %v)", ms(drain), drainMax, drained)},
	)
	table(t, "rotation through faults: Redis hung, relays killed, files changed 10 s apart", rows)

	if c.lost > 0 {
		t.Errorf("%d acknowledged messages never delivered, e.g. %v", c.lost, lost[:min(len(lost), 10)])
	}
	if end.Dead > 0 {
		t.Errorf("%d dead letters: an auth outage must hold mail, not bounce it", end.Dead)
	}
	if c.duplicates > inFlight {
		t.Errorf("%d duplicates, more than the %d messages leased at the kills", c.duplicates, inFlight)
	}
	if !drained {
		t.Errorf("the queue did not drain within %v of the end of submission", drainMax)
	}
	if ackedWhileHung > 0 {
		t.Errorf("%d submissions got 250 while Redis hung", ackedWhileHung)
	}
	if heldAtRotation == 0 {
		t.Error("nothing was held at the rotation: the test proves nothing")
	}
	if at, ok := watch.after(breaker.Open, closed); ok {
		t.Errorf("the breaker opened again %v after it closed", at.Sub(closed).Round(time.Millisecond))
	}
	// Relay 2 and relay 3's first process ran on the old secret through
	// the rotation, and relay 3's second process started on it: one
	// refused token request each at most (for the second, its expiry
	// read at start, which tells it that it is stale before its first
	// delivery). Relay 1 had the new secret before it sent any.
	for i, most := range []int{0, 1, 1, 0, 1} {
		if perProcess[i] > most {
			t.Errorf("%s logged %d refused token requests after the rotation, want at most %d", names[i], perProcess[i], most)
		}
	}
	if sum := perProcess[0] + perProcess[1] + perProcess[2] + perProcess[3] + perProcess[4]; refused != sum {
		t.Errorf("Entra refused %d token requests after the rotation, and the relays logged %d", refused, sum)
	}
	f.checkRunning()
}

// breakerWatch samples a breaker's state from Redis every 100 ms.
type breakerWatch struct {
	mu  sync.Mutex
	obs []breakerObs
}

type breakerObs struct {
	at    time.Time
	state breaker.State
}

// startRotationFleet starts the fleet of the rotation cases: three
// relays, each with its own secret file, and a 10 s delivery lease.
func startRotationFleet(t *testing.T, redis ...redistest.Option) *faultFleet {
	t.Helper()
	return startFaultFleet(t, incFleetOptions{mailboxes: 5, relays: 3, ownSecrets: true, redis: redis,
		edit: func(n int, config string) string {
			return faultConfig{delivery: []string{"lease: 10s"}}.edit(n, incDefaultIntervals(n, config))
		}})
}

// rotationHold is a rotation case once its mail is held: the breaker's
// watch, the ledger and the load still submitting, and the queue's totals.
type rotationHold struct {
	watch  *breakerWatch
	ledger *faultLedger
	load   *faultLoad
	st     queue.RouteStats
}

// holdAtExpiry has the app submit before messages and waits for their
// delivery, expires the client secret and, with the app submitting rate
// messages a second from then on, waits for the breaker to open. It reads
// the queue's totals a second after.
func holdAtExpiry(t *testing.T, f *faultFleet, before int, rate float64) rotationHold {
	t.Helper()
	watch := watchBreaker(t, f, incCred)
	ledger := &faultLedger{}
	s := &faultSender{f: f, ledger: ledger, from: roundRobin(f.mailboxes), timeout: 10 * time.Second}
	s.start(3, 0, before, 0, alternate(3)).wait()
	f.incFleet.waitDelivered(before, 10*time.Second)

	f.sim.ExpireSecret(incTenant, incClientID)
	time.Sleep(incQuiet)
	load := s.start(6, before, 100_000, rate, alternate(3))
	watch.waitFor(t, breaker.Open, time.Now(), 15*time.Second)
	time.Sleep(time.Second)
	st, err := f.stats()
	if err != nil {
		t.Fatal(err)
	}
	return rotationHold{watch: watch, ledger: ledger, load: load, st: st}
}

// watchBreaker samples breaker name until the test ends. Reads that fail
// (while Redis hangs) are skipped: the state is in Redis, so it cannot
// change unseen.
func watchBreaker(t *testing.T, f *faultFleet, name string) *breakerWatch {
	w := &breakerWatch{}
	set := breaker.New(f.redis.Client(t), breaker.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			rctx, rcancel := context.WithTimeout(ctx, 300*time.Millisecond)
			st, err := set.Status(rctx, name)
			rcancel()
			if err == nil {
				w.mu.Lock()
				w.obs = append(w.obs, breakerObs{at: time.Now(), state: st.State})
				w.mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return w
}

// after returns the time of the first sample in state taken after from.
func (w *breakerWatch) after(state breaker.State, from time.Time) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, o := range w.obs {
		if o.at.After(from) && o.state == state {
			return o.at, true
		}
	}
	return time.Time{}, false
}

// waitFor waits up to d for a sample in state taken after from.
func (w *breakerWatch) waitFor(t *testing.T, state breaker.State, from time.Time, d time.Duration) time.Time {
	t.Helper()
	var at time.Time
	incWait(t, d, "the breaker "+state.String(), func() bool {
		var ok bool
		at, ok = w.after(state, from)
		return ok
	})
	return at
}

// firstDeliveryAfter waits up to d for a delivery begun after from.
func firstDeliveryAfter(f *faultFleet, from time.Time, d time.Duration) (time.Time, bool) {
	deadline := from.Add(d)
	for {
		var first time.Time
		for _, r := range f.sim.Received() {
			if r.Started.After(from) && (first.IsZero() || r.Started.Before(first)) {
				first = r.Started
			}
		}
		if !first.IsZero() {
			return first, true
		}
		if time.Now().After(deadline) {
			return time.Time{}, false
		}
		time.Sleep(25 * time.Millisecond)
	}
}
