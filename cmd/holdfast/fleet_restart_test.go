package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"holdfast/breaker"
	"holdfast/cmd/o365sim/sim"
)

// TestRedeployAfterRotation: the end of the February 2025 outage, the
// secret rotated and every relay redeployed with it. The relays stop
// while the credential's breaker is open, its next probe most of an open
// interval away, and start again with the new secret in their files: a
// relay that starts with a secret other than the one whose failure
// opened the breaker probes at once, so the held mail is delivered
// within 5 s of the start, not at the next probe.
func TestRedeployAfterRotation(t *testing.T) {
	const before, outage = 10, 30
	f := startExpiredFleet(t, before, outage)

	for _, r := range f.relays {
		r.stop(t)
	}
	f.sim.RotateSecret(incTenant, incClientID, incRotated)
	for _, path := range f.secretFiles {
		incWriteFile(t, path, incRotated+"\n")
	}
	start := time.Now()
	for i := range f.relays {
		f.restart(i)
	}
	f.waitDelivered(before+outage, 5*time.Second)
	t.Logf("relays started to the held mail delivered: %v", time.Since(start).Round(time.Millisecond))
	time.Sleep(300 * time.Millisecond) // room for a duplicate to show
	f.checkOnce(before + outage)
}

// TestRedeployDuringPropagation: the usual rotation on Kubernetes, the
// Secret updated and the pods restarted one by one, while Entra still
// propagates the new secret (refusing it with AADSTS7000215). Relay 1
// starts with the new secret in its file; relay 2 keeps the old one. The
// probe relay 1 makes at start is refused as the secret propagates: it is
// retried on the short schedule a relay that saw its file change while
// running uses, and the open interval does not double. So the held mail
// is delivered within 3 s of the propagation's end, not at a doubled
// interval's probe a minute later.
func TestRedeployDuringPropagation(t *testing.T) {
	const (
		before, outage = 10, 20
		propagation    = 15 * time.Second
	)
	f := startExpiredFleet(t, before, outage)

	f.relays[0].stop(t)
	tChange := time.Now()
	tValid := tChange.Add(propagation)
	f.sim.AddSecret(incTenant, incClientID, sim.Secret{Value: incRotated,
		ExpiresAt: tChange.Add(180 * 24 * time.Hour), ValidFrom: tValid})
	incWriteFile(t, f.secretFiles[0], incRotated+"\n")
	f.restart(0)
	polls := f.pollBreaker(incCred)

	f.firstDeliveryAfterPropagation(t, tChange, tValid)
	f.waitDelivered(before+outage, 15*time.Second)
	time.Sleep(300 * time.Millisecond) // room for a duplicate to show
	f.checkOnce(before + outage)
	for _, p := range polls {
		p.checkErrors(t)
		for _, o := range p.between(tChange, tValid) {
			if o.st.State == "open" && o.st.ProbeInterval != "30s" {
				t.Errorf("relay-%d: probe interval %s at %v after the restart, want 30s as before",
					p.relay+1, o.st.ProbeInterval, o.at.Sub(tChange).Round(time.Millisecond))
				break
			}
		}
	}
}

// startExpiredFleet starts two relays, each with its own secret file and
// the default open interval; delivers messages 0…before-1; then expires
// the secret, submits the next outage messages, each answered 250, and
// waits for the credential's breaker to open for 30 s.
func startExpiredFleet(t *testing.T, before, outage int) *incFleet {
	t.Helper()
	f := startIncFleet(t, incFleetOptions{mailboxes: 5, relays: 2, ownSecrets: true, edit: incDefaultIntervals})
	set := breaker.New(f.redis.Client(t), breaker.Options{})
	sub := f.startSubmitter(2, func(n int) string { return f.mailboxes[n%len(f.mailboxes)] })
	for n := range before {
		sub.submit(n)
	}
	f.waitDelivered(before, 10*time.Second)
	f.sim.ExpireSecret(incTenant, incClientID)
	time.Sleep(incQuiet)
	for n := before; n < before+outage; n++ {
		sub.submit(n)
	}
	incWait(t, 15*time.Second, "the credential's breaker open", func() bool {
		st, err := set.Status(t.Context(), incCred)
		return err == nil && st.State == breaker.Open && st.Interval == 30*time.Second
	})
	sub.close()
	sub.results(t, before+outage)
	return f
}

// incDefaultIntervals gives a relay's configuration the default open
// interval, not the harness's short one.
func incDefaultIntervals(_ int, config string) string {
	return strings.Replace(config, fmt.Sprintf("open_interval: %s\n  max_interval: %s", incOpenInterval, incMaxInterval),
		"open_interval: 30s\n  max_interval: 5m", 1)
}

// TestRotationWhileRedisHung: the credential's breaker is open, and the
// new secret reaches relay 1's file while Redis is stopped (SIGSTOP): the
// relay cannot ask the fleet for a probe then. It asks again once Redis
// answers, so the held mail is delivered within 5 s of Redis coming back,
// not at the breaker's next scheduled probe, 30 s after it opened. Relay 2
// keeps the old secret throughout.
func TestRotationWhileRedisHung(t *testing.T) {
	const before, outage = 10, 20
	f := startExpiredFleet(t, before, outage)
	f.waitHeld(outage, true, 5*time.Second)

	f.sim.RotateSecret(incTenant, incClientID, incRotated)
	f.redis.Pause(t)
	incWriteFile(t, f.secretFiles[0], incRotated+"\n")
	incWait(t, 15*time.Second, "relay-1 failing to ask for a probe", func() bool {
		_, ok := f.relays[0].logLine("cannot request a probe")
		return ok
	})
	time.Sleep(2 * time.Second) // Redis stays away a while longer
	f.redis.Resume(t)
	resumed := time.Now()
	f.waitDelivered(before+outage, 5*time.Second)
	t.Logf("Redis back to the held mail delivered: %v", time.Since(resumed).Round(time.Millisecond))
	time.Sleep(300 * time.Millisecond) // room for a duplicate to show
	f.checkOnce(before + outage)
}

// TestRotationProberKilled: three relays, each with its own secret file.
// The secret expires and the credential's breaker opens, holding the mail;
// then the secret is rotated at Entra (the old one deleted) and the new
// one reaches the relays' files one at a time, rotationStagger apart, as
// in TestStaggeredRotation. While relay 1's probe with the new secret is
// stalled in SMTP AUTH (the simulator's AuthDelay), relay 1 is killed
// with SIGKILL and started again at once with the same, new, file: the
// probe it held dies with it. The fleet must not wait out the dead
// prober's lease: the first delivery comes within 5 s of the first file
// change, every message is delivered exactly once, a relay still on the
// old secret sends at most one refused token request, and the breaker,
// once closed, stays closed.
func TestRotationProberKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("a fleet test of about a minute")
	}
	const (
		before, outage = 30, 60
		// rotationStagger separates the changes of the three files.
		rotationStagger = 20 * time.Second
		// authStall is how long the simulator takes to answer each SMTP
		// AUTH while relay 1 probes: its probe is cut in the middle.
		authStall = 2 * time.Second
		// probing is how long after relay 1 logs its file change it is
		// killed: its probe has its token and waits on AUTH by then.
		probing = 500 * time.Millisecond
		// firstWithin bounds the first file change to the first delivery:
		// relay 1, started again, takes over the probe its killed process
		// held, rather than wait for the lease to lapse.
		firstWithin = 5 * time.Second
		during      = 100 // submitted from the rotation on, one every 0.5 s
	)
	f := startIncFleet(t, incFleetOptions{mailboxes: 5, relays: 3, ownSecrets: true})
	// Mail is submitted to relays 2 and 3 and the breaker read from them:
	// they run throughout, while relay 1's process is replaced (and the
	// harness reads f.relays without a lock, so the submitter and the
	// pollers get a fleet of their own that the restart does not touch).
	up := &incFleet{tb: t, http: f.http, relays: []*incRelay{f.relays[1], f.relays[2]}}
	polls := up.pollBreaker(incCred)
	for _, p := range polls {
		p.relay++ // numbered as in f, for the messages
	}
	sub := up.startSubmitter(4, func(n int) string { return f.mailboxes[n%len(f.mailboxes)] })
	f.expireUntilOpen(sub, polls, before, outage, nil)
	f.waitHeld(before+outage-f.delivered(), true, 5*time.Second)

	f.sim.RotateSecret(incTenant, incClientID, incRotated)
	atRotation, rotatedAt := f.counters(), time.Now()
	feed := make(chan struct{})
	go func() {
		defer close(feed)
		for i := range during {
			sub.submit(before + outage + i)
			time.Sleep(500 * time.Millisecond)
		}
	}()

	// Relay 1's file changes while AUTH stalls; relay 1 dies mid-probe.
	f.sim.SetFault(sim.Fault{AuthDelay: authStall})
	incWriteFile(t, f.secretFiles[0], incRotated+"\n")
	t0 := time.Now()
	const changed = "credential file changed; the next token request uses it"
	incWait(t, 5*time.Second, "relay-1 to see its file change", func() bool {
		_, ok := f.relays[0].logLine(changed)
		return ok
	})
	time.Sleep(probing)
	killed := f.killAndRestart(0)
	f.sim.SetFault(sim.Fault{})
	t.Logf("relay-1 killed %v after its file changed, and started again", time.Since(t0).Round(time.Millisecond))
	if _, ok := killed.logLine("breaker probed"); ok {
		t.Fatal("relay-1 finished its probe before it was killed: the test proves nothing")
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("relay-1 logs until it was killed:\n%s", incLogExcerpt(killed.out.String()))
		}
	})

	for i := 1; i < len(f.secretFiles); i++ {
		incSleepUntil(t0.Add(time.Duration(i) * rotationStagger))
		incWriteFile(t, f.secretFiles[i], incRotated+"\n")
	}
	<-feed
	sub.close()
	total := before + outage + during
	sub.results(t, total)
	f.waitDelivered(total, 15*time.Second)
	time.Sleep(300 * time.Millisecond) // room for a duplicate to show
	f.checkOnce(total)
	f.checkEmpty(t.Context())
	f.checkRunning()

	// The first delivery after the first file change: within firstWithin.
	var first time.Time
	for _, r := range f.sim.Received() {
		if r.Started.After(t0) && (first.IsZero() || r.Started.Before(first)) {
			first = r.Started
		}
	}
	t.Logf("first file change to first delivery: %v", first.Sub(t0).Round(time.Millisecond))
	if lag := first.Sub(t0); lag > firstWithin {
		t.Errorf("first delivery %v after the first file change, want within %v: the killed prober's lease held the probe",
			lag.Round(time.Millisecond), firstWithin)
	}
	// Never open again once closed after the first file change.
	for _, p := range polls {
		p.checkErrors(t)
		p.checkClosedForGood(t, t0)
	}
	// One refused token request at most for each relay still on the old
	// secret, besides the breaker's scheduled probes that a relay still on
	// it made between the rotation at Entra and the first working probe
	// (on a loaded machine the open interval can end in that window; each
	// such probe is one request for the fleet, not one per relay).
	probes := 0
	for _, r := range append([]*incRelay{killed}, f.relays...) {
		for _, line := range r.logLines("breaker probed") {
			var l incLogEntry
			if strings.Contains(line, `"ok":false`) && json.Unmarshal([]byte(line), &l) == nil && l.Time.After(rotatedAt) {
				probes++
			}
		}
	}
	refused := f.counters().TokenErrors - atRotation.TokenErrors
	t.Logf("refused token requests after the rotation: %d, of which failed probes at most %d", refused, probes)
	if stale := len(f.relays) - 1; refused > stale+probes {
		t.Errorf("%d refused token requests after the rotation, want at most %d (one per stale relay) and %d failed probes",
			refused, stale, probes)
	}
}

// killAndRestart sends SIGKILL to relay i, waits for it to exit and
// starts it again at once with its configuration. It returns the killed
// process, whose logs stay readable.
func (f *incFleet) killAndRestart(i int) *incRelay {
	f.tb.Helper()
	r := f.kill(i)
	f.restart(i)
	return r
}

// kill sends SIGKILL to relay i and waits for it to exit. It returns the
// killed process, whose logs stay readable.
func (f *incFleet) kill(i int) *incRelay {
	r := f.relays[i]
	_ = r.cmd.Process.Kill()
	<-r.exited
	r.stopOnce.Do(func() {}) // killed on purpose: no SIGTERM check
	return r
}

// TestStartWithoutRedis: relay 2 is started again while Redis is down
// (killed with SIGKILL), or hung (SIGSTOP), as a pod rescheduled during a
// Redis outage is. It must start and wait rather than exit: /healthz
// answers 200, /readyz answers 503 saying why, and a submission to it is
// refused with 451 4.3.0, never 250. Once Redis is back, relay 2 becomes
// ready within a few seconds by itself, and mail submitted to both relays
// is delivered exactly once.
func TestStartWithoutRedis(t *testing.T) {
	for _, mode := range []string{"down", "hung"} {
		t.Run(mode, func(t *testing.T) {
			const before, after = 10, 20
			f := startIncFleet(t, incFleetOptions{mailboxes: 5, relays: 2})
			from := func(n int) string { return f.mailboxes[n%len(f.mailboxes)] }
			sub := f.startSubmitter(2, from)
			for n := range before {
				sub.submit(n)
			}
			sub.close()
			sub.results(t, before)
			f.waitDelivered(before, 10*time.Second)

			f.relays[1].stop(t)
			if mode == "down" {
				f.redis.Kill(t)
			} else {
				f.redis.Pause(t)
			}
			f.restart(1)
			get := func(i int, path string) (int, string) { return f.relays[i].opsGet(t, f.http, path) }
			if code, body := get(1, "/healthz"); code != http.StatusOK {
				t.Errorf("/healthz while Redis is %s: %d %s, want 200", mode, code, body)
			}
			if code, body := get(1, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(strings.ToLower(body), "redis") {
				t.Errorf("/readyz while Redis is %s: %d %q, want 503 naming Redis", mode, code, body)
			}
			probe := &incSubmitter{f: f}
			c, err := probe.dial(1)
			if err != nil {
				t.Fatalf("relay-2 while Redis is %s: %v", mode, err)
			}
			_, err = probe.send(c, before, from(before))
			c.Close()
			var se *smtp.SMTPError
			if !errors.As(err, &se) || se.Code != 451 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 0}) {
				t.Errorf("a submission to relay-2 while Redis is %s: %v, want 451 4.3.0", mode, err)
			}

			if mode == "down" {
				f.redis.Restart(t)
			} else {
				f.redis.Resume(t)
			}
			back := time.Now()
			incWait(t, 15*time.Second, "relay-2 ready", func() bool {
				code, _ := get(1, "/readyz")
				return code == http.StatusOK
			})
			t.Logf("Redis back to relay-2 ready: %v", time.Since(back).Round(time.Millisecond))
			// Relay 1 ran through the outage: its Redis client retries
			// its dials once a second.
			incWait(t, 15*time.Second, "relay-1 ready", func() bool {
				code, _ := get(0, "/readyz")
				return code == http.StatusOK
			})
			t.Logf("Redis back to both relays ready: %v", time.Since(back).Round(time.Millisecond))
			sub = f.startSubmitter(2, from)
			for n := before; n < before+after; n++ {
				sub.submit(n)
			}
			sub.close()
			subs := sub.results(t, after)
			toRelay2 := 0
			for _, s := range subs {
				if s.relay == 1 {
					toRelay2++
				}
			}
			if toRelay2 == 0 {
				t.Error("no message was submitted to relay-2 once Redis was back")
			}
			f.waitDelivered(before+after, 15*time.Second)
			time.Sleep(300 * time.Millisecond) // room for a duplicate to show
			f.checkOnce(before + after)
		})
	}
}

// opsGet gets path from the relay's ops listener, read from its start
// line, and returns the status and body (0 and the error when the
// request failed).
func (r *incRelay) opsGet(tb testing.TB, c *http.Client, path string) (int, string) {
	tb.Helper()
	line, _ := r.logLine("holdfast started")
	var l struct {
		Ops string `json:"ops"`
	}
	if err := json.Unmarshal([]byte(line), &l); err != nil || l.Ops == "" {
		tb.Fatalf("%s: cannot read the ops address from %s (%v)", r.name, line, err)
	}
	resp, err := c.Get("http://" + l.Ops + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestRedisDownLogs: while Redis is down, every loop of a relay that
// polls it fails the same way several times a second. The relay says so
// (a warning of each kind at once) without writing each failure: at most
// 40 warnings and errors in 12 s, where a line per failure is about 110.
// Once Redis is back, one line says that delivery goes on, and for how
// long it could not read the queue.
func TestRedisDownLogs(t *testing.T) {
	f := startIncFleet(t, incFleetOptions{mailboxes: 5, relays: 1})
	r := f.relays[0]
	time.Sleep(time.Second)
	from := len(r.out.String())
	f.redis.Kill(t)
	time.Sleep(12 * time.Second)
	logs := r.out.String()[from:]
	kinds := map[string]int{}
	total := 0
	for _, line := range strings.Split(logs, "\n") {
		var l struct{ Level, Msg string }
		if json.Unmarshal([]byte(line), &l) != nil || (l.Level != "WARN" && l.Level != "ERROR") {
			continue
		}
		kinds[l.Msg]++
		total++
	}
	t.Logf("warnings and errors in 12 s with Redis down: %d, by message: %v", total, kinds)
	if kinds["cannot read due routes"] == 0 {
		t.Error("the relay did not say that it cannot read the queue")
	}
	if total > 40 {
		t.Errorf("%d warnings and errors in 12 s with Redis down, want at most 40", total)
	}
	f.redis.Restart(t)
	incWait(t, 10*time.Second, "the relay saying that delivery goes on", func() bool {
		_, ok := r.logLine("due routes read again; delivery goes on")
		return ok
	})
	line, _ := r.logLine("due routes read again; delivery goes on")
	var l struct {
		FailingFor  time.Duration `json:"failing_for"`
		FailedReads int           `json:"failed_reads"`
	}
	if err := json.Unmarshal([]byte(line), &l); err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	// Redis was away 12 s and more; the first read to fail may end a
	// second or two after the kill, as the Redis client dials again.
	if l.FailingFor < 9*time.Second || l.FailingFor > 30*time.Second || l.FailedReads <= kinds["cannot read due routes"] {
		t.Errorf("%s: want failing_for between 9 s and 30 s, and more failed reads than the %d lines written",
			line, kinds["cannot read due routes"])
	}
	t.Logf("after Redis came back: %s", line)
}
