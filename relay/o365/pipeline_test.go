package o365_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/oauth2"

	"holdfast/queue"
	"holdfast/relay/o365"
	"holdfast/relay/upstream"
)

// sink is an in-process SMTP server that takes any XOAUTH2 token, refuses
// recipients that start with "bad" and, for now, those that start with
// "later".
type sink struct {
	mu  sync.Mutex
	got []string // "from>to,to:body"
	// onData, when set, runs when a message has come whole, before the
	// sink takes it and replies.
	onData func()
	// onReset, when set, runs at a reset with no transaction to end (an
	// RSET between messages, or the session's end), before the sink
	// replies.
	onReset func()
}

func (k *sink) NewSession(*smtp.Conn) (smtp.Session, error) { return &sinkSession{k: k}, nil }

type sinkSession struct {
	k    *sink
	from string
	to   []string
}

func (s *sinkSession) AuthMechanisms() []string { return []string{"XOAUTH2"} }
func (s *sinkSession) Auth(string) (sasl.Server, error) {
	return anyToken{}, nil
}
func (s *sinkSession) Mail(from string, _ *smtp.MailOptions) error { s.from = from; return nil }
func (s *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if strings.HasPrefix(to, "bad") {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 10}, Message: "Recipient not found"}
	}
	if strings.HasPrefix(to, "later") {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 3}, Message: "Try again later"}
	}
	s.to = append(s.to, to)
	return nil
}
func (s *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.k.mu.Lock()
	onData := s.k.onData
	s.k.mu.Unlock()
	if onData != nil {
		onData()
	}
	s.k.mu.Lock()
	s.k.got = append(s.k.got, s.from+">"+strings.Join(s.to, ",")+":"+string(b))
	s.k.mu.Unlock()
	return nil
}
func (s *sinkSession) Reset() {
	s.k.mu.Lock()
	onReset := s.k.onReset
	s.k.mu.Unlock()
	if onReset != nil && s.from == "" {
		onReset()
	}
	s.from, s.to = "", nil
}
func (s *sinkSession) Logout() error { return nil }

func (k *sink) received() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.got...)
}

type anyToken struct{}

func (anyToken) Next([]byte) ([]byte, bool, error) { return nil, true, nil }

// proxy sits between the sender and the sink. It counts the sender's
// writes as the reads that carry them, can hide an EHLO keyword, and can
// cut every connection.
type proxy struct {
	ln     net.Listener
	to     string
	hide   []string // EHLO keywords the sender does not see
	writes atomic.Int64
	conns  atomic.Int64
	mute   atomic.Bool // the server's replies are dropped
	slow   atomic.Bool // the sender's bytes are passed on at about 12 MB/s

	mu   sync.Mutex
	open []net.Conn
	wg   sync.WaitGroup
}

func newProxy(t *testing.T, to string, hide []string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, to: to, hide: hide}
	p.wg.Go(p.serve)
	t.Cleanup(func() { ln.Close(); p.cut(); p.wg.Wait() })
	return p
}

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.to)
		if err != nil {
			c.Close()
			continue
		}
		p.conns.Add(1)
		p.mu.Lock()
		p.open = append(p.open, c, u)
		p.mu.Unlock()
		p.wg.Go(func() {
			buf := make([]byte, 64<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					p.writes.Add(1)
					u.Write(buf[:n])
					if p.slow.Load() {
						time.Sleep(5 * time.Millisecond)
					}
				}
				if err != nil {
					u.Close()
					return
				}
			}
		})
		p.wg.Go(func() {
			buf := make([]byte, 64<<10)
			for {
				n, err := u.Read(buf)
				if n > 0 && !p.mute.Load() {
					out := buf[:n]
					for _, h := range p.hide {
						out = bytes.ReplaceAll(out, []byte("250-"+h+"\r\n"), []byte("250-X"+h+"\r\n"))
					}
					c.Write(out)
				}
				if err != nil {
					c.Close()
					return
				}
			}
		})
	}
}

// cut closes every connection through the proxy.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.open {
		c.Close()
	}
	p.open = nil
}

// freeLimits is an o365.Limits with no limit.
type freeLimits struct{}

func (freeLimits) AcquireConn(context.Context, string, int, time.Duration) (*queue.Slot, error) {
	return &queue.Slot{}, nil
}
func (freeLimits) Renew(context.Context, *queue.Slot, time.Duration) error { return nil }
func (freeLimits) Release(context.Context, *queue.Slot) error              { return nil }
func (freeLimits) TakeSend(context.Context, string, int, time.Duration) (time.Duration, error) {
	return 0, nil
}
func (freeLimits) ReserveSend(context.Context, string, int, time.Duration, ...string) (string, time.Duration, error) {
	return "", 0, nil
}
func (freeLimits) ReturnSend(context.Context, string, string) error { return nil }

type fixedToken struct{}

func (fixedToken) Token(context.Context) (*oauth2.Token, error) {
	return &oauth2.Token{AccessToken: "token"}, nil
}
func (fixedToken) Invalidate() {}

// newSinkSender starts a sink behind a proxy that hides the keywords hide
// from EHLO, and a sender to it over plaintext.
func newSinkSender(t *testing.T, hide ...string) (*sink, *proxy, *o365.SMTPSender) {
	t.Helper()
	return newSinkSenderWith(t, time.Minute, time.Minute, hide...)
}

// newSinkSenderWith is newSinkSender with the sender's CommandTimeout and
// DataTimeout.
func newSinkSenderWith(t *testing.T, command, data time.Duration, hide ...string) (*sink, *proxy, *o365.SMTPSender) {
	t.Helper()
	return newSinkSenderEdit(t, func(o *o365.SMTPOptions) { o.CommandTimeout, o.DataTimeout = command, data }, hide...)
}

// newSinkSenderEdit is newSinkSender with the sender's options changed by
// edit.
func newSinkSenderEdit(t *testing.T, edit func(*o365.SMTPOptions), hide ...string) (*sink, *proxy, *o365.SMTPSender) {
	t.Helper()
	k := &sink{}
	p := newProxy(t, serveSMTP(t, k), hide)
	o := o365.SMTPOptions{
		Addr:              p.ln.Addr().String(),
		InsecurePlaintext: true,
		CommandTimeout:    time.Minute,
		DataTimeout:       time.Minute,
		IdleTimeout:       time.Minute,
		PerMinute:         1000,
		Limits:            freeLimits{},
		Router: func(context.Context, *queue.Message) (o365.Route, error) {
			return o365.Route{Mailbox: "box@contoso.com", Tokens: fixedToken{}, Kind: o365.AppOnly}, nil
		},
	}
	edit(&o)
	s, err := o365.NewSMTPSender(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return k, p, s
}

// serveSMTP serves b over plaintext SMTP on a loopback port until the
// test ends, and returns its address.
func serveSMTP(t *testing.T, b smtp.Backend) string {
	t.Helper()
	srv := smtp.NewServer(b)
	srv.AllowInsecureAuth = true
	srv.Domain = "sink.localhost"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(ln) })
	t.Cleanup(func() { srv.Close(); wg.Wait() })
	return ln.Addr().String()
}

func sinkMessage(i int, to ...string) *queue.Message {
	return &queue.Message{ID: fmt.Sprint("m", i), From: "box@contoso.com", To: to,
		Body: []byte(fmt.Sprintf("Subject: %d\r\n\r\n.leading dot\r\nline %d\r\n", i, i))}
}

// sendSome sends n messages to the recipients one after another on the
// sender's kept connection and returns the sender's writes per message
// after the first.
func sendSome(t *testing.T, p *proxy, s *o365.SMTPSender, n int, to ...string) float64 {
	t.Helper()
	ctx := context.Background()
	if _, err := s.Send(ctx, sinkMessage(0, to...)); err != nil {
		t.Fatal(err)
	}
	before := p.writes.Load()
	for i := 1; i <= n; i++ {
		if _, err := s.Send(ctx, sinkMessage(i, to...)); err != nil {
			t.Fatal(err)
		}
	}
	return float64(p.writes.Load()-before) / float64(n)
}

// TestChunkedSend: on a server that offers PIPELINING and CHUNKING, a
// message to one recipient on a kept connection goes in one write (RSET,
// MAIL FROM, RCPT TO, BDAT LAST and the message), as sent, leading dots
// and all. A refused recipient refuses the chunk and nothing is sent; the
// session stays in step.
func TestChunkedSend(t *testing.T) {
	k, p, s := newSinkSender(t)
	if perMsg := sendSome(t, p, s, 20, "a@example.org"); perMsg > 1.5 {
		t.Fatalf("%.1f writes per message on a kept connection, want 1", perMsg)
	}
	got := k.received()
	if len(got) != 21 || got[5] != "box@contoso.com>a@example.org:Subject: 5\r\n\r\n.leading dot\r\nline 5\r\n" {
		t.Fatalf("received %d, the sixth %q", len(got), got[5])
	}
	ctx := context.Background()
	for _, to := range []string{"bad1@example.org", "later1@example.org"} {
		_, err := s.Send(ctx, sinkMessage(30, to))
		want := upstream.Permanent
		if to[0] == 'l' {
			want = upstream.Transient
		}
		if upstream.ClassOf(err) != want {
			t.Fatalf("to %s: %v, want %v", to, err, want)
		}
		if _, err := s.Send(ctx, sinkMessage(31, "c@example.org")); err != nil {
			t.Fatalf("the message after one to %s: %v", to, err)
		}
	}
	if got := k.received(); len(got) != 23 || !strings.HasPrefix(got[22], "box@contoso.com>c@example.org:") {
		t.Fatalf("received %d: %q", len(got), got[len(got)-1])
	}
	// A body with a bare LF goes by DATA, which ends its lines with CRLF.
	m := sinkMessage(40, "a@example.org")
	m.Body = []byte("Subject: lf\n\nbare\n")
	if _, err := s.Send(ctx, m); err != nil {
		t.Fatal(err)
	}
	if got := k.received(); !strings.HasSuffix(got[len(got)-1], ":Subject: lf\r\n\r\nbare\r\n") {
		t.Fatalf("received %q", got[len(got)-1])
	}
}

// TestPipelinedSend: on a server that offers PIPELINING, a message to
// several recipients (or on a server without CHUNKING, to one) on a kept
// connection goes in two writes (RSET, MAIL FROM, RCPT TO and DATA, then
// the message), every message arrives whole, dot-stuffing undone, and
// rejected recipients are named in the reply as before. A recipient
// refused for now keeps the message from all of them.
func TestPipelinedSend(t *testing.T) {
	k, p, s := newSinkSender(t)
	if perMsg := sendSome(t, p, s, 10, "a@example.org", "b@example.org"); perMsg > 2.5 || perMsg < 1.5 {
		t.Fatalf("%.1f writes per message to two recipients on a kept connection, want 2", perMsg)
	}
	k1, p1, s1 := newSinkSender(t, "CHUNKING")
	if perMsg := sendSome(t, p1, s1, 10, "a@example.org"); perMsg > 2.5 || perMsg < 1.5 {
		t.Fatalf("%.1f writes per message without CHUNKING, want 2", perMsg)
	}
	if got := k1.received(); len(got) != 11 || got[5] != "box@contoso.com>a@example.org:Subject: 5\r\n\r\n.leading dot\r\nline 5\r\n" {
		t.Fatalf("without CHUNKING: received %d, the sixth %q", len(got), got[5])
	}
	got := k.received()
	if len(got) != 11 || got[5] != "box@contoso.com>a@example.org,b@example.org:Subject: 5\r\n\r\n.leading dot\r\nline 5\r\n" {
		t.Fatalf("received %d, the sixth %q", len(got), got[5])
	}
	if n := p.conns.Load(); n != 1 {
		t.Fatalf("%d connections, want 1", n)
	}

	ctx := context.Background()
	reply, err := s.Send(ctx, sinkMessage(30, "a@example.org", "bad1@example.org", "b@example.org"))
	if err != nil || !strings.Contains(reply, "rejected: bad1@example.org") {
		t.Fatalf("partial recipients: %q, %v", reply, err)
	}
	if got := k.received(); got[len(got)-1][:strings.Index(got[len(got)-1], ":")] != "box@contoso.com>a@example.org,b@example.org" {
		t.Fatalf("delivered as %q", got[len(got)-1])
	}
	_, err = s.Send(ctx, sinkMessage(31, "bad1@example.org", "bad2@example.org"))
	if upstream.ClassOf(err) != upstream.Permanent || !strings.Contains(err.Error(), "every recipient was rejected") {
		t.Fatalf("every recipient rejected: %v", err)
	}
	// The session is in step after a refused DATA: the next message goes.
	if _, err := s.Send(ctx, sinkMessage(32, "c@example.org")); err != nil {
		t.Fatal(err)
	}
	_, err = s.Send(ctx, sinkMessage(33, "d@example.org", "later2@example.org"))
	if upstream.ClassOf(err) != upstream.Transient {
		t.Fatalf("a recipient refused for now: %v", err)
	}
	if got := k.received(); len(got) != 13 {
		t.Fatalf("received %d, want 13: the message with a recipient refused for now went out", len(got))
	}
}

// TestUnpipelinedSend: without PIPELINING the sender goes command by
// command, as go-smtp does, and delivers the same.
func TestUnpipelinedSend(t *testing.T) {
	k, p, s := newSinkSender(t, "PIPELINING")
	perMsg := sendSome(t, p, s, 10, "a@example.org")
	if perMsg < 4 {
		t.Fatalf("%.1f writes per message without PIPELINING: it was pipelined", perMsg)
	}
	if got := k.received(); len(got) != 11 || !strings.HasSuffix(got[10], "line 10\r\n") {
		t.Fatalf("received %d: %q", len(got), got)
	}
}

// TestKeptConnectionClosed: a kept connection the server closed while
// idle fails its RSET; the message goes on a new connection, once, and
// the send succeeds.
func TestKeptConnectionClosed(t *testing.T) {
	k, p, s := newSinkSender(t)
	ctx := context.Background()
	if _, err := s.Send(ctx, sinkMessage(1, "a@example.org")); err != nil {
		t.Fatal(err)
	}
	p.cut()
	reply, err := s.Send(ctx, sinkMessage(2, "a@example.org"))
	if err != nil {
		t.Fatalf("after the server closed the kept connection: %v", err)
	}
	if !strings.HasPrefix(reply, "250 ") {
		t.Fatalf("reply %q", reply)
	}
	got := k.received()
	if len(got) != 2 || !strings.HasSuffix(got[1], "line 2\r\n") {
		t.Fatalf("received %q", got)
	}
	if n := p.conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
}

// TestKeptConnectionSilent: a kept connection that answers nothing in
// time may still act on the message sent after its RSET, so the message is
// not sent again on another connection: the send fails as transient.
func TestKeptConnectionSilent(t *testing.T) {
	k, p, s := newSinkSenderWith(t, 300*time.Millisecond, 300*time.Millisecond)
	ctx := context.Background()
	if _, err := s.Send(ctx, sinkMessage(1, "a@example.org")); err != nil {
		t.Fatal(err)
	}
	p.mute.Store(true)
	_, err := s.Send(ctx, sinkMessage(2, "a@example.org"))
	if upstream.ClassOf(err) != upstream.Transient || !strings.Contains(err.Error(), "RSET") {
		t.Fatalf("a silent kept connection: %v", err)
	}
	if n := p.conns.Load(); n != 1 {
		t.Fatalf("%d connections: the message was sent again on another", n)
	}
	if got := k.received(); len(got) != 2 {
		t.Fatalf("the sink has %d messages; the silent server took the second too", len(got))
	}
}

// TestSlowLargeMessage: a message that takes longer to send than
// CommandTimeout is sent, by BDAT and by DATA, as go-smtp sends one after
// DATA; the replies are awaited from its end.
func TestSlowLargeMessage(t *testing.T) {
	k, p, s := newSinkSenderWith(t, 300*time.Millisecond, 10*time.Second)
	p.slow.Store(true)
	ctx := context.Background()
	body := []byte("Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("y", 1000)+"\r\n", 16000)) // 16 MB
	for _, to := range [][]string{{"a@example.org"}, {"a@example.org", "b@example.org"}} {
		start := time.Now()
		m := sinkMessage(1, to...)
		m.Body = body
		if _, err := s.Send(ctx, m); err != nil {
			t.Fatalf("to %v: %v", to, err)
		}
		if took := time.Since(start); took < 300*time.Millisecond {
			t.Fatalf("to %v: sent in %v, within CommandTimeout: the test shows nothing", to, took)
		}
	}
	if got := k.received(); len(got) != 2 || !strings.HasSuffix(got[1], strings.Repeat("y", 1000)+"\r\n") {
		t.Fatalf("received %d", len(got))
	}
}

// lostLimits is freeLimits whose slots are lost once lost is set, as a
// Redis failover without the slot records loses them.
type lostLimits struct {
	freeLimits
	lost     atomic.Bool
	acquired atomic.Int64
	renewed  atomic.Int64
}

func (l *lostLimits) AcquireConn(ctx context.Context, mailbox string, max int, ttl time.Duration) (*queue.Slot, error) {
	l.acquired.Add(1)
	return l.freeLimits.AcquireConn(ctx, mailbox, max, ttl)
}

func (l *lostLimits) Renew(context.Context, *queue.Slot, time.Duration) error {
	l.renewed.Add(1)
	if l.lost.Load() {
		return queue.ErrSlotLost
	}
	return nil
}

// TestLostSlotClosesConnection: a kept connection whose fleet-wide slot
// expired (another replica may hold it now) is closed, and the next
// message goes on a connection with a slot of its own, so that the
// mailbox stays within Exchange's connection limit.
func TestLostSlotClosesConnection(t *testing.T) {
	limits := &lostLimits{}
	_, p, s := newSinkSenderEdit(t, func(o *o365.SMTPOptions) {
		o.Limits = limits
		// The reaper looks every 3 s and renews a slot 2 s old: it
		// renews this one at least a second before the connection is
		// idle for 6 s and closed. (With 4 s, a look just before the
		// slot was 2 s old came next when the connection was idle for 4
		// s, and closed it unrenewed.)
		o.IdleTimeout = 6 * time.Second
	})
	ctx := context.Background()
	if _, err := s.Send(ctx, sinkMessage(0, "a@example.org")); err != nil {
		t.Fatal(err)
	}
	limits.lost.Store(true)
	deadline := time.Now().Add(10 * time.Second)
	for limits.renewed.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the kept connection's slot was never renewed")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := s.Send(ctx, sinkMessage(1, "a@example.org")); err != nil {
		t.Fatal(err)
	}
	if got := p.conns.Load(); got != 2 {
		t.Fatalf("%d connections opened; want 2: the connection whose slot was lost must not be used again", got)
	}
	if got := limits.acquired.Load(); got != 2 {
		t.Fatalf("%d slots taken; want 2", got)
	}
}

// unreachableLimits is lostLimits whose renewals fail as a Redis out of
// reach fails them, once down is set: the slot may or may not be lost.
type unreachableLimits struct {
	lostLimits
	down atomic.Bool
}

func (l *unreachableLimits) Renew(ctx context.Context, s *queue.Slot, ttl time.Duration) error {
	l.renewed.Add(1)
	if l.down.Load() {
		return errors.New("dial tcp 127.0.0.1:6379: i/o timeout")
	}
	return nil
}

// TestUnrenewedSlotClosesConnection: a connection in use whose slot
// cannot be renewed (Redis out of reach, or too slow to answer) is closed
// before its slot's lifetime ends, as one whose slot was lost: past that,
// another relay may take the slot, and Exchange would see the mailbox
// over its connection limit.
func TestUnrenewedSlotClosesConnection(t *testing.T) {
	limits := &unreachableLimits{}
	_, p, s := newSinkSenderEdit(t, func(o *o365.SMTPOptions) {
		o.Limits = limits
		o.IdleTimeout = 2 * time.Second // the reaper looks every second
	})
	ctx := context.Background()
	limits.down.Store(true)
	// Sends every 300 ms keep the connection from going idle, for longer
	// than a slot's lifetime (6 s).
	for i := range 27 {
		if _, err := s.Send(ctx, sinkMessage(i, "a@example.org")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	if limits.renewed.Load() == 0 {
		t.Fatal("no renewal was tried")
	}
	if got := limits.acquired.Load(); got < 2 {
		t.Fatalf("%d slot taken over 8 s of failed renewals; want the connection closed before its slot expired, and a new one", got)
	}
	if got := p.conns.Load(); got != limits.acquired.Load() {
		t.Errorf("%d connections for %d slots", got, limits.acquired.Load())
	}
}

// timedLimits records when each slot was taken or renewed.
type timedLimits struct {
	freeLimits
	mu        sync.Mutex
	last      map[*queue.Slot]time.Time
	maxGap    time.Duration // longest time a slot went unrenewed while renewed again later
	hang      bool          // Renew waits for its ctx (a Redis that does not answer)
	releaseIn time.Duration // Release takes this long (a slow Redis)
	acquires  []time.Time
}

func (l *timedLimits) AcquireConn(ctx context.Context, mailbox string, max int, ttl time.Duration) (*queue.Slot, error) {
	s, _ := l.freeLimits.AcquireConn(ctx, mailbox, max, ttl)
	l.mu.Lock()
	l.last[s] = time.Now()
	l.acquires = append(l.acquires, time.Now())
	l.mu.Unlock()
	return s, nil
}

func (l *timedLimits) Renew(ctx context.Context, s *queue.Slot, ttl time.Duration) error {
	l.mu.Lock()
	hang := l.hang
	l.mu.Unlock()
	if hang {
		<-ctx.Done()
		return ctx.Err()
	}
	l.mu.Lock()
	if g := time.Since(l.last[s]); g > l.maxGap {
		l.maxGap = g
	}
	l.last[s] = time.Now()
	l.mu.Unlock()
	return nil
}

func (l *timedLimits) Release(ctx context.Context, s *queue.Slot) error {
	time.Sleep(l.releaseIn)
	return nil
}

// TestHungRenewClosesBeforeExpiry: with a Redis that hangs (renewals
// time out rather than fail at once), a busy connection is given up
// before its slot (6 s) ends: each renewal is bounded to end before the
// slot, and judged late from when it was asked.
func TestHungRenewClosesBeforeExpiry(t *testing.T) {
	limits := &timedLimits{last: map[*queue.Slot]time.Time{}, hang: true}
	_, _, s := newSinkSenderEdit(t, func(o *o365.SMTPOptions) {
		o.Limits = limits
		o.IdleTimeout = 2 * time.Second // the default
	})
	ctx := context.Background()
	for i := range 90 {
		if _, err := s.Send(ctx, sinkMessage(i, "a@example.org")); err != nil {
			t.Fatal(err)
		}
		limits.mu.Lock()
		n := len(limits.acquires)
		limits.mu.Unlock()
		if n >= 2 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	limits.mu.Lock()
	defer limits.mu.Unlock()
	if len(limits.acquires) < 2 {
		t.Fatal("the connection was never given up")
	}
	if held := limits.acquires[1].Sub(limits.acquires[0]); held >= 6*time.Second {
		t.Errorf("the first connection was used %v after its slot was last taken; the slot lives 6 s", held)
	}
}

// TestSlowQuitLeavesRenewals: a slow release in the quit of an idle
// connection does not hold back the renewals of a busy one.
func TestSlowQuitLeavesRenewals(t *testing.T) {
	limits := &timedLimits{last: map[*queue.Slot]time.Time{}, releaseIn: 7 * time.Second}
	_, _, s := newSinkSenderEdit(t, func(o *o365.SMTPOptions) {
		o.Limits = limits
		o.IdleTimeout = 2 * time.Second
	})
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 2 { // two connections
		wg.Go(func() {
			if _, err := s.Send(ctx, sinkMessage(i, "a@example.org")); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	deadline := time.Now().Add(12 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ { // one stays busy, the other goes idle and is quit
		if _, err := s.Send(ctx, sinkMessage(10+i, "a@example.org")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	limits.mu.Lock()
	defer limits.mu.Unlock()
	t.Logf("acquires %d, longest renewal gap %v", len(limits.acquires), limits.maxGap)
	if limits.maxGap >= 6*time.Second {
		t.Errorf("a busy connection's slot went %v without renewal (slot lives 6 s) while another's quit released slowly", limits.maxGap)
	}
}
