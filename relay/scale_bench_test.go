package relay

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"holdfast/breaker"
	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
	"holdfast/queue/redistest"
)

// countingSender accepts every message at once and counts them.
type countingSender struct{ n atomic.Int64 }

func (s *countingSender) Send(ctx context.Context, m *queue.Message) (string, error) {
	s.n.Add(1)
	return "250 2.0.0 OK", nil
}

// drainRoutes starts a deliverer with 8 workers, lets it settle (its
// start-up index sweep), then enqueues perRoute messages on each route and
// returns how long from the first enqueue until all were delivered.
func drainRoutes(b *testing.B, q *queue.Queue, routes []string, perRoute int) time.Duration {
	b.Helper()
	ctx := context.Background()
	s := &countingSender{}
	d := newDeliverer(q, s, deliveryConfig{Workers: 8, Lease: time.Minute, Poll: 50 * time.Millisecond, Grace: time.Second}, discardLogger())
	dctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { d.run(dctx); close(done) }()
	defer func() { cancel(); <-done }()
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	for _, r := range routes {
		for range perRoute {
			if _, _, err := q.Enqueue(ctx, queue.Submission{Route: r, From: "a@example.com", To: []string{"b@example.org"}, Body: []byte("Subject: x\r\n\r\nhi\r\n")}); err != nil {
				b.Fatal(err)
			}
			d.notify()
		}
	}
	want := int64(len(routes) * perRoute)
	deadline := time.Now().Add(5 * time.Minute)
	for s.n.Load() < want {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d delivered", s.n.Load(), want)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return time.Since(start)
}

// idleRoutes gives the queue n routes that had mail, all of it delivered.
func idleRoutes(b *testing.B, q *queue.Queue, n int) {
	b.Helper()
	routes := make([]string, n)
	for i := range routes {
		routes[i] = fmt.Sprintf("app:contoso:idle%d@contoso.com", i)
	}
	drainRoutes(b, q, routes, 1)
}

// BenchmarkDeliveryRoutes measures delivery through the queue and the
// dispatcher, with an upstream that accepts at once, of 2,000 messages
// spread over 1, 100 or 10,000 routes (mailboxes).
func BenchmarkDeliveryRoutes(b *testing.B) {
	for _, n := range []int{1, 100, 10_000} {
		b.Run(fmt.Sprintf("mailboxes=%d", n), func(b *testing.B) {
			const total = 2000
			per := max(1, total/n)
			var took time.Duration
			for range b.N {
				q := queue.New(newFixture(b).redis.Client(b), queue.Options{})
				routes := make([]string, n)
				for i := range routes {
					routes[i] = fmt.Sprintf("app:contoso:box%d@contoso.com", i)
				}
				took += drainRoutes(b, q, routes, per)
			}
			b.ReportMetric(float64(b.N*n*per)/took.Seconds(), "delivered/s")
		})
	}
}

// BenchmarkBusyRoute measures one busy route's delivery rate (6,000
// messages) alone, then beside 10,000 idle routes, and reports the ratio
// (1 means the idle routes cost nothing).
func BenchmarkBusyRoute(b *testing.B) {
	const msgs = 6000
	var alone, crowded time.Duration
	for range b.N {
		q := queue.New(newFixture(b).redis.Client(b), queue.Options{})
		alone += drainRoutes(b, q, []string{"app:contoso:busy@contoso.com"}, msgs)
		q = queue.New(newFixture(b).redis.Client(b), queue.Options{})
		idleRoutes(b, q, 10_000)
		crowded += drainRoutes(b, q, []string{"app:contoso:busy@contoso.com"}, msgs)
	}
	b.ReportMetric(float64(b.N*msgs)/alone.Seconds(), "alone/s")
	b.ReportMetric(float64(b.N*msgs)/crowded.Seconds(), "beside-10k-idle/s")
	b.ReportMetric(alone.Seconds()/crowded.Seconds(), "ratio")
}

// BenchmarkHeldRelease measures the release of a held backlog of one
// mailbox (1,000 messages) through the simulator by 1, 2 and 3 replicas
// sharing its 3 connection slots, from an operator's reset of the
// mailbox's breaker to the last message at the simulator.
func BenchmarkHeldRelease(b *testing.B) {
	for _, replicas := range []int{1, 2, 3} {
		b.Run(fmt.Sprintf("replicas=%d", replicas), func(b *testing.B) {
			const backlog = 1000
			var took time.Duration
			for range b.N {
				e := newExchangeEnv(b, replicas, func(o *Options) {
					o.Log.Level = "warn"
					o.Exchange.MessagesPerMinute = 1_000_000
					o.Delivery.Workers = 8
				})
				ctx := context.Background()
				route := "app:contoso:billing@contoso.com"
				// The mailbox's breaker holds the route: a hold of the
				// queue's alone is released by the relays' next
				// reconciliation with the breakers, at any moment.
				set, name := e.relays[0].gate.set, mailboxBreaker("billing@contoso.com")
				if err := set.Trip(ctx, name, "bench"); err != nil {
					b.Fatal(err)
				}
				e.waitOpen(b, name)
				body := []byte("From: <billing@contoso.com>\r\nSubject: bench\r\n\r\n" + strings.Repeat("z", 2000) + "\r\n")
				for range backlog {
					if _, _, err := e.f.queue.Enqueue(ctx, queue.Submission{Route: route, App: "crm",
						From: "billing@contoso.com", To: []string{"sink@example.org"}, Body: body}); err != nil {
						b.Fatal(err)
					}
				}
				e.waitHeld(b, route, backlog)
				if n := e.sim.ReceivedCount(); n != 0 {
					b.Fatalf("%d messages delivered before the release", n)
				}
				start := time.Now()
				if err := set.Reset(ctx, name); err != nil {
					b.Fatal(err)
				}
				e.waitReceived(b, backlog)
				took += time.Since(start)
			}
			b.ReportMetric(took.Seconds()/float64(b.N), "s/release")
		})
	}
}

// waitOpen waits until every replica sees the breaker name open, for up
// to 10 s.
func (e *exchangeEnv) waitOpen(b *testing.B, name string) {
	b.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, r := range e.relays {
		for r.gate.set.Cached(name).State != breaker.Open {
			if time.Now().After(deadline) {
				b.Fatalf("%s not open after 10 s", name)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// waitHeld waits until route holds n messages, all held, for up to 10 s.
func (e *exchangeEnv) waitHeld(b *testing.B, route string, n int) {
	b.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := e.f.queue.Stats(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		for _, rs := range st.Routes {
			if rs.Route == route && rs.Held == int64(n) && rs.Ready+rs.Scheduled+rs.Leased == 0 {
				return
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s does not hold its %d messages after 10 s: %+v", route, n, st.Routes)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitReceived waits until the simulator has received n messages, for up
// to 2 minutes.
func (e *exchangeEnv) waitReceived(b *testing.B, n int) {
	b.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for e.sim.ReceivedCount() < n {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d delivered", e.sim.ReceivedCount(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// BenchmarkNewSessions measures how fast two replicas send one message
// to each of 200 mailboxes, each in a session of its own, with the
// simulator answering across a 20 ms round trip: every session takes
// the credential's fleet-wide AUTH places (two at the default
// threshold) for its AUTH, so the time a place is held bounds the
// credential's new sessions a second.
func BenchmarkNewSessions(b *testing.B) {
	const boxes = 200
	var took time.Duration
	for range b.N {
		e := newExchangeEnvSim(b, 2, func(c *sim.Config) {
			for i := range boxes {
				c.Tenants[0].Mailboxes = append(c.Tenants[0].Mailboxes, sim.Mailbox{Address: fmt.Sprintf("session%d@contoso.com", i)})
			}
		}, func(o *Options) { o.Log.Level = "warn" })
		e.sim.SetFault(sim.Fault{SMTPRoundTrip: 20 * time.Millisecond})
		ctx := context.Background()
		start := time.Now()
		for i := range boxes {
			from := fmt.Sprintf("session%d@contoso.com", i)
			if _, _, err := e.f.queue.Enqueue(ctx, queue.Submission{Route: "app:contoso:" + from, App: "crm",
				From: from, To: []string{"sink@example.org"}, Body: []byte("From: <" + from + ">\r\nSubject: bench\r\n\r\nhi\r\n")}); err != nil {
				b.Fatal(err)
			}
		}
		e.waitReceived(b, boxes)
		took += time.Since(start)
	}
	b.ReportMetric(float64(b.N*boxes)/took.Seconds(), "sessions/s")
}

// BenchmarkDeadUpstream counts what a replica sends to an SMTP endpoint
// that drops every connection for 5 s, with 40 messages queued and a
// probe interval of 1 s: connection attempts per probe interval, and
// delivery attempts spent.
func BenchmarkDeadUpstream(b *testing.B) {
	const probe, dead, msgs = time.Second, 5 * time.Second, 40
	var conns, spent int64
	for range b.N {
		proxy := startCutProxy(b)
		proxy.cut.Store(true)
		e := newExchangeEnv(b, 1, func(o *Options) {
			proxy.target.Store(o.Exchange.SMTPAddr)
			o.Exchange.SMTPAddr = proxy.ln.Addr().String()
			o.Exchange.DeadDestinationProbe = Duration(probe)
			o.Log.Level = "warn"
		})
		ctx := context.Background()
		route := "app:contoso:billing@contoso.com"
		var ids []string
		for range msgs {
			id, _, err := e.f.queue.Enqueue(ctx, queue.Submission{Route: route, App: "crm",
				From: "billing@contoso.com", To: []string{"sink@example.org"}, Body: []byte("Subject: x\r\n\r\nhi\r\n")})
			if err != nil {
				b.Fatal(err)
			}
			ids = append(ids, id)
		}
		e.relays[0].deliverer.notify()
		time.Sleep(dead)
		conns += proxy.conns.Load()
		for _, id := range ids {
			if m, err := e.f.queue.Get(ctx, id); err == nil {
				spent += int64(m.Attempts)
			}
		}
	}
	b.ReportMetric(float64(conns)/float64(b.N)/(dead.Seconds()/probe.Seconds()), "conns/probe-interval")
	b.ReportMetric(float64(spent)/float64(b.N), "attempts-spent")
}

// BenchmarkReconcileRoutes measures one reconciliation of a replica's
// held set with the breakers, over 2,000 mailboxes of one credential
// with a message each: holding them all once the credential's breaker
// opens, and releasing them all once it closes. Redis is on loopback,
// or 1 ms away as a managed Redis in another zone is.
func BenchmarkReconcileRoutes(b *testing.B) {
	const boxes = 2000
	for _, rtt := range []time.Duration{0, time.Millisecond} {
		b.Run(fmt.Sprintf("redis-rtt=%v", rtt), func(b *testing.B) {
			var hold, release time.Duration
			for range b.N {
				srv := newFixture(b).redis
				rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), Dialer: distantDialer(rtt)})
				b.Cleanup(func() { _ = rdb.Close() })
				q := queue.New(rdb, queue.Options{})
				g := &gate{set: breaker.New(rdb, breaker.Options{}), q: q, log: discardLogger()}
				ctx := context.Background()
				fillMailboxes(b, srv, boxes)
				cred := credentialBreaker("contoso")
				if err := g.set.Trip(ctx, cred, "bench"); err != nil {
					b.Fatal(err)
				}
				hold += timeReconcile(b, g, boxes)
				if err := g.set.Reset(ctx, cred); err != nil {
					b.Fatal(err)
				}
				release += timeReconcile(b, g, 0)
			}
			b.ReportMetric(hold.Seconds()/float64(b.N), "s/hold")
			b.ReportMetric(release.Seconds()/float64(b.N), "s/release")
		})
	}
}

// distantDialer dials Redis over connections whose every write waits
// rtt first: each command, or pipeline, costs a round trip of rtt.
func distantDialer(rtt time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil || rtt == 0 {
			return c, err
		}
		return &slowConn{Conn: c, delay: rtt}, nil
	}
}

// slowConn waits delay before each write.
type slowConn struct {
	net.Conn
	delay time.Duration
}

func (c *slowConn) Write(p []byte) (int, error) {
	time.Sleep(c.delay)
	return c.Conn.Write(p)
}

// timeReconcile times one reconciliation and checks that held routes
// are held after it.
func timeReconcile(b *testing.B, g *gate, held int) time.Duration {
	b.Helper()
	ctx := context.Background()
	start := time.Now()
	if err := g.reconcile(ctx, true); err != nil {
		b.Fatal(err)
	}
	took := time.Since(start)
	routes, err := g.q.Routes(ctx)
	if err != nil {
		b.Fatal(err)
	}
	got, err := g.q.HeldRoutes(ctx, routes)
	if err != nil {
		b.Fatal(err)
	}
	if len(got) != held {
		b.Fatalf("%d routes held after the reconciliation, want %d", len(got), held)
	}
	return took
}

// fillMailboxes queues one message for each of boxes mailboxes of the
// credential contoso, each its own route.
func fillMailboxes(b *testing.B, srv *redistest.Server, boxes int) {
	b.Helper()
	fill := queue.New(srv.Client(b), queue.Options{})
	for i := range boxes {
		from := fmt.Sprintf("box%d@contoso.com", i)
		if _, _, err := fill.Enqueue(context.Background(), queue.Submission{Route: "app:contoso:" + from, App: "crm",
			From: from, To: []string{"sink@example.org"}, Body: []byte("Subject: x\r\n\r\nhi\r\n")}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReconcileRoutesFleet: three relays see a credential's breaker
// close at once and release its 2,000 held routes together, as a fleet
// does after a rotation. s/release is the time until all three are done;
// cmds/route the Redis commands all three sent for each route.
func BenchmarkReconcileRoutesFleet(b *testing.B) {
	const boxes, relays = 2000, 3
	var release time.Duration
	var cmds float64
	for range b.N {
		srv := newFixture(b).redis
		var gates []*gate
		for range relays {
			rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
			b.Cleanup(func() { _ = rdb.Close() })
			gates = append(gates, &gate{set: breaker.New(rdb, breaker.Options{}), q: queue.New(rdb, queue.Options{}), log: discardLogger()})
		}
		ctx := context.Background()
		fillMailboxes(b, srv, boxes)
		cred := credentialBreaker("contoso")
		if err := gates[0].set.Trip(ctx, cred, "bench"); err != nil {
			b.Fatal(err)
		}
		timeReconcile(b, gates[0], boxes)
		if err := gates[0].set.Reset(ctx, cred); err != nil {
			b.Fatal(err)
		}
		before := commandsProcessed(b, srv.Client(b))
		start := time.Now()
		var wg sync.WaitGroup
		for _, g := range gates {
			wg.Go(func() {
				if err := g.reconcile(ctx, true); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
		release += time.Since(start)
		cmds += float64(commandsProcessed(b, srv.Client(b))-before) / boxes
		if got, err := gates[0].q.HeldRoutes(ctx, routesOf(b, gates[0])); err != nil || len(got) != 0 {
			b.Fatalf("%d routes held after the fleet's reconciliation (%v)", len(got), err)
		}
	}
	b.ReportMetric(release.Seconds()/float64(b.N), "s/release")
	b.ReportMetric(cmds/float64(b.N), "cmds/route")
}

func routesOf(b *testing.B, g *gate) []string {
	routes, err := g.q.Routes(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	return routes
}

// commandsProcessed is Redis's count of commands run so far.
func commandsProcessed(b *testing.B, rdb *redis.Client) int64 {
	info, err := rdb.Info(context.Background(), "stats").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "total_commands_processed:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	b.Fatal("no total_commands_processed in INFO")
	return 0
}
