package relay

import (
	"bytes"
	"context"
	"io"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"
)

// smtpFuzzHang is how long one fuzzed session may take before it counts
// as a hang. The server's own read timeout is far shorter.
const smtpFuzzHang = 10 * time.Second

// smtpFuzzBadBytes matches a NUL, a CR not followed by LF, or an LF not
// preceded by CR.
var smtpFuzzBadBytes = regexp.MustCompile(`\x00|\r([^\n]|$)|(^|[^\r])\n`)

// FuzzSMTPSession plays arbitrary bytes as a client transcript against the
// insecure listener. The server must close the connection once the input
// ends and must not panic; every "250 Queued as" must name a stored
// message whose envelope the application was allowed to use, and no
// stored message may hold a NUL or a line break other than CRLF.
func FuzzSMTPSession(f *testing.F) {
	e := newSMTPEnv(f, func(o *Options) {
		o.SMTP.MaxMessageBytes = 64 << 10
		o.SMTP.MaxRecipients = 5
		o.SMTP.ReadTimeout = Duration(2 * time.Second)
		o.SMTP.WriteTimeout = Duration(2 * time.Second)
	})
	plain := smtpPlain("", crmUser, crmPassword)
	for _, seed := range []string{
		// A valid session.
		"EHLO fuzz.test\r\nAUTH PLAIN " + plain + "\r\nMAIL FROM:<billing@contoso.com>\r\nRCPT TO:<a@example.org>\r\nDATA\r\nSubject: hi\r\n\r\nhello\r\n..dot\r\n.\r\nQUIT\r\n",
		// LOGIN, SMTPUTF8, two messages, the second by BDAT.
		"EHLO fuzz.test\r\nAUTH LOGIN\r\n" + b64(webUser) + "\r\n" + b64(webPassword) + "\r\nMAIL FROM:<web@fabrikam.example> SIZE=100 BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<ü@example.org>\r\nDATA\r\nSubject: x\r\n\r\nx\r\n.\r\nMAIL FROM:<web@fabrikam.example>\r\nRCPT TO:<b@example.org>\r\nBDAT 12 LAST\r\nSubject: y\r\n",
		// An open relay probe and a sender the application may not use.
		"HELO fuzz.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nhi\r\n.\r\nAUTH PLAIN " + plain + "\r\nMAIL FROM:<web@fabrikam.example>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n",
		// SMTP smuggling.
		"EHLO fuzz.test\r\nAUTH PLAIN " + plain + "\r\nMAIL FROM:<billing@contoso.com>\r\nRCPT TO:<a@example.org>\r\nDATA\r\nhi\n.\r\nMAIL FROM:<billing@contoso.com>\r\nRCPT TO:<v@example.org>\r\nDATA\r\nevil\r\n.\r\n",
		// Bad commands and bytes.
		"EHLO\r\nHELO\r\nFOO bar\r\nMAIL FROM:<x>\r\nRCPT TO:<>\r\nDATA x\r\n\x00\xff\r\nBDAT -1\r\nVRFY root\r\n",
		// AUTH cancelled, malformed, repeated.
		"EHLO fuzz.test\r\nAUTH LOGIN\r\n*\r\nAUTH PLAIN\r\n=\r\nAUTH PLAIN !!!\r\nAUTH XOAUTH2 abc\r\nAUTH PLAIN " + plain + "\r\nAUTH PLAIN " + plain + "\r\n",
		// STARTTLS followed by bytes that are not a TLS handshake.
		"EHLO fuzz.test\r\nSTARTTLS\r\n\x16\x03\x01\x00\x05hello",
		// An overlong line, pipelined: go-smtp drops the whole read that
		// holds it and closes the connection.
		"EHLO fuzz.test\r\nAUTH PLAIN " + plain + "\r\nMAIL FROM:<billing@contoso.com>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n" + strings.Repeat("x", 2100) + "\r\n.\r\n",
	} {
		f.Add([]byte(seed))
	}

	f.Fuzz(func(t *testing.T, transcript []byte) {
		nc, err := net.DialTimeout("tcp", e.insecure, smtpFuzzHang)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		_ = nc.SetDeadline(time.Now().Add(smtpFuzzHang))
		// The server may stop reading early, so the transcript is
		// written while the replies are read.
		go func() {
			_, _ = nc.Write(transcript)
			_ = nc.(*net.TCPConn).CloseWrite()
		}()
		out, err := io.ReadAll(nc)
		if isTimeout(err) {
			t.Fatalf("the server did not close the connection within %v of the end of input %q; it sent %q", smtpFuzzHang, transcript, out)
		}
		if bytes.Contains(out, []byte("421 4.0.0 Internal server error")) || strings.Contains(e.logs.String(), "panic=true") {
			t.Fatalf("the server panicked on %q:\n%s", transcript, e.logs.String())
		}
		e.logs.Reset()

		for _, m := range smtpQueuedRe.FindAllStringSubmatch(strings.ReplaceAll(string(out), "\r\n", "\n"), -1) {
			msg, err := e.f.queue.Get(context.Background(), m[1])
			if err != nil {
				t.Fatalf("the server acknowledged %s, which is not stored: %v", m[1], err)
			}
			var app *App
			for i := range e.f.opts.Apps {
				if e.f.opts.Apps[i].Name == msg.App {
					app = &e.f.opts.Apps[i]
				}
			}
			if app == nil || !validAddress(msg.From) || !app.maySend(msg.From) {
				t.Fatalf("stored %s from %q for app %q", msg.ID, msg.From, msg.App)
			}
			for _, to := range msg.To {
				if !validAddress(to) {
					t.Fatalf("stored %s to %q", msg.ID, to)
				}
			}
		}
		// No stored message holds a NUL, a bare CR or a bare LF.
		for _, route := range []string{"crm", "web"} {
			res, err := e.f.queue.Lease(context.Background(), route, 100, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range res.Leases {
				if smtpFuzzBadBytes.Match(l.Body) {
					t.Fatalf("stored %s: %q", l.ID, l.Body)
				}
			}
		}
	})
}
