package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"holdfast/queue"
)

func TestSMTPSubmitOverStartTLS(t *testing.T) {
	e := newSMTPEnv(t)
	c, err := smtp.DialStartTLS(e.addr, e.tls)
	if err != nil {
		t.Fatalf("STARTTLS: %v", err)
	}
	defer c.Close()
	if ok, mechs := c.Extension("AUTH"); !ok || mechs != "PLAIN LOGIN" {
		t.Errorf("AUTH after STARTTLS = %v %q, want PLAIN LOGIN", ok, mechs)
	}
	if err := c.Auth(sasl.NewPlainClient("", crmUser, crmPassword)); err != nil {
		t.Fatalf("AUTH PLAIN: %v", err)
	}
	if err := c.Mail("billing@contoso.com", nil); err != nil {
		t.Fatal(err)
	}
	for _, rcpt := range []string{"alice@example.org", "bob@example.net"} {
		if err := c.Rcpt(rcpt, nil); err != nil {
			t.Fatal(err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	// The client dot-stuffs the line that starts with a dot; the server
	// must store it unstuffed.
	const body = "From: billing@contoso.com\r\nTo: alice@example.org\r\nSubject: invoice\r\n\r\nYour invoice.\r\n.a line that starts with a dot\r\n"
	if _, err := io.WriteString(w, body); err != nil {
		t.Fatal(err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatalf("DATA: %v", err)
	}
	id := smtpQueuedID(t, "250 "+resp.StatusText)
	if err := c.Quit(); err != nil {
		t.Errorf("QUIT: %v", err)
	}

	m, err := e.f.queue.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("get %s: %v", id, err)
	}
	if m.App != "crm" || m.Route != "crm" || m.From != "billing@contoso.com" ||
		!slices.Equal(m.To, []string{"alice@example.org", "bob@example.net"}) || m.State != queue.Ready {
		t.Errorf("stored envelope: app %q route %q from %q to %q state %q", m.App, m.Route, m.From, m.To, m.State)
	}
	stored := string(smtpBody(t, e.f, id))
	wantTrace := "Received: from localhost ([127.0.0.1])\r\n\tby relay.test (Holdfast) with ESMTPSA (app crm)\r\n"
	if !strings.HasPrefix(stored, wantTrace) {
		t.Errorf("stored body starts %q, want %q", stored[:min(len(stored), len(wantTrace))], wantTrace)
	}
	if !strings.HasSuffix(stored, "\r\n"+body) {
		t.Errorf("stored body %q does not end with the message as sent", stored)
	}
}

func TestSMTPEHLO(t *testing.T) {
	e := newSMTPEnv(t, func(o *Options) { o.SMTP.MaxMessageBytes = 4096 })
	secure := dialSMTP(t, e.addr).cmd("EHLO client.test", "250 ")
	for _, ext := range []string{"STARTTLS", "PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE 4096", "ENHANCEDSTATUSCODES"} {
		if !strings.Contains(secure, "250-"+ext+"\n") && !strings.HasSuffix(secure, "250 "+ext) {
			t.Errorf("EHLO reply on the secure listener lacks %s:\n%s", ext, secure)
		}
	}
	if strings.Contains(secure, "AUTH") {
		t.Errorf("AUTH is advertised before STARTTLS:\n%s", secure)
	}
	insecure := dialSMTP(t, e.insecure).cmd("EHLO client.test", "250 ")
	if !strings.Contains(insecure, "AUTH PLAIN LOGIN") {
		t.Errorf("the insecure listener does not offer AUTH PLAIN LOGIN:\n%s", insecure)
	}
}

func TestSMTPAuthNeedsTLS(t *testing.T) {
	e := newSMTPEnv(t)
	c := dialSMTP(t, e.addr)
	c.cmd("EHLO client.test", "250 ")
	// go-smtp refuses AUTH itself before TLS, with 523 5.7.10 (encryption
	// needed) rather than RFC 4954's 538 5.7.11.
	c.cmd("AUTH PLAIN "+smtpPlain("", crmUser, crmPassword), "523 5.7.10 ")
	c.cmd("AUTH LOGIN", "523 5.7.10 ")
	c.cmd("MAIL FROM:<billing@contoso.com>", "530 5.7.0 Authentication required")
	if n := len(smtpReady(t, e.f)); n != 0 {
		t.Errorf("%d messages stored", n)
	}
}

func TestSMTPAuthFailures(t *testing.T) {
	e := newSMTPEnv(t)
	c := dialSMTP(t, e.insecure)
	c.cmd("EHLO client.test", "250 ")
	c.cmd("MAIL FROM:<billing@contoso.com>", "530 5.7.0 Authentication required")
	const invalid = "535 5.7.8 Authentication credentials invalid"
	c.cmd("AUTH PLAIN "+smtpPlain("", crmUser, "wrong-password"), invalid)
	c.cmd("AUTH PLAIN "+smtpPlain("", "nobody", crmPassword), invalid)
	c.cmd("AUTH PLAIN "+smtpPlain("", crmUser, webPassword), invalid)
	c.cmd("AUTH PLAIN "+smtpPlain(webUser, crmUser, crmPassword), invalid)
	c.cmd("AUTH PLAIN "+b64(crmUser+crmPassword), "501 5.5.2 ")
	c.cmd("AUTH PLAIN", "334 ")
	c.cmd(smtpPlain("", crmUser, "wrong-password"), invalid)
	c.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6")
	c.cmd(b64(crmUser), "334 UGFzc3dvcmQ6")
	c.cmd(b64("wrong-password"), invalid)
	c.cmd("AUTH CRAM-MD5", "504 5.7.4 ")
	c.cmd("MAIL FROM:<billing@contoso.com>", "530 5.7.0 Authentication required")
	// A failed AUTH does not lock the session out.
	c.cmd("AUTH PLAIN "+smtpPlain(crmUser, crmUser, crmPassword), "235 ")
	c.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
}

func TestSMTPAuthLogin(t *testing.T) {
	e := newSMTPEnv(t)
	c := dialSMTP(t, e.insecure)
	c.cmd("EHLO client.test", "250 ")
	c.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6")
	c.cmd(b64(webUser), "334 UGFzc3dvcmQ6")
	c.cmd(b64(webPassword), "235 2.0.0 ")
	c.send("web@fabrikam.example", []string{"x@example.org"}, "Subject: t\r\n\r\nhi\r\n.\r\n")

	// With the user name as the initial response, as go-sasl's client
	// sends it, over STARTTLS.
	gc, err := smtp.DialStartTLS(e.addr, e.tls)
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	if err := gc.Auth(sasl.NewLoginClient(crmUser, crmPassword)); err != nil {
		t.Fatalf("AUTH LOGIN: %v", err)
	}
	if err := gc.SendMail("billing@contoso.com", []string{"y@example.org"}, strings.NewReader("Subject: t\r\n\r\nhi\r\n")); err != nil {
		t.Fatalf("send after AUTH LOGIN: %v", err)
	}
	if n := len(smtpReady(t, e.f)); n != 1 {
		t.Errorf("%d messages ready on route crm, want 1", n)
	}
}

func TestSMTPSenderRules(t *testing.T) {
	e := newSMTPEnv(t)
	c := dialSMTP(t, e.insecure)
	c.login()
	const denied = "550 5.7.60 Client does not have permissions to send as this sender"
	c.cmd("MAIL FROM:<web@fabrikam.example>", denied)
	c.cmd("MAIL FROM:<billing@contoso.com.evil.example>", denied)
	c.cmd("MAIL FROM:<other@contoso.com>", denied)
	c.cmd("MAIL FROM:<billing@crm.example.evil.example>", denied)
	// The null sender is for bounces, not for new mail.
	c.cmd("MAIL FROM:<>", denied)
	c.cmd("RCPT TO:<x@example.org>", "502 5.5.1 ")
	// A domain rule, and case does not matter.
	c.cmd("MAIL FROM:<Anyone@CRM.Example>", "250 ")
	c.cmd("RSET", "250 ")
	c.send("BILLING@contoso.com", []string{"x@example.org"}, "Subject: t\r\n\r\nhi\r\n.\r\n")
	if n := len(smtpReady(t, e.f)); n != 1 {
		t.Errorf("%d messages ready, want 1", n)
	}
}

func TestSMTPMalformedAddresses(t *testing.T) {
	e := newSMTPEnv(t)
	long := strings.Repeat("a", 65)
	for _, tc := range []struct {
		name  string
		lines []string // sent after AUTH; the last reply must start with want
		want  string
	}{
		{"sender NUL", []string{"MAIL FROM:<bill\x00ing@contoso.com>"}, "501 5.1.7 Bad sender address syntax"},
		{"sender CR", []string{"MAIL FROM:<billing@contoso.com\r>"}, "501 5.1.7 "},
		{"sender comma list", []string{"MAIL FROM:<billing@contoso.com,x@crm.example>"}, "501 5.1.7 "},
		{"sender quoted space", []string{`MAIL FROM:<"a b"@crm.example>`}, "501 5.1.7 "},
		{"sender quoted bracket", []string{`MAIL FROM:<"a>"@crm.example>`}, "501 5.1.7 "},
		{"sender double dot", []string{"MAIL FROM:<billing@contoso..com>"}, "501 5.1.7 "},
		{"sender long local part", []string{"MAIL FROM:<" + long + "@crm.example>"}, "501 5.1.7 "},
		{"sender invalid UTF-8", []string{"MAIL FROM:<\xff@crm.example> SMTPUTF8"}, "501 5.1.7 "},
		{"sender UTF-8 without SMTPUTF8", []string{"MAIL FROM:<bïlling@crm.example>"}, "553 5.6.7 "},
		// go-smtp's own parser refuses these before the session sees them.
		{"sender no domain", []string{"MAIL FROM:<billing>"}, "501 5.5.2 "},
		{"sender nested brackets", []string{"MAIL FROM:<<billing@contoso.com>>"}, "501 5.5.2 "},
		{"sender space", []string{"MAIL FROM:<bill ing@contoso.com>"}, "501 5.5.2 "},
		{"sender second address", []string{"MAIL FROM:<billing@contoso.com>,<x@crm.example>"}, "500 5.5.4 "},
		{"sender command inside", []string{"MAIL FROM:<billing@contoso.com\r\nRCPT TO:<x@example.org>>"}, "502 5.5.1 "},
		{"sender command inside, bare LF", []string{"MAIL FROM:<billing@contoso.com\nRCPT TO:<x@example.org>>"}, "502 5.5.1 "},

		{"recipient NUL", []string{"MAIL FROM:<billing@contoso.com>", "RCPT TO:<x\x00@example.org>"}, "501 5.1.3 Bad recipient address syntax"},
		{"recipient CR", []string{"MAIL FROM:<billing@contoso.com>", "RCPT TO:<x@example.org\r>"}, "501 5.1.3 "},
		{"recipient comma list", []string{"MAIL FROM:<billing@contoso.com>", "RCPT TO:<x@example.org,y@example.org>"}, "501 5.1.3 "},
		{"recipient bad domain", []string{"MAIL FROM:<billing@contoso.com>", "RCPT TO:<x@-example.org>"}, "501 5.1.3 "},
		{"recipient quoted", []string{"MAIL FROM:<billing@contoso.com>", `RCPT TO:<"x,y"@example.org>`}, "501 5.1.3 "},
		{"recipient UTF-8 without SMTPUTF8", []string{"MAIL FROM:<billing@contoso.com>", "RCPT TO:<ünï@example.org>"}, "553 5.6.7 "},
		{"recipient no domain", []string{"MAIL FROM:<billing@contoso.com>", "RCPT TO:<postmaster>"}, "501 5.5.2 "},
		{"recipient second address", []string{"MAIL FROM:<billing@contoso.com>", "RCPT TO:<x@example.org>,<y@example.org>"}, "500 5.5.4 "},
		{"recipient command inside", []string{"MAIL FROM:<billing@contoso.com>", "RCPT TO:<x@example.org\r\nRCPT TO:<y@example.org>>"}, "500 5.5.4 "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialSMTP(t, e.insecure)
			c.login()
			for i, line := range tc.lines {
				c.write(line + "\r\n")
				want := "250 "
				if i == len(tc.lines)-1 {
					want = tc.want
				}
				if strings.Contains(line, "\n") {
					// The line is two commands; the first fails at the
					// server's parser, the second finds no transaction.
					c.expect("501 5.5.2 ")
				}
				c.expect(want)
			}
			// Nothing was accepted: DATA finds no transaction.
			c.cmd("DATA", "502 5.5.1 ")
		})
	}
	if n := len(smtpReady(t, e.f)); n != 0 {
		t.Errorf("%d messages stored", n)
	}
}

func TestSMTPUTF8(t *testing.T) {
	e := newSMTPEnv(t)
	c := dialSMTP(t, e.insecure)
	c.login()
	c.cmd("MAIL FROM:<bïlling@crm.example> SMTPUTF8 BODY=8BITMIME", "250 ")
	c.cmd("RCPT TO:<ünï@exämple.org>", "250 ")
	c.cmd("DATA", "354 ")
	c.write("Subject: héllo\r\n\r\nçà\r\n.\r\n")
	id := smtpQueuedID(t, c.expect("250 2.0.0 Queued as "))
	m, err := e.f.queue.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if m.From != "bïlling@crm.example" || !slices.Equal(m.To, []string{"ünï@exämple.org"}) {
		t.Errorf("stored from %q to %q", m.From, m.To)
	}
}

func TestSMTPSizeLimit(t *testing.T) {
	e := newSMTPEnv(t, func(o *Options) { o.SMTP.MaxMessageBytes = 2048 })
	c := dialSMTP(t, e.insecure)
	c.login()
	// go-smtp checks SIZE= itself, with its own text.
	c.cmd("MAIL FROM:<billing@contoso.com> SIZE=2049", "552 5.3.4 ")
	c.cmd("MAIL FROM:<billing@contoso.com> SIZE=2000", "250 ")
	c.cmd("RCPT TO:<x@example.org>", "250 ")
	c.cmd("DATA", "354 ")
	c.write("Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 98)+"\r\n", 30) + ".\r\n")
	c.expect("552 5.3.4 Message size exceeds fixed maximum message size")
	// The session goes on, and a message within the limit passes.
	c.send("billing@contoso.com", []string{"x@example.org"}, "Subject: small\r\n\r\n"+strings.Repeat("y", 1000)+"\r\n.\r\n")
	if n := len(smtpReady(t, e.f)); n != 1 {
		t.Errorf("%d messages ready, want only the small one", n)
	}
}

func TestSMTPTooManyRecipients(t *testing.T) {
	e := newSMTPEnv(t, func(o *Options) { o.SMTP.MaxRecipients = 3 })
	c := dialSMTP(t, e.insecure)
	c.login()
	c.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
	for _, r := range []string{"a", "b", "c"} {
		c.cmd("RCPT TO:<"+r+"@example.org>", "250 ")
	}
	c.cmd("RCPT TO:<d@example.org>", "452 4.5.3 Too many recipients")
	c.cmd("DATA", "354 ")
	c.write("Subject: t\r\n\r\nhi\r\n.\r\n")
	id := smtpQueuedID(t, c.expect("250 2.0.0 Queued as "))
	m, err := e.f.queue.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(m.To, []string{"a@example.org", "b@example.org", "c@example.org"}) {
		t.Errorf("stored recipients %q", m.To)
	}
	// The count starts again with each message.
	c.send("billing@contoso.com", []string{"e@example.org", "f@example.org", "g@example.org"}, "Subject: t\r\n\r\nhi\r\n.\r\n")
}

func TestSMTPLineBreaksAndNUL(t *testing.T) {
	e := newSMTPEnv(t)
	c := dialSMTP(t, e.insecure)
	c.login()
	for _, tc := range []struct{ name, body, want string }{
		{"bare LF", "Subject: t\r\n\r\nline one\nline two\r\n.\r\n", "550 5.6.11 Bare LF is not allowed; use CRLF"},
		{"LF only", "Subject: t\n\nhi\n\r\n.\r\n", "550 5.6.11 "},
		// SMTP smuggling: a receiver that ends DATA at LF.CRLF would see
		// a second message here.
		{"smuggling LF.CRLF", "Subject: t\r\n\r\nhi\n.\r\nMAIL FROM:<billing@contoso.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n", "550 5.6.11 "},
		{"smuggling CRLF.LF", "Subject: t\r\n\r\nhi\r\n.\nMAIL FROM:<billing@contoso.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n", "550 5.6.11 "},
		{"bare CR", "Subject: t\r\n\r\nline one\rline two\r\n.\r\n", "550 5.6.11 Bare CR is not allowed; use CRLF"},
		{"smuggling CR.CR", "Subject: t\r\n\r\nhi\r.\rMAIL FROM:<billing@contoso.com>\r\n.\r\n", "550 5.6.11 "},
		{"NUL", "Subject: t\r\n\r\nnul \x00 here\r\n.\r\n", "550 5.6.0 NUL bytes are not allowed in messages"},
	} {
		c.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
		c.cmd("RCPT TO:<x@example.org>", "250 ")
		c.cmd("DATA", "354 ")
		c.write(tc.body)
		if reply := c.expect(tc.want); strings.Contains(reply, "\n") {
			t.Errorf("%s: reply %q", tc.name, reply)
		}
	}
	// The session is still usable.
	c.send("billing@contoso.com", []string{"x@example.org"}, "Subject: fine\r\n\r\nhi\r\n.\r\n")
	c.cmd("NOOP", "250 ")
	if ms := smtpReady(t, e.f); len(ms) != 1 || !slices.Equal(ms[0].To, []string{"x@example.org"}) {
		t.Errorf("ready messages %v, want only the fine one", ms)
	}
}

func TestSMTPBDAT(t *testing.T) {
	e := newSMTPEnv(t)
	c := dialSMTP(t, e.insecure)
	c.login()
	c.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
	c.cmd("RCPT TO:<x@example.org>", "250 ")
	bdat := func(chunk string, last bool) {
		cmd := fmt.Sprintf("BDAT %d", len(chunk))
		if last {
			cmd += " LAST"
		}
		c.write(cmd + "\r\n" + chunk)
	}
	bdat("Subject: t\r\n", false)
	c.expect("250 ")
	bdat("\r\nhi\r\n", true)
	c.expect("250 2.0.0 Queued as ")
	c.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
	c.cmd("RCPT TO:<x@example.org>", "250 ")
	bdat("Subject: t\n\nhi\r\n", true)
	c.expect("550 5.6.11 ")
	if n := len(smtpReady(t, e.f)); n != 1 {
		t.Errorf("%d messages ready, want 1", n)
	}
}

// TestSMTPBDATEndedThenNext: a message sent by BDAT after a transfer
// that go-smtp ended between chunks, at a chunk past the size limit or
// at RSET, is queued and gets its own reply. go-smtp hands the ended
// transfer's result on from a goroutine of its own, which may run after
// the next transfer has begun, into that transfer's place for the reply
// (a data race, which -race reports).
func TestSMTPBDATEndedThenNext(t *testing.T) {
	e := newSMTPEnv(t, func(o *Options) { o.SMTP.MaxMessageBytes = 10 << 10 })
	c := dialSMTP(t, e.insecure)
	c.login()
	for _, end := range []func(){
		func() { c.bdat(strings.Repeat(strings.Repeat("x", 98)+"\r\n", 103), true, "552 5.3.4 ") },
		func() { c.cmd("RSET", "250 ") },
	} {
		c.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
		c.cmd("RCPT TO:<x@example.org>", "250 ")
		c.bdat("Subject: t\r\n", false, "250 ")
		end()
		c.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
		c.cmd("RCPT TO:<x@example.org>", "250 ")
		c.bdat("Subject: t\r\n\r\nhi\r\n", true, "250 2.0.0 Queued as ")
	}
	if n := len(smtpReady(t, e.f)); n != 2 {
		t.Errorf("%d messages ready, want 2", n)
	}
}

// TestSMTPOverlongLine: a command line past smtp.max_line_length ends the
// session; a message line past it refuses the message (500 5.5.2), and
// since go-smtp then reads nothing more of the connection, the session
// ends with a 421, which a client that sends its next command reads as
// temporary. go-smtp's own "500 5.4.0" came there before: a client read it
// as the permanent refusal of its next message, never sent.
func TestSMTPOverlongLine(t *testing.T) {
	e := newSMTPEnv(t, func(o *Options) { o.SMTP.MaxLineLength = 1000 })

	c := dialSMTP(t, e.insecure)
	c.cmd("EHLO client.test", "250 ")
	c.cmd("NOOP "+strings.Repeat("x", 1200), "500 5.4.0 ")
	c.expectClosed()

	longLine := func(c *smtpTestConn) {
		t.Helper()
		c.login()
		c.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
		c.cmd("RCPT TO:<x@example.org>", "250 ")
		c.cmd("DATA", "354 ")
		c.write("Subject: t\r\n\r\n" + strings.Repeat("x", 1500) + "\r\n.\r\n")
		c.expect("500 5.5.2 Line too long")
	}
	c = dialSMTP(t, e.insecure)
	longLine(c)
	c.expect("421 4.5.0 ")
	c.expectClosed()

	// Over TLS no 421 can take the place of go-smtp's reply: the next
	// command gets none, and the connection closes.
	c = dialSMTPStartTLS(t, e, true)
	longLine(c)
	c.write("MAIL FROM:<billing@contoso.com>\r\n")
	_ = c.nc.SetReadDeadline(time.Now().Add(smtpReplyTimeout))
	if rest, err := io.ReadAll(c.r); len(rest) > 0 || isTimeout(err) {
		t.Errorf("over TLS, after the refused message: got %q, %v; want nothing and the connection closed", rest, err)
	}
	if n := len(smtpReady(t, e.f)); n != 0 {
		t.Errorf("%d messages stored", n)
	}
}

func TestSMTPConnectionLimits(t *testing.T) {
	e := newSMTPEnv(t, func(o *Options) {
		o.SMTP.MaxConnectionsPerIP = 2
		o.SMTP.MaxConnections = 3
	})
	// The connections below are never old enough to be evicted.
	e.ing.evictAge.Store(int64(time.Hour))
	const tooMany = "421 4.7.0 Too many connections, try again later"
	ip1, ip2, ip3 := net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2), net.IPv4(127, 0, 0, 3)
	first := dialSMTPRaw(t, e.insecure, ip1)
	first.expect("220 ")
	dialSMTPRaw(t, e.insecure, ip1).expect("220 ")
	over := dialSMTPRaw(t, e.insecure, ip1)
	over.expect(tooMany)
	over.expectClosed()
	// Authenticated, ip1's connections are no newcomer's to take (an
	// address with more unauthenticated ones than the newcomer's would
	// lose one: TestSMTPFullTableFairShare).
	first.login()

	// Another address still gets in, up to the total.
	dialSMTPRaw(t, e.addr, ip2).expect("220 ")
	over = dialSMTPRaw(t, e.addr, ip3)
	over.expect(tooMany)
	over.expectClosed()

	if n := testutil.ToFloat64(e.ing.refused.WithLabelValues("per_ip")); n != 1 {
		t.Errorf("holdfast_smtp_connections_refused_total{limit=per_ip} = %v, want 1", n)
	}
	if n := testutil.ToFloat64(e.ing.refused.WithLabelValues("total")); n != 1 {
		t.Errorf("holdfast_smtp_connections_refused_total{limit=total} = %v, want 1", n)
	}

	// A closed connection frees its place, once the server has finished
	// with it (just after the client sees it closed).
	first.cmd("QUIT", "221 ")
	first.expectClosed()
	var reply string
	for deadline := time.Now().Add(2 * time.Second); ; {
		c := dialSMTPRaw(t, e.insecure, ip1)
		var err error
		if reply, err = c.readReply(); err == nil && strings.HasPrefix(reply, "220 ") {
			break
		}
		c.nc.Close()
		if time.Now().After(deadline) {
			t.Fatalf("after a connection closed, a new one still gets %q", reply)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// newSMTPTable is SMTP ingress whose connection table holds max
// connections (10 per IP, and all of them per application), evicting
// unauthenticated ones after age.
func newSMTPTable(t *testing.T, max int, age time.Duration) *smtpEnv {
	e := newSMTPEnv(t, func(o *Options) {
		o.SMTP.MaxConnections = max
		o.SMTP.MaxConnectionsPerIP = 10
		o.SMTP.MaxConnectionsPerApp = max
	})
	e.ing.evictAge.Store(int64(age))
	return e
}

// TestSMTPFullTableFairShare: a flood that reconnects faster than the
// eviction age leaves no connection old enough to close; a newcomer from
// an address with fewer connections then takes the place of the oldest
// of the address holding the most unauthenticated ones, while a newcomer
// of that address is refused.
func TestSMTPFullTableFairShare(t *testing.T) {
	e := newSMTPTable(t, 6, time.Hour)
	flood, other, fresh := net.IPv4(127, 0, 0, 2), net.IPv4(127, 0, 0, 3), net.IPv4(127, 0, 0, 4)
	var floods []*smtpTestConn
	for range 5 {
		c := dialSMTPRaw(t, e.insecure, flood)
		c.expect("220 ")
		floods = append(floods, c)
		time.Sleep(5 * time.Millisecond)
	}
	dialSMTPRaw(t, e.insecure, other).expect("220 ")
	waitSessionsWaiting(t, e, 6)

	app := dialSMTPRaw(t, e.insecure, fresh)
	app.expect("220 ")
	floods[0].expect("421 4.7.0 Too many connections, unauthenticated sessions are closed first")
	floods[0].expectClosed()
	app.cmd("EHLO app.test", "250 ")
	app.cmd("AUTH PLAIN "+smtpPlain("", crmUser, crmPassword), "235 ")

	// The flooding address cannot take another's place.
	waitSessionsWaiting(t, e, 6)
	again := dialSMTPRaw(t, e.insecure, flood)
	again.expect("421 4.7.0 Too many connections, try again later")
	// Another address with one connection still gets in.
	dialSMTPRaw(t, e.insecure, other).expect("220 ")
	floods[1].expect("421 4.7.0 ")
	if n := testutil.ToFloat64(e.ing.evicted); n != 2 {
		t.Errorf("holdfast_smtp_connections_evicted_total = %v, want 2", n)
	}
}

// waitSessionsWaiting waits until n sessions of the table wait for their
// clients, as a session only then may make room.
func waitSessionsWaiting(t *testing.T, e *smtpEnv, n int) {
	t.Helper()
	waitFor(t, 5*time.Second, strconv.Itoa(n)+" sessions waiting for their clients", func() bool {
		e.ing.mu.Lock()
		defer e.ing.mu.Unlock()
		k := 0
		for c := range e.ing.conns {
			if c.waiting.Load() {
				k++
			}
		}
		return k == n
	})
}

// TestSMTPFullTableEvictsUnreadReplies: an unauthenticated client that
// sends commands and never reads their replies leaves its session blocked
// in a write, not in a read; such a session is closed to make room as an
// idle one is, instead of holding its slot for smtp.write_timeout.
func TestSMTPFullTableEvictsUnreadReplies(t *testing.T) {
	// A write times out after a minute here, so that the slot cannot be
	// freed by the timeout within the test's 20 s.
	e := newSMTPEnv(t, func(o *Options) {
		o.SMTP.MaxConnections, o.SMTP.MaxConnectionsPerIP = 1, 10
		o.SMTP.WriteTimeout = Duration(time.Minute)
	})
	e.ing.evictAge.Store(int64(50 * time.Millisecond))
	nc, err := net.Dial("tcp", e.insecure)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.(*net.TCPConn).SetReadBuffer(1024); err != nil {
		t.Fatal(err)
	}
	if _, err := bufio.NewReader(nc).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	// Each EHLO's reply is many times its size: once the socket buffers
	// are full the session's write blocks.
	flood := []byte(strings.Repeat("EHLO a\r\n", 200000))
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		_ = nc.SetWriteDeadline(time.Now().Add(25 * time.Second))
		_, _ = nc.Write(flood)
	}()
	// A newcomer gets in once the session blocks writing. Writing the
	// megabytes that fill the buffers takes a while, longer under the
	// race detector on a busy machine: until then the session is busy,
	// not waiting for its client, and the newcomer is refused; it tries
	// again, as a client does.
	var app *smtpTestConn
	for deadline := time.Now().Add(20 * time.Second); app == nil; {
		c := dialSMTPRaw(t, e.insecure, nil)
		reply, err := c.readReply()
		switch {
		case err == nil && strings.HasPrefix(reply, "220 "):
			app = c
		case time.Now().After(deadline):
			t.Fatalf("a newcomer refused for 20 s: %q, %v", reply, err)
		default:
			c.nc.Close()
			time.Sleep(200 * time.Millisecond)
		}
	}
	app.login()
	app.send("billing@contoso.com", []string{"a@example.org"}, "Subject: t\r\n\r\nhi\r\n.\r\n")
	if n := testutil.ToFloat64(e.ing.evicted); n != 1 {
		t.Errorf("holdfast_smtp_connections_evicted_total = %v, want 1", n)
	}
	nc.Close()
	<-sent
}

// A full connection table makes room for a new connection by closing the
// oldest connection that has not authenticated; an authenticated one is
// never closed for it.
func TestSMTPFullTableEvictsOldestUnauthenticated(t *testing.T) {
	e := newSMTPTable(t, 3, 50*time.Millisecond)
	const tooMany = "421 4.7.0 Too many connections, try again later"
	app := dialSMTP(t, e.insecure)
	app.login()
	idle1 := dialSMTPRaw(t, e.insecure, net.IPv4(127, 0, 0, 2))
	idle1.expect("220 ")
	idle1.cmd("EHLO idle.test", "250 ")
	time.Sleep(20 * time.Millisecond)
	idle2 := dialSMTPRaw(t, e.insecure, net.IPv4(127, 0, 0, 3))
	idle2.expect("220 ")
	time.Sleep(100 * time.Millisecond)

	// The table is full: the newcomer gets in, and the oldest
	// unauthenticated connection goes.
	second := dialSMTP(t, e.insecure)
	idle1.expect("421 4.7.0 Too many connections, unauthenticated sessions are closed first")
	idle1.expectClosed()
	idle2.cmd("NOOP", "250 ")
	second.login()
	second.send("billing@contoso.com", []string{"a@example.org"}, "Subject: t\r\n\r\nhi\r\n.\r\n")

	time.Sleep(100 * time.Millisecond)
	third := dialSMTP(t, e.insecure)
	idle2.expect("421 4.7.0 ")
	idle2.expectClosed()
	third.login()

	// Every connection is authenticated now: a newcomer is refused.
	time.Sleep(100 * time.Millisecond)
	over := dialSMTPRaw(t, e.insecure, nil)
	over.expect(tooMany)
	over.expectClosed()
	for _, c := range []*smtpTestConn{app, second, third} {
		c.cmd("NOOP", "250 ")
	}
	if got := strings.Count(e.logs.String(), "unauthenticated connection closed"); got != 2 {
		t.Errorf("%d eviction log lines, want 2:\n%s", got, e.logs.String())
	}
	if n := testutil.ToFloat64(e.ing.evicted); n != 2 {
		t.Errorf("holdfast_smtp_connections_evicted_total = %v, want 2", n)
	}
	if n := testutil.ToFloat64(e.ing.refused.WithLabelValues("total")); n != 1 {
		t.Errorf("holdfast_smtp_connections_refused_total{limit=total} = %v, want 1", n)
	}
}

// A connection younger than the eviction age is not closed to make room:
// the newcomer is refused.
func TestSMTPFullTableKeepsBusyConnections(t *testing.T) {
	e := newSMTPTable(t, 1, time.Hour)
	first := dialSMTP(t, e.insecure)
	over := dialSMTPRaw(t, e.insecure, nil)
	over.expect("421 4.7.0 Too many connections, try again later")
	over.expectClosed()
	first.cmd("EHLO client.test", "250 ")
}

// A client that never authenticates cannot keep its slot by sending a
// command more often than the eviction age: what counts is how long it has
// been connected without authenticating.
func TestSMTPFullTableEvictsChattyUnauthenticated(t *testing.T) {
	e := newSMTPTable(t, 1, 300*time.Millisecond)
	chatty := dialSMTP(t, e.addr)
	chatty.cmd("EHLO client.test", "250 ")
	for start := time.Now(); time.Since(start) < 500*time.Millisecond; {
		chatty.cmd("NOOP", "250 ")
		time.Sleep(30 * time.Millisecond)
	}
	dialSMTP(t, e.addr).cmd("EHLO client.test", "250 ")
	chatty.write("NOOP\r\n")
	chatty.expect("421 4.7.0 Too many connections, unauthenticated sessions are closed first")
	chatty.expectClosed()
}

// A client that says STARTTLS and then sends no handshake holds its slot
// in silence too.
func TestSMTPFullTableEvictsStalledSTARTTLS(t *testing.T) {
	e := newSMTPTable(t, 1, 50*time.Millisecond)
	stalled := dialSMTP(t, e.addr)
	stalled.cmd("EHLO client.test", "250 ")
	stalled.cmd("STARTTLS", "220 ")
	time.Sleep(150 * time.Millisecond)
	dialSMTP(t, e.addr).cmd("EHLO client.test", "250 ")
	stalled.expect("421 4.7.0 ")
	stalled.expectClosed()
}

// A connection whose AUTH waits for a bcrypt worker is not waiting for its
// client, and is not closed to make room, however long the check waits.
func TestSMTPFullTableKeepsAuthInProgress(t *testing.T) {
	s := startRelayOn(t, newFixture(t), func(o *Options) {
		o.SMTP.MaxConnections = 1
		o.SMTP.MaxConnectionsPerIP = 10
	})
	s.smtp.evictAge.Store(int64(50 * time.Millisecond))
	addr := s.SMTPAddrs()[0]
	pool := s.smtp.apps.pool
	for range cap(pool.shared) {
		pool.shared <- struct{}{}
	}
	released := false
	release := func() {
		if !released {
			released = true
			for range cap(pool.shared) {
				<-pool.shared
			}
		}
	}
	defer release()
	c := dialSMTP(t, addr)
	c.cmd("EHLO client.test", "250 ")
	c.write("AUTH PLAIN " + smtpPlain("", crmUser, crmPassword) + "\r\n")
	time.Sleep(150 * time.Millisecond)
	over := dialSMTPRaw(t, addr, nil)
	over.expect("421 4.7.0 Too many connections, try again later")
	over.expectClosed()
	release()
	c.expect("235 2.0.0 ")
	c.cmd("NOOP", "250 ")
}

func TestSMTPPipelining(t *testing.T) {
	e := newSMTPEnv(t)
	c := dialSMTP(t, e.insecure)
	c.login()
	c.write("MAIL FROM:<billing@contoso.com>\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
	for _, want := range []string{"250 ", "250 ", "250 ", "354 "} {
		c.expect(want)
	}
	c.write("Subject: one\r\n\r\nhi\r\n.\r\n")
	id1 := smtpQueuedID(t, c.expect("250 2.0.0 Queued as "))

	// A whole transaction and QUIT in one write, with a refused
	// recipient in the middle.
	c.write("RSET\r\nMAIL FROM:<billing@contoso.com>\r\nRCPT TO:<c@example.org>\r\nRCPT TO:<bad@@example.org>\r\nDATA\r\nSubject: two\r\n\r\nhi\r\n.\r\nQUIT\r\n")
	for _, want := range []string{"250 ", "250 ", "250 ", "501 5.1.3 ", "354 "} {
		c.expect(want)
	}
	id2 := smtpQueuedID(t, c.expect("250 2.0.0 Queued as "))
	c.expect("221 ")
	c.expectClosed()

	want := map[string][]string{id1: {"a@example.org", "b@example.org"}, id2: {"c@example.org"}}
	ms := smtpReady(t, e.f)
	if len(ms) != len(want) {
		t.Errorf("%d messages ready, want %d", len(ms), len(want))
	}
	for _, m := range ms {
		if !slices.Equal(m.To, want[m.ID]) {
			t.Errorf("ready message %s to %q, want %q", m.ID, m.To, want[m.ID])
		}
	}
	// Without TLS the trace says ESMTPA (RFC 3848).
	if body := smtpBody(t, e.f, id1); !bytes.Contains(body, []byte(" with ESMTPA (app crm)\r\n")) {
		t.Errorf("stored body %q lacks the ESMTPA trace", body)
	}
}

// writeCountingListener records every write made to the connections it
// accepts.
type writeCountingListener struct {
	net.Listener
	mu     sync.Mutex
	writes []string
}

func (l *writeCountingListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &writeCountingConn{Conn: nc, l: l}, nil
}

func (l *writeCountingListener) sent() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.writes)
}

type writeCountingConn struct {
	net.Conn
	l *writeCountingListener
}

func (c *writeCountingConn) Write(b []byte) (int, error) {
	c.l.mu.Lock()
	c.l.writes = append(c.l.writes, string(b))
	c.l.mu.Unlock()
	return c.Conn.Write(b)
}

// TestSMTPPipelinedRepliesInOneWrite: a client that pipelines MAIL, RCPT
// and DATA (RFC 2920), as an MTA relaying through Holdfast does, gets
// their replies in one write, and the message's reply and QUIT's in
// another, on both listeners.
func TestSMTPPipelinedRepliesInOneWrite(t *testing.T) {
	var (
		mu        sync.Mutex
		listeners []*writeCountingListener
	)
	e := newSMTPEnvListening(t, func(l net.Listener) net.Listener {
		w := &writeCountingListener{Listener: l}
		mu.Lock()
		listeners = append(listeners, w)
		mu.Unlock()
		return w
	})
	counted := func(addr string) *writeCountingListener {
		mu.Lock()
		defer mu.Unlock()
		for _, l := range listeners {
			if l.Addr().String() == addr {
				return l
			}
		}
		t.Fatalf("no listener on %s", addr)
		return nil
	}
	for _, tc := range []struct {
		name string
		addr string
		dial func() *smtpTestConn
	}{
		{"plain", e.insecure, func() *smtpTestConn {
			c := dialSMTP(t, e.insecure)
			c.login()
			return c
		}},
		{"STARTTLS", e.addr, func() *smtpTestConn {
			c := dialSMTPStartTLS(t, e, true)
			c.login()
			return c
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := counted(tc.addr)
			c := tc.dial()
			before := len(l.sent())
			c.write("MAIL FROM:<billing@contoso.com>\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
			for _, want := range []string{"250 ", "250 ", "250 ", "354 "} {
				c.expect(want)
			}
			c.write("Subject: pipelined\r\n\r\nhi\r\n.\r\nQUIT\r\n")
			c.expect("250 2.0.0 Queued as ")
			c.expect("221 ")
			c.expectClosed()
			writes := l.sent()[before:]
			// Over TLS the server's close_notify alert is a write of its own.
			want := 2
			if tc.name == "STARTTLS" {
				want = 3
			}
			if len(writes) != want {
				t.Errorf("%d writes for the pipelined group, the message and QUIT, want %d (their sizes: %v)",
					len(writes), want, lens(writes))
			}
		})
	}
}

func lens(ss []string) []int {
	n := make([]int, len(ss))
	for i, s := range ss {
		n[i] = len(s)
	}
	return n
}

func TestSMTPRedisDownDuringData(t *testing.T) {
	e := newSMTPEnv(t)
	c := dialSMTP(t, e.insecure)
	c.login()
	kept := c.send("billing@contoso.com", []string{"x@example.org"}, "Subject: kept\r\n\r\nhi\r\n.\r\n")

	c.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
	c.cmd("RCPT TO:<x@example.org>", "250 ")
	c.cmd("DATA", "354 ")
	c.write("Subject: lost\r\nFrom: billing@contoso.com\r\n")
	e.f.redis.Kill(t)
	c.write("\r\nbody\r\n.\r\n")
	c.expect("451 4.3.0 Temporary failure storing the message, try again later")

	e.f.redis.Restart(t)
	// The kept message may be gone too: SIGKILL can lose the AOF writes of
	// the last second. Nothing else may be there.
	for _, m := range smtpReady(t, e.f) {
		if m.ID != kept {
			t.Errorf("after the failure, %s is stored (from %q to %q)", m.ID, m.From, m.To)
		}
	}
	st, err := e.f.queue.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if tot := st.Total; tot.Ready > 1 || tot.Scheduled+tot.Leased+tot.Held+tot.Dead != 0 {
		t.Errorf("queue stats %+v, want at most the one kept message", tot)
	}
	// The client retries in the same session once Redis is back.
	c.send("billing@contoso.com", []string{"x@example.org"}, "Subject: retried\r\n\r\nhi\r\n.\r\n")
}

func TestSMTPShutdown(t *testing.T) {
	e := newSMTPEnv(t)
	idle := dialSMTP(t, e.insecure)
	idle.cmd("EHLO client.test", "250 ")
	overTLS := dialSMTPStartTLS(t, e, true)
	overTLS.login()
	// After STARTTLS, before the second EHLO, the 421 goes through TLS.
	tlsNoEHLO := dialSMTPStartTLS(t, e, true)
	// A client that started TLS without any EHLO never had a session:
	// the server cannot reach its TLS layer and closes without a 421,
	// rather than write plaintext into TLS.
	tlsNoSession := dialSMTPStartTLS(t, e, false)

	busy := dialSMTP(t, e.insecure)
	busy.login()
	busy.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
	busy.cmd("RCPT TO:<x@example.org>", "250 ")
	busy.cmd("DATA", "354 ")
	busy.write("Subject: in flight\r\n\r\nfirst half\r\n")

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), smtpReplyTimeout)
		defer cancel()
		done <- e.ing.shutdown(ctx)
	}()

	// Idle sessions are told at once, without sending a command.
	idle.expect("421 4.3.2 Service shutting down")
	idle.expectClosed()
	overTLS.expect("421 4.3.2 Service shutting down")
	overTLS.expectClosed()
	tlsNoEHLO.expect("421 4.3.2 Service shutting down")
	tlsNoEHLO.expectClosed()
	tlsNoSession.expectClosed()
	// No new connections.
	if nc, err := net.DialTimeout("tcp", e.insecure, time.Second); err == nil {
		nc.Close()
		t.Error("a new connection was accepted after shutdown")
	}
	select {
	case err := <-done:
		t.Fatalf("shutdown returned %v while a DATA transfer was running", err)
	default:
	}

	// The transfer in progress finishes and is stored.
	busy.write("second half\r\n.\r\n")
	id := smtpQueuedID(t, busy.expect("250 2.0.0 Queued as "))
	busy.expect("421 4.3.2 Service shutting down")
	busy.expectClosed()
	if err := <-done; err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if _, err := e.f.queue.Get(context.Background(), id); err != nil {
		t.Errorf("message acknowledged during shutdown: %v", err)
	}
}

func TestSMTPShutdownDuringTLSHandshake(t *testing.T) {
	e := newSMTPEnv(t)
	c := dialSMTP(t, e.addr)
	c.cmd("EHLO client.test", "250 ")
	c.cmd("STARTTLS", "220 ")
	// The client's Finished message never reaches the server, which stays
	// in the handshake while the client believes it is done (TLS 1.3).
	cfg := e.tls.Clone()
	cfg.MinVersion = tls.VersionTLS13
	tc := tls.Client(&smtpFirstWriteOnly{Conn: c.nc}, cfg)
	_ = tc.SetDeadline(time.Now().Add(smtpReplyTimeout))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	if err := e.ing.shutdown(context.Background()); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	// No plaintext reply may follow inside TLS: the client sees the
	// connection end and nothing else.
	got, err := io.ReadAll(tc)
	if err != nil && !isConnReset(err) {
		t.Errorf("reading after shutdown: %v", err)
	}
	if len(got) > 0 {
		t.Errorf("got %q after shutdown", got)
	}
}

// smtpFirstWriteOnly sends its first write and drops the others.
type smtpFirstWriteOnly struct {
	net.Conn
	wrote bool
}

func (c *smtpFirstWriteOnly) Write(b []byte) (int, error) {
	if c.wrote {
		return len(b), nil
	}
	c.wrote = true
	return c.Conn.Write(b)
}

func TestSMTPShutdownNextCommand(t *testing.T) {
	e := newSMTPEnv(t)
	c := dialSMTP(t, e.insecure)
	c.login()
	if err := e.ing.shutdown(context.Background()); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	c.write("NOOP\r\n")
	c.expect("421 4.3.2 Service shutting down")
	c.expectClosed()
}

func TestSMTPShutdownDeadline(t *testing.T) {
	e := newSMTPEnv(t)
	busy := dialSMTP(t, e.insecure)
	busy.login()
	busy.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
	busy.cmd("RCPT TO:<x@example.org>", "250 ")
	busy.cmd("DATA", "354 ")
	busy.write("Subject: never finished\r\n\r\n")

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := e.ing.shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("shutdown returned %v, want the context's deadline error", err)
	}
	_ = busy.nc.SetReadDeadline(time.Now().Add(smtpReplyTimeout))
	rest, err := io.ReadAll(busy.r)
	if err != nil && !isConnReset(err) {
		t.Errorf("the connection in DATA was not closed: %v", err)
	}
	if bytes.Contains(rest, []byte("250 ")) {
		t.Errorf("got %q after the forced close", rest)
	}
	if n := len(smtpReady(t, e.f)); n != 0 {
		t.Errorf("%d messages stored", n)
	}
}

func TestSMTPLogsNoSecrets(t *testing.T) {
	e := newSMTPEnv(t)
	const wrong = "wrong-password-8d1f"
	secrets := map[string]string{
		"password":               crmPassword,
		"web password":           webPassword,
		"wrong password":         wrong,
		"PLAIN payload":          smtpPlain("", crmUser, crmPassword),
		"PLAIN payload (failed)": smtpPlain("", crmUser, wrong),
		"PLAIN password as user": smtpPlain("", crmPassword, crmPassword),
		"LOGIN password":         b64(webPassword),
		"LOGIN password(failed)": b64(wrong),
	}

	c := dialSMTP(t, e.insecure)
	c.cmd("EHLO client.test", "250 ")
	c.cmd("AUTH PLAIN "+smtpPlain("", crmUser, wrong), "535 ")
	c.cmd("AUTH PLAIN "+smtpPlain("", crmPassword, crmPassword), "535 ")
	c.cmd("AUTH LOGIN", "334 ")
	c.cmd(b64(crmUser), "334 ")
	c.cmd(b64(wrong), "535 ")
	c.cmd("AUTH LOGIN "+b64(webUser), "334 ")
	c.cmd(b64(webPassword), "235 ")
	c.send("web@fabrikam.example", []string{"x@example.org"}, "Subject: t\r\n\r\nhi\r\n.\r\n")

	c = dialSMTP(t, e.insecure)
	c.cmd("EHLO client.test", "250 ")
	c.cmd("AUTH PLAIN", "334 ")
	c.cmd(smtpPlain("", crmUser, crmPassword), "235 ")
	c.cmd("QUIT", "221 ")
	c.expectClosed()

	logs := e.logs.String()
	for _, want := range []string{"authentication failed", "authenticated", "app=web", "app=crm", "message stored"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the debug log lacks %q; it is:\n%s", want, logs)
		}
	}
	for name, s := range secrets {
		if strings.Contains(logs, s) {
			t.Errorf("the log contains the %s %q:\n%s", name, s, logs)
		}
	}
}

func TestSMTPSwaks(t *testing.T) {
	swaks, err := exec.LookPath("swaks")
	if err != nil {
		t.Fatalf("swaks not found on PATH: install it (Debian: apt-get install swaks)")
	}
	e := newSMTPEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, swaks,
		"--server", e.addr, "--tls", "--ehlo", "swaks.test",
		"--auth", "PLAIN", "--auth-user", crmUser, "--auth-password", crmPassword,
		"--from", "billing@contoso.com", "--to", "x@example.org",
		"--timeout", "10").CombinedOutput()
	if err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`250 2\.0\.0 Queued as (\S+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("swaks got no queue id:\n%s", out)
	}
	msg, err := e.f.queue.Get(context.Background(), string(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	if msg.From != "billing@contoso.com" || !slices.Equal(msg.To, []string{"x@example.org"}) {
		t.Errorf("stored from %q to %q", msg.From, msg.To)
	}
}

// TestSMTPBDATTruncated: a connection that ends inside a BDAT chunk, even
// one marked LAST, stores nothing and, when the client only half-closed,
// answers 451.
func TestSMTPBDATTruncated(t *testing.T) {
	e := newSMTPEnv(t)
	for _, tc := range []struct {
		name  string
		chunk string
	}{
		{"one LAST chunk", "BDAT 10000 LAST\r\nSubject: t\r\n\r\nonly the start of it\r\n"},
		{"second chunk LAST", "BDAT 12\r\nSubject: t\r\n"},
	} {
		c := dialSMTP(t, e.insecure)
		c.login()
		c.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
		c.cmd("RCPT TO:<x@example.org>", "250 ")
		c.write(tc.chunk)
		if strings.HasPrefix(tc.chunk, "BDAT 12\r\n") {
			c.expect("250 ")
			c.write("BDAT 5000 LAST\r\n\r\nthe rest, cut short\r\n")
		}
		if err := c.nc.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		c.expect("451 4.4.2 ")
	}
	if n := len(smtpReady(t, e.f)); n != 0 {
		t.Errorf("%d truncated messages stored, want none", n)
	}
	// A whole BDAT message is still taken.
	c := dialSMTP(t, e.insecure)
	c.login()
	c.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
	c.cmd("RCPT TO:<x@example.org>", "250 ")
	c.write("BDAT 16 LAST\r\nSubject: t\r\n\r\nhi\r\n")
	c.expect("250 2.0.0 Queued as ")
}

// TestSMTPNestedMail: MAIL inside a transaction is refused, as RFC 5321
// says, and the recipients already accepted are kept.
func TestSMTPNestedMail(t *testing.T) {
	e := newSMTPEnv(t)
	c := dialSMTP(t, e.insecure)
	c.login()
	c.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
	c.cmd("RCPT TO:<first@example.org>", "250 ")
	c.cmd("MAIL FROM:<billing@contoso.com>", "503 5.5.1 ")
	c.cmd("RCPT TO:<second@example.org>", "250 ")
	c.cmd("DATA", "354 ")
	c.write("Subject: t\r\n\r\nhi\r\n.\r\n")
	c.expect("250 2.0.0 Queued as ")
	ms := smtpReady(t, e.f)
	if len(ms) != 1 || !slices.Equal(ms[0].To, []string{"first@example.org", "second@example.org"}) {
		t.Errorf("ready %v, want one message to first@ and second@", ms)
	}
	// After RSET a new transaction starts.
	c.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
	c.cmd("RSET", "250 ")
	c.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
}

// TestSMTPErrorLimit: a session that gets smtp.max_errors permanent
// refusals in a row, with no message queued between them, is told 421
// and closed; refusals for a temporary cause (too many recipients) do not
// count, and a queued message starts the count again.
func TestSMTPErrorLimit(t *testing.T) {
	e := newSMTPEnv(t, func(o *Options) {
		o.SMTP.MaxErrors = 3
		o.SMTP.MaxRecipients = 1
	})
	c := dialSMTP(t, e.insecure)
	c.login()
	c.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
	c.cmd("RCPT TO:<x@-one.example>", "501 5.1.3 ")
	c.cmd("RCPT TO:<x@example.org>", "250 ")
	for range 5 {
		c.cmd("RCPT TO:<y@example.org>", "452 ")
	}
	c.cmd("RCPT TO:<x@-two.example>", "501 5.1.3 ")
	c.cmd("DATA", "354 ")
	c.write("Subject: t\r\n\r\nhi\r\n.\r\n")
	c.expect("250 2.0.0 Queued as ")

	// The count starts again: two more refusals leave the session open.
	c.cmd("MAIL FROM:<ceo@elsewhere.example>", "550 ")
	c.cmd("MAIL FROM:<ceo@elsewhere.example>", "550 ")
	c.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
	c.cmd("RCPT TO:<x@-three.example>", "501 5.1.3 ")
	c.cmd("NOOP", "421 4.7.0 Too many errors")
	c.expectClosed()
}

// TestSMTPRefusalsNotFlooded: one client's refused commands and failed
// AUTHs write one line per kind and address every 10 s, which then says
// how many like lines were held back, not one line each: 2,000 RCPTs
// past the limit in one transaction wrote 2,000 lines.
func TestSMTPRefusalsNotFlooded(t *testing.T) {
	e := newSMTPEnv(t, func(o *Options) { o.SMTP.MaxRecipients = 3 })
	c := dialSMTP(t, e.insecure)
	c.login()
	c.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
	for n := range 3 {
		c.cmd(fmt.Sprintf("RCPT TO:<r%d@example.org>", n), "250 ")
	}
	for n := range 2000 {
		c.cmd(fmt.Sprintf("RCPT TO:<over%d@example.org>", n), "452 4.5.3 ")
	}
	c.cmd("DATA", "354 ")
	c.write("Subject: t\r\n\r\nhi\r\n.\r\n")
	c.expect("250 2.0.0 Queued as ")
	for n := range 5 {
		f := dialSMTP(t, e.insecure)
		f.cmd("EHLO client.test", "250 ")
		f.cmd("AUTH PLAIN "+smtpPlain("", fmt.Sprint("nobody", n), "wrong"), "535 ")
	}
	logs := e.logs.String()
	if n := strings.Count(logs, "RCPT refused"); n != 1 {
		t.Errorf("%d lines of refused RCPTs for one client, want 1", n)
	}
	if n := strings.Count(logs, "authentication failed"); n != 1 {
		t.Errorf("%d lines of failed AUTHs for one client, want 1", n)
	}
	// The next line of a kind says how many were held back.
	e.ing.cmdSample.now = func() time.Time { return time.Now().Add(time.Minute) }
	c.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
	for n := range 3 {
		c.cmd(fmt.Sprintf("RCPT TO:<again%d@example.org>", n), "250 ")
	}
	c.cmd("RCPT TO:<over@example.org>", "452 4.5.3 ")
	if !strings.Contains(e.logs.String(), "like_lines_held_back=1999") {
		t.Errorf("the next refused RCPT's line does not count the 1,999 held back:\n%s", e.logs.String()[max(0, len(e.logs.String())-2000):])
	}
}

// TestSMTPBDATTimeoutIsTemporary: a BDAT chunk that stops arriving until
// the read timeout gets a temporary 451 4.4.2, which a client retries,
// not go-smtp's "554 5.0.0 Error: transaction failed: read tcp ...: i/o
// timeout", which it bounces; nothing is queued.
func TestSMTPBDATTimeoutIsTemporary(t *testing.T) {
	e := newSMTPEnv(t, func(o *Options) { o.SMTP.ReadTimeout = Duration(500 * time.Millisecond) })
	c := dialSMTP(t, e.insecure)
	c.login()
	c.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
	c.cmd("RCPT TO:<a@example.org>", "250 ")
	c.write("BDAT 1000 LAST\r\nSubject: t\r\n\r\nonly the start")
	reply, err := c.readReply()
	if err != nil || !strings.HasPrefix(reply, "451 4.4.2 ") {
		t.Fatalf("a BDAT chunk cut by the read timeout: %q, %v; want 451 4.4.2", reply, err)
	}
	if n := len(smtpReady(t, e.f)); n != 0 {
		t.Errorf("%d messages queued, want none", n)
	}
}

// TestSMTPConnectionsPerApp: authenticated sessions are never closed to
// make room, so one application that opens many (a leak of its
// connections, a runaway pool) could hold the whole table and lock
// every other application out. Past smtp.max_connections_per_app
// sessions of one application, its next AUTH gets 421 and the
// connection closes; another application still gets in, and a session
// that ends frees its application's place.
func TestSMTPConnectionsPerApp(t *testing.T) {
	e := newSMTPEnv(t, func(o *Options) {
		o.SMTP.MaxConnections = 6
		o.SMTP.MaxConnectionsPerIP = 6
		o.SMTP.MaxConnectionsPerApp = 3
	})
	e.ing.evictAge.Store(int64(time.Hour))
	var crm []*smtpTestConn
	for range 3 {
		c := dialSMTP(t, e.insecure)
		c.login()
		crm = append(crm, c)
	}
	// The 421 is the session's last reply: a command sent with the AUTH
	// gets none.
	const appFull = "421 4.7.0 Too many connections for this application, try again later"
	over := dialSMTP(t, e.insecure)
	over.cmd("EHLO client.test", "250 ")
	over.write("AUTH PLAIN " + smtpPlain("", crmUser, crmPassword) + "\r\nNOOP\r\n")
	over.expect(appFull)
	over.expectClosed()

	web := dialSMTP(t, e.insecure)
	web.cmd("EHLO client.test", "250 ")
	web.cmd("AUTH PLAIN "+smtpPlain("", webUser, webPassword), "235 ")
	web.send("web@fabrikam.example", []string{"a@example.org"}, "Subject: x\r\n\r\nx\r\n.\r\n")
	crm[0].send("billing@contoso.com", []string{"a@example.org"}, "Subject: y\r\n\r\ny\r\n.\r\n")
	if n := testutil.ToFloat64(e.ing.refused.WithLabelValues("per_app")); n != 1 {
		t.Errorf("holdfast_smtp_connections_refused_total{limit=per_app} = %v, want 1", n)
	}

	// A session that authenticates again after STARTTLS counts once,
	// and its end frees its place.
	tc := crm[1]
	tc.cmd("STARTTLS", "220 ")
	tlsConn := tls.Client(tc.nc, e.tls)
	if err := tlsConn.Handshake(); err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	tc = &smtpTestConn{t: t, nc: tlsConn, r: bufio.NewReader(tlsConn)}
	tc.login()
	tc.cmd("QUIT", "221 ")
	crm[0].cmd("QUIT", "221 ")
	crm[0].expectClosed()
	auth := func() (*smtpTestConn, string) {
		c := dialSMTP(t, e.insecure)
		c.cmd("EHLO client.test", "250 ")
		return c, c.cmd("AUTH PLAIN "+smtpPlain("", crmUser, crmPassword), "")
	}
	for deadline := time.Now().Add(2 * time.Second); ; {
		c1, r1 := auth()
		c2, r2 := auth()
		if strings.HasPrefix(r1, "235 ") && strings.HasPrefix(r2, "235 ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after two sessions of crm closed, its next two AUTHs still get %q and %q", r1, r2)
		}
		c1.nc.Close()
		c2.nc.Close()
		time.Sleep(10 * time.Millisecond)
	}

	// A refusal while the relay shuts down is still one 421: the app's
	// limit's, or the shutdown's when the session's poll of the closing
	// ingress comes before the AUTH is read.
	late := dialSMTP(t, e.insecure)
	late.cmd("EHLO client.test", "250 ")
	e.ing.closing.Store(true)
	late.write("AUTH PLAIN " + smtpPlain("", crmUser, crmPassword) + "\r\n")
	if reply := late.expect("421 "); reply != appFull && reply != "421 4.3.2 Service shutting down" {
		t.Errorf("AUTH while shutting down with the app at its limit: %q, want %q or the shutdown's 421", reply, appFull)
	}
	late.expectClosed()
}

// TestSMTPSenderRefusalLogsWhy: a sender the app may not use is refused
// at MAIL FROM with Exchange's 550 5.7.60; the relay's log line says
// which setting decides, which the reply does not.
func TestSMTPSenderRefusalLogsWhy(t *testing.T) {
	f := newFixture(t)
	var logs syncBuffer
	s := startRelayLogged(t, f, func(o *Options) { o.Delivery.Sender = "off" }, slog.New(slog.NewTextHandler(&logs, nil)))
	c := dialSMTP(t, s.SMTPAddrs()[0])
	c.login()
	c.cmd("MAIL FROM:<someone@evil.example>", "550 5.7.60 Client does not have permissions to send as this sender")
	c.cmd("QUIT", "221 ")
	want := `from=someone@evil.example reply="Client does not have permissions to send as this sender" why="not among the senders of app crm (apps[].senders)"`
	if out := logs.String(); !strings.Contains(out, want) {
		t.Errorf("the log lacks %s:\n%s", want, out)
	}
}
