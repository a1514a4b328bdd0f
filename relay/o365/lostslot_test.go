package o365_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2/clientcredentials"

	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
	"holdfast/queue/redistest"
	"holdfast/relay/o365"
	"holdfast/relay/upstream"
)

// waitLost waits until n of the sender's connections hold a slot taken
// for lost (the reaper's renewal found it expired), and fails the test
// when they do not within 10 s. It may run outside the test's goroutine.
func waitLost(t *testing.T, s *o365.SMTPSender, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.LostSlots() < n {
		if time.Now().After(deadline) {
			t.Errorf("%d connections' slots taken for lost after 10 s, want %d", s.LostSlots(), n)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// reserveOne reserves room for one message of box@contoso.com, and
// fails the test without it.
func reserveOne(t *testing.T, s *o365.SMTPSender) *o365.Grant {
	t.Helper()
	grants, _, err := s.Reserve(context.Background(), "box@contoso.com", 1)
	if err != nil || len(grants) != 1 {
		t.Fatalf("reserve: %d grants, %v", len(grants), err)
	}
	return grants[0]
}

// lostCounts is what the lost-slot tests count at their end: the
// connections the sink was opened, the slots the limits gave, and the
// messages the sink received.
type lostCounts struct {
	conns, slots int64
	received     int
}

// wantCounts checks the counts against want; why says what a count other
// than want would mean.
func wantCounts(t *testing.T, k *sink, p *proxy, limits *lostLimits, want lostCounts, why string) {
	t.Helper()
	if got := (lostCounts{p.conns.Load(), limits.acquired.Load(), len(k.received())}); got != want {
		t.Errorf("%d connections opened, %d slots taken, %d messages received; want %d, %d and %d: %s",
			got.conns, got.slots, got.received, want.conns, want.slots, want.received, why)
	}
}

// TestLostSlotGrantRefused: a grant's connection whose slot expired while
// the grant waited for its send (another relay may hold the slot now) is
// not used: the send closes it and goes on a connection with a slot of
// its own.
func TestLostSlotGrantRefused(t *testing.T) {
	limits := &lostLimits{}
	k, p, s := newSinkSenderEdit(t, func(o *o365.SMTPOptions) {
		o.Limits = limits
		o.IdleTimeout = 2 * time.Second // the reaper looks every second
	})
	ctx := context.Background()
	if _, err := s.Send(ctx, sinkMessage(0, "a@example.org")); err != nil {
		t.Fatal(err)
	}
	g := reserveOne(t, s)
	limits.lost.Store(true)
	waitLost(t, s, 1)
	if _, err := s.Send(o365.WithGrant(ctx, g), sinkMessage(1, "a@example.org")); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, k, p, limits, lostCounts{conns: 2, slots: 2, received: 2}, "the granted connection whose slot was lost was used")
}

// TestLostSlotNoNewTransaction: a send whose connection's slot is found
// lost after the connection was taken and before its transaction began
// (here while the route's check runs) does not start the transaction
// (MAIL FROM) on it: the message goes on a connection with a slot of its
// own.
func TestLostSlotNoNewTransaction(t *testing.T) {
	limits := &lostLimits{}
	var lose atomic.Bool
	var s *o365.SMTPSender
	k, p, s := newSinkSenderEdit(t, func(o *o365.SMTPOptions) {
		o.Limits = limits
		o.IdleTimeout = 2 * time.Second
		o.Router = boxRouter(o365.Route{
			Check: func(context.Context) error {
				if lose.CompareAndSwap(true, false) {
					limits.lost.Store(true)
					waitLost(t, s, 1)
				}
				return nil
			}})
	})
	ctx := context.Background()
	if _, err := s.Send(ctx, sinkMessage(0, "a@example.org")); err != nil {
		t.Fatal(err)
	}
	lose.Store(true)
	if _, err := s.Send(ctx, sinkMessage(1, "a@example.org")); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, k, p, limits, lostCounts{conns: 2, slots: 2, received: 2}, "a transaction began on the connection whose slot was lost")
}

// TestLostSlotLetsDataFinish: a transaction past its data when the slot
// is found lost runs to its end: the message is delivered once, with its
// reply, and the connection is closed after it, not used again.
func TestLostSlotLetsDataFinish(t *testing.T) {
	limits := &lostLimits{}
	k, p, s := newSinkSenderEdit(t, func(o *o365.SMTPOptions) {
		o.Limits = limits
		o.IdleTimeout = 2 * time.Second
	})
	ctx := context.Background()
	if _, err := s.Send(ctx, sinkMessage(0, "a@example.org")); err != nil {
		t.Fatal(err)
	}
	var once atomic.Bool
	k.mu.Lock()
	k.onData = func() {
		if once.CompareAndSwap(false, true) {
			limits.lost.Store(true)
			waitLost(t, s, 1)
		}
	}
	k.mu.Unlock()
	reply, err := s.Send(ctx, sinkMessage(1, "a@example.org"))
	if err != nil || !strings.HasPrefix(reply, "250 ") {
		t.Fatalf("the send whose slot was lost after its data: %q, %v", reply, err)
	}
	if got := k.received(); len(got) != 2 {
		t.Fatalf("%d messages received, want 2", len(got))
	}
	if n := s.LostSlots(); n != 0 {
		t.Errorf("%d connections whose slot was lost still open after their send", n)
	}
	limits.lost.Store(false)
	if _, err := s.Send(ctx, sinkMessage(2, "a@example.org")); err != nil {
		t.Fatal(err)
	}
	if got := p.conns.Load(); got != 2 {
		t.Errorf("%d connections opened, want 2", got)
	}
}

// TestLostSlotsMeetConnectionLimit: two relays, A and B, share a
// mailbox's 3 connection slots in a real Redis and send to the
// simulator, which answers a 4th connection with 432 4.3.2. A holds the
// 3 slots, each connection taken for a send (by a grant, or waiting for
// its MAIL FROM); Redis loses the slot records (a failover). Once A's
// reaper has found them lost, A sends large messages on what it had
// taken, and 200 ms later B, whose mail waited for a slot, takes the
// slots Redis has free. No connection meets 432: A's sends go on
// connections of new slots, and B finds none free.
func TestLostSlotsMeetConnectionLimit(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	limiter := queue.NewLimiter(rdb, nil)
	sm := startSim(t)
	p := newProxy(t, sm.SMTPAddr(), nil)
	p.slow.Store(true) // A's messages take 0.6 s or more to go out
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: sm.RootCAs()}
	t.Cleanup(tr.CloseIdleConnections)
	tokens := &simTokens{client: &http.Client{Transport: tr, Timeout: 10 * time.Second}, cfg: clientcredentials.Config{
		ClientID: clientID, ClientSecret: secret, TokenURL: sm.TokenURL(tenant), Scopes: []string{"https://outlook.office365.com/.default"}}}

	type gate struct{ arrived, open chan struct{} }
	var held atomic.Pointer[gate]
	check := func(context.Context) error {
		if g := held.Load(); g != nil {
			g.arrived <- struct{}{}
			<-g.open
		}
		return nil
	}
	newSender := func(addr string) *o365.SMTPSender {
		s, err := o365.NewSMTPSender(o365.SMTPOptions{
			Addr: addr, TLS: &tls.Config{RootCAs: sm.RootCAs()},
			CommandTimeout: 10 * time.Second, DataTimeout: 10 * time.Second,
			IdleTimeout: 2 * time.Second, PerMinute: 1000, Limits: limiter,
			Router: func(context.Context, *queue.Message) (o365.Route, error) {
				return o365.Route{Mailbox: mailbox, Tokens: tokens, Kind: o365.AppOnly, Check: check}, nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	// Bodies are made once, before the sends: A's sends must reach
	// their connections within B's 200 ms.
	body := func(lines int) []byte {
		return []byte("From: <" + mailbox + ">\r\nTo: <x@example.org>\r\nSubject: t\r\n\r\n" +
			strings.Repeat(strings.Repeat("z", 998)+"\r\n", lines))
	}
	small, large := body(1), body(8<<10) // 8 MB
	// sendAll sends body once per grant (none: without one) at once, and
	// returns their errors.
	sendAll := func(s *o365.SMTPSender, grants []*o365.Grant, id string, body []byte) []error {
		errs := make([]error, len(grants))
		var wg sync.WaitGroup
		for i, g := range grants {
			m := &queue.Message{ID: fmt.Sprint(id, i), From: mailbox, To: []string{"x@example.org"}, Body: body}
			wg.Go(func() {
				ctx := context.Background()
				if g != nil {
					ctx = o365.WithGrant(ctx, g)
				}
				_, errs[i] = s.Send(ctx, m)
			})
		}
		wg.Wait()
		return errs
	}
	ctx := context.Background()
	var met, sends, over int
	for _, kind := range []string{"granted", "before MAIL FROM"} {
		for round := range 2 {
			if err := rdb.FlushDB(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			a, b := newSender(p.ln.Addr().String()), newSender(sm.SMTPAddr())
			// A opens 3 connections: its 3 sends wait in the check, each
			// with its own, until all 3 are there.
			warm := &gate{arrived: make(chan struct{}, 3), open: make(chan struct{})}
			held.Store(warm)
			var opened sync.WaitGroup
			opened.Go(func() {
				for range 3 {
					<-warm.arrived
				}
				held.Store(nil)
				close(warm.open)
			})
			warmErrs := sendAll(a, make([]*o365.Grant, 3), "warm", small)
			opened.Wait()
			for _, err := range warmErrs {
				if err != nil {
					t.Fatal(err)
				}
			}
			if g, _, _ := b.Reserve(ctx, mailbox, 1); len(g) != 0 {
				t.Fatal("B found a slot free while A held the mailbox's 3")
			}
			var aErrs []error
			var aDone sync.WaitGroup
			// A's sends go on when the slots are found lost.
			g := &gate{arrived: make(chan struct{}, 3), open: make(chan struct{})}
			switch kind {
			case "granted":
				grants, _, err := a.Reserve(ctx, mailbox, 3)
				if err != nil || len(grants) != 3 {
					t.Fatalf("A reserved %d, %v", len(grants), err)
				}
				aDone.Go(func() {
					<-g.open
					aErrs = sendAll(a, grants, "a", large)
				})
			case "before MAIL FROM":
				held.Store(g)
				aDone.Go(func() { aErrs = sendAll(a, make([]*o365.Grant, 3), "a", large) })
				for range 3 {
					<-g.arrived
				}
				held.Store(nil)
			}
			if err := rdb.FlushDB(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			waitLost(t, a, 3)
			close(g.open)
			time.Sleep(200 * time.Millisecond)
			grants, _, err := b.Reserve(ctx, mailbox, 3)
			if err != nil {
				t.Fatal(err)
			}
			bErrs := sendAll(b, grants, "b", small)
			aDone.Wait()
			for _, err := range append(aErrs, bErrs...) {
				sends++
				var ue *upstream.Error
				if errors.As(err, &ue) && ue.Code == 432 {
					met++
				} else if err != nil {
					t.Errorf("%s, round %d: %v", kind, round, err)
				}
			}
			if n := sm.Counters().Mailboxes[mailbox].MaxConcurrentSMTP; n > 3 {
				over++
				t.Logf("%s, round %d: %d connections at once as the mailbox; B took %d slots", kind, round, n, len(grants))
			}
			a.Close()
			b.Close()
			waitSimIdle(t, sm)
		}
	}
	t.Logf("%d of %d sends met 432 4.3.2; %d of 4 rounds went over 3 connections", met, sends, over)
	if met > 0 || over > 0 {
		t.Errorf("%d sends met 432, %d rounds went over the mailbox's 3 connections; want none", met, over)
	}
}

// waitSimIdle waits until the simulator has no SMTP session open as
// the mailbox, and clears its counters.
func waitSimIdle(t *testing.T, sm *sim.Sim) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		sm.Reset()
		if sm.Counters().Mailboxes[mailbox].MaxConcurrentSMTP == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the simulator still has sessions open as the mailbox after 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestWaitingGrantKeepsSlot: two relays, A and B, share a mailbox's 3
// connection slots in a real Redis and send to the simulator, which
// answers a 4th connection with 432 4.3.2. A reserves the 3 slots
// (grants with no connection yet), and its grants wait 7 s for their
// sends, longer than a slot lives (as during a slow acknowledgement of
// the message before). Then B asks for slots, and both send. No
// connection meets 432: A's grants kept their slots while they waited,
// and B finds none free.
func TestWaitingGrantKeepsSlot(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	limiter := queue.NewLimiter(rdb, nil)
	sm := startSim(t)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: sm.RootCAs()}
	t.Cleanup(tr.CloseIdleConnections)
	tokens := &simTokens{client: &http.Client{Transport: tr, Timeout: 10 * time.Second}, cfg: clientcredentials.Config{
		ClientID: clientID, ClientSecret: secret, TokenURL: sm.TokenURL(tenant), Scopes: []string{"https://outlook.office365.com/.default"}}}
	newSender := func() *o365.SMTPSender {
		s, err := o365.NewSMTPSender(o365.SMTPOptions{
			Addr: sm.SMTPAddr(), TLS: &tls.Config{RootCAs: sm.RootCAs()},
			CommandTimeout: 10 * time.Second, DataTimeout: 10 * time.Second,
			IdleTimeout: 2 * time.Second, PerMinute: 1000, Limits: limiter,
			Router: func(context.Context, *queue.Message) (o365.Route, error) {
				return o365.Route{Mailbox: mailbox, Tokens: tokens, Kind: o365.AppOnly}, nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a, b := newSender(), newSender()
	ctx := context.Background()
	aGrants, _, err := a.Reserve(ctx, mailbox, 3)
	if err != nil || len(aGrants) != 3 {
		t.Fatalf("A reserved %d, %v", len(aGrants), err)
	}
	time.Sleep(7 * time.Second)
	bGrants, _, err := b.Reserve(ctx, mailbox, 3)
	if err != nil {
		t.Fatal(err)
	}
	type sent struct {
		grant *o365.Grant
		s     *o365.SMTPSender
		err   error
	}
	var sends []*sent
	for _, g := range aGrants {
		sends = append(sends, &sent{grant: g, s: a})
	}
	for _, g := range bGrants {
		sends = append(sends, &sent{grant: g, s: b})
	}
	var wg sync.WaitGroup
	for i, x := range sends {
		m := &queue.Message{ID: fmt.Sprint("m", i), From: mailbox, To: []string{"x@example.org"},
			Body: []byte("From: <" + mailbox + ">\r\nTo: <x@example.org>\r\nSubject: t\r\n\r\nhello\r\n")}
		wg.Go(func() { _, x.err = x.s.Send(o365.WithGrant(ctx, x.grant), m) })
	}
	wg.Wait()
	met := 0
	for _, x := range sends {
		var ue *upstream.Error
		if errors.As(x.err, &ue) && ue.Code == 432 {
			met++
		} else if x.err != nil {
			t.Error(x.err)
		}
	}
	most := sm.Counters().Mailboxes[mailbox].MaxConcurrentSMTP
	t.Logf("B took %d slots; %d of %d sends met 432 4.3.2; at most %d connections at once", len(bGrants), met, len(sends), most)
	if met > 0 || most > 3 {
		t.Errorf("%d sends met 432, %d connections at once as the mailbox; want none, and at most 3", met, most)
	}
}

// TestLostSlotGrantSlotRefused: a grant's slot, taken with no connection
// on it, that was found lost while the grant waited (another relay may
// hold it now) has no connection opened on it: the send goes on a
// connection with a slot of its own.
func TestLostSlotGrantSlotRefused(t *testing.T) {
	limits := &lostLimits{}
	k, p, s := newSinkSenderEdit(t, func(o *o365.SMTPOptions) {
		o.Limits = limits
		o.IdleTimeout = 2 * time.Second
	})
	ctx := context.Background()
	g := reserveOne(t, s)
	limits.lost.Store(true)
	waitLost(t, s, 1)
	if _, err := s.Send(o365.WithGrant(ctx, g), sinkMessage(0, "a@example.org")); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, k, p, limits, lostCounts{conns: 1, slots: 2, received: 1}, "a connection was opened on the grant's lost slot")
}

// TestLostSlotFailedReset: a granted connection (without PIPELINING, so
// it is checked with RSET) whose RSET fails, and whose slot was found
// lost while the RSET ran, does not give its slot to the connection that
// replaces it: the send goes on a connection with a slot of its own.
func TestLostSlotFailedReset(t *testing.T) {
	limits := &lostLimits{}
	var s *o365.SMTPSender
	k, p, s := newSinkSenderEdit(t, func(o *o365.SMTPOptions) {
		o.Limits = limits
		o.IdleTimeout = 2 * time.Second
	}, "PIPELINING")
	ctx := context.Background()
	if _, err := s.Send(ctx, sinkMessage(0, "a@example.org")); err != nil {
		t.Fatal(err)
	}
	g := reserveOne(t, s)
	var once atomic.Bool
	k.mu.Lock()
	k.onReset = func() {
		if once.CompareAndSwap(false, true) {
			limits.lost.Store(true)
			waitLost(t, s, 1)
			limits.lost.Store(false)
			p.cut()
		}
	}
	k.mu.Unlock()
	if _, err := s.Send(o365.WithGrant(ctx, g), sinkMessage(1, "a@example.org")); err != nil {
		t.Fatal(err)
	}
	if !once.Load() {
		t.Fatal("the granted connection was not checked with RSET")
	}
	wantCounts(t, k, p, limits, lostCounts{conns: 2, slots: 2, received: 2}, "the connection replacing the one whose RSET failed was opened on its lost slot")
}

// boxRouter routes every message to box@contoso.com, app-only with a
// fixed token, on r with those fields set.
func boxRouter(r o365.Route) func(context.Context, *queue.Message) (o365.Route, error) {
	r.Mailbox, r.Tokens, r.Kind = "box@contoso.com", fixedToken{}, o365.AppOnly
	return func(context.Context, *queue.Message) (o365.Route, error) { return r, nil }
}

// slowRenewLimits is a real Limiter whose renewals fail as those of a
// Redis too slow to answer fail: the slot stays held in Redis, unrenewed,
// until it expires.
type slowRenewLimits struct {
	*queue.Limiter
	renewed atomic.Int64
}

func (l *slowRenewLimits) Renew(context.Context, *queue.Slot, time.Duration) error {
	l.renewed.Add(1)
	return context.DeadlineExceeded
}

// TestLateSlotReleased: a connection whose slot is taken for lost
// because its renewal came late (the slot is still held in Redis until
// it expires) gives the slot back when it is closed, by its own token:
// the room is free for another relay at once, and the slots another
// relay holds stay held.
func TestLateSlotReleased(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	limits := &slowRenewLimits{Limiter: queue.NewLimiter(rdb, nil)}
	var s *o365.SMTPSender
	k, _, s := newSinkSenderEdit(t, func(o *o365.SMTPOptions) {
		o.Limits = limits
		o.IdleTimeout = 2 * time.Second // the reaper looks every second
	})
	ctx := context.Background()
	const box = "box@contoso.com"
	var others []*queue.Slot
	var once atomic.Bool
	k.mu.Lock()
	k.onData = func() {
		if once.CompareAndSwap(false, true) {
			waitLost(t, s, 1)
			// Another relay takes the mailbox's 2 other slots.
			for range 2 {
				o, err := limits.Limiter.AcquireConn(ctx, box, 3, 6*time.Second)
				if err != nil || o == nil {
					t.Errorf("another relay's slot: %v, %v", o, err)
					continue
				}
				others = append(others, o)
			}
		}
	}
	k.mu.Unlock()
	if _, err := s.Send(ctx, sinkMessage(0, "a@example.org")); err != nil {
		t.Fatal(err)
	}
	if limits.renewed.Load() == 0 {
		t.Fatal("no renewal was tried")
	}
	free, err := limits.Limiter.AcquireConn(ctx, box, 3, 6*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if free == nil {
		t.Error("no slot free after the connection whose renewal came late was closed: its slot is still held")
	}
	for i, o := range others {
		if err := limits.Limiter.Renew(ctx, o, 6*time.Second); err != nil {
			t.Errorf("another relay's slot %d: %v", i, err)
		}
	}
}

// rateLimits is lostLimits that hands out a token for each send it
// counts in the rate, records the tokens given back, and has no slot
// free once full is set.
type rateLimits struct {
	lostLimits
	full     atomic.Bool
	mu       sync.Mutex
	reserved int
	returned []string
}

func (l *rateLimits) AcquireConn(ctx context.Context, mailbox string, max int, ttl time.Duration) (*queue.Slot, error) {
	if l.full.Load() {
		return nil, nil
	}
	return l.lostLimits.AcquireConn(ctx, mailbox, max, ttl)
}

func (l *rateLimits) ReserveSend(context.Context, string, int, time.Duration, ...string) (string, time.Duration, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reserved++
	return fmt.Sprint("send", l.reserved), 0, nil
}

func (l *rateLimits) ReturnSend(_ context.Context, _, token string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.returned = append(l.returned, token)
	return nil
}

// wantGrantReturned fails t unless one send was reserved, the grant's,
// and given back: nothing went out.
func (l *rateLimits) wantGrantReturned(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.reserved != 1 || len(l.returned) != 1 || l.returned[0] != "send1" {
		t.Errorf("%d sends reserved, given back: %q; want the grant's send1 given back: nothing went out", l.reserved, l.returned)
	}
}

// TestLostSlotGrantReturnsSend: a granted connection whose slot is found
// lost before its transaction, when no other connection can be had (the
// mailbox's slots are all taken), gives the grant's send back to the
// mailbox's rate: nothing went out.
func TestLostSlotGrantReturnsSend(t *testing.T) {
	limits := &rateLimits{}
	var lose atomic.Bool
	var s *o365.SMTPSender
	k, _, s := newSinkSenderEdit(t, func(o *o365.SMTPOptions) {
		o.Limits = limits
		o.IdleTimeout = 2 * time.Second
		o.MaxWait = 200 * time.Millisecond
		o.Router = boxRouter(o365.Route{
			Check: func(context.Context) error {
				if lose.CompareAndSwap(true, false) {
					limits.lost.Store(true)
					waitLost(t, s, 1)
					limits.full.Store(true)
				}
				return nil
			}})
	})
	ctx := context.Background()
	if _, err := s.Send(ctx, sinkMessage(0, "a@example.org")); err != nil {
		t.Fatal(err)
	}
	g := reserveOne(t, s)
	lose.Store(true)
	_, err := s.Send(o365.WithGrant(ctx, g), sinkMessage(1, "a@example.org"))
	if upstream.ClassOf(err) != upstream.Throttled {
		t.Fatalf("the send with no connection to be had: %v, want throttled", err)
	}
	if n := len(k.received()); n != 1 {
		t.Fatalf("%d messages received, want 1", n)
	}
	limits.wantGrantReturned(t)
}

// hungLimits is freeLimits whose renewals wait for their ctx, as with a
// Redis that does not answer; it counts those under way.
type hungLimits struct {
	freeLimits
	entered  chan struct{}
	underWay atomic.Int64
}

func (l *hungLimits) Renew(ctx context.Context, _ *queue.Slot, _ time.Duration) error {
	l.underWay.Add(1)
	defer l.underWay.Add(-1)
	select {
	case l.entered <- struct{}{}:
	default:
	}
	<-ctx.Done()
	return ctx.Err()
}

// TestCloseWaitsForReaper: every Close, also one called while another
// is closing the sender, returns only once the reaper has ended: no
// renewal of the sender's is still under way.
func TestCloseWaitsForReaper(t *testing.T) {
	limits := &hungLimits{entered: make(chan struct{}, 1)}
	_, _, s := newSinkSenderEdit(t, func(o *o365.SMTPOptions) {
		o.Limits = limits
		o.IdleTimeout = 2 * time.Second
	})
	g := reserveOne(t, s) // a slot held with no connection, renewed by the reaper
	defer g.Cancel()
	select {
	case <-limits.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the held slot was not renewed within 10 s")
	}
	var first sync.WaitGroup
	first.Go(func() { s.Close() })
	time.Sleep(100 * time.Millisecond) // the first Close is waiting for the reaper
	s.Close()
	if n := limits.underWay.Load(); n != 0 {
		t.Errorf("the second Close returned with %d renewals of the reaper's under way", n)
	}
	first.Wait()
	if n := limits.underWay.Load(); n != 0 {
		t.Errorf("the first Close returned with %d renewals of the reaper's under way", n)
	}
}

// TestLostSlotNoAuth: a connection being opened whose slot is found lost
// before its AUTH (here while the AUTH waits for its place) is closed
// without the AUTH, which is where Exchange counts a connection as the
// mailbox's: the message goes on a connection with a slot of its own.
func TestLostSlotNoAuth(t *testing.T) {
	limits := &lostLimits{}
	var lose atomic.Bool
	var auths atomic.Int64
	var s *o365.SMTPSender
	k, p, s := newSinkSenderEdit(t, func(o *o365.SMTPOptions) {
		o.Limits = limits
		o.IdleTimeout = 2 * time.Second
		o.OnAuth = func(error) { auths.Add(1) }
		o.Router = boxRouter(o365.Route{
			Turn: func(context.Context, bool) (o365.AuthTurn, error) {
				if lose.CompareAndSwap(true, false) {
					limits.lost.Store(true)
					waitLost(t, s, 1)
					limits.lost.Store(false)
				}
				return o365.AuthTurn{Placed: true}, nil
			}})
	})
	lose.Store(true)
	if _, err := s.Send(context.Background(), sinkMessage(0, "a@example.org")); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, k, p, limits, lostCounts{conns: 2, slots: 2, received: 1}, "the connection whose slot was lost as it opened")
	if n := auths.Load(); n != 1 {
		t.Errorf("%d AUTHs, want 1: the connection whose slot was lost before its AUTH sent it, and counted at Exchange as the mailbox's", n)
	}
}

// TestRefusedCheckReturnsSend: a granted send that the route's check
// refuses (a breaker opened since the grant) gives the grant's send back
// to the mailbox's rate: nothing went out.
func TestRefusedCheckReturnsSend(t *testing.T) {
	limits := &rateLimits{}
	refused := errors.New("breaker open")
	_, _, s := newSinkSenderEdit(t, func(o *o365.SMTPOptions) {
		o.Limits = limits
		o.Router = boxRouter(o365.Route{
			Check: func(context.Context) error { return refused }})
	})
	g := reserveOne(t, s)
	if _, err := s.Send(o365.WithGrant(context.Background(), g), sinkMessage(0, "a@example.org")); !errors.Is(err, refused) {
		t.Fatalf("the send the check refused: %v", err)
	}
	limits.wantGrantReturned(t)
}

// TestStaleGrantReturnsSend: a granted kept connection that no longer
// answers (closed by the server before its RSET was answered), when no
// other connection can be had, gives the grant's send back to the
// mailbox's rate: nothing went out.
func TestStaleGrantReturnsSend(t *testing.T) {
	limits := &rateLimits{}
	k, p, s := newSinkSenderEdit(t, func(o *o365.SMTPOptions) {
		o.Limits = limits
		o.MaxWait = 200 * time.Millisecond
	})
	ctx := context.Background()
	if _, err := s.Send(ctx, sinkMessage(0, "a@example.org")); err != nil {
		t.Fatal(err)
	}
	g := reserveOne(t, s) // the kept connection
	p.cut()
	limits.full.Store(true)
	_, err := s.Send(o365.WithGrant(ctx, g), sinkMessage(1, "a@example.org"))
	if upstream.ClassOf(err) != upstream.Throttled {
		t.Fatalf("the send with no connection to be had: %v, want throttled", err)
	}
	if n := len(k.received()); n != 1 {
		t.Fatalf("%d messages received, want 1", n)
	}
	limits.wantGrantReturned(t)
}
