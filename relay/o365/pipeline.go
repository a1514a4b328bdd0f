package o365

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"

	"holdfast/queue"
	"holdfast/relay/upstream"
)

// Exchange Online offers PIPELINING (RFC 2920) and CHUNKING (RFC 3030).
// go-smtp's client sends one command and waits for its reply, so a message
// on a kept connection took five round trips: RSET, MAIL FROM, RCPT TO,
// DATA and the message. On a server that offers PIPELINING, a wire sends
// RSET, MAIL FROM, every RCPT TO and DATA in one write, reads their
// replies, then sends the message: two round trips. A message to one
// recipient, on a server that also offers CHUNKING, goes in one: the
// message follows RCPT TO as one BDAT LAST chunk, not dot-stuffed. If the
// recipient is refused, the server refuses the BDAT and discards its
// chunk, so nothing is sent. With several recipients the message waits
// for their replies, so that one refused for now keeps it from all of
// them (retried whole later, nobody gets it twice). go-smtp keeps the
// session's greeting, EHLO and AUTH.

// wire is a session's own ends under its go-smtp client. The go-smtp
// client reads nothing after AUTH, so the wire's reader starts where the
// client's ended.
type wire struct {
	nc       net.Conn
	r        *textproto.Reader
	bw       *bufio.Writer
	eightBit bool // the server offers 8BITMIME: MAIL FROM says BODY=8BITMIME, as go-smtp's does
	chunking bool // the server offers CHUNKING
}

// chunkable reports whether a body goes as one BDAT chunk exactly as DATA
// would send it: every line ended by CRLF, the last one too. DATA turns a
// bare LF into CRLF and ends the message with one; BDAT sends the bytes
// as they are.
func chunkable(body []byte) bool {
	return len(body) > 0 && bytes.HasSuffix(body, []byte("\r\n")) &&
		bytes.Count(body, []byte("\n")) == bytes.Count(body, []byte("\r\n"))
}

func newWire(nc net.Conn) *wire {
	return &wire{nc: nc, r: textproto.NewReader(bufio.NewReader(nc)), bw: bufio.NewWriter(nc)}
}

// errStaleConn reports that a kept connection was closed before it
// answered the RSET that opened its next transaction: nothing of the
// message was sent.
var errStaleConn = errors.New("the kept connection did not answer RSET")

// helloName is what EHLO says, go-smtp's default.
const helloName = "localhost"

// startTLS runs the plaintext part of a session on nc (greeting, EHLO,
// STARTTLS) and returns the TLS connection, not yet handshaken: its first
// write does it, as go-smtp's STARTTLS does. Replies are returned as
// *smtp.SMTPError, as go-smtp returns them. The caller bounds it by
// closing nc.
func startTLS(nc net.Conn, cfg *tls.Config) (*tls.Conn, error) {
	// The server sends nothing after its STARTTLS reply until the client
	// begins TLS, so this reader, dropped after, holds nothing of TLS.
	r := textproto.NewReader(bufio.NewReader(nc))
	if _, _, err := readReply(r, 220); err != nil {
		return nil, err
	}
	if _, err := nc.Write([]byte("EHLO " + helloName + "\r\n")); err != nil {
		return nil, err
	}
	_, msg, err := readReply(r, 250)
	if err != nil {
		return nil, err
	}
	if !hasExtension(msg, "STARTTLS") {
		return nil, errors.New("smtp: server doesn't support STARTTLS")
	}
	if _, err := nc.Write([]byte("STARTTLS\r\n")); err != nil {
		return nil, err
	}
	if _, _, err := readReply(r, 220); err != nil {
		return nil, err
	}
	return tls.Client(nc, cfg), nil
}

// closedBefore reports whether err says that the server closed the
// connection, or said it would (421), before it answered a command: it
// then acted on nothing sent after. A timeout says nothing of the kind.
func closedBefore(err error) bool {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code == 421
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// hasExtension reports whether an EHLO reply's text names ext.
func hasExtension(ehlo, ext string) bool {
	lines := strings.Split(ehlo, "\n")
	for _, l := range lines[1:] {
		name, _, _ := strings.Cut(l, " ")
		if strings.EqualFold(name, ext) {
			return true
		}
	}
	return false
}

// greetedConn gives a go-smtp client, started after STARTTLS was done by
// hand, the greeting it reads first; the server sends none after
// STARTTLS.
type greetedConn struct {
	net.Conn
	greeting *strings.Reader
}

func (g *greetedConn) Read(p []byte) (int, error) {
	if g.greeting.Len() > 0 {
		return g.greeting.Read(p)
	}
	return g.Conn.Read(p)
}

func newGreetedConn(c net.Conn) *greetedConn {
	return &greetedConn{Conn: c, greeting: strings.NewReader("220 TLS started\r\n")}
}

// readReply reads one reply and returns it as go-smtp's client would: an
// unexpected code as *smtp.SMTPError with its enhanced code parsed.
func readReply(r *textproto.Reader, expect int) (int, string, error) {
	code, msg, err := r.ReadResponse(expect)
	var pe *textproto.Error
	if errors.As(err, &pe) {
		return code, msg, replyError(pe.Code, pe.Msg)
	}
	return code, msg, err
}

// replyError is the *smtp.SMTPError of a reply, go-smtp's way: an enhanced
// code at the start of the text is taken out of it (and off the start of
// each further line).
func replyError(code int, msg string) *smtp.SMTPError {
	e := &smtp.SMTPError{Code: code, Message: msg}
	first, rest, ok := strings.Cut(msg, " ")
	if !ok {
		return e
	}
	parts := strings.Split(first, ".")
	if len(parts) != 3 {
		return e
	}
	var ec smtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return e
		}
		ec[i] = n
	}
	e.EnhancedCode = ec
	e.Message = strings.ReplaceAll(rest, "\n"+first+" ", "\n")
	return e
}

// pipelined sends the message on c's wire. reset opens the transaction
// with RSET, which checks that a kept connection still answers; when it
// does not, the error wraps errStaleConn and nothing was sent. Outcomes
// and their errors are those of transact.
func (s *SMTPSender) pipelined(ctx context.Context, c *conn, m *queue.Message, reset bool) (string, error) {
	w := c.w
	bad := strings.ContainsAny(m.From, "\r\n")
	for _, a := range m.To {
		bad = bad || strings.ContainsAny(a, "\r\n")
	}
	if bad {
		return "", smtpError("MAIL FROM", AtMessage, errors.New("smtp: A line must not contain CR or LF"), AppOnly, true)
	}
	_ = w.nc.SetDeadline(time.Now().Add(s.o.CommandTimeout))
	defer w.nc.SetDeadline(time.Time{})
	if reset {
		w.bw.WriteString("RSET\r\n")
	}
	w.bw.WriteString("MAIL FROM:<" + m.From + ">")
	if w.eightBit {
		w.bw.WriteString(" BODY=8BITMIME")
	}
	w.bw.WriteString("\r\n")
	for _, rcpt := range m.To {
		w.bw.WriteString("RCPT TO:<" + rcpt + ">\r\n")
	}
	chunk := w.chunking && len(m.To) == 1 && chunkable(m.Body)
	if chunk {
		if err := ctx.Err(); err != nil {
			return "", &upstream.Error{Class: upstream.Transient, Text: "send abandoned before the message", Err: err}
		}
		// The message is sent without a time limit, as go-smtp sends a
		// message after DATA: a large one on a slow link takes as long as
		// it takes, and ctx ends it. The replies are awaited from the end.
		_ = w.nc.SetWriteDeadline(time.Time{})
		w.bw.WriteString("BDAT " + strconv.Itoa(len(m.Body)) + " LAST\r\n")
		w.bw.Write(m.Body)
	} else {
		w.bw.WriteString("DATA\r\n")
	}
	if err := w.bw.Flush(); err != nil {
		if reset && closedBefore(err) {
			return "", errors.Join(errStaleConn, err)
		}
		return "", smtpError("MAIL FROM", AtMessage, err, AppOnly, true)
	}
	if chunk {
		_ = w.nc.SetReadDeadline(time.Now().Add(s.o.CommandTimeout))
	}
	if reset {
		if _, _, err := readReply(w.r, 250); err != nil {
			var se *smtp.SMTPError
			switch {
			case closedBefore(err):
				return "", errors.Join(errStaleConn, err)
			case !errors.As(err, &se):
				// No reply in time: the server may yet act on what
				// followed.
				return "", smtpError("RSET", AtMessage, err, AppOnly, true)
			}
			// Another refusal of RSET: the server reads on, and its
			// replies to the message's commands follow.
		}
	}
	if _, _, err := readReply(w.r, 250); err != nil {
		return "", smtpError("MAIL FROM", AtMessage, err, AppOnly, true)
	}
	accepted, rejected, err := recipients(m.To, func(string) error {
		_, _, err := readReply(w.r, 250)
		return err
	})
	if err != nil {
		return "", err
	}
	if chunk {
		_ = w.nc.SetDeadline(time.Now().Add(s.o.DataTimeout))
		_, msg, err := readReply(w.r, 250)
		if accepted == 0 {
			// The server refused the BDAT too and discarded its chunk.
			return "", allRejected(rejected)
		}
		if err != nil {
			return "", smtpError("BDAT LAST", AtMessage, err, AppOnly, true)
		}
		c.used = time.Now()
		return sentReply(msg, nil), nil
	}
	_, _, dataErr := readReply(w.r, 354)
	if accepted == 0 {
		// The server refused DATA too, or the connection is closed after
		// it: either way nothing goes out.
		return "", allRejected(rejected)
	}
	if dataErr != nil {
		return "", smtpError("DATA", AtMessage, dataErr, AppOnly, true)
	}
	_ = w.nc.SetWriteDeadline(time.Time{}) // as for BDAT above
	dw := textproto.NewWriter(w.bw).DotWriter()
	if _, err := dw.Write(m.Body); err != nil {
		return "", &upstream.Error{Class: upstream.Transient, Text: "write message", Err: err}
	}
	if err := ctx.Err(); err != nil {
		// Cancelled before the final dot: the message is not sent. The
		// caller closes the connection mid-DATA.
		return "", &upstream.Error{Class: upstream.Transient, Text: "send abandoned before the end of DATA", Err: err}
	}
	if err := dw.Close(); err != nil {
		return "", &upstream.Error{Class: upstream.Transient, Text: "write message", Err: err}
	}
	_ = w.nc.SetDeadline(time.Now().Add(s.o.DataTimeout))
	_, msg, err := readReply(w.r, 250)
	if err != nil {
		return "", smtpError("end of DATA", AtMessage, err, AppOnly, true)
	}
	c.used = time.Now()
	return sentReply(msg, rejected), nil
}
