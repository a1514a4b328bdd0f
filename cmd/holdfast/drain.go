package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"holdfast/breaker"
	"holdfast/queue"
	"holdfast/relay"
)

// drainTick is how often drain reads the queue's counts; drainReflush is
// how often it makes newly scheduled retries due again.
// drainProbeWait is how long drain waits for the probes it asked for.
const (
	drainTick      = 500 * time.Millisecond
	drainReflush   = 5 * time.Second
	drainProbeWait = 15 * time.Second
)

// drainCounts are the counts drain follows, over the routes it drains.
type drainCounts struct {
	waiting int64 // ready, scheduled or being sent
	held    int64
	dead    int64
	holds   map[string]string // held route -> reason
	heldBy  map[string]int64  // held route -> messages
	// waitingBy are the routes with mail ready or scheduled, and how
	// many messages each has waiting (see waitingIn).
	waitingBy map[string]int64
	// parked are the messages waiting whose mailbox Exchange asked the
	// fleet to leave alone past the drain's timeout, and waits those
	// waits (see park).
	parked int64
	waits  []relay.MailboxWait
	// moving are the messages of a move cut half-way, by route: no relay
	// sends them, and the drain does not wait for them (see
	// queue.RouteStats.Moving).
	moving   int64
	movingBy map[string]int64
}

// park counts the messages waiting in routes whose mailbox waits past
// deadline with all of its mail (a daily quota, a block): the relays
// leave them alone until then, and the drain does not wait for them.
// Graph's throttling of a mailbox holds only its mail that goes by
// Graph, which the drain cannot tell from the rest: it waits for it.
func (c *drainCounts) park(ctx context.Context, e *env, rdb redis.UniversalClient, deadline time.Time) error {
	c.parked, c.waits = 0, nil
	if len(c.waitingBy) == 0 {
		return nil
	}
	waits, err := relay.MailboxWaits(ctx, rdb, c.waitingIn(), e.now)
	if err != nil {
		return err
	}
	past := map[string]bool{}
	for _, w := range waits {
		if w.All && w.Until.After(deadline) {
			past[strings.ToLower(w.Mailbox)] = true
			c.waits = append(c.waits, w)
		}
	}
	for r, n := range c.waitingBy {
		if m, ok := relay.RouteMailbox(r); ok && past[strings.ToLower(m)] {
			c.parked += n
		}
	}
	return nil
}

// waitingIn are the routes with mail ready or scheduled, sorted.
func (c *drainCounts) waitingIn() []string { return slices.Sorted(maps.Keys(c.waitingBy)) }

// stuck are the messages waiting that the drain waits for: not parked.
func (c *drainCounts) stuck() int64 { return c.waiting - c.parked }

func countDrain(ctx context.Context, q *queue.Queue, only string) (drainCounts, error) {
	st, err := q.Stats(ctx)
	if err != nil {
		return drainCounts{}, err
	}
	c := drainCounts{holds: map[string]string{}, heldBy: map[string]int64{}, waitingBy: map[string]int64{}, movingBy: map[string]int64{}}
	for _, r := range st.Routes {
		if only != "" && r.Route != only {
			continue
		}
		c.waiting += r.Ready + r.Scheduled + r.Leased
		if r.Ready+r.Scheduled > 0 {
			c.waitingBy[r.Route] = r.Ready + r.Scheduled + r.Leased
		}
		c.held += r.Held
		c.dead += r.Dead
		if r.Moving > 0 {
			c.moving += r.Moving
			c.movingBy[r.Route] = r.Moving
		}
		if r.HoldReason != "" {
			c.holds[r.Route] = r.HoldReason
			c.heldBy[r.Route] = r.Held
		}
	}
	return c, nil
}

// pendingProbe is an open breaker that drain or breaker probe asked a
// relay to probe: the request's number (breaker.Set.AskProbe), the
// breaker's last probe time and generation before the request, and for
// drain the routes it holds.
type pendingProbe struct {
	name       string
	asked      int64
	before     time.Time
	generation int64
	routes     []string
}

// probeNames are the names of the breakers probes were asked of.
func probeNames(probes []pendingProbe) []string {
	names := make([]string, len(probes))
	for i, p := range probes {
		names[i] = p.name
	}
	return names
}

// reopened reports whether the breaker, open at the request, closed and
// opened again since: a new opening clears the request, which no probe
// answers then.
func (p pendingProbe) reopened(st breaker.Status) bool {
	return st.State == breaker.Open && st.Generation >= p.generation+2
}

// answered reports whether st holds the result that answers the request:
// of a probe whose lease was granted after it. A probe already under way
// when the request was made (its relay may have read the secret before
// it was rotated) reports first, and does not answer it. A result that
// came with no answered count, from a relay of an earlier version (during
// an upgrade, or after a rollback), answers it if it is newer than the
// one before the request, as those relays cannot tell.
func (p pendingProbe) answered(st breaker.Status) bool {
	if st.AnsweredKnown {
		return st.Answered >= p.asked
	}
	return !st.LastProbe.Equal(p.before)
}

// probeOpen asks the relays to probe, at once, every open breaker that
// holds mail of the drained routes.
func probeOpen(ctx context.Context, e *env, report *relay.BreakerReporter, set *breaker.Set, only string) ([]pendingProbe, error) {
	list, err := report.List(ctx)
	if err != nil {
		return nil, err
	}
	var out []pendingProbe
	for _, b := range list {
		if b.State != breaker.Open.String() || (only != "" && !slices.Contains(b.Routes, only)) {
			continue
		}
		asked, err := set.AskProbe(ctx, b.Name)
		if errors.Is(err, breaker.ErrHeld) {
			fmt.Fprintf(e.stdout, "breaker %s held by an operator (open since %s): its mail waits until holdfast breaker reset %s\n", b.Name, clock(b.Since), b.Name)
			continue
		}
		if err != nil {
			return nil, err
		}
		if asked > 0 {
			fmt.Fprintf(e.stdout, "breaker %s open since %s (%s): probe requested\n", b.Name, clock(b.Since), b.Reason)
			out = append(out, pendingProbe{b.Name, asked, b.LastProbe, b.Generation, b.Routes})
		}
	}
	return out, nil
}

// probing reports whether a probe drain asked for has not reported yet,
// or has closed its breaker but the relays have not yet released the
// breaker's held routes. It reads the breakers in one round trip; when
// they cannot be read, it does not wait for them.
func probing(ctx context.Context, set *breaker.Set, probes []pendingProbe, c drainCounts) bool {
	if len(probes) == 0 {
		return false
	}
	sts, err := set.Fresh(ctx, probeNames(probes)...)
	if err != nil {
		return false
	}
	for i, st := range sts {
		p := probes[i]
		switch {
		case st.State == breaker.Open && !p.answered(st) && !p.reopened(st):
			return true
		case st.State == breaker.Closed:
			for _, r := range p.routes {
				if _, held := c.holds[r]; held {
					return true
				}
			}
		}
	}
	return false
}

// clock is a UTC time of day, as in "11:30:02Z".
func clock(t time.Time) string { return t.UTC().Format("15:04:05Z") }

// queueDrain makes everything queued now due at once, ignoring backoff,
// and follows the running relays' delivery until nothing waits, showing
// delivered, held and failed counts. Held routes stay held: their breaker
// decides, and drain first asks for a probe of each open one. It fails,
// with a summary of what remains and why, when mail is held or still
// waiting at the timeout.
func queueDrain(ctx context.Context, e *env, fs *flag.FlagSet, args []string) error {
	config := configFlag(fs, e)
	route := fs.String("route", "", "drain only `ROUTE` (default: every route)")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	o, rdb, err := openRedis(*config)
	if err != nil {
		return err
	}
	defer func() { _ = rdb.Close() }()
	q := queue.New(rdb, o.Queue.Options())
	set := newBreakerSet(o, rdb)
	report := relay.NewBreakerReporter(set, q, o)

	flush := func() error {
		routes := []string{*route}
		if *route == "" {
			var err error
			if routes, err = q.Routes(ctx); err != nil {
				return err
			}
		}
		for _, r := range routes {
			if _, err := q.Flush(ctx, r); err != nil {
				return err
			}
		}
		return nil
	}
	// Mail that goes from the counts is delivered, unless Redis lost it:
	// the change log's start tells (see lost).
	logStart, err := q.LogStart(ctx)
	if err != nil {
		return err
	}
	start, err := countDrain(ctx, q, *route)
	if err != nil {
		return err
	}
	if start.waiting+start.held+start.moving == 0 {
		hintUnknownRoute(ctx, e, q, *route)
	}
	probes, err := probeOpen(ctx, e, report, set, *route)
	if err != nil {
		return err
	}
	if err := flush(); err != nil {
		return err
	}
	total := start.waiting + start.held + start.moving
	p := &progress{w: e.stdout, tty: e.stdoutTTY, total: total}
	deadline := e.now().Add(*timeout)
	probeDeadline := e.now().Add(min(drainProbeWait, *timeout))
	lastFlush := e.now()
	var c drainCounts
	var down error // Redis's error, while it does not answer
	for {
		counts, err := countDrain(ctx, q, *route)
		if err == nil {
			err = counts.park(ctx, e, rdb, deadline)
		}
		if err == nil && e.now().Sub(lastFlush) >= drainReflush {
			if err = flush(); err == nil {
				lastFlush = e.now()
			}
		}
		if err != nil {
			// Redis may be back within the timeout, as after a failover
			// or a restart: the relays wait for it, and so does drain.
			if ctx.Err() != nil {
				p.done()
				return ctx.Err()
			}
			if !e.now().Before(deadline) {
				p.done()
				return fmt.Errorf("redis %v stopped answering (%w) and had not answered again at the timeout (%s); the queued mail stays queued: run the drain again once Redis answers",
					o.Redis.Addrs, err, *timeout)
			}
			if down == nil {
				p.interrupt()
				fmt.Fprintf(e.stderr, "redis %v does not answer (%v); trying again until the timeout\n", o.Redis.Addrs, err)
			}
			down = err
			select {
			case <-ctx.Done():
			case <-time.After(drainTick):
			}
			continue
		}
		if down != nil {
			p.interrupt()
			fmt.Fprintf(e.stderr, "redis %v answers again\n", o.Redis.Addrs)
			down = nil
			if err := lost(ctx, q, logStart, o.Redis.Addrs); err != nil {
				return err
			}
		}
		c = counts
		failed := max(0, c.dead-start.dead)
		delivered := max(0, total-c.waiting-c.held-c.moving-failed)
		p.show(delivered, c.held, failed)
		waitProbe := e.now().Before(probeDeadline) && probing(ctx, set, probes, c)
		if (c.stuck() == 0 && !waitProbe) || !e.now().Before(deadline) {
			p.done()
			break
		}
		select {
		case <-ctx.Done():
			p.done()
			return ctx.Err()
		case <-time.After(drainTick):
		}
	}

	if err := lost(ctx, q, logStart, o.Redis.Addrs); err != nil {
		return err
	}
	failed := max(0, c.dead-start.dead)
	delivered := max(0, total-c.waiting-c.held-c.moving-failed)
	fmt.Fprintf(e.stdout, "%d delivered, %d held, %d failed", delivered, c.held, failed)
	if failed > 0 {
		fmt.Fprint(e.stdout, ` (dead letters: holdfast queue list --state dead --route ROUTE)`)
	}
	fmt.Fprintln(e.stdout)
	if c.waiting == 0 && c.held == 0 && c.moving == 0 {
		return nil
	}
	why, err := heldWhy(ctx, report, c)
	if err != nil {
		return err
	}
	if stuck := c.stuck(); stuck > 0 {
		last := ""
		if reply := lastWaitingReply(ctx, q, c.waitingIn()); reply != "" {
			last = " (last reply: " + oneLine(reply, 200) + ")"
		}
		why = append(why, fmt.Sprintf("%d messages still waiting after %s%s: is a relay running (holdfast serve) and is its upstream answering?", stuck, *timeout, last))
	}
	for _, r := range slices.Sorted(maps.Keys(c.movingBy)) {
		why = append(why, fmt.Sprintf("%d messages stopped half-way in a move off %s: finish it with holdfast queue move --route %s --to ROUTE", c.movingBy[r], r, r))
	}
	for _, line := range why {
		fmt.Fprintln(e.stdout, line)
	}
	if c.parked > 0 {
		fmt.Fprintf(e.stdout, "%d messages wait for their mailbox past the timeout:\n", c.parked)
		printMailboxWaits(e.stdout, c.waits, e.now(), "")
		fmt.Fprintln(e.stdout, "once the cause is fixed, queue flush --end-waits ends the waits on every relay")
	}
	var sum []string
	if c.held > 0 {
		sum = append(sum, fmt.Sprintf("%d held", c.held))
	}
	if c.parked > 0 {
		sum = append(sum, fmt.Sprintf("%d waiting for their mailbox", c.parked))
	}
	if stuck := c.stuck(); stuck > 0 {
		sum = append(sum, fmt.Sprintf("%d still waiting", stuck))
	}
	if c.moving > 0 {
		sum = append(sum, fmt.Sprintf("%d in a move not finished", c.moving))
	}
	return errors.New("the queue is not empty: " + strings.Join(sum, ", "))
}

// lost returns an error when Redis no longer holds what it held when the
// drain began (its change log started again, or is gone): the messages
// the drain no longer finds were lost, not delivered, and it cannot
// count them. logStart 0 (no log, Redis Cluster) checks nothing.
func lost(ctx context.Context, q *queue.Queue, logStart float64, addrs []string) error {
	if logStart == 0 {
		return nil
	}
	now, err := q.LogStart(ctx)
	if err != nil || now == logStart {
		return err
	}
	return fmt.Errorf("redis %v no longer holds the queue it held when the drain began (it restarted without its files, "+
		"or a replica that lacked them took over): the messages the drain no longer finds were lost, not delivered; "+
		"see what remains with holdfast queue stats, and have the applications send again what they sent before", addrs)
}

// lastWaitingReply is the upstream's last reply to a message that waits
// in one of routes (ready, or scheduled for its next attempt), the most
// recent of the first few looked at, or "" when none has one: why mail
// does not go, for a drain that gives up.
func lastWaitingReply(ctx context.Context, q *queue.Queue, routes []string) string {
	var reply string
	var at time.Time
	for _, r := range routes[:min(len(routes), 10)] {
		for _, st := range []queue.State{queue.Ready, queue.Scheduled} {
			ms, err := q.List(ctx, r, st, 0, 5)
			if err != nil {
				return reply
			}
			for _, m := range ms {
				if m.LastError != "" && m.Updated.After(at) {
					reply, at = m.LastError, m.Updated
				}
			}
		}
	}
	return reply
}

// heldWhy explains held mail: per open breaker, with when it opened and
// why; per route for a route held otherwise.
func heldWhy(ctx context.Context, report *relay.BreakerReporter, c drainCounts) ([]string, error) {
	list, err := report.List(ctx)
	if err != nil {
		return nil, err
	}
	var why []string
	explained := map[string]bool{}
	for _, b := range list {
		if b.State != breaker.Open.String() {
			continue
		}
		var n int64
		for _, r := range b.Routes {
			if _, held := c.holds[r]; held && !explained[r] {
				n += c.heldBy[r]
				explained[r] = true
			}
		}
		if n > 0 {
			why = append(why, fmt.Sprintf("%d messages held: breaker %s open since %s (%s)", n, b.Name, clock(b.Since), b.Reason))
		}
	}
	routes := slices.Sorted(maps.Keys(c.holds))
	for _, r := range routes {
		if !explained[r] {
			why = append(why, fmt.Sprintf("%d messages held: route %s held (%s)", c.heldBy[r], r, c.holds[r]))
		}
	}
	return why, nil
}

// progress shows drain's counts: a bar redrawn in place on a terminal,
// otherwise a line whenever they change.
type progress struct {
	w     io.Writer
	tty   bool
	total int64
	last  string
}

func (p *progress) show(delivered, held, failed int64) {
	counts := fmt.Sprintf("%d/%d delivered, %d held, %d failed", delivered, p.total, held, failed)
	if counts == p.last {
		return
	}
	p.last = counts
	if !p.tty {
		fmt.Fprintln(p.w, counts)
		return
	}
	const width = 30
	filled := width
	if p.total > 0 {
		filled = int((delivered + held + failed) * width / p.total)
	}
	filled = min(max(filled, 0), width)
	fmt.Fprintf(p.w, "\r[%s%s] %s ", strings.Repeat("#", filled), strings.Repeat(".", width-filled), counts)
}

// interrupt ends the bar's line, for a line of another kind; the bar
// starts again below it at the next show.
func (p *progress) interrupt() {
	p.done()
	p.last = ""
}

func (p *progress) done() {
	if p.tty && p.last != "" {
		fmt.Fprintln(p.w)
	}
}
