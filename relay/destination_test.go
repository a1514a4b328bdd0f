package relay

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"holdfast/queue"
)

// cutProxy forwards TCP connections to target, or, while cut, closes each
// one as soon as it is accepted (the endpoint is dead). It counts the
// connections it saw.
type cutProxy struct {
	ln     net.Listener
	target atomic.Value // string
	cut    atomic.Bool
	conns  atomic.Int64
	wg     sync.WaitGroup
}

func startCutProxy(t testing.TB) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln}
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.conns.Add(1)
			if p.cut.Load() {
				c.Close()
				continue
			}
			p.wg.Go(func() { p.pipe(c) })
		}
	})
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

func (p *cutProxy) pipe(c net.Conn) {
	defer c.Close()
	u, err := net.Dial("tcp", p.target.Load().(string))
	if err != nil {
		return
	}
	defer u.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(u, c); u.Close(); done <- struct{}{} }()
	go func() { io.Copy(c, u); c.Close(); done <- struct{}{} }()
	<-done
	<-done
}

// TestDeadSMTPEndpoint: with Exchange's SMTP endpoint dropping every
// connection, a replica tries it a few times, then leaves it alone (no
// lease, no attempt, no log line per message) but for one test per probe
// interval; once it answers again, every message goes out within about
// one probe interval.
func TestDeadSMTPEndpoint(t *testing.T) {
	const probe = time.Second
	proxy := startCutProxy(t)
	proxy.cut.Store(true)
	e := newExchangeEnv(t, 1, func(o *Options) {
		proxy.target.Store(o.Exchange.SMTPAddr)
		o.Exchange.SMTPAddr = proxy.ln.Addr().String()
		o.Exchange.DeadDestinationProbe = Duration(probe)
		o.Queue.BackoffBase = Duration(time.Second)
		o.Delivery.Workers = 8
	})

	const n = 40
	for i := range n {
		e.submit(t, 0, "billing@contoso.com", fmt.Sprintf("r%d@example.org", i), exchangeMessage(i, "billing@contoso.com"))
	}
	const dead = 4 * time.Second
	time.Sleep(dead)
	conns := proxy.conns.Load()
	// 3 failures open the breaker; then one test per probe interval.
	if limit := int64(3 + dead/probe + 2); conns > limit {
		t.Errorf("%d connection attempts in %v of a dead endpoint, want at most %d", conns, dead, limit)
	}
	var attempts int
	for _, st := range []queue.State{queue.Ready, queue.Scheduled} {
		ms, _ := e.f.queue.List(context.Background(), "app:contoso:billing@contoso.com", st, 0, 100)
		for _, m := range ms {
			attempts += m.Attempts
		}
	}
	if attempts > int(conns) {
		t.Errorf("%d attempts spent with %d connections tried", attempts, conns)
	}
	if warns := strings.Count(e.logs.String(), "delivery failed"); warns > int(conns) {
		t.Errorf("%d delivery failures logged with %d connections tried", warns, conns)
	}

	proxy.cut.Store(false)
	back := time.Now()
	waitFor(t, 10*time.Second, "every message delivered", func() bool { return e.sim.ReceivedCount() >= n })
	t.Logf("dead for %v: %d connection attempts, %d attempts spent; all %d delivered %v after the endpoint returned",
		dead, conns, attempts, n, time.Since(back).Round(time.Millisecond))
	if took := time.Since(back); took > probe+time.Second+500*time.Millisecond {
		t.Errorf("delivered %v after the endpoint returned, want within about one probe interval (%v) plus the backoff of the messages that failed before the breaker opened", took, probe)
	}
}
