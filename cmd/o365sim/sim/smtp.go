package sim

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// The SMTP side has two parts. smtpFront owns the listening socket and the
// plaintext part of each session (greeting, EHLO, STARTTLS), where it
// answers as Exchange does. After STARTTLS it hands the TLS connection,
// wrapped in a replyConn, to a go-smtp server that runs the rest of the
// session. go-smtp never sees a *tls.Conn, so it allows AUTH (the
// connection is encrypted) and does not offer STARTTLS again; replyConn
// swaps go-smtp's fixed reply texts for Exchange's.

const (
	maxMessageBytes  = 157286400
	plaintextTimeout = 5 * time.Minute
	maxLineBytes     = 4096
	// stallTimeout bounds a session stalled by Fault.SMTPStall "data".
	stallTimeout = 5 * time.Minute
)

var (
	errTLSRequired   = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "STARTTLS is required to send mail"}
	errNotActive     = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Service not active"}
	errTransient     = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Temporary server error. Please try again later. PRX4"}
	errAuthFailed    = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful [" + smtpHost + "]"}
	errBadUser       = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 124}, Message: "Invalid XOAUTH2 auth data - User address provided is not valid"}
	errAuthDisabled  = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139}, Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information."}
	errBasicDisabled = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139}, Message: "Authentication unsuccessful, basic authentication is disabled."}
	errConcurrent    = &smtp.SMTPError{Code: 432, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending for more information."}
	errNotAuthed     = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 57}, Message: "Client not authenticated to send mail"}
	errRecipNotFound = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "RESOLVER.ADR.RecipNotFound; not found"}
	errNotPermitted  = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 60}, Message: "SMTP; Client does not have permissions to send as this sender"}
	errThreadLimit   = &smtp.SMTPError{Code: 432, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "STOREDRV.ClientSubmit; sender thread limit exceeded"}
	errSenderBlocked = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 2, 251}, Message: "Sender throttled due to continuous invalid recipients errors"}
	errUnknownMech   = &smtp.SMTPError{Code: 504, EnhancedCode: smtp.EnhancedCode{5, 7, 4}, Message: "Unrecognized authentication type"}
)

func errSendAsDenied(mailbox, from string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 252}, Message: fmt.Sprintf("SendAsDenied; %s not allowed to send as %s; STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied", mailbox, from)}
}

func replyLine(e *smtp.SMTPError) string {
	c := e.EnhancedCode
	return fmt.Sprintf("%d %d.%d.%d %s", e.Code, c[0], c[1], c[2], e.Message)
}

// smtpFront is the SMTP listener and the plaintext phase of each session.
// It is also the net.Listener that the go-smtp server accepts from.
type smtpFront struct {
	s      *Sim
	addr   string
	tls    *tls.Config
	conns  chan net.Conn
	done   chan struct{}
	closed sync.Once
	wg     sync.WaitGroup

	mu    sync.Mutex
	ln    net.Listener // nil while SMTPDown
	plain map[net.Conn]struct{}
}

func (s *Sim) newSMTPFront(addr string) (*smtpFront, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen smtp: %w", err)
	}
	f := &smtpFront{
		s:     s,
		addr:  ln.Addr().String(),
		tls:   s.certs.serverConfig(),
		conns: make(chan net.Conn),
		done:  make(chan struct{}),
		plain: map[net.Conn]struct{}{},
	}
	f.serve(ln)
	return f, nil
}

// serve accepts on ln; f.mu is held or f is not shared yet.
func (f *smtpFront) serve(ln net.Listener) {
	f.ln = ln
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			f.wg.Add(1)
			go f.plaintext(nc)
		}
	}()
}

// setDown closes the listening socket, or listens again on the same
// address.
func (f *smtpFront) setDown(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.done:
		return
	default:
	}
	switch {
	case down && f.ln != nil:
		f.ln.Close()
		f.ln = nil
	case !down && f.ln == nil:
		ln, err := net.Listen("tcp", f.addr)
		if err != nil {
			log.Printf("o365sim: listen smtp again on %s: %v", f.addr, err)
			return
		}
		f.serve(ln)
	}
}

// Accept returns the next session that completed STARTTLS.
func (f *smtpFront) Accept() (net.Conn, error) {
	select {
	case c := <-f.conns:
		return c, nil
	case <-f.done:
		return nil, net.ErrClosed
	}
}

func (f *smtpFront) Addr() net.Addr {
	a, _ := net.ResolveTCPAddr("tcp", f.addr)
	return a
}

// Close stops listening and closes the sessions still in plaintext; it
// waits for their goroutines.
func (f *smtpFront) Close() error {
	f.closed.Do(func() {
		f.mu.Lock()
		close(f.done)
		if f.ln != nil {
			f.ln.Close()
			f.ln = nil
		}
		for c := range f.plain {
			c.Close()
		}
		f.mu.Unlock()
	})
	f.wg.Wait()
	return nil
}

func (f *smtpFront) track(nc net.Conn, on bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !on {
		delete(f.plain, nc)
		return true
	}
	select {
	case <-f.done:
		return false
	default:
	}
	f.plain[nc] = struct{}{}
	return true
}

// plaintext runs a session up to STARTTLS, as Exchange Online does: mail
// and AUTH need TLS first.
func (f *smtpFront) plaintext(nc net.Conn) {
	defer f.wg.Done()
	if !f.track(nc, true) {
		nc.Close()
		return
	}
	handedOff := false
	defer func() {
		f.track(nc, false)
		if !handedOff {
			nc.Close()
		}
	}()
	_ = nc.SetDeadline(time.Now().Add(plaintextTimeout))
	wc := &distantConn{Conn: nc, s: f.s}
	write := func(lines ...string) bool {
		_, err := io.WriteString(wc, strings.Join(lines, "\r\n")+"\r\n")
		return err == nil
	}
	switch fault := f.s.faults(); {
	case fault.SMTPStall == "greeting":
		// Say nothing; the connection ends when the client gives up, the
		// plaintext deadline passes or Close closes it.
		_, _ = io.Copy(io.Discard, nc)
		return
	case fault.SMTPTransient == "421":
		write(replyLine(errNotActive))
		return
	}
	if !write(fmt.Sprintf("220 %s Microsoft ESMTP MAIL Service ready at %s", smtpHost, time.Now().UTC().Format(time.RFC1123Z))) {
		return
	}
	hello := fmt.Sprintf("%s Hello [%s]", smtpHost, remoteIP(nc))
	r := bufio.NewReaderSize(nc, maxLineBytes)
	for {
		line, err := readLine(r)
		if err != nil {
			if errors.Is(err, errLineTooLong) {
				write("500 5.5.2 Line too long")
			}
			return
		}
		verb, arg, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			if strings.TrimSpace(arg) == "" {
				write("501 5.5.4 Invalid domain name")
				continue
			}
			write("250-"+hello, "250-SIZE 157286400", "250-PIPELINING", "250-DSN", "250-ENHANCEDSTATUSCODES",
				"250-STARTTLS", "250-8BITMIME", "250-BINARYMIME", "250-CHUNKING", "250 SMTPUTF8")
		case "HELO":
			write("250 " + hello)
		case "STARTTLS":
			if !write("220 2.0.0 SMTP server ready") {
				return
			}
			tc := tls.Server(wc, f.tls)
			if err := tc.Handshake(); err != nil {
				return
			}
			_ = nc.SetDeadline(time.Time{})
			handedOff = true
			select {
			case f.conns <- &replyConn{Conn: tc, hello: hello}:
			case <-f.done:
				tc.Close()
			}
			return
		case "AUTH", "MAIL", "RCPT", "DATA", "BDAT":
			write(replyLine(errTLSRequired))
		case "NOOP":
			write("250 2.0.0 OK")
		case "RSET":
			write("250 2.0.0 Resetting")
		case "QUIT":
			write("221 2.0.0 Service closing transmission channel")
			return
		default:
			write("500 5.3.3 Unrecognized command")
		}
	}
}

var errLineTooLong = errors.New("line too long")

func readLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return "", errLineTooLong
	}
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(line), "\r\n"), nil
}

func remoteIP(c net.Conn) string {
	host, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
}

// replyConn is a TLS session handed to go-smtp. It drops go-smtp's
// greeting (the client had it before STARTTLS) and replaces go-smtp's
// reply texts with Exchange's. It holds the replies until go-smtp reads
// again or closes, so that the replies to a group of pipelined commands
// go out together, in one TLS record, as RFC 2920 asks of a server:
// go-smtp writes each reply on its own, and a client's MAIL, RCPT and
// BDAT group cost three records and three system calls.
type replyConn struct {
	net.Conn
	hello string // "HOST Hello [ip]"

	mu        sync.Mutex
	greeted   bool
	pending   []byte // a reply line not yet ended
	out       []byte // replies not yet sent
	dataReply string // the reply to the end of the current message
}

// maxHeld is the most reply bytes held before they are sent anyway.
const maxHeld = 16 << 10

func (c *replyConn) setDataReply(s string) {
	c.mu.Lock()
	c.dataReply = s
	c.mu.Unlock()
}

func (c *replyConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pending = append(c.pending, p...)
	for {
		i := bytes.Index(c.pending, []byte("\r\n"))
		if i < 0 {
			break
		}
		line := string(c.pending[:i])
		c.pending = c.pending[i+2:]
		if line, ok := c.rewrite(line); ok {
			c.out = append(c.out, line...)
			c.out = append(c.out, "\r\n"...)
		}
	}
	if len(c.out) > maxHeld {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Read sends the held replies first: the client may be waiting for them
// before it sends more.
func (c *replyConn) Read(p []byte) (int, error) {
	if err := c.flush(); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

// Close sends the held replies, such as QUIT's, then closes.
func (c *replyConn) Close() error {
	_ = c.flush()
	return c.Conn.Close()
}

func (c *replyConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flushLocked()
}

func (c *replyConn) flushLocked() error {
	if len(c.out) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.out)
	c.out = c.out[:0]
	return err
}

// rewrite maps one go-smtp reply line to Exchange's; c.mu is held.
func (c *replyConn) rewrite(line string) (string, bool) {
	if !c.greeted {
		c.greeted = true
		if strings.HasPrefix(line, "220 ") {
			return "", false
		}
	}
	switch {
	case strings.HasPrefix(line, "250-Hello "):
		return "250-" + c.hello, true
	case strings.HasPrefix(line, "250 2.0.0 Hello "):
		return "250 " + c.hello, true
	case line == "235 2.0.0 Authentication succeeded":
		return "235 2.7.0 Authentication successful", true
	case strings.HasPrefix(line, "250 2.0.0 Roger, accepting mail from "):
		return "250 2.1.0 Sender OK", true
	case strings.HasPrefix(line, "250 2.0.0 I'll make sure "):
		return "250 2.1.5 Recipient OK", true
	case strings.HasPrefix(line, "354 "):
		return "354 Start mail input; end with <CRLF>.<CRLF>", true
	case line == "250 2.0.0 OK: queued":
		if c.dataReply != "" {
			line, c.dataReply = c.dataReply, ""
		}
		return line, true
	case line == "250 2.0.0 Session reset":
		return "250 2.0.0 Resetting", true
	case line == "250 2.0.0 I have successfully done nothing":
		return "250 2.0.0 OK", true
	case line == "221 2.0.0 Bye":
		return "221 2.0.0 Service closing transmission channel", true
	}
	return line, true
}

// distantConn is a session's connection as seen across a network: each
// write waits Fault.SMTPRoundTrip first.
type distantConn struct {
	net.Conn
	s *Sim
}

func (c *distantConn) Write(b []byte) (int, error) {
	if d := c.s.faults().SMTPRoundTrip; d > 0 {
		time.Sleep(d)
	}
	return c.Conn.Write(b)
}
