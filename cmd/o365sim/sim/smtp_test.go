package sim

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

const outlookScope = "https://outlook.office365.com/.default"

func testMessage(from, to, msgID string) string {
	return "From: " + from + "\r\nTo: " + to + "\r\nSubject: hi\r\nMessage-ID: " + msgID + "\r\n\r\nHello.\r\n"
}

// TestSMTPTranscript checks every reply of a whole session, byte for byte.
func TestSMTPTranscript(t *testing.T) {
	f := newFixture(t)
	tok := f.appToken(t, appID, appSecret, outlookScope)

	nc, err := net.DialTimeout("tcp", f.SMTPAddr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	tp := textproto.NewConn(nc)
	expect := func(want ...string) {
		t.Helper()
		for _, w := range want {
			line, err := tp.ReadLine()
			if err != nil {
				t.Fatalf("read, want %q: %v", w, err)
			}
			if strings.HasSuffix(w, "*") && strings.HasPrefix(line, strings.TrimSuffix(w, "*")) {
				continue
			}
			if line != w {
				t.Fatalf("got %q, want %q", line, w)
			}
		}
	}
	send := func(cmd string) {
		t.Helper()
		if err := tp.PrintfLine("%s", cmd); err != nil {
			t.Fatal(err)
		}
	}
	expect("220 SIM.PROD.OUTLOOK.COM Microsoft ESMTP MAIL Service ready at *")
	send("EHLO client.example")
	expect("250-SIM.PROD.OUTLOOK.COM Hello [127.0.0.1]", "250-SIZE 157286400", "250-PIPELINING", "250-DSN",
		"250-ENHANCEDSTATUSCODES", "250-STARTTLS", "250-8BITMIME", "250-BINARYMIME", "250-CHUNKING", "250 SMTPUTF8")
	send("AUTH XOAUTH2")
	expect("451 5.7.3 STARTTLS is required to send mail")
	send("MAIL FROM:<" + alice + ">")
	expect("451 5.7.3 STARTTLS is required to send mail")
	send("STARTTLS")
	expect("220 2.0.0 SMTP server ready")

	tc := tls.Client(nc, &tls.Config{RootCAs: f.RootCAs(), ServerName: "127.0.0.1"})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	tp = textproto.NewConn(tc)
	send("EHLO client.example")
	ehlo := []string{}
	for {
		line, err := tp.ReadLine()
		if err != nil {
			t.Fatal(err)
		}
		ehlo = append(ehlo, line)
		if strings.HasPrefix(line, "250 ") {
			break
		}
	}
	joined := strings.Join(ehlo, "\n")
	for _, w := range []string{"250-SIM.PROD.OUTLOOK.COM Hello [127.0.0.1]", "AUTH LOGIN XOAUTH2", "SIZE 157286400"} {
		if !strings.Contains(joined, w) {
			t.Fatalf("EHLO after STARTTLS lacks %q:\n%s", w, joined)
		}
	}
	if strings.Contains(joined, "STARTTLS") {
		t.Fatalf("EHLO after STARTTLS offers STARTTLS:\n%s", joined)
	}
	send("MAIL FROM:<" + alice + ">")
	expect("530 5.7.57 Client not authenticated to send mail")
	send("AUTH XOAUTH2")
	expect("334 ")
	send(base64.StdEncoding.EncodeToString([]byte("user=" + alice + "\x01auth=Bearer " + tok + "\x01\x01")))
	expect("235 2.7.0 Authentication successful")
	send("MAIL FROM:<" + alice + ">")
	expect("250 2.1.0 Sender OK")
	send("RCPT TO:<unknown.person@fabrikam.com>")
	expect("550 5.1.1 RESOLVER.ADR.RecipNotFound; not found")
	send("RCPT TO:<dave@fabrikam.com>")
	expect("250 2.1.5 Recipient OK")
	send("DATA")
	expect("354 Start mail input; end with <CRLF>.<CRLF>")
	w := tp.DotWriter()
	fmt.Fprint(w, testMessage(alice, "dave@fabrikam.com", "<m1@holdfast.test>"))
	w.Close()
	expect("250 2.0.0 OK <m1@holdfast.test> [Hostname=SIM.PROD.OUTLOOK.COM]")
	send("RSET")
	expect("250 2.0.0 Resetting")
	send("QUIT")
	expect("221 2.0.0 Service closing transmission channel")
}

func TestSMTPSend(t *testing.T) {
	f := newFixture(t)
	tok := f.appToken(t, appID, appSecret, outlookScope)
	c := f.dialTLS(t)
	if ok, size := c.Extension("SIZE"); !ok || size != "157286400" {
		t.Fatalf("SIZE %v %q", ok, size)
	}
	if err := c.Auth(&xoauth2{user: alice, token: tok}); err != nil {
		t.Fatal(err)
	}
	msg := testMessage(alice, "dave@fabrikam.com", "<m2@holdfast.test>")
	if err := c.SendMail(alice, []string{"dave@fabrikam.com", "erin@fabrikam.com"}, strings.NewReader(msg)); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	got := f.Received()
	if len(got) != 1 {
		t.Fatalf("received %d messages", len(got))
	}
	r := got[0]
	if r.Mailbox != alice || r.From != alice || strings.Join(r.To, ",") != "dave@fabrikam.com,erin@fabrikam.com" ||
		r.MessageID != "<m2@holdfast.test>" || r.Via != "smtp" || r.TokenClientID != appID || r.Delegated || string(r.Data) != msg {
		t.Fatalf("received %+v", r)
	}
	cc := f.Counters()
	if cc.Clients[appID].SMTPAuthAttempts != 1 || cc.Clients[appID].SMTPAuthFailures != 0 || cc.Mailboxes[alice].MaxConcurrentSMTP != 1 {
		t.Fatalf("counters %+v", cc)
	}
}

func TestSMTPDelegated(t *testing.T) {
	f := newFixture(t)
	rt := f.IssueRefreshToken(tenantID, appID, bob)
	cfg := f.ccConfig(appID, appSecret, "https://outlook.office.com/SMTP.Send")
	cfg.EndpointParams = map[string][]string{"grant_type": {"refresh_token"}, "refresh_token": {rt}}
	tok, err := cfg.Token(f.ctx())
	if err != nil {
		t.Fatal(err)
	}
	// The app may not send as bob with app-only tokens, but bob's
	// delegated token works for bob and for no one else.
	c := f.dialTLS(t)
	wantSMTPError(t, c.Auth(&xoauth2{user: alice, token: tok.AccessToken}), 535, smtp.EnhancedCode{5, 7, 3}, "Authentication unsuccessful [SIM.PROD.OUTLOOK.COM]")
	if err := c.Auth(&xoauth2{user: bob, token: tok.AccessToken, noIR: true}); err != nil {
		t.Fatal(err)
	}
	if err := c.SendMail(bob, []string{"dave@fabrikam.com"}, strings.NewReader(testMessage(bob, "dave@fabrikam.com", "<m3@holdfast.test>"))); err != nil {
		t.Fatal(err)
	}
	if r := f.Received(); len(r) != 1 || !r[0].Delegated || r[0].Mailbox != bob {
		t.Fatalf("received %+v", r)
	}
}

func TestSMTPAuthFailures(t *testing.T) {
	f := newFixture(t)
	tok := f.appToken(t, appID, appSecret, outlookScope)
	graphTok := f.appToken(t, appID, appSecret, "https://graph.microsoft.com/.default")
	failed := smtp.EnhancedCode{5, 7, 3}
	const failedText = "Authentication unsuccessful [SIM.PROD.OUTLOOK.COM]"
	tests := []struct {
		name string
		auth sasl.Client
		code int
		enh  smtp.EnhancedCode
		text string
	}{
		{"garbage token", &xoauth2{user: alice, token: "not-a-token"}, 535, failed, failedText},
		{"forged token", &xoauth2{user: alice, token: tok[:len(tok)-4] + "AAAA"}, 535, failed, failedText},
		{"graph audience", &xoauth2{user: alice, token: graphTok}, 535, failed, failedText},
		{"mailbox not granted", &xoauth2{user: bob, token: tok}, 535, failed, failedText},
		{"unknown mailbox", &xoauth2{user: "nobody@contoso.com", token: tok}, 535, failed, failedText},
		{"bad user", &xoauth2{user: "not an address", token: tok}, 501, smtp.EnhancedCode{5, 5, 124}, "Invalid XOAUTH2 auth data - User address provided is not valid"},
		{"smtp auth disabled", &xoauth2{user: carol, token: tok}, 535, smtp.EnhancedCode{5, 7, 139}, "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information."},
		{"plain", sasl.NewPlainClient("", alice, "password"), 535, smtp.EnhancedCode{5, 7, 139}, "Authentication unsuccessful, basic authentication is disabled."},
		{"login", sasl.NewLoginClient(alice, "password"), 535, smtp.EnhancedCode{5, 7, 139}, "Authentication unsuccessful, basic authentication is disabled."},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := f.dialTLS(t)
			wantSMTPError(t, c.Auth(tc.auth), tc.code, tc.enh, tc.text)
		})
	}
	t.Run("expired token", func(t *testing.T) {
		f.clock.Add(91 * time.Minute) // past the longest lifetime Entra draws
		defer f.clock.Add(-91 * time.Minute)
		c := f.dialTLS(t)
		wantSMTPError(t, c.Auth(&xoauth2{user: alice, token: tok}), 535, failed, failedText)
	})
	// Tokens that do not verify count under "".
	cc := f.Counters().Clients
	if cc[appID].SMTPAuthAttempts != 6 || cc[appID].SMTPAuthFailures != 6 || cc[""].SMTPAuthFailures != 2 {
		t.Fatalf("counters %+v", cc)
	}
}

func TestSMTPNoTLS(t *testing.T) {
	f := newFixture(t)
	c, err := smtp.Dial(f.SMTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("AUTH"); ok {
		t.Fatal("AUTH offered before STARTTLS")
	}
	tlsRequired := "STARTTLS is required to send mail"
	wantSMTPError(t, c.Auth(&xoauth2{user: alice, token: "x"}), 451, smtp.EnhancedCode{5, 7, 3}, tlsRequired)
	wantSMTPError(t, c.Mail(alice, nil), 451, smtp.EnhancedCode{5, 7, 3}, tlsRequired)
}

func TestSMTPEnvelopeErrors(t *testing.T) {
	f := newFixture(t)
	tok := f.appToken(t, appID, appSecret, outlookScope)

	c := f.dialTLS(t)
	wantSMTPError(t, c.Mail(alice, nil), 530, smtp.EnhancedCode{5, 7, 57}, "Client not authenticated to send mail")

	if err := c.Auth(&xoauth2{user: alice, token: tok}); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail(alice, nil); err != nil {
		t.Fatal(err)
	}
	wantSMTPError(t, c.Rcpt("unknown-user@contoso.com", nil), 550, smtp.EnhancedCode{5, 1, 1}, "RESOLVER.ADR.RecipNotFound; not found")
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}

	// SendAs is refused at the end of DATA, for the envelope sender and
	// for the From header.
	sendAsDenied := func(from string) string {
		return "SendAsDenied; " + alice + " not allowed to send as " + from + "; STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied"
	}
	err := c.SendMail(bob, []string{"dave@fabrikam.com"}, strings.NewReader(testMessage(bob, "dave@fabrikam.com", "<m4@x>")))
	wantSMTPError(t, err, 554, smtp.EnhancedCode{5, 2, 252}, sendAsDenied(bob))
	err = c.SendMail(alice, []string{"dave@fabrikam.com"}, strings.NewReader(testMessage(bob, "dave@fabrikam.com", "<m5@x>")))
	wantSMTPError(t, err, 554, smtp.EnhancedCode{5, 2, 252}, sendAsDenied(bob))
	if n := f.ReceivedCount(); n != 0 {
		t.Fatalf("%d messages recorded", n)
	}
}

func TestSMTPConcurrencyLimit(t *testing.T) {
	f := newFixture(t)
	tok := f.appToken(t, appID, appSecret, outlookScope)
	var clients []*smtp.Client
	for range 3 {
		c := f.dialTLS(t)
		if err := c.Auth(&xoauth2{user: alice, token: tok}); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	fourth := f.dialTLS(t)
	wantSMTPError(t, fourth.Auth(&xoauth2{user: alice, token: tok}), 432, smtp.EnhancedCode{4, 3, 2}, "Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending for more information.")
	if n := f.Counters().Mailboxes[alice].MaxConcurrentSMTP; n != 4 {
		t.Fatalf("MaxConcurrentSMTP %d, want 4", n)
	}
	// Another mailbox is not affected.
	other := f.dialTLS(t)
	otherTok := f.appToken(t, otherApp, "other-secret", outlookScope)
	if err := other.Auth(&xoauth2{user: bob, token: otherTok}); err != nil {
		t.Fatal(err)
	}
	// When one session ends, its slot is free again.
	if err := clients[0].Quit(); err != nil {
		t.Fatal(err)
	}
	var err error
	waitFor(t, "a free slot", func() bool {
		c := f.dialTLS(t)
		err = c.Auth(&xoauth2{user: alice, token: tok})
		return err == nil
	})
}

func TestSMTPFaults(t *testing.T) {
	f := newFixture(t)
	tok := f.appToken(t, appID, appSecret, outlookScope)

	f.SetFault(Fault{SMTPTransient: "421"})
	_, err := smtp.DialStartTLS(f.SMTPAddr(), &tls.Config{RootCAs: f.RootCAs()})
	wantSMTPError(t, err, 421, smtp.EnhancedCode{4, 3, 2}, "Service not active")

	f.SetFault(Fault{SMTPTransient: "451"})
	c := f.dialTLS(t)
	if err := c.Auth(&xoauth2{user: alice, token: tok}); err != nil {
		t.Fatal(err)
	}
	err = c.SendMail(alice, []string{"dave@fabrikam.com"}, strings.NewReader(testMessage(alice, "dave@fabrikam.com", "<m6@x>")))
	wantSMTPError(t, err, 451, smtp.EnhancedCode{4, 7, 0}, "Temporary server error. Please try again later. PRX4")

	f.SetFault(Fault{SMTPMailRefusal: "sender_not_permitted"})
	wantSMTPError(t, c.Mail(alice, nil), 550, smtp.EnhancedCode{5, 7, 60}, "SMTP; Client does not have permissions to send as this sender")
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	f.SetFault(Fault{SMTPDataRefusal: "thread_limit"})
	err = c.SendMail(alice, []string{"dave@fabrikam.com"}, strings.NewReader(testMessage(alice, "dave@fabrikam.com", "<m8@x>")))
	wantSMTPError(t, err, 432, smtp.EnhancedCode{4, 3, 2}, "STOREDRV.ClientSubmit; sender thread limit exceeded")
	f.SetFault(Fault{SMTPDataRefusal: "sender_throttled"})
	err = c.SendMail(alice, []string{"dave@fabrikam.com"}, strings.NewReader(testMessage(alice, "dave@fabrikam.com", "<m9@x>")))
	wantSMTPError(t, err, 550, smtp.EnhancedCode{5, 2, 251}, "Sender throttled due to continuous invalid recipients errors")
	if n := f.ReceivedCount(); n != 0 {
		t.Fatalf("%d messages recorded under the faults", n)
	}
	// Limited to another mailbox, the refusal leaves this one alone.
	f.SetFault(Fault{SMTPDataRefusal: "sender_throttled", SMTPDataRefusalMailbox: "Bob@contoso.com"})
	if err := c.SendMail(alice, []string{"dave@fabrikam.com"}, strings.NewReader(testMessage(alice, "dave@fabrikam.com", "<m10@x>"))); err != nil {
		t.Fatalf("a refusal of another mailbox refused alice's message: %v", err)
	}
	f.SetFault(Fault{SMTPDataRefusal: "sender_throttled", SMTPDataRefusalMailbox: strings.ToUpper(alice)})
	err = c.SendMail(alice, []string{"dave@fabrikam.com"}, strings.NewReader(testMessage(alice, "dave@fabrikam.com", "<m11@x>")))
	wantSMTPError(t, err, 550, smtp.EnhancedCode{5, 2, 251}, "Sender throttled due to continuous invalid recipients errors")

	f.SetFault(Fault{SMTPDown: true})
	if nc, err := net.DialTimeout("tcp", f.SMTPAddr(), time.Second); err == nil {
		nc.Close()
		t.Fatal("connection accepted while SMTPDown")
	}
	f.SetFault(Fault{})
	c = f.dialTLS(t)
	if err := c.Auth(&xoauth2{user: alice, token: tok}); err != nil {
		t.Fatal(err)
	}
	if err := c.SendMail(alice, []string{"dave@fabrikam.com"}, strings.NewReader(testMessage(alice, "dave@fabrikam.com", "<m7@x>"))); err != nil {
		t.Fatal(err)
	}
	if r := f.Received(); len(r) != 2 || r[0].MessageID != "<m10@x>" || r[1].MessageID != "<m7@x>" {
		t.Fatalf("received %+v", r)
	}
}

// startTLS connects to the simulator's SMTP port, sends plain (which must
// include STARTTLS) after the greeting, reads up to the 220 that answers
// STARTTLS, and returns the TLS session. The connection has 5 s.
func startTLS(t *testing.T, f *fixture, plain string) *tls.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", f.SMTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(nc)
	_, _ = r.ReadString('\n')
	fmt.Fprint(nc, plain)
	skipTo(t, r, "220 ")
	tc := tls.Client(nc, &tls.Config{RootCAs: f.RootCAs(), ServerName: "localhost"})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	return tc
}

// skipTo reads reply lines up to and including the first that starts
// with prefix.
func skipTo(t *testing.T, r *bufio.Reader, prefix string) {
	t.Helper()
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading up to %q: %v", prefix, err)
		}
		if strings.HasPrefix(line, prefix) {
			return
		}
	}
}

// TestSMTPPipelinedSTARTTLS checks that commands sent after STARTTLS in
// plaintext are dropped, not answered inside TLS.
func TestSMTPPipelinedSTARTTLS(t *testing.T) {
	f := newFixture(t)
	tc := startTLS(t, f, "EHLO x\r\nSTARTTLS\r\nMAIL FROM:<a@b>\r\n")
	fmt.Fprint(tc, "NOOP\r\n")
	line, err := bufio.NewReader(tc).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if line != "250 2.0.0 OK\r\n" {
		t.Fatalf("first reply inside TLS %q, want the NOOP's", line)
	}
}

// TestSMTPPipelinedRepliesTogether: the replies to a group of pipelined
// commands go out together, in one TLS record, as a server that offers
// PIPELINING sends them (RFC 2920, section 3.2), rather than a record and
// a system call each.
func TestSMTPPipelinedRepliesTogether(t *testing.T) {
	f := newFixture(t)
	tc := startTLS(t, f, "STARTTLS\r\n")
	fmt.Fprint(tc, "EHLO x\r\n")
	skipTo(t, bufio.NewReader(tc), "250 ")
	fmt.Fprint(tc, "RSET\r\nNOOP\r\nNOOP\r\n")
	buf := make([]byte, 4096)
	n, err := tc.Read(buf) // one record at most
	if err != nil {
		t.Fatal(err)
	}
	want := "250 2.0.0 Resetting\r\n250 2.0.0 OK\r\n250 2.0.0 OK\r\n"
	if got := string(buf[:n]); got != want {
		t.Fatalf("first TLS record after the group %q, want all three replies %q", got, want)
	}
	fmt.Fprint(tc, "QUIT\r\n")
	n, err = tc.Read(buf)
	if err != nil || string(buf[:n]) != "221 2.0.0 Service closing transmission channel\r\n" {
		t.Fatalf("QUIT: %q %v, want the 221 before the connection closes", buf[:n], err)
	}
}

// TestSMTPStall checks that a stalled server makes the client time out:
// "greeting" accepts connections and says nothing, "data" never answers
// the end of a message and does not record it. A session stalled at DATA
// ends, freeing its connection slot, when the client hangs up. New
// connections are served again once the fault is cleared. The fixture's
// Close must not hang on a stalled connection.
func TestSMTPStall(t *testing.T) {
	f := newFixture(t)
	tok := f.appToken(t, appID, appSecret, outlookScope)

	f.SetFault(Fault{SMTPStall: "greeting", SMTPTransient: "421"})
	nc, err := net.DialTimeout("tcp", f.SMTPAddr(), 5*time.Second)
	if err != nil {
		t.Fatalf("a stalled server must still accept: %v", err)
	}
	defer nc.Close()
	fmt.Fprint(nc, "EHLO client.example\r\n")
	_ = nc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	buf := make([]byte, 512)
	n, err := nc.Read(buf)
	if ne, ok := errors.AsType[net.Error](err); n != 0 || !ok || !ne.Timeout() {
		t.Fatalf("stalled server answered %q (err %v), want nothing until the read times out", buf[:n], err)
	}
	// go-smtp's client times out on the greeting.
	raw, err := net.DialTimeout("tcp", f.SMTPAddr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	gc := smtp.NewClient(raw)
	gc.CommandTimeout = 300 * time.Millisecond
	start := time.Now()
	err = gc.Hello("client.example")
	gc.Close()
	if ne, ok := errors.AsType[net.Error](err); !ok || !ne.Timeout() {
		t.Fatalf("greeting under a stall: %v, want a timeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the client waited %v for its 300ms timeout", d)
	}

	// A connection made before the "data" stall is greeted and
	// authenticates; the end of its message is never answered.
	f.SetFault(Fault{})
	c := f.dialTLS(t)
	if err := c.Auth(&xoauth2{user: alice, token: tok}); err != nil {
		t.Fatal(err)
	}
	f.SetFault(Fault{SMTPStall: "data", SMTPTransient: "451"})
	c.SubmissionTimeout = 300 * time.Millisecond
	err = c.SendMail(alice, []string{"dave@fabrikam.com"}, strings.NewReader(testMessage(alice, "dave@fabrikam.com", "<stall0@x>")))
	if ne, ok := errors.AsType[net.Error](err); !ok || !ne.Timeout() {
		t.Fatalf("end of DATA under a stall: %v, want a timeout", err)
	}
	c.Close()
	waitFor(t, "the stalled session's slot freed", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.active[strings.ToLower(alice)] == 0
	})

	// Clearing the fault serves new connections; the one stalled at the
	// greeting is not revived.
	f.SetFault(Fault{})
	c = f.dialTLS(t)
	if err := c.Auth(&xoauth2{user: alice, token: tok}); err != nil {
		t.Fatal(err)
	}
	if err := c.SendMail(alice, []string{"dave@fabrikam.com"}, strings.NewReader(testMessage(alice, "dave@fabrikam.com", "<stall1@x>"))); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := nc.Read(buf); n != 0 || err == nil {
		t.Fatalf("the stalled connection answered %q after the fault was cleared", buf[:n])
	}
	if r := f.Received(); len(r) != 1 || r[0].MessageID != "<stall1@x>" {
		t.Fatalf("received %+v, want only the message sent after the stall", r)
	}
}

// TestSMTPStallMailboxWithData: with SMTPStallMailbox set, SMTPStall
// "data" stalls that mailbox's messages alone, as SMTPStallMailbox does
// by itself; the other mailboxes send.
func TestSMTPStallMailboxWithData(t *testing.T) {
	f := newFixture(t)
	tok := f.appToken(t, otherApp, "other-secret", outlookScope)
	f.SetFault(Fault{SMTPStall: "data", SMTPStallMailbox: alice})
	send := func(box, id string) error {
		c := f.dialTLS(t)
		defer c.Close()
		if err := c.Auth(&xoauth2{user: box, token: tok}); err != nil {
			t.Fatal(err)
		}
		c.SubmissionTimeout = 300 * time.Millisecond
		return c.SendMail(box, []string{"dave@fabrikam.com"}, strings.NewReader(testMessage(box, "dave@fabrikam.com", id)))
	}
	if err := send(bob, "<free@x>"); err != nil {
		t.Fatalf("another mailbox's message: %v", err)
	}
	if ne, ok := errors.AsType[net.Error](send(alice, "<stalled@x>")); !ok || !ne.Timeout() {
		t.Fatal("the stalled mailbox's message was answered")
	}
	if r := f.Received(); len(r) != 1 || r[0].MessageID != "<free@x>" {
		t.Fatalf("received %+v, want the other mailbox's message alone", r)
	}
}
