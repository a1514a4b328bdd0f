package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"holdfast/queue"
)

// plan is the demo's pace.
type plan struct {
	mailboxes int
	// perMinute is exchange.messages_per_minute: each mailbox's limit
	// across both replicas.
	perMinute int
	// rate is the messages the application submits per second.
	rate float64
	// before is how long mail flows before the secret expires; outage how
	// long the breaker stays open before the operator rotates the secret.
	before, outage time.Duration
	// tokenLifetime is the simulator's access token lifetime: short, so
	// that the relays need a new token soon after the expiry.
	tokenLifetime time.Duration
	// drainWithin bounds the wait for the backlog after the rotation.
	drainWithin time.Duration
	// tick is how often the live counts are printed.
	tick time.Duration
}

var (
	// fullPlan uses Exchange Online's own limit of 30 messages a minute
	// per mailbox: by the rotation each mailbox has more mail than its
	// minute allows, so the last of the backlog waits for the window.
	fullPlan = plan{mailboxes: 4, perMinute: 30, rate: 4, before: 10 * time.Second, outage: 20 * time.Second,
		tokenLifetime: 4 * time.Second, drainWithin: 60 * time.Second, tick: 2 * time.Second}
	shortPlan = plan{mailboxes: 2, perMinute: 600, rate: 10, before: 3 * time.Second, outage: 5 * time.Second,
		tokenLifetime: 4 * time.Second, drainWithin: 30 * time.Second, tick: time.Second}
)

// quiet is a pause of the application long enough for the relays to
// close their idle connections to Exchange (after 2 s) and for their
// tokens to be due for renewal: the next delivery needs a new token.
const quiet = 3 * time.Second

// breakerName is the credential's breaker.
const breakerName = "cred:" + credName

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// demo is one run.
type demo struct {
	out      io.Writer
	plan     plan
	holdfast string
	f        *fleet
	q        *queue.Queue
	start    time.Time
	sub      *submitter
	rec      *recorder
	// paused stops the feed for a while (a quiet moment of the
	// application).
	paused atomic.Bool
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, "\n"+format+"\n", args...)
}

func (d *demo) play(ctx context.Context) (tally, error) {
	p := d.plan
	d.say("Holdfast demo: the February 2025 incident, replayed against the Exchange Online simulator.\n" +
		"Starting a Redis of its own, the simulator and two relays (holdfast serve)…")
	f, err := startFleet(ctx, p, d.holdfast)
	if err != nil {
		return tally{}, err
	}
	d.f = f
	failed := true
	defer func() {
		d.say("Stopping the relays, then the simulator, then Redis (by PID)…")
		f.stop()
		if failed {
			fmt.Fprintf(d.out, "Logs kept in %s\n", f.dir)
		} else {
			_ = os.RemoveAll(f.dir)
		}
	}()
	d.q = queue.New(f.rdb, queue.Options{})
	fmt.Fprintf(d.out, "  redis-server   pid %-7d %s\n", f.redis.cmd.Process.Pid, f.rdb.Options().Addr)
	fmt.Fprintf(d.out, "  simulator      (in this process) SMTP %s, Entra ID %s\n", f.sim.SMTPAddr(), f.sim.AuthorityURL())
	for _, r := range f.relays {
		ops := "no ops listener in this build"
		if r.opsAddr != "" {
			ops = "ops " + r.opsAddr
		}
		fmt.Fprintf(d.out, "  %-14s pid %-7d SMTP %s, HTTP %s, %s\n", r.name, r.cmd.Process.Pid, r.smtpAddr, r.httpAddr, ops)
	}

	d.start = time.Now()
	d.sub = f.startSubmitter()
	feedCtx, stopFeed := context.WithCancel(ctx)
	var feed sync.WaitGroup
	feed.Add(1)
	go func() {
		defer feed.Done()
		d.feed(feedCtx)
	}()
	stopFeeding := func() {
		stopFeed()
		feed.Wait()
		d.sub.close()
	}
	d.rec = startRecorder(f.sim)
	defer d.rec.stop()
	live := d.liveCounts(ctx)
	defer live()
	defer stopFeed()

	d.say("1. Normal traffic: the CRM submits %.0f messages a second over SMTP, to both relays;\n"+
		"   they deliver to %d Exchange Online mailboxes.", p.rate, p.mailboxes)
	if err := sleep(ctx, p.before/2); err != nil {
		return tally{}, d.interrupted(stopFeeding)
	}
	d.say("   The secret's expiry date is in the configuration (expires_at), and the relays warn of it.\n"+
		"   holdfast breaker status --config %s says ROTATE:", f.relays[0].config)
	d.showBreakerStatus(ctx)
	d.showMetrics(ctx, "   What Prometheus sees on relay-1's /metrics:")
	if err := sleep(ctx, p.before-p.before/2); err != nil {
		return tally{}, d.interrupted(stopFeeding)
	}

	d.say("2. At Entra ID, the client secret expires. Every token request now gets\n"+
		"   invalid_client AADSTS7000222 (\"The provided client secret keys are expired\").\n"+
		"   Connections and tokens from before keep working, as at Microsoft, until the\n"+
		"   CRM pauses for %s between batches and the relays close their idle connections.", quiet)
	tExpiry := time.Now()
	atExpiry := f.sim.Counters().Clients[clientID]
	f.sim.ExpireSecret(tenant, clientID)
	d.paused.Store(true)
	err = sleep(ctx, quiet)
	d.paused.Store(false)
	if err != nil {
		return tally{}, d.interrupted(stopFeeding)
	}

	open, err := d.waitBreaker(ctx, "open", 30*time.Second)
	if err != nil {
		stopFeeding()
		return tally{}, err
	}
	atOpen := f.sim.Counters().Clients[clientID]
	d.say("3. The relays' next token request failed. The credential breaker OPENED %.1f s after the expiry,\n"+
		"   after %d failure(s), for every replica. The reason it shows:\n     %s\n"+
		"   From now on the relays ask Entra only for a probe every few seconds: no retry storm.",
		open.Since.Sub(tExpiry).Seconds(), open.Failures, open.Reason)

	d.say("4. Mail keeps being accepted (250) and is held, not bounced. Watch \"held\" grow.")
	if err := sleep(ctx, p.outage/2); err != nil {
		return tally{}, d.interrupted(stopFeeding)
	}
	d.say("   holdfast breaker status now:")
	d.showBreakerStatus(ctx)
	d.showMetrics(ctx, "   What Prometheus sees on relay-1's /metrics:")
	if err := sleep(ctx, p.outage-p.outage/2); err != nil {
		return tally{}, d.interrupted(stopFeeding)
	}
	stopFeeding()
	atRotation := f.sim.Counters().Clients[clientID]
	deliveredAtRotation := f.sim.ReceivedCount()

	d.say("5. The operator creates a new secret in Entra and rewrites the secret file.\n" +
		"   No restart: the relays re-read the file, a probe succeeds, the breaker closes.")
	f.sim.RotateSecret(tenant, clientID, rotated)
	if err := writeFile(f.secretFile, rotated+"\n"); err != nil {
		return tally{}, err
	}
	tRotation := time.Now()
	if _, err := d.waitBreaker(ctx, "closed", 30*time.Second); err != nil {
		return tally{}, err
	}
	fmt.Fprintf(d.out, "   The breaker CLOSED %.1f s after the rotation.\n", time.Since(tRotation).Seconds())

	accepted, refused := d.sub.counts()
	d.say("6. The backlog drains, at most %d messages a minute and 3 connections per mailbox\n"+
		"   across both replicas (Exchange Online's limits, exchange.messages_per_minute).", p.perMinute)
	firstAt, drainedAt := d.waitDrained(ctx, tRotation, deliveredAtRotation, accepted, p.drainWithin)
	time.Sleep(time.Second) // room for a late duplicate to show
	live()
	if ctx.Err() != nil {
		return tally{}, errors.New("interrupted")
	}

	t, err := d.tally(ctx)
	if err != nil {
		return tally{}, err
	}
	t.Refused = refused
	t.Wasted = (atRotation.TokenErrors - atOpen.TokenErrors) + (atRotation.SMTPAuthFailures - atOpen.SMTPAuthFailures)
	t.ToFirst, t.ToDrained, t.Drained = -1, 0, !drainedAt.IsZero()
	if !firstAt.IsZero() {
		t.ToFirst = firstAt.Sub(tRotation)
	}
	if t.Drained {
		t.ToDrained = drainedAt.Sub(tRotation)
		fmt.Fprintf(d.out, "   %d held messages delivered; the most any mailbox received within a minute: %d (limit %d).\n",
			accepted-deliveredAtRotation, d.rec.maxPerMinute(), p.perMinute)
	}
	d.showMetrics(ctx, "   relay-1's /metrics after the recovery:")
	wastedAll := (atRotation.TokenErrors - atExpiry.TokenErrors) + (atRotation.SMTPAuthFailures - atExpiry.SMTPAuthFailures)
	d.say("Result (Microsoft refused %d requests from the expiry to the rotation: %d that opened the breaker, then %d while it was open, wasted):",
		wastedAll, wastedAll-t.Wasted, t.Wasted)
	if err := t.write(d.out); err != nil {
		return t, err
	}
	for _, r := range d.sub.refused {
		fmt.Fprintf(d.out, "  refused: %s\n", r)
	}
	failed = !t.ok()
	return t, nil
}

// interrupted stops the feed and reports a Ctrl-C.
func (d *demo) interrupted(stopFeeding func()) error {
	stopFeeding()
	return errors.New("interrupted")
}

func sleep(ctx context.Context, dur time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(dur):
		return nil
	}
}

// feed submits messages at the plan's rate until ctx ends.
func (d *demo) feed(ctx context.Context) {
	step := time.Duration(float64(time.Second) / d.plan.rate)
	start := time.Now()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(start.Add(time.Duration(n) * step))):
		}
		if d.paused.Load() {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case d.sub.work <- n:
		}
	}
}

// liveCounts prints the counts every tick until the returned function is
// called.
func (d *demo) liveCounts(ctx context.Context) func() {
	return every(ctx, d.plan.tick, d.printCounts)
}

// every calls fn every period on a goroutine of its own until ctx ends or
// the returned function is called; that function waits for the goroutine.
func every(ctx context.Context, period time.Duration, fn func(context.Context)) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				fn(ctx)
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { cancel(); <-done }) }
}

func (d *demo) printCounts(ctx context.Context) {
	accepted, refused := d.sub.counts()
	st, err := d.q.Stats(ctx)
	if err != nil {
		return
	}
	tot := st.Total
	line := fmt.Sprintf("   [%3.0fs] submitted %4d  delivered %4d  held %4d  queued %3d  dead %d",
		time.Since(d.start).Seconds(), accepted, d.f.sim.ReceivedCount(), tot.Held, tot.Ready+tot.Scheduled+tot.Leased, tot.Dead)
	if refused > 0 {
		line += fmt.Sprintf("  REFUSED %d", refused)
	}
	fmt.Fprintln(d.out, line)
}

// breakerState is the part of GET /v1/breakers/{name} the demo reads.
type breakerState struct {
	State    string    `json:"state"`
	Reason   string    `json:"reason"`
	Since    time.Time `json:"since"`
	Failures int64     `json:"consecutive_failures"`
}

// waitBreaker polls the breaker on every relay until all show state.
func (d *demo) waitBreaker(ctx context.Context, state string, within time.Duration) (breakerState, error) {
	deadline := time.Now().Add(within)
	for {
		var last breakerState
		all := true
		for _, r := range d.f.relays {
			code, body, err := d.f.get(ctx, "http://"+r.httpAddr+"/v1/breakers/"+breakerName)
			if err != nil || code != 200 || json.Unmarshal(body, &last) != nil || last.State != state {
				all = false
				break
			}
		}
		if all {
			return last, nil
		}
		if time.Now().After(deadline) {
			return breakerState{}, fmt.Errorf("the breaker was not %s on both relays within %v", state, within)
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return breakerState{}, errors.New("interrupted")
		}
	}
}

// waitDrained waits until Exchange has received want messages, and
// returns when the first delivery after the rotation came and when the
// last one did (zero if it did not).
func (d *demo) waitDrained(ctx context.Context, tRotation time.Time, atRotation, want int, within time.Duration) (first, drained time.Time) {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		n := d.f.sim.ReceivedCount()
		if first.IsZero() && n > atRotation {
			first = time.Now()
			fmt.Fprintf(d.out, "   First delivery of the backlog: %.1f s after the rotation.\n", first.Sub(tRotation).Seconds())
		}
		if n >= want {
			return first, time.Now()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return first, time.Time{}
}

// tally counts what Exchange received against what was accepted.
func (d *demo) tally(ctx context.Context) (tally, error) {
	var ids []string
	for _, r := range d.f.sim.Received() {
		ids = append(ids, r.MessageID)
	}
	st, err := d.q.Stats(ctx)
	if err != nil {
		return tally{}, fmt.Errorf("queue stats: %w", err)
	}
	d.sub.mu.Lock()
	defer d.sub.mu.Unlock()
	return count(d.sub.accepted, ids, int(st.Total.Dead)), nil
}

// showBreakerStatus runs "holdfast breaker status" against relay-1's
// configuration and indents its output.
func (d *demo) showBreakerStatus(ctx context.Context) {
	cmd := exec.CommandContext(ctx, d.holdfast, "breaker", "status", "--config", d.f.relays[0].config)
	out, err := cmd.CombinedOutput()
	for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		fmt.Fprintf(d.out, "     %s\n", l)
	}
	if err != nil {
		fmt.Fprintf(d.out, "     (%v)\n", err)
	}
}

// metricPrefixes are the metrics the demo shows.
var metricPrefixes = []string{
	"holdfast_breaker_open",
	"holdfast_breaker_transitions_total",
	"holdfast_credential_expiry_timestamp_seconds",
	"holdfast_queue_messages{",
	"holdfast_queue_oldest_held_age_seconds",
	"holdfast_token_requests_total",
	"holdfast_deliveries_total",
}

// showMetrics prints relay-1's holdfast_* lines of interest from
// /metrics, when it has an ops listener that answers; else nothing.
func (d *demo) showMetrics(ctx context.Context, title string) {
	r := d.f.relays[0]
	if r.opsAddr == "" {
		return
	}
	code, body, err := d.f.get(ctx, "http://"+r.opsAddr+"/metrics")
	if err != nil || code != 200 {
		return
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		l := sc.Text()
		for _, p := range metricPrefixes {
			if strings.HasPrefix(l, p) && !strings.HasSuffix(l, " 0") {
				lines = append(lines, l)
				break
			}
		}
	}
	if len(lines) == 0 {
		return
	}
	fmt.Fprintln(d.out, "\n"+title)
	for _, l := range lines {
		fmt.Fprintf(d.out, "     %s\n", l)
	}
}
