//go:build faults

package main

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"holdfast/breaker"
	"holdfast/queue/redistest"
)

// Rotation while Redis is down: three replicas with their own secret
// files; the secret expires and the breaker (30 s open interval) opens;
// relay 2 is killed (SIGKILL) while it is open; the secret is rotated at
// Entra and Redis is killed (SIGKILL); while Redis is down relay 1's and
// relay 2's files change and relay 2 is started again; Redis is started
// again from its AOF after redisDown; relay 3's file changes
// relay3After later. The held mail flows within firstWithin of Redis
// coming back; nothing acknowledged is lost or dead; duplicates stay
// within what was leased at the kill; the breaker, once closed, stays
// closed.
func TestFaultRotationRedisDown(t *testing.T) {
	const (
		before      = 30
		rate        = 10
		redisDown   = 5 * time.Second
		relay3After = 5 * time.Second
		firstWithin = 5 * time.Second
		drainMax    = 60 * time.Second
	)
	f := startRotationFleet(t, redistest.WithArgs("--appendfsync", "always"))
	h := holdAtExpiry(t, f, before, rate)
	watch, held, leased := h.watch, h.st.Held, int(h.st.Leased)
	f.kill(1)

	f.sim.RotateSecret(incTenant, incClientID, incRotated)
	f.redis.Kill(t)
	down := time.Now()
	incWriteFile(t, f.secretFiles[0], incRotated+"\n")
	incWriteFile(t, f.secretFiles[1], incRotated+"\n")
	f.restart(1)
	incSleepUntil(down.Add(redisDown))
	f.redis.Restart(t)
	back := time.Now()

	first, ok := firstDeliveryAfter(f, back, firstWithin)
	closed := watch.waitFor(t, breaker.Closed, back, 15*time.Second)
	incSleepUntil(back.Add(relay3After))
	incWriteFile(t, f.secretFiles[2], incRotated+"\n")
	time.Sleep(3 * time.Second)
	h.load.stop()
	c, lost, drain, drained := f.outcome(h.ledger, drainMax)
	end, err := f.stats()
	if err != nil {
		t.Fatal(err)
	}
	rows := countRows(c)
	rows = append(rows,
		[]string{"held at the rotation", strconv.FormatInt(held, 10)},
		[]string{"leased at the kill (bound on duplicates)", strconv.Itoa(leased)},
		[]string{"Redis down (SIGKILL) for", ms(back.Sub(down))},
	)
	if ok {
		rows = append(rows, []string{"Redis back to first delivery", ms(first.Sub(back))})
	} else {
		rows = append(rows, []string{"Redis back to first delivery", "none within " + firstWithin.String()})
	}
	rows = append(rows,
		[]string{"Redis back to breaker closed (seen in Redis)", ms(closed.Sub(back))},
		[]string{"dead letters", strconv.FormatInt(end.Dead, 10)},
		[]string{"drained after the load in", fmt.Sprintf("%s (within %v: %v)", ms(drain), drainMax, drained)},
	)
	table(t, "rotation while Redis is down, a relay killed while the breaker was open", rows)

	if held == 0 {
		t.Error("nothing was held at the rotation: the test proves nothing")
	}
	if !ok {
		t.Errorf("no delivery within %v of Redis coming back", firstWithin)
	}
	if c.lost > 0 {
		t.Errorf("%d acknowledged messages never delivered, e.g. %v", c.lost, lost[:min(len(lost), 10)])
	}
	if end.Dead > 0 {
		t.Errorf("%d dead letters", end.Dead)
	}
	if c.duplicates > leased {
		t.Errorf("%d duplicates, more than the %d leased at the kill", c.duplicates, leased)
	}
	if !drained {
		t.Errorf("the queue did not drain within %v of the end of submission", drainMax)
	}
	if at, ok := watch.after(breaker.Open, closed); ok {
		t.Errorf("the breaker opened again %v after it closed", at.Sub(closed).Round(time.Millisecond))
	}
	f.checkRunning()
}
