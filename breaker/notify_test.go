package breaker

import (
	"context"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"holdfast/queue/redistest"
)

// lossyProxy forwards connections to a Redis server, and drops the
// server's replies while drop is set: the commands run, their answers are
// lost on the way back, as in a network blip or a failover after the
// write.
type lossyProxy struct {
	ln   net.Listener
	drop atomic.Bool

	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

func newLossyProxy(t *testing.T, addr string) *lossyProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &lossyProxy{ln: ln}
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			p.wg.Go(func() {
				_, _ = io.Copy(s, c)
				s.Close()
			})
			p.wg.Go(func() {
				defer c.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := s.Read(buf)
					if n > 0 && !p.drop.Load() {
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			})
		}
	})
	return p
}

// TestTransitionMadeReplyLostNotified: a relay records a failure that
// opens a breaker (an expired secret), and Redis's reply is lost (a
// network blip, a failover just after the write): the relay's command
// times out, but the script ran. The breaker is open fleet-wide, and
// every replica sees it at its next poll and holds the mail. The notice
// (OnMade, from which the fleet's one webhook goes) is then sent by a
// replica that sees the transition, once.
func TestTransitionMadeReplyLostNotified(t *testing.T) {
	srv := redistest.Start(t)
	proxy := newLossyProxy(t, srv.Addr())
	var made, seen atomic.Int32
	newSet := func(addr string) *Set {
		rdb := redis.NewClient(&redis.Options{Addr: addr, ReadTimeout: 500 * time.Millisecond,
			WriteTimeout: 500 * time.Millisecond, ContextTimeoutEnabled: true})
		t.Cleanup(func() { rdb.Close() })
		return New(rdb, Options{Poll: 50 * time.Millisecond,
			OnMade:       func(Transition) { made.Add(1) },
			OnTransition: func(Transition) { seen.Add(1) }})
	}
	a, b := newSet(proxy.ln.Addr().String()), newSet(srv.Addr())
	const name = "cred:contoso"
	record(t, a, name, credErr) // registered, its script loaded, closed
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { b.Watch(ctx) })
	defer wg.Wait()
	defer cancel()

	proxy.drop.Store(true)
	if err := a.Record(context.Background(), name, errExpired); err == nil {
		t.Fatal("Record with its reply lost: no error")
	}
	proxy.drop.Store(false)
	wg.Go(func() { a.Watch(ctx) })
	deadline := time.Now().Add(5 * time.Second)
	for seen.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the replicas saw %d transitions; the breaker is %+v", seen.Load(), status(t, b, name))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := status(t, b, name); st.State != Open || st.Reason != expiredReason {
		t.Fatalf("breaker %+v, want open by the expired secret", st)
	}
	time.Sleep(time.Second) // many polls
	if n := made.Load(); n != 1 {
		t.Errorf("the breaker opened and both replicas saw it, but OnMade (the webhook) was called %d times, want 1", n)
	}
}

// TestNotifiedOncePerTransition: across replicas that all see every
// transition, OnMade is called once for each, also for a breaker whose
// record is made anew after Forget (its generations go on).
func TestNotifiedOncePerTransition(t *testing.T) {
	var mu sync.Mutex
	var made []Transition
	sets, clk := replicas(t, 3, func(_ int, o *Options) {
		o.OnMade = func(tr Transition) {
			mu.Lock()
			made = append(made, tr)
			mu.Unlock()
		}
	})
	ctx := context.Background()
	const name = "cred:contoso"
	step := func(do func(*Set) error) {
		t.Helper()
		if err := do(sets[0]); err != nil {
			t.Fatal(err)
		}
		clk.Add(time.Second)
		for _, s := range sets {
			if _, err := s.Fresh(ctx, name); err != nil {
				t.Fatal(err)
			}
		}
	}
	step(func(s *Set) error { return s.Trip(ctx, name, "test") })
	step(func(s *Set) error { return s.Reset(ctx, name) })
	step(func(s *Set) error { return s.Forget(ctx, name) })
	step(func(s *Set) error { return s.Trip(ctx, name, "test again") })
	mu.Lock()
	defer mu.Unlock()
	var got []string
	for _, tr := range made {
		got = append(got, tr.To.String()+"@"+strconv.FormatInt(tr.Generation, 10))
	}
	if want := []string{"open@1", "closed@2", "open@3"}; !slices.Equal(got, want) {
		t.Errorf("OnMade calls %v, want %v", got, want)
	}
}
