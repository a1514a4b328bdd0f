//go:build faults

package main

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"holdfast/breaker"
	"holdfast/cmd/o365sim/sim"
)

// Rotation ahead of the expiry, as Microsoft advises it: a new secret is
// added to the app while the old one still works, and written into the
// three relays' files while mail flows at 2 messages a second (so the
// relays' connections close and their tokens are renewed meanwhile):
//
//   - propagating: the files change at once, filesApart apart, while
//     Entra still refuses the new secret (AADSTS7000215) for propagate,
//     and the old one works throughout;
//   - old deleted: the new secret works at once; relay 1's file changes,
//     then the old secret is deleted while relays 2 and 3, still on it,
//     hold tokens got with it; their files change lateApart apart after.
//
// Either way one relay at least can send at every moment, so nothing is
// to be held: the breaker never opens, and no message waits more than
// proactiveLatency from its submission to its delivery.
func TestFaultProactiveRotation(t *testing.T) {
	const (
		propagate  = 15 * time.Second
		filesApart = 2 * time.Second
		lateApart  = 6 * time.Second
	)
	t.Run("propagating", func(t *testing.T) {
		proactiveRotation(t, func(f *faultFleet) {
			added := time.Now()
			f.sim.AddSecret(incTenant, incClientID, sim.Secret{Value: incRotated,
				ExpiresAt: added.Add(180 * 24 * time.Hour), ValidFrom: added.Add(propagate)})
			for i, path := range f.secretFiles {
				incSleepUntil(added.Add(time.Duration(i)*filesApart + 500*time.Millisecond))
				incWriteFile(t, path, incRotated+"\n")
			}
			incSleepUntil(added.Add(propagate + 5*time.Second))
		})
	})
	t.Run("old deleted", func(t *testing.T) {
		proactiveRotation(t, func(f *faultFleet) {
			added := time.Now()
			f.sim.AddSecret(incTenant, incClientID, sim.Secret{Value: incRotated, ExpiresAt: added.Add(180 * 24 * time.Hour)})
			incWriteFile(t, f.secretFiles[0], incRotated+"\n")
			time.Sleep(time.Second)
			f.sim.RotateSecret(incTenant, incClientID, incRotated) // the old one deleted
			deleted := time.Now()
			for i, path := range f.secretFiles[1:] {
				incSleepUntil(deleted.Add(time.Duration(i+1) * lateApart))
				incWriteFile(t, path, incRotated+"\n")
			}
			time.Sleep(3 * time.Second)
		})
	})
}

// proactiveRotation runs rotate while mail flows through three relays
// that each have their own secret file, and checks that nothing waited.
func proactiveRotation(t *testing.T, rotate func(f *faultFleet)) {
	const (
		before           = 30
		rate             = 2
		proactiveLatency = 5 * time.Second
		drainMax         = 90 * time.Second
	)
	f := startFaultFleet(t, incFleetOptions{mailboxes: 5, relays: 3, ownSecrets: true,
		edit: func(n int, config string) string {
			config = strings.Replace(incDefaultIntervals(n, config), "backoff_base: "+incBackoff.String(), "backoff_base: 1m", 1)
			return faultConfig{delivery: []string{"lease: 10s"}}.edit(n, config)
		}})
	watch := watchBreaker(t, f, incCred)
	ledger := &faultLedger{}
	s := &faultSender{f: f, ledger: ledger, from: roundRobin(f.mailboxes), timeout: 10 * time.Second}
	s.start(3, 0, before, 0, alternate(3)).wait()
	f.incFleet.waitDelivered(before, 10*time.Second)
	load := s.start(6, before, 100_000, rate, alternate(3))
	time.Sleep(2 * time.Second)

	began := time.Now()
	atStart := f.counters()
	rotate(f)
	load.stop()
	c, lost, drain, drained := f.outcome(ledger, drainMax)
	end, err := f.stats()
	if err != nil {
		t.Fatal(err)
	}

	// Each message's wait, from its 250 to Exchange taking it.
	started := map[int]time.Time{}
	for _, r := range f.sim.Received() {
		id := strings.TrimSuffix(strings.TrimPrefix(r.MessageID, "<incident-"), "@holdfast.test>")
		if n, err := strconv.Atoi(id); err == nil {
			if at, ok := started[n]; !ok || r.Started.Before(at) {
				started[n] = r.Started
			}
		}
	}
	var waits []time.Duration
	late := 0
	for n, r := range ledger.acked() {
		if at, ok := started[n]; ok && n >= before {
			w := at.Sub(r.start.Add(r.took))
			waits = append(waits, w)
			if w > proactiveLatency {
				late++
			}
		}
	}
	opened, reopened := watch.after(breaker.Open, began)
	rows := countRows(c)
	rows = append(rows,
		[]string{"refused token requests (Entra)", strconv.Itoa(f.counters().TokenErrors - atStart.TokenErrors)},
		[]string{"submission to delivery, p50", ms(percentile(waits, 50))},
		[]string{"submission to delivery, p99", ms(percentile(waits, 99))},
		[]string{"submission to delivery, max", ms(percentile(waits, 100))},
		[]string{"messages waiting more than " + proactiveLatency.String(), strconv.Itoa(late)},
	)
	if reopened {
		rows = append(rows, []string{"breaker opened", ms(opened.Sub(began)) + " after the rotation began"})
	}
	rows = append(rows,
		[]string{"dead letters", strconv.FormatInt(end.Dead, 10)},
		[]string{"drained after the load in", fmt.Sprintf("%s (within %v: %v)", ms(drain), drainMax, drained)},
	)
	table(t, "rotation ahead of the expiry: "+t.Name(), rows)

	if c.lost > 0 {
		t.Errorf("%d acknowledged messages never delivered, e.g. %v", c.lost, lost[:min(len(lost), 10)])
	}
	if end.Dead > 0 {
		t.Errorf("%d dead letters", end.Dead)
	}
	if c.duplicates > 0 {
		t.Errorf("%d duplicates with no relay killed", c.duplicates)
	}
	if reopened {
		t.Errorf("the breaker opened %v after the rotation began, with a secret working", opened.Sub(began).Round(time.Millisecond))
	}
	if late > 0 {
		t.Errorf("%d messages waited more than %v for delivery (max %v), with a secret working",
			late, proactiveLatency, percentile(waits, 100).Round(time.Millisecond))
	}
	f.checkRunning()
}
