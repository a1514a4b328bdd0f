package relay

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// recordingConn records each write it is given and reads from r.
type recordingConn struct {
	net.Conn // nil: only the methods below are used
	r        *strings.Reader

	mu     sync.Mutex
	writes []string
}

func (c *recordingConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes = append(c.writes, string(b))
	return len(b), nil
}
func (c *recordingConn) Read(b []byte) (int, error)       { return c.r.Read(b) }
func (c *recordingConn) Close() error                     { return nil }
func (c *recordingConn) SetDeadline(time.Time) error      { return nil }
func (c *recordingConn) SetReadDeadline(time.Time) error  { return nil }
func (c *recordingConn) SetWriteDeadline(time.Time) error { return nil }
func (c *recordingConn) sent() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.writes...)
}

// TestSMTPConnCoalescesReplies: the lines of replies go out in one write,
// before the next read; a later write deadline keeps what is pending, an
// earlier one (crypto/tls closing) and the close send it first, and a
// write larger than the buffer goes at once.
func TestSMTPConnCoalescesReplies(t *testing.T) {
	rc := &recordingConn{r: strings.NewReader("MAIL FROM:<a@b>\r\n")}
	ing := &smtpIngress{conns: map[*smtpConn]struct{}{}, perIP: map[string]int{}, drained: make(chan struct{})}
	c := &smtpConn{Conn: rc, ing: ing, ip: "127.0.0.1"}
	c.top = c
	ing.conns[c], ing.perIP[c.ip] = struct{}{}, 1
	for _, l := range []string{"250-relay.example Hello\r\n", "250-PIPELINING\r\n", "250 8BITMIME\r\n"} {
		if n, err := c.Write([]byte(l)); n != len(l) || err != nil {
			t.Fatalf("write: %d, %v", n, err)
		}
	}
	if got := rc.sent(); len(got) != 0 {
		t.Fatalf("sent before the next read: %q", got)
	}
	buf := make([]byte, 64)
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "MAIL FROM:<a@b>\r\n" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	if got := rc.sent(); len(got) != 1 || got[0] != "250-relay.example Hello\r\n250-PIPELINING\r\n250 8BITMIME\r\n" {
		t.Fatalf("sent %q, want the three lines in one write", got)
	}
	c.Write([]byte("250 2.0.0 OK\r\n"))
	c.SetWriteDeadline(time.Now().Add(time.Second))
	if got := rc.sent(); len(got) != 2 || got[1] != "250 2.0.0 OK\r\n" {
		t.Fatalf("a new write deadline: sent %q", got)
	}
	// go-smtp sets a later deadline before each reply of a pipelined
	// group; crypto/tls's close sets one of now.
	c.Write([]byte("250 2.1.0 Sender OK\r\n"))
	c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	c.Write([]byte("250 2.1.5 Recipient OK\r\n"))
	c.SetWriteDeadline(time.Now().Add(3 * time.Second))
	if got := rc.sent(); len(got) != 2 {
		t.Fatalf("a later write deadline: sent %q, want the replies kept", got[2:])
	}
	c.SetWriteDeadline(time.Now())
	if got := rc.sent(); len(got) != 3 || got[2] != "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n" {
		t.Fatalf("an earlier write deadline: sent %q, want both replies in one write", got[2:])
	}
	c.SetWriteDeadline(time.Now().Add(time.Second))
	big := bytes.Repeat([]byte("x"), maxPending+1)
	c.Write([]byte("354 go on\r\n"))
	c.Write(big)
	if got := rc.sent(); len(got) != 5 || got[3] != "354 go on\r\n" || len(got[4]) != len(big) {
		t.Fatalf("a large write: %d writes", len(got))
	}
	c.Write([]byte("221 2.0.0 Bye\r\n"))
	c.Close()
	if got := rc.sent(); len(got) != 6 || got[5] != "221 2.0.0 Bye\r\n" {
		t.Fatalf("close: sent %q", got[len(got)-1])
	}
}

// TestSMTPConnEvictedAfterAuth: a connection told to go that authenticated
// in the moment between being chosen and its next read keeps its session;
// one that did not gets the 421 and end of input.
func TestSMTPConnEvictedAfterAuth(t *testing.T) {
	for _, authed := range []bool{true, false} {
		rc := &recordingConn{r: strings.NewReader("NOOP\r\n")}
		ing := &smtpIngress{conns: map[*smtpConn]struct{}{}, perIP: map[string]int{}, drained: make(chan struct{})}
		c := &smtpConn{Conn: rc, ing: ing, ip: "127.0.0.1"}
		c.top = c
		c.evicted.Store(true)
		c.authenticated.Store(authed)
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if authed && (err != nil || string(buf[:n]) != "NOOP\r\n") {
			t.Errorf("authenticated: read %q, %v; want the command", buf[:n], err)
		}
		if !authed && (n != 0 || err == nil || !strings.HasPrefix(strings.Join(rc.sent(), ""), "421 4.7.0 ")) {
			t.Errorf("not authenticated: read %q, %v, sent %q; want end of input after a 421", buf[:n], err, rc.sent())
		}
	}
}

// TestBDATWaitBounded: a BDAT transfer whose goroutine never hands its
// result on (go-smtp's channel already full) does not keep Reset, and
// with it go-smtp's lock of the connection, spinning for ever: wait
// gives up after bdatHandOff and says so.
func TestBDATWaitBounded(t *testing.T) {
	defer func(d time.Duration) { bdatHandOff = d }(bdatHandOff)
	bdatHandOff = 50 * time.Millisecond
	pr, pw := io.Pipe()
	defer pr.Close()
	pw.CloseWithError(errors.New("reset"))
	run := &bdatRun{r: pr, done: make(chan struct{})}
	close(run.done)
	got := make(chan bool, 1)
	go func() { got <- run.wait() }()
	select {
	case ok := <-got:
		if ok {
			t.Error("wait reported the hand-off done while the pipe's reader is still open")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("wait still spinning 5 s after its goroutine returned, with the pipe's reader never closed")
	}

	// The usual case: the reader is closed, and wait says so at once.
	pr2, _ := io.Pipe()
	pr2.Close()
	run = &bdatRun{r: pr2, done: make(chan struct{})}
	close(run.done)
	if !run.wait() {
		t.Error("wait gave up on a transfer whose reader is closed")
	}
}
