package relay

import (
	"context"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"holdfast/queue"
)

// stalledSender is an upstream that never answers: each send waits for
// its context.
type stalledSender struct{ started chan string }

func (s *stalledSender) Send(ctx context.Context, m *queue.Message) (string, error) {
	select {
	case s.started <- m.ID:
	default:
	}
	<-ctx.Done()
	return "", ctx.Err()
}

// TestShutdownWithinBudget: with the upstream stalled mid-send and an SMTP
// client idle in a session, the whole shutdown takes no longer than
// shutdown_timeout; readiness fails at once; the stalled delivery's
// message goes back to the queue without spending an attempt.
func TestShutdownWithinBudget(t *testing.T) {
	f := newFixture(t)
	o := f.opts
	o.Redis.Addrs = []string{f.redis.Addr()}
	o.HTTP.Addr = "127.0.0.1:0"
	o.Delivery.Poll = Duration(50 * time.Millisecond)
	o.ShutdownTimeout = Duration(3 * time.Second)
	stalled := &stalledSender{started: make(chan string, 1)}
	s, err := New(context.Background(), o, stalled, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	s.Start()

	c, err := smtp.Dial(s.SMTPAddrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", crmUser, crmPassword)); err != nil {
		t.Fatal(err)
	}
	id, _, err := f.queue.Enqueue(context.Background(), queue.Submission{Route: "crm", App: "crm",
		From: "billing@contoso.com", To: []string{"a@example.org"}, Body: []byte("Subject: x\r\n\r\nhi\r\n")})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-stalled.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the delivery never started")
	}

	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), o.ShutdownTimeout.D())
		defer cancel()
		s.Shutdown(ctx)
	}()
	time.Sleep(20 * time.Millisecond)
	if err := s.ready(context.Background()); err == nil {
		t.Error("ready during shutdown")
	}
	select {
	case <-done:
	case <-time.After(o.ShutdownTimeout.D() + 5*time.Second):
		t.Fatalf("shutdown still running %v after it began, with a budget of %v", time.Since(start), o.ShutdownTimeout.D())
	}
	took := time.Since(start)
	if took > o.ShutdownTimeout.D()+250*time.Millisecond {
		t.Errorf("shutdown took %v, over its budget of %v", took, o.ShutdownTimeout.D())
	}
	m, err := f.queue.Get(context.Background(), id)
	if err != nil || m.State != queue.Ready || m.Attempts != 0 {
		t.Fatalf("the stalled delivery's message after shutdown: %+v %v", m, err)
	}
	t.Logf("shutdown with a stalled upstream and an idle SMTP session took %v (budget %v)", took, o.ShutdownTimeout.D())
}
