package relay

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"holdfast/queue"
	"holdfast/queue/redistest"
	"holdfast/relay/upstream"
)

// fakeSender is an in-process upstream. For each message it answers with
// the error its recipient names (see outcome), after an optional delay.
type fakeSender struct {
	delay time.Duration
	block chan struct{} // when set, Send waits on it or on ctx

	mu        sync.Mutex
	sent      map[string]int // message id -> sends
	inFlight  int
	maxFlight int
}

func (s *fakeSender) Send(ctx context.Context, m *queue.Message) (string, error) {
	s.mu.Lock()
	if s.sent == nil {
		s.sent = map[string]int{}
	}
	s.sent[m.ID]++
	s.inFlight++
	s.maxFlight = max(s.maxFlight, s.inFlight)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inFlight--
		s.mu.Unlock()
	}()
	if s.block != nil {
		select {
		case <-s.block:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	time.Sleep(s.delay)
	if err := outcome(m.To[0]); err != nil {
		return "", err
	}
	return "250 2.0.0 OK", nil
}

func (s *fakeSender) sends(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sent[id]
}

// outcome maps a test recipient to the upstream's answer.
func outcome(rcpt string) error {
	switch strings.SplitN(rcpt, "@", 2)[0] {
	case "unknown":
		return &upstream.Error{Class: upstream.Permanent, Code: 550, Enhanced: "5.1.1", Text: "RESOLVER.ADR.RecipNotFound; not found"}
	case "busy":
		return &upstream.Error{Class: upstream.Transient, Code: 451, Enhanced: "4.7.0", Text: "Temporary server error. Please try again later. PRX4"}
	case "throttled":
		return &upstream.Error{Class: upstream.Throttled, Code: 429, Text: "ApplicationThrottled", RetryAfter: 42 * time.Second}
	case "expired":
		return &upstream.Error{Class: upstream.Credential, Code: 401, Text: "invalid_client AADSTS7000222"}
	case "netdown":
		return errors.New("dial tcp 127.0.0.1:587: connect: connection refused")
	case "unsure":
		// Graph's 504 after sendMail was written, as GraphSender reports
		// it when it could not mark the message itself.
		return fmt.Errorf("%w (%w)", &upstream.Error{Class: upstream.Transient, Code: 504, Text: "GatewayTimeout"}, upstream.ErrOutcomeUnknown)
	}
	return nil
}

func startDeliverer(t *testing.T, q deliveryQueue, s Sender, cfg deliveryConfig) (stop func()) {
	t.Helper()
	if cfg.Workers == 0 {
		cfg.Workers = 4
	}
	if cfg.Lease == 0 {
		cfg.Lease = time.Minute
	}
	if cfg.Poll == 0 {
		cfg.Poll = 50 * time.Millisecond
	}
	if cfg.Grace == 0 {
		cfg.Grace = 5 * time.Second
	}
	d := newDeliverer(q, s, cfg, discardLogger())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.run(ctx); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

func enqueueTo(t *testing.T, f *fixture, rcpt string) string {
	t.Helper()
	id, _, err := f.queue.Enqueue(context.Background(), queue.Submission{
		Route: "crm", App: "crm", From: "billing@contoso.com", To: []string{rcpt}, Body: []byte("Subject: x\r\n\r\nhi\r\n"),
	})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// waitState polls until the message reaches the state.
func waitState(t *testing.T, f *fixture, id string, want queue.State) *queue.Message {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := f.queue.Get(context.Background(), id)
		if err == nil && m.State == want {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("message %s: state %v (err %v), want %s", id, m, err, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDeliveryOutcomes checks that each error class takes its queue path.
func TestDeliveryOutcomes(t *testing.T) {
	f := newFixture(t)
	var authFailures atomic.Int32
	s := &fakeSender{}
	startDeliverer(t, f.queue, s, deliveryConfig{OnAuthFailure: func(ctx context.Context, route string, err error) {
		if route == "crm" && upstream.ClassOf(err) == upstream.Credential {
			authFailures.Add(1)
		}
	}})
	ok := enqueueTo(t, f, "someone@example.org")
	unknown := enqueueTo(t, f, "unknown@example.org")
	busy := enqueueTo(t, f, "busy@example.org")
	throttled := enqueueTo(t, f, "throttled@example.org")
	expired := enqueueTo(t, f, "expired@example.org")
	netdown := enqueueTo(t, f, "netdown@example.org")

	if m := waitState(t, f, ok, queue.Delivered); m.Attempts != 1 || m.LastError != "250 2.0.0 OK" {
		t.Errorf("delivered: %+v", m)
	}
	if m := waitState(t, f, unknown, queue.Dead); !strings.Contains(m.Reason, "550 5.1.1") || m.Attempts != 1 {
		t.Errorf("permanent: %+v", m)
	}
	for _, id := range []string{busy, netdown} {
		m := waitState(t, f, id, queue.Scheduled)
		if m.Attempts != 1 || time.Until(m.Due) < 40*time.Second {
			t.Errorf("transient: attempts %d, due in %v; want 1 attempt and about a minute: %+v", m.Attempts, time.Until(m.Due), m)
		}
	}
	m := waitState(t, f, throttled, queue.Scheduled)
	if wait := time.Until(m.Due); m.Attempts != 0 || wait > 42*time.Second || wait < 35*time.Second {
		t.Errorf("throttled: attempts %d, due in %v; want 0 and the 42 s asked for", m.Attempts, wait)
	}
	m = waitState(t, f, expired, queue.Scheduled)
	if m.Attempts != 0 || !strings.Contains(m.LastError, "AADSTS7000222") {
		t.Errorf("credential: %+v", m)
	}
	if authFailures.Load() != 1 {
		t.Errorf("auth failure hook called %d times, want 1", authFailures.Load())
	}
	for _, id := range []string{ok, unknown, busy, throttled, expired, netdown} {
		if n := s.sends(id); n != 1 {
			t.Errorf("message %s sent %d times, want 1", id, n)
		}
	}
}

// TestDeliveryRespectsWorkerCount: never more sends at once than workers,
// and every message is delivered exactly once.
func TestDeliveryRespectsWorkerCount(t *testing.T) {
	f := newFixture(t)
	s := &fakeSender{delay: 5 * time.Millisecond}
	var ids []string
	for range 60 {
		ids = append(ids, enqueueTo(t, f, "someone@example.org"))
	}
	startDeliverer(t, f.queue, s, deliveryConfig{Workers: 3})
	for _, id := range ids {
		waitState(t, f, id, queue.Delivered)
	}
	for _, id := range ids {
		if n := s.sends(id); n != 1 {
			t.Fatalf("message %s sent %d times", id, n)
		}
	}
	if s.maxFlight > 3 || s.maxFlight < 2 {
		t.Fatalf("%d sends at once with 3 workers", s.maxFlight)
	}
}

// TestDeliveryHeldRouteIsNotSent: a held route's mail is not touched.
func TestDeliveryHeldRouteIsNotSent(t *testing.T) {
	f := newFixture(t)
	if err := f.queue.HoldRoute(context.Background(), "crm", "breaker open"); err != nil {
		t.Fatal(err)
	}
	s := &fakeSender{}
	id := enqueueTo(t, f, "someone@example.org")
	startDeliverer(t, f.queue, s, deliveryConfig{})
	time.Sleep(300 * time.Millisecond)
	if n := s.sends(id); n != 0 {
		t.Fatalf("held message sent %d times", n)
	}
	if m := waitState(t, f, id, queue.Held); m.Attempts != 0 {
		t.Fatalf("held message spent attempts: %+v", m)
	}
	if err := f.queue.ReleaseRoute(context.Background(), "crm"); err != nil {
		t.Fatal(err)
	}
	waitState(t, f, id, queue.Delivered)
}

// TestDeliveryShutdownHandsBackUnfinished: a delivery still running when
// the grace period ends is cancelled and its message returns to the queue
// without spending an attempt.
func TestDeliveryShutdownHandsBackUnfinished(t *testing.T) {
	f := newFixture(t)
	s := &fakeSender{block: make(chan struct{})}
	id := enqueueTo(t, f, "someone@example.org")
	stop := startDeliverer(t, f.queue, s, deliveryConfig{Grace: 200 * time.Millisecond})
	waitState(t, f, id, queue.Leased)
	stop()
	m := waitState(t, f, id, queue.Ready)
	if m.Attempts != 0 || !strings.Contains(m.LastError, "shutdown") {
		t.Fatalf("after shutdown: %+v", m)
	}
}

// TestDeliveryExtendsLongLeases: a send longer than the lease keeps it.
func TestDeliveryExtendsLongLeases(t *testing.T) {
	f := newFixture(t)
	s := &fakeSender{delay: 1500 * time.Millisecond}
	id := enqueueTo(t, f, "someone@example.org")
	// Two deliverers: if the lease lapsed, the second would send again.
	startDeliverer(t, f.queue, s, deliveryConfig{Lease: 600 * time.Millisecond})
	startDeliverer(t, f.queue, s, deliveryConfig{Lease: 600 * time.Millisecond})
	waitState(t, f, id, queue.Delivered)
	if n := s.sends(id); n != 1 {
		t.Fatalf("sent %d times; the lease was not kept alive", n)
	}
}

// flakyCapacity gives room as asked, except that its first answer to a
// request for several is one reservation and an error, as a sender's
// capacity answers when Redis fails half-way (the connection slot of the
// second message cannot be read). Every reservation it gives must come
// back: used by a send or cancelled, each ends with Cancel.
type flakyCapacity struct {
	mu     sync.Mutex
	failed bool
	given  []*countedReservation
}

type countedReservation struct{ cancelled atomic.Int32 }

func (r *countedReservation) Bind(ctx context.Context) context.Context { return ctx }
func (r *countedReservation) Cancel()                                  { r.cancelled.Add(1) }

func (c *flakyCapacity) Reserve(_ context.Context, _ string, n int) ([]reservation, time.Duration, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []reservation
	for range n {
		r := &countedReservation{}
		c.given = append(c.given, r)
		out = append(out, r)
		if n > 1 && !c.failed {
			c.failed = true
			return out, 0, errors.New("send rate of box@contoso.com: dial tcp 127.0.0.1:6380: connect: connection refused")
		}
	}
	return out, 0, nil
}

// TestDeliveryGivesBackPartialRoom: room reserved for some messages
// before the sender's capacity failed for the next is given back, not
// dropped: a dropped reservation keeps its connection out of use (and its
// fleet-wide slot renewed) for good.
func TestDeliveryGivesBackPartialRoom(t *testing.T) {
	f := newFixture(t)
	s := &fakeSender{}
	var ids []string
	for range 6 {
		ids = append(ids, enqueueTo(t, f, "someone@example.org"))
	}
	c := &flakyCapacity{}
	stop := startDeliverer(t, f.queue, s, deliveryConfig{Workers: 4, Capacity: c})
	for _, id := range ids {
		waitState(t, f, id, queue.Delivered)
	}
	stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.failed {
		t.Fatal("the capacity never failed half-way")
	}
	for i, r := range c.given {
		if n := r.cancelled.Load(); n != 1 {
			t.Errorf("reservation %d of %d ended with %d Cancel calls, want 1", i+1, len(c.given), n)
		}
	}
}

// TestDeliveryOutcomeOutlastsRedisRestart: a message whose send ends
// while Redis is down has its outcome recorded once Redis is back, within
// its lease. A delivered one is neither left leased until the lease runs
// out nor sent again; a failed one is scheduled for its retry.
func TestDeliveryOutcomeOutlastsRedisRestart(t *testing.T) {
	for _, c := range []struct {
		rcpt string
		want queue.State
	}{
		{"someone@example.org", queue.Delivered},
		{"busy@example.org", queue.Scheduled},
	} {
		t.Run(string(c.want), func(t *testing.T) {
			f := newFixture(t, redistest.WithArgs("--appendfsync", "always"))
			s := &fakeSender{block: make(chan struct{})}
			id := enqueueTo(t, f, c.rcpt)
			// The lease outlasts waitState's 10 s: only the outcome ends
			// it in time.
			startDeliverer(t, f.queue, s, deliveryConfig{Workers: 1, Lease: time.Minute})
			for s.sends(id) == 0 {
				time.Sleep(5 * time.Millisecond)
			}
			f.redis.Kill(t)
			close(s.block) // the send ends with Redis down: its outcome cannot be recorded
			time.Sleep(2 * time.Second)
			f.redis.Restart(t)
			restarted := time.Now()
			m := waitState(t, f, id, c.want)
			t.Logf("recorded %v after the restart", time.Since(restarted).Round(time.Millisecond))
			if n := s.sends(id); n != 1 {
				t.Errorf("message sent %d times, want 1", n)
			}
			if m.Attempts != 1 {
				t.Errorf("attempts %d, want 1", m.Attempts)
			}
		})
	}
}

// TestDeliveryUnknownOutcomeFlagged: a send that failed but may have
// delivered the message ends its lease with the message flagged, so the
// next attempt asks the upstream first, even when the sender's own mark
// could not reach Redis (here Redis is down when the send ends, and the
// sender never marks it).
func TestDeliveryUnknownOutcomeFlagged(t *testing.T) {
	f := newFixture(t, redistest.WithArgs("--appendfsync", "always"))
	s := &fakeSender{block: make(chan struct{})}
	id := enqueueTo(t, f, "unsure@example.org")
	other := enqueueTo(t, f, "busy@example.org")
	startDeliverer(t, f.queue, s, deliveryConfig{Workers: 2, Lease: time.Minute})
	for s.sends(id) == 0 || s.sends(other) == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	f.redis.Kill(t)
	close(s.block)
	time.Sleep(time.Second)
	f.redis.Restart(t)
	waitState(t, f, id, queue.Scheduled)
	waitState(t, f, other, queue.Scheduled)
	ctx := context.Background()
	if amb, err := f.queue.Ambiguous(ctx, id); err != nil || !amb {
		t.Errorf("message whose send may have gone out: ambiguous=%v err=%v, want flagged", amb, err)
	}
	if amb, err := f.queue.Ambiguous(ctx, other); err != nil || amb {
		t.Errorf("message refused with a plain 451: ambiguous=%v err=%v, want not flagged", amb, err)
	}
}

// lostReplyQueue runs AckNext in Redis, then reports an error the first
// time, as when Redis hung or failed over before the reply came back.
type lostReplyQueue struct {
	*queue.Queue
	lost atomic.Bool
}

func (q *lostReplyQueue) AckNext(ctx context.Context, l *queue.Lease, reply string, n int, d time.Duration) (queue.LeaseResult, error) {
	res, err := q.Queue.AckNext(ctx, l, reply, n, d)
	if err == nil && q.lost.CompareAndSwap(false, true) {
		return queue.LeaseResult{}, errors.New("read tcp 127.0.0.1:6380: i/o timeout")
	}
	return res, err
}

// TestDeliveryAckNextLostReply: when the reply to an ack that leased the
// route's next message is lost, the worker asks again and gets that
// lease, and sends the message at once. It is not left leased by nobody
// until the lease runs out.
func TestDeliveryAckNextLostReply(t *testing.T) {
	f := newFixture(t)
	s := &fakeSender{}
	first := enqueueTo(t, f, "someone@example.org")
	second := enqueueTo(t, f, "someone@example.org")
	q := &lostReplyQueue{Queue: f.queue}
	// The lease outlasts waitState's 10 s: only this worker can send the
	// second message in time.
	startDeliverer(t, q, s, deliveryConfig{Workers: 1, Lease: time.Minute})
	waitState(t, f, first, queue.Delivered)
	m := waitState(t, f, second, queue.Delivered)
	if !q.lost.Load() {
		t.Fatal("no ack-and-lease reply was lost")
	}
	if m.Attempts != 1 || s.sends(first) != 1 || s.sends(second) != 1 {
		t.Errorf("second message: %d attempts; sends %d and %d; want 1 each", m.Attempts, s.sends(first), s.sends(second))
	}
}

// TestDeliveryShutdownRedisHung: a worker trying to record an outcome on
// a hung Redis stops at the end of the shutdown budget, or of the try it
// is in (settleTimeout), as does the dispatcher (go-redis's read timeout).
func TestDeliveryShutdownRedisHung(t *testing.T) {
	f := newFixture(t)
	o := f.opts
	o.Redis.Addrs = []string{f.redis.Addr()}
	rdb := RedisClient(o.Redis) // a context's deadline bounds each command
	t.Cleanup(func() { _ = rdb.Close() })
	q := queue.New(rdb, queue.Options{})
	s := &fakeSender{block: make(chan struct{})}
	id := enqueueTo(t, f, "someone@example.org")
	d := newDeliverer(q, s, deliveryConfig{Workers: 1, Lease: time.Minute, Poll: 50 * time.Millisecond, Grace: time.Minute}, discardLogger())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	for s.sends(id) == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	f.redis.Pause(t)
	close(s.block) // the ack waits on the hung Redis
	time.Sleep(200 * time.Millisecond)
	// As Server.Shutdown does: deliveries in flight are cancelled at
	// the deadline less handBack.
	const budget = 1200 * time.Millisecond
	start := time.Now()
	d.stopAt(start.Add(budget - handBack))
	cancel()
	<-done
	took := time.Since(start)
	limit := max(budget, settleTimeout, o.Redis.ReadTimeout.D())
	t.Logf("shutdown took %v; budget %v, a try at most %v", took.Round(time.Millisecond), budget, limit)
	if took > limit+500*time.Millisecond {
		t.Errorf("shutdown took %v, more than its budget or one try (%v)", took.Round(time.Millisecond), limit)
	}
	f.redis.Resume(t)
}
