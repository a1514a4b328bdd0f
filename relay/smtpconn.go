package relay

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// smtpConn is one client connection, below TLS. It lets shutdown end a
// session between commands: once the ingress is closing, a read that is
// not part of a message transfer answers "421 4.3.2" and then reports
// end of input, so that go-smtp closes the connection. A connection
// evicted from a full table (see admit) ends the same way, with its own
// 421.
type smtpConn struct {
	net.Conn
	ing       *smtpIngress
	ip        string
	closeOnce sync.Once

	authenticated atomic.Bool  // AUTH succeeded: never evicted
	evicted       atomic.Bool  // told to go to make room; set under ing.mu
	waiting       atomic.Bool  // a read waits for the client, or a write for it to read
	readEOF       atomic.Bool  // the client closed its side: no more bytes come
	refusals      atomic.Int32 // permanent refusals since the last message queued
	tooManyErrors atomic.Bool  // refusals reached smtp.max_errors: the session ends
	// appRefused: the AUTH is refused with 421 for its application's many
	// sessions (smtpIngress.claimApp); that reply is the session's last,
	// and the session ends at its next read.
	appRefused atomic.Bool
	// app is the application the session authenticated as, counted in
	// ing.perApp; guarded by ing.mu.
	app string
	// lineStuck: go-smtp's reader met a message line past its limit and
	// reads nothing more; after the message's reply, go-smtp's answer to
	// its stuck reader (a "500 5.4.0" a client would take as the refusal
	// of its next command) is replaced by a 421, the session's last.
	lineStuck atomic.Bool
	admitted  time.Time // when the connection was taken in

	mu          sync.Mutex
	top         net.Conn // where go-smtp writes replies: this connection or the TLS one over it
	tlsStarted  bool     // a TLS handshake began on this connection
	inData      bool     // a message transfer is running; reads must not be cut short
	dataEnded   bool     // the transfer ended; its reply is the next write
	interrupted bool     // shutdown moved the read deadline to now
	saidBye     bool     // the session was told to end
	byeSent     bool     // its 421 went out: nothing is sent after it

	// wmu guards pending: replies written and not yet sent. They go out
	// before the next read (a client answers only what it has read) or
	// at close, in one write: go-smtp writes every line of a reply on its
	// own, and the 7 lines of an EHLO reply, twice with STARTTLS, were 14
	// system calls a connection. A client that pipelines (RFC 2920) gets
	// the replies to its whole group in one write too.
	wmu     sync.Mutex
	pending []byte
	// wdl is the write deadline last set through this connection; zero
	// is none.
	wdl time.Time
}

// maxPending is the most replies held before they are sent anyway.
const maxPending = 16 << 10

func (c *smtpConn) Read(b []byte) (int, error) {
	if err := c.flush(); err != nil {
		return 0, err
	}
	if c.byeIfClosing() {
		return 0, io.EOF
	}
	c.waiting.Store(true)
	n, err := c.Conn.Read(b)
	c.waiting.Store(false)
	if errors.Is(err, io.EOF) {
		c.readEOF.Store(true)
	}
	if n == 0 && isTimeout(err) && c.byeIfClosing() {
		return 0, io.EOF
	}
	if isTimeout(err) && c.transferring() {
		// go-smtp answers a BDAT chunk it could not read with the error's
		// text under 554 unless the error is an SMTP reply: a client that
		// got 554 would bounce a message it may send again.
		return n, errSMTPDataTimeout
	}
	return n, err
}

// transferring reports whether a message transfer is running.
func (c *smtpConn) transferring() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inData && !c.dataEnded
}

// SetWriteDeadline sets t. A deadline earlier than the one the pending
// replies were written under sends them first: crypto/tls, closing,
// sends its alert with a deadline of its own and then sets the deadline
// to now. A later one, as go-smtp sets before each reply, keeps them for
// the next read, so that the replies to a pipelined group go out
// together.
func (c *smtpConn) SetWriteDeadline(t time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.beforeDeadline(t)
	return c.Conn.SetWriteDeadline(t)
}

// SetDeadline is SetWriteDeadline for reads and writes.
func (c *smtpConn) SetDeadline(t time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.beforeDeadline(t)
	return c.Conn.SetDeadline(t)
}

// beforeDeadline sends the pending replies unless the write deadline t is
// later than the current one (zero is none, the latest), and records t.
func (c *smtpConn) beforeDeadline(t time.Time) {
	if later := t.IsZero() || !c.wdl.IsZero() && t.After(c.wdl); !later {
		_ = c.flushLocked()
	}
	c.wdl = t
}

// flush sends the pending replies.
func (c *smtpConn) flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.flushLocked()
}

func (c *smtpConn) flushLocked() error {
	if len(c.pending) == 0 {
		return nil
	}
	// A client that sends commands and does not read their replies
	// blocks this write: it is waiting for the client as a read is, and
	// may be evicted as an idle one is.
	was := c.waiting.Swap(true)
	_, err := c.Conn.Write(c.pending)
	c.waiting.Store(was)
	c.pending = c.pending[:0]
	return err
}

func (c *smtpConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	ended := c.dataEnded
	if ended {
		c.inData, c.dataEnded = false, false
	}
	// The 421 is the session's last reply: go-smtp may still answer the
	// end of input it sees after it (a failed STARTTLS handshake gets
	// "550 Handshake error"). A goodbye can also cut a TLS handshake
	// short; go-smtp's plaintext answer would then read as a corrupt TLS
	// record.
	mute := c.byeSent || c.saidBye && c.tlsStarted && c.top == net.Conn(c)
	if !mute && c.appRefused.Load() {
		// This is the refused AUTH's 421, the session's last reply:
		// nothing goes after it, a shutdown's 421 included.
		c.saidBye, c.byeSent = true, true
	}
	// The message's reply came with the write that ended the transfer
	// above; one after it is go-smtp's to its stuck reader.
	// Over TLS it is dropped: the client, whose next command gets no
	// reply before the connection closes, tries again.
	stuck := !mute && !ended && !c.inData && c.lineStuck.Load()
	plain := c.top == net.Conn(c)
	if stuck {
		c.saidBye, c.byeSent = true, true
	}
	c.mu.Unlock()
	if mute {
		return 0, net.ErrClosed
	}
	if stuck {
		if plain {
			c.wmu.Lock()
			c.pending = append(c.pending, smtpReplyLine(errSMTPLineStuck)...)
			_ = c.flushLocked()
			c.wmu.Unlock()
		}
		return len(b), nil
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(c.pending)+len(b) > maxPending {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		if len(b) > maxPending {
			return c.Conn.Write(b)
		}
	}
	c.pending = append(c.pending, b...)
	return len(b), nil
}

func (c *smtpConn) Close() error {
	_ = c.flush() // the last reply, such as QUIT's
	err := c.Conn.Close()
	c.closeOnce.Do(func() { c.ing.release(c) })
	return err
}

// byeIfClosing reports whether the session must end because the ingress is
// closing, or the connection was evicted, and no message transfer runs.
// The first time, it writes the 421 where go-smtp writes its replies.
// go-smtp reads only between commands or during a transfer, so the 421
// never splits another reply.
func (c *smtpConn) byeIfClosing() bool {
	bye := errSMTPShuttingDown
	switch {
	case c.ing.closing.Load():
	case c.evicted.Load() && !c.authenticated.Load():
		// A connection that authenticated between being chosen and
		// being told stays: the table holds one more until it ends.
		bye = errSMTPEvicted
	case c.tooManyErrors.Load():
		bye = errSMTPTooManyErrors
	case c.appRefused.Load():
		// The 421 was the AUTH's reply (see Write), so nothing is
		// written below.
		bye = errSMTPTooManyAppConnections
	default:
		return false
	}
	c.mu.Lock()
	if c.inData {
		c.mu.Unlock()
		return false
	}
	first := !c.saidBye
	c.saidBye = true
	top := c.top
	// Bytes written below TLS would corrupt the TLS stream; until the
	// session has the TLS connection, the client gets no 421.
	canWrite := top != net.Conn(c) || !c.tlsStarted
	c.mu.Unlock()
	if first && canWrite {
		// The pending replies go out with the 421, under its deadline.
		c.wmu.Lock()
		c.wdl = time.Now().Add(smtpGoodbyeTimeout)
		_ = c.Conn.SetWriteDeadline(c.wdl)
		c.wmu.Unlock()
		_, _ = io.WriteString(top, smtpReplyLine(bye))
		_ = c.flush()
		c.mu.Lock()
		c.byeSent = true
		c.mu.Unlock()
	}
	return true
}

// interrupt wakes a read that waits for the next command, so that the
// session sees the shutdown.
func (c *smtpConn) interrupt() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inData {
		return
	}
	c.interrupted = true
	_ = c.Conn.SetReadDeadline(time.Now())
}

// evict ends a connection chosen to make room: its read, and a write
// that waits for a client that does not read, end now.
func (c *smtpConn) evict() {
	c.interrupt()
	_ = c.Conn.SetWriteDeadline(time.Now())
}

// beginData marks the start of a message transfer. A transfer that began
// just as shutdown interrupted the connection gets its read deadline back.
func (c *smtpConn) beginData() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inData, c.dataEnded = true, false
	if c.interrupted {
		c.interrupted = false
		_ = c.Conn.SetReadDeadline(time.Now().Add(c.ing.opts.ReadTimeout.D()))
	}
}

// endData marks the end of a message transfer. The connection stays in
// transfer until the reply is written, because go-smtp reads the rest of
// a refused message before it replies.
func (c *smtpConn) endData() {
	c.mu.Lock()
	c.dataEnded = true
	c.mu.Unlock()
}

func (c *smtpConn) startTLS() {
	c.mu.Lock()
	c.tlsStarted = true
	c.mu.Unlock()
}

// setTop records the connection go-smtp now writes to.
func (c *smtpConn) setTop(nc net.Conn) {
	c.mu.Lock()
	c.top = nc
	c.mu.Unlock()
}

// smtpConnOf returns the tracked connection under nc, which is either one
// or the TLS connection over one.
func smtpConnOf(nc net.Conn) *smtpConn {
	if t, ok := nc.(*tls.Conn); ok {
		nc = t.NetConn()
	}
	c, _ := nc.(*smtpConn)
	return c
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
