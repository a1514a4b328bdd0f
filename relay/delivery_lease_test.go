package relay

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"holdfast/queue"
)

// dotSender stands for an upstream whose send takes until done is
// closed; it "writes the final dot" only when its context is still live
// then.
type dotSender struct {
	started   chan struct{}
	done      chan struct{}
	dots      atomic.Int32
	abandoned atomic.Int32
	cause     atomic.Value
}

func (s *dotSender) Send(ctx context.Context, m *queue.Message) (string, error) {
	close(s.started)
	select {
	case <-s.done:
	case <-ctx.Done():
	}
	if ctx.Err() != nil {
		s.abandoned.Add(1)
		s.cause.Store(context.Cause(ctx))
		return "", ctx.Err()
	}
	s.dots.Add(1)
	return "250 2.0.0 OK", nil
}

// TestDeliveryLeaseLostMidSend: when a message's lease is lost during its
// send (another worker took it over), the send is abandoned before the
// final dot, so that the message is not delivered twice.
func TestDeliveryLeaseLostMidSend(t *testing.T) {
	f := newFixture(t)
	rdb := f.redis.Client(t)
	s := &dotSender{started: make(chan struct{}), done: make(chan struct{})}
	id := enqueueTo(t, f, "someone@example.org")
	startDeliverer(t, f.queue, s, deliveryConfig{Lease: 600 * time.Millisecond})
	select {
	case <-s.started:
	case <-time.After(5 * time.Second):
		t.Fatal("the message was never sent")
	}
	// Another worker's lease replaces this one.
	key := "hf:{" + id[:8] + "}:m:" + id
	if err := rdb.HSet(context.Background(), key, "lease", "another-worker").Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for s.abandoned.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	close(s.done)
	time.Sleep(100 * time.Millisecond)
	if s.dots.Load() != 0 || s.abandoned.Load() != 1 {
		t.Fatalf("after the lease was lost: %d sends completed, %d abandoned; want 0 and 1", s.dots.Load(), s.abandoned.Load())
	}
	if c, _ := s.cause.Load().(error); !errors.Is(c, queue.ErrLeaseLost) {
		t.Fatalf("send cancelled by %v, want the lost lease", c)
	}
	// The new holder settles the message: this worker left it alone.
	m, err := f.queue.Get(context.Background(), id)
	if err != nil || m.State != queue.Leased || m.Attempts != 0 {
		t.Fatalf("message after the abandoned send: %+v %v", m, err)
	}
}

// TestDeliveryLeaseHungRedis: when Redis stops answering during a send
// (a hung server, a link cut without a reset), the worker cannot extend
// its lease, and the send is abandoned before the lease ends, however
// long the extension waits: after that, another replica may take the
// message and send it too.
func TestDeliveryLeaseHungRedis(t *testing.T) {
	f := newFixture(t)
	q := f.relayQueue(t)
	const lease = 1500 * time.Millisecond
	s := &dotSender{started: make(chan struct{}), done: make(chan struct{})}
	defer close(s.done)
	enqueueTo(t, f, "someone@example.org")
	startDeliverer(t, q, s, deliveryConfig{Lease: lease, Grace: 100 * time.Millisecond})
	select {
	case <-s.started:
	case <-time.After(5 * time.Second):
		t.Fatal("the message was never sent")
	}
	f.redis.Pause(t)
	// The last extension Redis ran was asked for before the pause: the
	// lease ends at most lease after it.
	leaseEnd := time.Now().Add(lease)
	deadline := time.Now().Add(10 * time.Second)
	for s.abandoned.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	abandoned := time.Now()
	f.redis.Resume(t)
	if s.abandoned.Load() == 0 {
		t.Fatalf("send still running 10 s after Redis hung, its lease of %v long over", lease)
	}
	if late := abandoned.Sub(leaseEnd); late > 0 {
		t.Fatalf("send abandoned %v after its lease ended: another replica may have sent the message meanwhile", late.Round(10*time.Millisecond))
	}
	if c, _ := s.cause.Load().(error); !errors.Is(c, queue.ErrLeaseLost) {
		t.Fatalf("send cancelled by %v, want the lost lease", c)
	}
}

// pausingSender delivers every message; the first send waits for proceed
// before its final dot, so that a test can stop Redis right then.
type pausingSender struct {
	started chan struct{}
	proceed chan struct{}
	dots    atomic.Int32
}

func (s *pausingSender) Send(ctx context.Context, m *queue.Message) (string, error) {
	if s.dots.Load() == 0 {
		close(s.started)
		<-s.proceed
	}
	s.dots.Add(1)
	return "250 2.0.0 OK", nil
}

// TestDeliveryAckAfterLongRedisOutage: a message delivered just as Redis
// stops answering, for longer than the lease (a Sentinel failover), is
// recorded delivered once Redis answers again, not leased again and sent
// a second time: nobody could take it over while Redis did not answer.
func TestDeliveryAckAfterLongRedisOutage(t *testing.T) {
	f := newFixture(t)
	q := f.relayQueue(t)
	const lease = 1500 * time.Millisecond
	s := &pausingSender{started: make(chan struct{}), proceed: make(chan struct{})}
	id := enqueueTo(t, f, "someone@example.org")
	startDeliverer(t, q, s, deliveryConfig{Workers: 1, Lease: lease, Grace: 100 * time.Millisecond})
	select {
	case <-s.started:
	case <-time.After(5 * time.Second):
		t.Fatal("the message was never sent")
	}
	f.redis.Pause(t)
	close(s.proceed)
	time.Sleep(3 * lease)
	f.redis.Resume(t)
	var m *queue.Message
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var err error
		if m, err = f.queue.Get(context.Background(), id); err == nil && m.State == queue.Delivered {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(lease) // room for a second send, if one comes
	if n := s.dots.Load(); n != 1 || m == nil || m.State != queue.Delivered || m.Attempts != 1 {
		t.Fatalf("after a Redis outage of %v from the final dot: %d sends, message %+v; want 1 send, delivered after 1 attempt", 3*lease, n, m)
	}
}

// TestDeliveryLeaseLateStart: a send that starts with part of its lease
// gone (an ack-and-lease whose reply was lost and asked again, a slow
// lease of a large message) has its lease extended in time, a third of
// the lease after it began, not a third after the send began: otherwise
// the first extension comes as the lease ends, too late, and a live send
// on a Redis that answers is abandoned.
func TestDeliveryLeaseLateStart(t *testing.T) {
	f := newFixture(t)
	const lease = 1500 * time.Millisecond
	id := enqueueTo(t, f, "someone@example.org")
	res, err := f.queue.Lease(context.Background(), "crm", 1, lease)
	if err != nil || len(res.Leases) != 1 {
		t.Fatalf("lease: %+v %v", res, err)
	}
	l := res.Leases[0]
	time.Sleep(time.Until(l.LeaseEnd.Add(-lease / 3)))
	s := &dotSender{started: make(chan struct{}), done: make(chan struct{})}
	time.AfterFunc(2*lease, func() { close(s.done) })
	d := newDeliverer(f.queue, s, deliveryConfig{Workers: 1, Lease: lease, Grace: time.Second}, discardLogger())
	a := d.attempt(context.Background(), l, noReservation{}, nil, false)
	if s.dots.Load() != 1 || a.err != nil {
		c, _ := s.cause.Load().(error)
		t.Fatalf("send started with a third of its lease left, Redis answering: %d sends completed, %d abandoned (cause %v), err %v; want it delivered",
			s.dots.Load(), s.abandoned.Load(), c, a.err)
	}
	if m, err := f.queue.Get(context.Background(), id); err != nil || m.State != queue.Delivered || m.Attempts != 1 {
		t.Fatalf("message: %+v %v; want delivered after 1 attempt", m, err)
	}
}
