//go:build faults

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"holdfast/queue"
)

// This file is the harness of the fault suite (faults_test.go, "make
// test-faults"): a fleet of relay processes that the tests kill and
// restart, a ledger of what each submission got, and the tables every
// case prints. It builds on the incident harness.

// faultFleet is an incFleet whose relays may be killed and restarted.
type faultFleet struct {
	*incFleet
	mu sync.Mutex // guards incFleet.relays while relays restart
}

func startFaultFleet(tb testing.TB, o incFleetOptions) *faultFleet {
	tb.Helper()
	return &faultFleet{incFleet: startIncFleet(tb, o)}
}

// smtpAddr is the SMTP address of relay i now.
func (f *faultFleet) smtpAddr(i int) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.relays[i].smtpAddr
}

// kill sends SIGKILL to relay i and waits for it to exit.
func (f *faultFleet) kill(i int) {
	f.mu.Lock()
	r := f.relays[i]
	f.mu.Unlock()
	_ = r.cmd.Process.Kill()
	<-r.exited
	// A killed relay has nothing to stop, and its logs would bury those
	// of the running ones if the test fails.
	r.stopOnce.Do(func() {})
}

// restart starts relay i again with its configuration, once it exited.
func (f *faultFleet) restart(i int) {
	r := startIncRelay(f.tb, fmt.Sprintf("relay-%d", i+1), f.configs[i])
	f.mu.Lock()
	f.relays[i] = r
	f.mu.Unlock()
}

// stats returns the queue's totals; a failed read is reported as zeros
// and the error.
func (f *faultFleet) stats() (queue.RouteStats, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := f.q.Stats(ctx)
	return st.Total, err
}

// deliveries counts the messages Exchange accepted, by message number
// (from their Message-ID, see incMessageID).
func (f *faultFleet) deliveries() map[int]int {
	out := map[int]int{}
	for _, r := range f.sim.Received() {
		id := strings.TrimSuffix(strings.TrimPrefix(r.MessageID, "<incident-"), "@holdfast.test>")
		if n, err := strconv.Atoi(id); err == nil {
			out[n]++
		}
	}
	return out
}

// faultReply is what one submission got.
type faultReply struct {
	n        int
	relay    int
	code     int    // SMTP reply code; 0 when the connection failed
	enhanced string // e.g. "4.3.0"
	err      string
	start    time.Time
	took     time.Duration
}

func (r faultReply) acked() bool { return r.code == 250 }

// faultLedger records every submission's reply.
type faultLedger struct {
	mu      sync.Mutex
	replies []faultReply
}

func (l *faultLedger) add(r faultReply) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.replies = append(l.replies, r)
}

func (l *faultLedger) all() []faultReply {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.replies)
}

// acked returns the numbers of the messages that got a 250.
func (l *faultLedger) acked() map[int]faultReply {
	out := map[int]faultReply{}
	for _, r := range l.all() {
		if r.acked() {
			out[r.n] = r
		}
	}
	return out
}

// faultSender submits numbered messages over SMTP with AUTH PLAIN. Each
// session sends up to perSession messages on one connection; a failure
// ends the connection and the next message gets a new one. A failed
// submission is recorded, not retried.
type faultSender struct {
	f       *faultFleet
	ledger  *faultLedger
	from    func(n int) string
	timeout time.Duration
}

// session sends the messages read from work to relay (a func, so that
// sessions can alternate between relays), then quits.
func (s *faultSender) session(relay func() int, work <-chan int) {
	var c *smtp.Client
	var at int
	sent := 0
	defer func() {
		if c != nil {
			_ = c.Quit()
		}
	}()
	for n := range work {
		if c != nil && sent >= perSession {
			_ = c.Quit()
			c = nil
		}
		r := faultReply{n: n, start: time.Now()}
		if c == nil {
			at = relay()
			var err error
			c, err = s.dial(at)
			if err != nil {
				r.relay = at
				s.record(r, err)
				c = nil
				continue
			}
			sent = 0
		}
		r.relay = at
		err := s.send(c, n)
		sent++
		s.record(r, err)
		if err != nil {
			c.Close()
			c = nil
		}
	}
}

func (s *faultSender) record(r faultReply, err error) {
	r.took = time.Since(r.start)
	if err == nil {
		r.code = 250
	} else {
		r.err = err.Error()
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			r.code = se.Code
			r.enhanced = fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
		}
	}
	s.ledger.add(r)
}

func (s *faultSender) dial(relay int) (*smtp.Client, error) {
	c, err := smtp.Dial(s.f.smtpAddr(relay))
	if err != nil {
		return nil, err
	}
	c.CommandTimeout, c.SubmissionTimeout = s.timeout, s.timeout
	if err := c.Auth(sasl.NewPlainClient("", incUser, incPassword)); err != nil {
		c.Close()
		return nil, fmt.Errorf("AUTH: %w", err)
	}
	return c, nil
}

func (s *faultSender) send(c *smtp.Client, n int) error {
	from := s.from(n)
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	if err := c.Rcpt(fmt.Sprintf("rcpt%d@example.org", n), nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, incMessage(n, from)); err != nil {
		return err
	}
	return w.Close()
}

// faultLoad runs sessions that submit messages first, first+1, … until
// count are sent, stop is called, or (with rate > 0) at about rate
// messages a second.
type faultLoad struct {
	work    chan int
	wg      sync.WaitGroup
	stopped chan struct{}
	once    sync.Once
	feeder  sync.WaitGroup
}

func (s *faultSender) start(sessions, first, count int, rate float64, relay func(session int) int) *faultLoad {
	l := &faultLoad{work: make(chan int), stopped: make(chan struct{})}
	for k := range sessions {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			s.session(func() int { return relay(k) }, l.work)
		}()
	}
	l.feeder.Add(1)
	go func() {
		defer l.feeder.Done()
		defer close(l.work)
		begin := time.Now()
		for i := range count {
			if rate > 0 {
				time.Sleep(time.Until(begin.Add(time.Duration(float64(i) / rate * float64(time.Second)))))
			}
			select {
			case l.work <- first + i:
			case <-l.stopped:
				return
			}
		}
	}()
	s.f.tb.Cleanup(l.stop)
	return l
}

// stop ends the load and waits for the sessions to finish.
func (l *faultLoad) stop() {
	l.once.Do(func() { close(l.stopped) })
	l.feeder.Wait()
	l.wg.Wait()
}

// wait waits for every message to be handed out and answered.
func (l *faultLoad) wait() {
	l.feeder.Wait()
	l.wg.Wait()
}

// alternate sends session k's connections to relay k%relays, then the
// next, so that sessions move between relays.
func alternate(relays int) func(session int) int {
	var mu sync.Mutex
	next := map[int]int{}
	return func(k int) int {
		mu.Lock()
		defer mu.Unlock()
		r := (k + next[k]) % relays
		next[k]++
		return r
	}
}

// sameRelay sends session k to relay k%relays.
func sameRelay(relays int) func(session int) int { return func(k int) int { return k % relays } }

// waitDrained waits up to d until every acknowledged message is delivered
// and the queue holds nothing waiting or leased; it returns how long it
// took and whether it got there.
func (f *faultFleet) waitDrained(acked map[int]faultReply, d time.Duration) (time.Duration, bool) {
	return f.waitDelivered(acked, d, true)
}

// waitDelivered waits up to d until every acknowledged message is
// delivered and, with empty, the queue holds nothing waiting or leased.
func (f *faultFleet) waitDelivered(acked map[int]faultReply, d time.Duration, empty bool) (time.Duration, bool) {
	start := time.Now()
	for time.Since(start) < d {
		got := f.deliveries()
		missing := 0
		for n := range acked {
			if got[n] == 0 {
				missing++
			}
		}
		if missing == 0 && !empty {
			return time.Since(start), true
		}
		st, err := f.stats()
		if err == nil && missing == 0 && st.Ready+st.Scheduled+st.Leased == 0 {
			return time.Since(start), true
		}
		time.Sleep(200 * time.Millisecond)
	}
	return time.Since(start), false
}

// settle waits up to d until the queue holds nothing ready, scheduled or
// leased for 3 s in a row: what is left then will not be delivered.
func (f *faultFleet) settle(d time.Duration) time.Duration {
	start := time.Now()
	var emptySince time.Time
	for time.Since(start) < d {
		st, err := f.stats()
		switch {
		case err != nil || st.Ready+st.Scheduled+st.Leased > 0:
			emptySince = time.Time{}
		case emptySince.IsZero():
			emptySince = time.Now()
		case time.Since(emptySince) >= 3*time.Second:
			return time.Since(start)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return time.Since(start)
}

// outcome waits up to d for every acknowledged message of l to be
// delivered and the queue to empty, or else for the queue to settle, and
// counts what happened.
func (f *faultFleet) outcome(l *faultLedger, d time.Duration) (c faultCount, lost []int, drain time.Duration, drained bool) {
	drain, drained = f.waitDrained(l.acked(), d)
	if !drained {
		f.settle(15 * time.Second)
	}
	c, lost = f.count(l)
	return c, lost, drain, drained
}

// faultCount is the outcome of a case's messages.
type faultCount struct {
	submitted, acked, refused, delivered, lost, duplicates, unackedDelivered int
}

// count compares the ledger with what Exchange received.
func (f *faultFleet) count(l *faultLedger) (faultCount, []int) {
	var c faultCount
	replies := l.all()
	c.submitted = len(replies)
	acked := map[int]bool{}
	for _, r := range replies {
		if r.acked() {
			acked[r.n] = true
		}
	}
	c.acked = len(acked)
	c.refused = c.submitted - c.acked
	var lost []int
	for n, k := range f.deliveries() {
		c.delivered++
		c.duplicates += k - 1
		if !acked[n] {
			c.unackedDelivered++
		}
	}
	got := f.deliveries()
	for n := range acked {
		if got[n] == 0 {
			lost = append(lost, n)
		}
	}
	slices.Sort(lost)
	c.lost = len(lost)
	return c, lost
}

// table logs rows as an aligned table under a title.
func table(tb testing.TB, title string, rows [][]string) {
	tb.Helper()
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintln(w, strings.Join(r, "\t"))
	}
	w.Flush()
	tb.Logf("%s\n%s", title, b.String())
}

// countRows are the rows of a faultCount in a table.
func countRows(c faultCount) [][]string {
	return [][]string{
		{"submitted", strconv.Itoa(c.submitted)},
		{"acknowledged (250)", strconv.Itoa(c.acked)},
		{"refused or failed", strconv.Itoa(c.refused)},
		{"delivered (distinct)", strconv.Itoa(c.delivered)},
		{"delivered, not acknowledged", strconv.Itoa(c.unackedDelivered)},
		{"duplicates", strconv.Itoa(c.duplicates)},
		{"lost (acknowledged, not delivered)", strconv.Itoa(c.lost)},
	}
}

// percentile returns the p-th percentile (0 < p ≤ 100) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// breakerOpens counts the "breaker open" log lines of every relay,
// including relays that were killed.
func (f *faultFleet) breakerOpens(all []*incRelay) int {
	n := 0
	for _, r := range all {
		n += len(r.logLines("breaker open"))
	}
	return n
}

func ms(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) + " ms" }
