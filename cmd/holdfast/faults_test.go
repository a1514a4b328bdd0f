//go:build faults

package main

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
	"holdfast/queue/redistest"
	"holdfast/relay"
)

// The fault suite: "make test-faults". Each case runs real relay
// processes (re-executions of this test binary), a real redis-server and
// the simulator, all on loopback, injects one kind of fault, checks what
// the issue requires and logs a table of figures. Everything is bounded
// in count and time, and stopped by PID.

// faultConfig rewrites a relay configuration of the incident harness:
// keys are added at the start of the delivery and exchange sections, and
// the per-mailbox rate replaced.
type faultConfig struct {
	delivery []string // e.g. "lease: 10s"
	exchange []string // e.g. "data_timeout: 3s"
	perMin   int      // exchange.messages_per_minute, 0: the harness's
}

func (c faultConfig) edit(_ int, config string) string {
	for _, k := range c.delivery {
		config = strings.Replace(config, "\ndelivery:\n", "\ndelivery:\n  "+k+"\n", 1)
	}
	for _, k := range c.exchange {
		config = strings.Replace(config, "\nexchange:\n", "\nexchange:\n  "+k+"\n", 1)
	}
	if c.perMin > 0 {
		config = strings.Replace(config, fmt.Sprintf("messages_per_minute: %d", incPerMinute),
			fmt.Sprintf("messages_per_minute: %d", c.perMin), 1)
	}
	return config
}

// roundRobin sends message n from mailbox n%len(boxes).
func roundRobin(boxes []string) func(n int) string {
	return func(n int) string { return boxes[n%len(boxes)] }
}

// Crash: a relay is killed with SIGKILL 20 times, alternating between two
// replicas and restarted each time, while 5,000 messages flow through
// both. Every acknowledged message must be delivered, and duplicates must
// not exceed the messages that were in flight (leased) at the kills.
//
// A killed replica's connection slots expire within seconds (they are
// renewed only while their owner lives), so its mailboxes do not stall.
func TestFaultCrash(t *testing.T) {
	const (
		messages = 5000
		kills    = 20
		drainMax = 60 * time.Second
	)
	f := startFaultFleet(t, incFleetOptions{mailboxes: 10,
		edit: faultConfig{delivery: []string{"lease: 10s"}}.edit})
	ledger := &faultLedger{}
	s := &faultSender{f: f, ledger: ledger, from: roundRobin(f.mailboxes), timeout: 10 * time.Second}
	begin := time.Now()
	load := s.start(10, 1, messages, 200, alternate(2))

	inFlight := 0
	var restartTook []time.Duration
	for k := range kills {
		time.Sleep(600 * time.Millisecond)
		i := k % 2
		if st, err := f.stats(); err == nil {
			inFlight += int(st.Leased)
		} else {
			t.Errorf("kill %d: read the queue: %v", k+1, err)
		}
		f.kill(i)
		at := time.Now()
		f.restart(i)
		restartTook = append(restartTook, time.Since(at))
	}
	killsDone := time.Since(begin)
	load.wait()
	loadDone := time.Since(begin)
	acked := ledger.acked()
	drain, drained := f.waitDrained(acked, drainMax)
	f.settle(10 * time.Second)
	c, lost := f.count(ledger)

	rows := countRows(c)
	rows = append(rows,
		[]string{"kills (SIGKILL)", strconv.Itoa(kills)},
		[]string{"leased at the kills (bound on duplicates)", strconv.Itoa(inFlight)},
		[]string{"restart to listening, median", ms(percentile(restartTook, 50))},
		[]string{"kills done after", ms(killsDone)},
		[]string{"submission done after", ms(loadDone)},
		[]string{"then drained in", fmt.Sprintf("%s (within %v: %v)", ms(drain), drainMax, drained)},
	)
	table(t, "crash: 20 × kill -9 of a replica during 5,000 messages", rows)

	if c.submitted != messages {
		t.Errorf("%d submissions, want %d", c.submitted, messages)
	}
	if c.acked < messages/2 {
		t.Errorf("only %d of %d submissions acknowledged", c.acked, messages)
	}
	if c.lost > 0 {
		t.Errorf("%d acknowledged messages never delivered, e.g. %v", c.lost, lost[:min(len(lost), 10)])
	}
	if c.duplicates > inFlight {
		t.Errorf("%d duplicates, more than the %d messages leased at the kills", c.duplicates, inFlight)
	}
	if !drained {
		t.Errorf("the queue did not drain within %v of the end of submission", drainMax)
	}
}

// Crash leases: two relays with the default delivery.lease and 4 workers
// each deliver 48 messages to a slow Exchange (every reply of its SMTP
// server 400 ms late, a send about 5 s), so that each relay holds leases
// mid-send; one is killed with SIGKILL and not restarted, as a node lost or a pod
// OOM-killed is. The other relay must take the messages the killed one
// had leased within takeMax of the kill, and deliver them within
// deliverMax, as an operator of a Redis job queue expects a crashed
// worker's jobs back well within a minute.
func TestFaultCrashLeases(t *testing.T) {
	const (
		messages   = 48
		takeMax    = 35 * time.Second
		deliverMax = 50 * time.Second
		giveUp     = 3 * time.Minute
	)
	f := startFaultFleet(t, incFleetOptions{mailboxes: 4, edit: faultConfig{delivery: []string{"workers: 4"}}.edit})
	f.sim.SetFault(sim.Fault{SMTPRoundTrip: 400 * time.Millisecond})
	ctx := context.Background()
	ids := make([]string, messages)
	for i := range messages {
		box := f.mailboxes[i%len(f.mailboxes)]
		id, _, err := f.q.Enqueue(ctx, queue.Submission{Route: "app:contoso:" + box, App: "crm",
			From: box, To: []string{"sink@example.org"}, Body: []byte(incMessage(i, box))})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	// Up to 3 sends per mailbox, 12 in all, and 4 per relay: with 6
	// leased, each relay holds 2 or more.
	incWait(t, 30*time.Second, "6 messages leased", func() bool {
		st, err := f.stats()
		return err == nil && st.Leased >= 6
	})
	var leased []string
	for _, box := range f.mailboxes {
		list, err := f.q.List(ctx, "app:contoso:"+box, queue.Leased, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range list {
			leased = append(leased, m.ID)
		}
	}
	f.kill(0)
	killed := time.Now()

	// Each message leased at the kill is delivered by the relay that
	// lives, or taken back when its lease expires (its lost attempt
	// counted) and delivered after; took is when the last was taken back
	// or delivered, delivered when the last was delivered.
	var took, delivered time.Duration
	for {
		if time.Since(killed) > giveUp {
			t.Fatalf("messages leased at the kill still undelivered %v after it", giveUp)
		}
		taken, done := 0, 0
		for _, id := range leased {
			m, err := f.q.Get(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if m.State == queue.Delivered {
				done++
			}
			if m.State == queue.Delivered || m.Attempts > 0 {
				taken++
			}
		}
		if took == 0 && taken == len(leased) {
			took = time.Since(killed)
		}
		if done == len(leased) {
			delivered = time.Since(killed)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	incWait(t, giveUp, "every message delivered", func() bool { return allDelivered(t, f.q, ids) })
	again := 0
	for _, id := range leased {
		if m, err := f.q.Get(ctx, id); err == nil && m.Attempts > 1 {
			again++ // an attempt lost with its lease: the killed relay's
		}
	}
	duplicates := 0
	for _, n := range f.deliveries() {
		duplicates += max(0, n-1)
	}
	table(t, "crash leases: kill -9 of one of two relays mid-send, default delivery.lease", [][]string{
		{"messages", strconv.Itoa(messages)},
		{"leased at the kill", strconv.Itoa(len(leased))},
		{"of which the killed relay's (taken back on expiry)", strconv.Itoa(again)},
		{"kill to the last of them taken back", ms(took)},
		{"kill to the last of them delivered", ms(delivered)},
		{"duplicates", strconv.Itoa(duplicates)},
	})
	if again == 0 {
		t.Fatalf("the killed relay held none of the %d leases: nothing measured", len(leased))
	}
	if took > takeMax {
		t.Errorf("the killed relay's leased messages were taken back %v after the kill, want within %v", took.Round(100*time.Millisecond), takeMax)
	}
	if delivered > deliverMax {
		t.Errorf("the killed relay's leased messages were delivered %v after the kill, want within %v", delivered.Round(100*time.Millisecond), deliverMax)
	}
}

// Redis restart: Redis is killed with SIGKILL mid-ingress and restarted.
// With appendfsync always no acknowledged message may be lost. With
// everysec the loss is measured; it must stay within what was
// acknowledged in the 2 s before the kill (Redis fsyncs every second).
func TestFaultRedisRestart(t *testing.T) {
	for _, fsync := range []string{"always", "everysec"} {
		t.Run(fsync, func(t *testing.T) {
			f := startFaultFleet(t, incFleetOptions{mailboxes: 4,
				redis: []redistest.Option{redistest.WithArgs("--appendfsync", fsync)},
				edit:  faultConfig{delivery: []string{"lease: 10s"}}.edit})
			ledger := &faultLedger{}
			s := &faultSender{f: f, ledger: ledger, from: roundRobin(f.mailboxes), timeout: 15 * time.Second}
			load := s.start(8, 1, 1_000_000, 300, sameRelay(2))
			time.Sleep(3 * time.Second)
			killedAt := time.Now()
			f.redis.Kill(t)
			time.Sleep(time.Second)
			f.redis.Restart(t)
			restartedAt := time.Now()
			time.Sleep(4 * time.Second)
			load.stop()

			c, lost, drain, drained := f.outcome(ledger, 45*time.Second)
			window := 0
			var refusedDuring, ackedAfter int
			for _, r := range ledger.all() {
				end := r.start.Add(r.took)
				if r.acked() && end.After(killedAt.Add(-2*time.Second)) && end.Before(killedAt) {
					window++
				}
				if !r.acked() && end.After(killedAt) && r.start.Before(restartedAt) {
					refusedDuring++
				}
				if r.acked() && r.start.After(restartedAt) {
					ackedAfter++
				}
			}
			rows := countRows(c)
			rows = append(rows,
				[]string{"acknowledged in the 2 s before the kill", strconv.Itoa(window)},
				[]string{"refused or failed while Redis was down", strconv.Itoa(refusedDuring)},
				[]string{"acknowledged after the restart", strconv.Itoa(ackedAfter)},
				[]string{"drained after the load in", fmt.Sprintf("%s (%v)", ms(drain), drained)},
			)
			table(t, "Redis SIGKILL and restart mid-ingress, appendfsync "+fsync, rows)

			if ackedAfter == 0 {
				t.Errorf("no message acknowledged after Redis came back: ingress did not recover")
			}
			switch fsync {
			case "always":
				if c.lost > 0 {
					t.Errorf("appendfsync always: %d acknowledged messages lost, e.g. %v", c.lost, lost[:min(len(lost), 10)])
				}
			default:
				if c.lost > window {
					t.Errorf("appendfsync %s: %d acknowledged messages lost, more than the %d acknowledged in the 2 s before the kill",
						fsync, c.lost, window)
				}
			}
		})
	}
}

// redisOutage makes Redis unavailable for 10 s, down (SIGKILL, then a
// restart from its AOF) or hung (SIGSTOP, then SIGCONT), with a backlog
// being delivered. Ingress must answer 451 4.3.0 and never 250 while
// Redis is away, delivery must pause, and both must recover by
// themselves. answerWithin bounds how long a refusal may take; delivery
// says whether to check that delivery resumes.
func redisOutage(t *testing.T, hung bool, answerWithin time.Duration, delivery bool) {
	const outage = 10 * time.Second
	f := startFaultFleet(t, incFleetOptions{mailboxes: 2,
		redis: []redistest.Option{redistest.WithArgs("--appendfsync", "always")},
		edit:  faultConfig{delivery: []string{"lease: 10s"}, perMin: 600}.edit})
	// A backlog of 400 messages at 2 × 10 a second takes about 20 s.
	backlog := &faultLedger{}
	bs := &faultSender{f: f, ledger: backlog, from: roundRobin(f.mailboxes), timeout: 10 * time.Second}
	bs.start(4, 1, 400, 0, sameRelay(2)).wait()
	time.Sleep(2 * time.Second)

	before, err := f.stats()
	if err != nil {
		t.Fatal(err)
	}
	deliveredBefore := f.delivered()
	if hung {
		f.redis.Pause(t)
	} else {
		f.redis.Kill(t)
	}
	start := time.Now()
	probes := &faultLedger{}
	ps := &faultSender{f: f, ledger: probes, from: roundRobin(f.mailboxes), timeout: 30 * time.Second}
	// One new session every 500 ms to each relay during the outage.
	pload := ps.start(8, 100_000, int(outage/(250*time.Millisecond)), 4, sameRelay(2))
	time.Sleep(outage)
	deliveredDuring := f.delivered() - deliveredBefore
	if hung {
		f.redis.Resume(t)
	} else {
		f.redis.Restart(t)
	}
	back := time.Now()
	pload.stop()

	// Recovery: a submission gets 250 again, and delivery resumes.
	after := &faultLedger{}
	as := &faultSender{f: f, ledger: after, from: roundRobin(f.mailboxes), timeout: 10 * time.Second}
	var firstAck time.Duration
	for n := 200_000; time.Since(back) < 30*time.Second; n++ {
		as.start(1, n, 1, 0, sameRelay(2)).wait()
		if r := after.all(); r[len(r)-1].acked() {
			firstAck = time.Since(back)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	var firstDelivery time.Duration
	for delivery && time.Since(back) < 30*time.Second {
		if f.delivered() > deliveredBefore+deliveredDuring {
			firstDelivery = time.Since(back)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	acked := backlog.acked()
	for n, r := range after.acked() {
		acked[n] = r
	}
	for n, r := range probes.acked() {
		acked[n] = r
	}
	var drain time.Duration
	drained := false
	if delivery {
		drain, drained = f.waitDrained(acked, 60*time.Second)
	}

	var codes = map[string]int{}
	var took []time.Duration
	during := 0
	for _, r := range probes.all() {
		if r.start.After(back) {
			continue
		}
		during++
		key := strconv.Itoa(r.code) + " " + r.enhanced
		if r.code == 0 {
			key = "no reply: " + r.err
		}
		codes[key]++
		took = append(took, r.took)
	}
	what := "down (SIGKILL, restart)"
	if hung {
		what = "hung (SIGSTOP, SIGCONT)"
	}
	rows := [][]string{
		{"outage", outage.String()},
		{"backlog leased when it began", strconv.FormatInt(before.Leased, 10)},
		{"delivered during the outage", strconv.Itoa(deliveredDuring)},
		{"submissions during the outage", strconv.Itoa(during)},
	}
	for k, v := range codes {
		rows = append(rows, []string{"  answered " + k, strconv.Itoa(v)})
	}
	rows = append(rows,
		[]string{"answer time p50 / p99 / max", ms(percentile(took, 50)) + " / " + ms(percentile(took, 99)) + " / " + ms(percentile(took, 100))},
		[]string{"first 250 after Redis returned", ms(firstAck)},
	)
	if delivery {
		rows = append(rows,
			[]string{"first delivery after Redis returned", ms(firstDelivery)},
			[]string{"backlog and later mail drained in", fmt.Sprintf("%s (%v)", ms(drain), drained)},
		)
	}
	table(t, "Redis "+what+" for 10 s", rows)

	if during == 0 {
		t.Fatal("no submission was made during the outage")
	}
	for _, r := range probes.all() {
		if r.start.After(back) {
			continue
		}
		// A submission begun while Redis was away and answered after it
		// came back may be stored (250): what it must never get is a 250
		// while Redis is still away.
		answered := r.start.Add(r.took)
		if r.acked() && answered.Before(back) {
			t.Errorf("message %d got 250 while Redis was away (at +%v)", r.n, answered.Sub(start))
		} else if !r.acked() && (r.code != 451 || r.enhanced != "4.3.0") {
			t.Errorf("message %d got %d %s (%s), want 451 4.3.0", r.n, r.code, r.enhanced, r.err)
		}
		if r.took > answerWithin {
			t.Errorf("message %d: the answer took %v, want at most %v", r.n, r.took, answerWithin)
		}
	}
	if int64(deliveredDuring) > before.Leased {
		t.Errorf("%d messages delivered during the outage, more than the %d leased when it began: delivery did not pause",
			deliveredDuring, before.Leased)
	}
	if firstAck == 0 {
		t.Errorf("no submission acknowledged within 30 s of Redis returning")
	}
	if !delivery {
		return
	}
	if firstDelivery == 0 {
		t.Errorf("no delivery within 30 s of Redis returning")
	}
	if !drained {
		c, lost := f.count(backlog)
		t.Errorf("not drained within 60 s of Redis returning: %d of the backlog lost, e.g. %v", c.lost, lost[:min(len(lost), 10)])
	}
}

// Redis down for 10 s: connections are refused, so every write fails at
// once. Ingress answers 451 4.3.0 and recovers by itself.
func TestFaultRedisDown(t *testing.T) { redisOutage(t, false, 5*time.Second, false) }

// The same outage, checking that delivery resumes by itself and the
// backlog drains. Connection slots whose release failed while Redis was
// down expire within seconds, so no mailbox stalls.
func TestFaultRedisDownDelivery(t *testing.T) {
	redisOutage(t, false, 5*time.Second, true)
}

// Redis hung for 10 s: writes fail with 451 at the ingress deadline
// (redis.ingress_timeout, 3 s) rather than wait for Redis, and never get a
// 250 while Redis is away.
func TestFaultRedisHung(t *testing.T) { redisOutage(t, true, hungAnswerWithin, true) }

// hungAnswerWithin bounds a submission's whole SMTP transaction while
// Redis hangs: the AUTH throttle's look-up (0.5 s), then the write
// deadline (3 s), with room for a loaded machine.
const hungAnswerWithin = 4 * time.Second

// Upstream faults: the simulator refuses connections, greets with 421,
// answers 451 at the end of DATA, stalls after DATA, and the token
// endpoint answers 429 and 503, each for a few seconds while mail flows.
// Deliveries retry, nothing is lost or bounced, and no breaker opens.
func TestFaultUpstream(t *testing.T) {
	const phase = 3 * time.Second
	f := startFaultFleet(t, incFleetOptions{mailboxes: 4, edit: faultConfig{
		delivery: []string{"lease: 10s"},
		exchange: []string{"data_timeout: 2s", "command_timeout: 2s", "connect_timeout: 2s"},
	}.edit})
	ledger := &faultLedger{}
	s := &faultSender{f: f, ledger: ledger, from: roundRobin(f.mailboxes), timeout: 10 * time.Second}
	load := s.start(4, 1, 1_000_000, 40, sameRelay(2))
	time.Sleep(2 * time.Second)

	phases := []struct {
		name  string
		fault sim.Fault
	}{
		{"connections refused", sim.Fault{SMTPDown: true}},
		{"421 at the greeting", sim.Fault{SMTPTransient: "421"}},
		{"451 at the end of DATA", sim.Fault{SMTPTransient: "451"}},
		{"stall after DATA", sim.Fault{SMTPStall: "data"}},
		{"token endpoint 429", sim.Fault{TokenThrottle: 2 * time.Second}},
		{"token endpoint 503", sim.Fault{TokenUnavailable: true}},
	}
	rows := [][]string{{"fault", "delivered during", "token requests", "token errors", "SMTP auth attempts"}}
	for _, p := range phases {
		d0, c0 := f.delivered(), f.counters()
		f.sim.SetFault(p.fault)
		time.Sleep(phase)
		f.sim.SetFault(sim.Fault{})
		d1, c1 := f.delivered(), f.counters()
		rows = append(rows, []string{p.name, strconv.Itoa(d1 - d0),
			strconv.Itoa(c1.TokenRequests - c0.TokenRequests), strconv.Itoa(c1.TokenErrors - c0.TokenErrors),
			strconv.Itoa(c1.SMTPAuthAttempts - c0.SMTPAuthAttempts)})
		time.Sleep(time.Second)
	}
	load.stop()
	acked := ledger.acked()
	drain, drained := f.waitDrained(acked, 60*time.Second)
	st, _ := f.stats()
	c, lost := f.count(ledger)
	opens := f.breakerOpens(f.relays)
	table(t, fmt.Sprintf("upstream faults, %v each, 40 msg/s submitted", phase), rows)
	crow := countRows(c)
	crow = append(crow,
		[]string{"dead letters", strconv.FormatInt(st.Dead, 10)},
		[]string{"held", strconv.FormatInt(st.Held, 10)},
		[]string{"breaker openings logged", strconv.Itoa(opens)},
		[]string{"drained after the last fault in", fmt.Sprintf("%s (%v)", ms(drain), drained)},
	)
	table(t, "upstream faults: outcome", crow)

	if c.refused > 0 {
		t.Errorf("%d submissions refused: upstream faults must not reach ingress", c.refused)
	}
	if c.lost > 0 {
		t.Errorf("%d acknowledged messages not delivered, e.g. %v", c.lost, lost[:min(len(lost), 10)])
	}
	if st.Dead > 0 || st.Held > 0 {
		t.Errorf("%d dead and %d held after transient upstream faults, want none", st.Dead, st.Held)
	}
	if opens > 0 {
		t.Errorf("%d breaker openings after transient upstream faults, want none", opens)
	}
	if c.duplicates > 0 {
		t.Errorf("%d duplicates: the simulator records no message it did not answer 250", c.duplicates)
	}
}

// Isolation: one mailbox stalls after DATA (each of its deliveries hangs
// for the relay's data timeout, 5 minutes) while 600 messages for three other
// mailboxes are submitted. Ingress stays fast and the other mailboxes
// drain as if the stalled one were not there.
func TestFaultIsolation(t *testing.T) {
	f := startFaultFleet(t, incFleetOptions{mailboxes: 4})
	// The stalled sessions end when the simulator closes. Close it before
	// the relays stop, so that they stop within the harness's bound: how
	// long shutdown takes with a stalled upstream is not this case.
	defer f.sim.Close()
	stalled, others := f.mailboxes[0], f.mailboxes[1:]

	// Baseline: the other mailboxes' 600 messages with nothing stalled.
	base := &faultLedger{}
	bs := &faultSender{f: f, ledger: base, from: roundRobin(others), timeout: 10 * time.Second}
	t0 := time.Now()
	bs.start(6, 1, 600, 0, sameRelay(2)).wait()
	baseDrain, ok := f.waitDrained(base.acked(), 30*time.Second)
	if !ok {
		t.Fatalf("baseline: 600 messages not delivered within 30 s")
	}
	baseTotal := time.Since(t0)
	baseLat := acceptTimes(base)

	f.sim.SetFault(sim.Fault{SMTPStallMailbox: stalled})
	stuck := &faultLedger{}
	ss := &faultSender{f: f, ledger: stuck, from: func(int) string { return stalled }, timeout: 10 * time.Second}
	ss.start(2, 10_000, 100, 0, sameRelay(2)).wait()
	time.Sleep(2 * time.Second) // the stalled mailbox's deliveries are hanging now

	ledger := &faultLedger{}
	s := &faultSender{f: f, ledger: ledger, from: roundRobin(others), timeout: 10 * time.Second}
	t1 := time.Now()
	s.start(6, 20_000, 600, 0, sameRelay(2)).wait()
	acked := ledger.acked()
	// The stalled mailbox's messages stay leased: wait for delivery only.
	drain, _ := f.waitDelivered(acked, 30*time.Second, false)
	got := f.deliveries()
	missing := 0
	for n := range acked {
		if got[n] == 0 {
			missing++
		}
	}
	lat := acceptTimes(ledger)
	stuckDelivered := 0
	for n := range stuck.acked() {
		stuckDelivered += got[n]
	}
	st, _ := f.stats()
	table(t, "isolation: one of 4 mailboxes stalled after DATA", [][]string{
		{"", "baseline", "with a stalled mailbox"},
		{"messages for the other mailboxes", strconv.Itoa(len(base.acked())), strconv.Itoa(len(acked))},
		{"ingress accept p50", ms(percentile(baseLat, 50)), ms(percentile(lat, 50))},
		{"ingress accept p99", ms(percentile(baseLat, 99)), ms(percentile(lat, 99))},
		{"other mailboxes delivered", strconv.Itoa(len(base.acked())), strconv.Itoa(len(acked) - missing)},
		{"submit + drain of the others", ms(baseTotal) + " (drain " + ms(baseDrain) + ")", ms(time.Since(t1)) + " (drain " + ms(drain) + ")"},
		{"stalled mailbox: acknowledged / delivered / leased", "", fmt.Sprintf("%d / %d / %d", len(stuck.acked()), stuckDelivered, st.Leased)},
	})

	if len(stuck.acked()) != 100 {
		t.Errorf("%d of 100 messages for the stalled mailbox acknowledged: ingress must not depend on delivery", len(stuck.acked()))
	}
	if len(acked) != 600 {
		t.Errorf("%d of 600 messages for the other mailboxes acknowledged", len(acked))
	}
	if missing > 0 {
		t.Errorf("%d messages for the other mailboxes not delivered within 30 s: the stalled mailbox blocked them", missing)
	}
	if p99, limit := percentile(lat, 99), max(4*percentile(baseLat, 99), 200*time.Millisecond); p99 > limit {
		t.Errorf("ingress accept p99 %v with a stalled mailbox, over %v (4 × the baseline's, or 200 ms)", p99, limit)
	}
}

// acceptTimes are the durations of the acknowledged submissions.
func acceptTimes(l *faultLedger) []time.Duration {
	var out []time.Duration
	for _, r := range l.all() {
		if r.acked() {
			out = append(out, r.took)
		}
	}
	return out
}

// clusterFailover runs two relays on a Redis Cluster of 3 masters with a
// replica each, stops (SIGKILL) one master mid-ingress and waits for its
// replica to be promoted. The relays must reconnect by themselves: ingress
// answers 250 again and everything acknowledged after the failover is
// delivered. What was acknowledged before and never delivered is the
// loss, reported; with wait (redis.min_replicas_acked: 1) it must be
// none.
func clusterFailover(t *testing.T, wait bool) {
	cluster := redistest.StartClusterWithReplicas(t, 3)
	addrs := make([]string, 0, 6)
	for _, a := range cluster.Addrs() {
		addrs = append(addrs, strconv.Quote(a))
	}
	redisYAML := "redis:\n  cluster: true\n  addrs: [" + strings.Join(addrs, ", ") + "]\n"
	if wait {
		redisYAML += "  min_replicas_acked: 1\n"
	}
	f := startFaultFleet(t, incFleetOptions{mailboxes: 6, edit: func(n int, config string) string {
		config = redisAddrsLine.ReplaceAllString(config, "")
		return faultConfig{delivery: []string{"lease: 10s"}}.edit(n, strings.Replace(config, "redis:\n", redisYAML, 1))
	}})
	f.q = queue.New(cluster.Client(t), queue.Options{})

	ledger := &faultLedger{}
	s := &faultSender{f: f, ledger: ledger, from: roundRobin(f.mailboxes), timeout: 15 * time.Second}
	load := s.start(6, 1, 1_000_000, 200, sameRelay(2))
	time.Sleep(3 * time.Second)
	master := cluster.Nodes()[0]
	replica := cluster.ReplicaOf(t, master)
	killedAt := time.Now()
	master.Kill(t)
	takeover := cluster.Promote(t, replica, 20*time.Second)
	promoted := time.Since(killedAt)
	time.Sleep(4 * time.Second)
	load.stop()

	// Drained: the queue holds nothing waiting or leased, and what must
	// arrive has. Without WAIT, a message acknowledged before the
	// promotion may be among the writes the dead master took with it:
	// that loss is measured below, and does not keep the queue from
	// counting as drained.
	must := ledger.acked()
	if !wait {
		for n, r := range must {
			if !r.start.After(killedAt.Add(promoted)) {
				delete(must, n)
			}
		}
	}
	drain, drained := f.waitDrained(must, 45*time.Second)
	if !drained {
		f.settle(15 * time.Second)
	}
	c, lost := f.count(ledger)
	var refusedDuring, ackedAfter, lostAfter int
	got := f.deliveries()
	for _, r := range ledger.all() {
		end := r.start.Add(r.took)
		if !r.acked() && end.After(killedAt) && r.start.Before(killedAt.Add(promoted)) {
			refusedDuring++
		}
		if r.acked() && r.start.After(killedAt.Add(promoted)) {
			ackedAfter++
			if got[r.n] == 0 {
				lostAfter++
			}
		}
	}
	rows := countRows(c)
	rows = append(rows,
		[]string{"master killed to replica promoted", fmt.Sprintf("%s (by CLUSTER FAILOVER TAKEOVER: %v)", ms(promoted), takeover)},
		[]string{"refused or failed until the promotion", strconv.Itoa(refusedDuring)},
		[]string{"acknowledged after the promotion", strconv.Itoa(ackedAfter)},
		[]string{"  of which not delivered", strconv.Itoa(lostAfter)},
		[]string{"drained after the load in", fmt.Sprintf("%s (%v)", ms(drain), drained)},
	)
	what := "without WAIT"
	if wait {
		what = "with redis.min_replicas_acked: 1 (WAIT)"
	}
	table(t, "Redis Cluster: a master killed, its replica promoted, "+what, rows)

	if ackedAfter == 0 {
		t.Errorf("nothing acknowledged after the promotion: the relays did not reconnect")
	}
	if !drained {
		t.Errorf("the queue still held ready or leased messages, or messages acknowledged after the promotion were not delivered, %s after the load: a route left unmarked by the failover", ms(drain))
	}
	if lostAfter > 0 {
		t.Errorf("%d messages acknowledged after the promotion not delivered", lostAfter)
	}
	if wait && c.lost > 0 {
		t.Errorf("with WAIT, %d acknowledged messages lost, e.g. %v", c.lost, lost[:min(len(lost), 10)])
	}
}

// redisAddrsLine is the harness's single-Redis address line.
var redisAddrsLine = regexp.MustCompile(`(?m)^  addrs: \["127\.0\.0\.1:\d+"\]\n`)

// Redis Cluster failover without WAIT: the relays follow the failover;
// the loss of writes the dead master had not replicated is measured. A
// connection slot whose release failed while the master was away expires
// within seconds, so delivery resumes after the promotion.
func TestFaultClusterFailover(t *testing.T) { clusterFailover(t, false) }

// With redis.min_replicas_acked: 1 every 250 waits for a replica's copy,
// (of the master holding the message's slot), so a failover loses
// nothing acknowledged.
func TestFaultClusterFailoverWait(t *testing.T) { clusterFailover(t, true) }

// Mailbox blocked: Exchange blocks one of 4 mailboxes (550 5.2.251
// "Sender throttled", which sending more while blocked draws again)
// while 3 relays take 400 messages, and one relay is killed with SIGKILL
// and restarted during the block. Once the first refusal is recorded,
// no relay sends as the mailbox, the restarted one included: Exchange
// refuses only the sends that counted against the mailbox's rate before
// the record landed, and none after the second that follows. Its mail
// waits (what the killed relay had leased comes back when the lease
// runs out, 10 s) and the other mailboxes' mail is delivered.
func TestFaultMailboxBlocked(t *testing.T) {
	const (
		messages = 400
		drainMax = 60 * time.Second
	)
	f := startFaultFleet(t, incFleetOptions{mailboxes: 4, relays: 3,
		edit: faultConfig{delivery: []string{"lease: 10s"}}.edit})
	blocked := f.mailboxes[0]
	f.sim.SetFault(sim.Fault{SMTPDataRefusal: "sender_throttled", SMTPDataRefusalMailbox: blocked})
	refused := func() int { return f.counters().SMTPRefusedByFault }

	ledger := &faultLedger{}
	s := &faultSender{f: f, ledger: ledger, from: roundRobin(f.mailboxes), timeout: 10 * time.Second}
	load := s.start(6, 1, messages, 100, sameRelay(3))
	deadline := time.Now().Add(10 * time.Second)
	for refused() == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	atFirst := refused()
	// Sends already past the mailbox's rate when the refusal came are
	// answered within this second; what comes after is the wait's to stop.
	time.Sleep(time.Second)
	settled := refused()
	leasedAtKill := 0
	if st, err := f.stats(); err == nil {
		leasedAtKill = int(st.Leased)
	}
	f.kill(2)
	f.restart(2)
	load.wait()

	acked := ledger.acked()
	others := map[int]faultReply{}
	blockedAcked := 0
	for n, r := range acked {
		if f.mailboxes[n%len(f.mailboxes)] == blocked {
			blockedAcked++
		} else {
			others[n] = r
		}
	}
	drain, drained := f.waitDelivered(others, drainMax, false)
	ctx := t.Context()
	var route string
	var waiting queue.RouteStats
	for deadline := time.Now().Add(20 * time.Second); ; {
		st, err := f.q.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range st.Routes {
			if strings.HasSuffix(r.Route, ":"+blocked) {
				route, waiting = r.Route, r
			}
		}
		if waiting.Leased == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	got := f.deliveries()
	othersDelivered, blockedDelivered := 0, 0
	for n := range acked {
		switch {
		case got[n] == 0:
		case f.mailboxes[n%len(f.mailboxes)] == blocked:
			blockedDelivered++
		default:
			othersDelivered++
		}
	}
	spent := 0
	for _, state := range []queue.State{queue.Ready, queue.Scheduled} {
		msgs, err := f.q.List(ctx, route, state, 0, messages)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if m.Attempts > 0 {
				spent++
			}
		}
	}
	waits, err := relay.MailboxWaits(ctx, f.redis.Client(t), []string{route}, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	until := "none"
	if len(waits) == 1 {
		until = "in " + time.Until(waits[0].Until).Round(time.Second).String()
	}
	table(t, "mailbox blocked by Exchange (550 5.2.251) across 3 relays, one killed and restarted", [][]string{
		{"messages acknowledged (of 400; the others' connection was cut by the kill)", strconv.Itoa(len(acked))},
		{"other mailboxes: acknowledged / delivered", fmt.Sprintf("%d / %d in %s (within %v: %v)", len(others), othersDelivered, ms(drain), drainMax, drained)},
		{"blocked mailbox: acknowledged / waiting / leased / delivered", fmt.Sprintf("%d / %d / %d / %d", blockedAcked, waiting.Ready+waiting.Scheduled, waiting.Leased, blockedDelivered)},
		{"blocked mailbox: attempts spent (bound: leased at the kill)", fmt.Sprintf("%d (%d)", spent, leasedAtKill)},
		{"submissions Exchange refused: at the first / a second later / in all", fmt.Sprintf("%d / %d / %d", atFirst, settled, refused())},
		{"the fleet's wait of the mailbox, as queue stats shows it", until},
	})

	// Only the submissions cut by the kill go unacknowledged.
	for _, r := range ledger.all() {
		if !r.acked() && r.code != 0 {
			t.Errorf("message %d refused at ingress with %d %s: a blocked mailbox must not touch ingress", r.n, r.code, r.enhanced)
		}
	}
	if len(acked) < messages-10 {
		t.Errorf("%d of %d messages acknowledged", len(acked), messages)
	}
	if !drained {
		t.Errorf("the other mailboxes' mail not delivered within %v", drainMax)
	}
	if n := refused(); atFirst == 0 || n != settled {
		t.Errorf("Exchange refused %d submissions a second after the first refusal and %d in all: after the wait was recorded, a relay (the restarted one?) sent as the mailbox", settled, n)
	}
	if blockedDelivered > 0 || waiting.Dead > 0 || waiting.Ready+waiting.Scheduled != int64(blockedAcked) {
		t.Errorf("blocked mailbox: %d delivered, %d dead, %d of %d waiting; want all waiting", blockedDelivered, waiting.Dead, waiting.Ready+waiting.Scheduled, blockedAcked)
	}
	if spent > leasedAtKill {
		t.Errorf("%d of the blocked mailbox's messages spent an attempt, more than the %d leased at the kill: the wait must cost none", spent, leasedAtKill)
	}
	if len(waits) != 1 || time.Until(waits[0].Until) < 25*time.Minute {
		t.Errorf("the fleet's waits of the route %v, want the mailbox's, about 30 minutes", waits)
	}
}
