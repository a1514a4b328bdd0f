package o365_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"holdfast/queue"
	"holdfast/relay/o365"
	"holdfast/relay/upstream"
)

// scriptedSMTP serves SMTP on a loopback port until the test ends: every
// session is greeted with replies["greeting"], offers STARTTLS and AUTH
// XOAUTH2, and gets replies[VERB] in answer to the commands it lists,
// 250 to others. It never starts TLS. It returns the address.
func scriptedSMTP(t *testing.T, replies map[string]string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(time.Minute))
				r := bufio.NewReader(c)
				c.Write([]byte(replies["greeting"] + "\r\n"))
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					verb := strings.ToUpper(strings.Fields(line + " x")[0])
					if reply, ok := replies[verb]; ok {
						c.Write([]byte(reply + "\r\n"))
						continue
					}
					switch verb {
					case "EHLO":
						c.Write([]byte("250-scripted.localhost\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 AUTH XOAUTH2\r\n"))
					case "QUIT":
						c.Write([]byte("221 2.0.0 bye\r\n"))
						return
					default:
						c.Write([]byte("250 2.0.0 ok\r\n"))
					}
				}
			})
		}
	})
	return ln.Addr().String()
}

// TestUnlistedRefusalsBeforeTheMessage: a refusal of the session or of
// its AUTH that the table does not list says nothing of the message, so
// it never makes the message fail for good (a dead letter): mail must
// not bounce because of an auth outage. A refused session waits as
// transient, a refused AUTH on the mailbox's breaker. Over plaintext the
// greeting and EHLO come with the AUTH.
func TestUnlistedRefusalsBeforeTheMessage(t *testing.T) {
	const ready = "220 scripted.localhost ready"
	for _, tc := range []struct {
		name    string
		tls     bool
		replies map[string]string
		want    upstream.Class
	}{
		{"unknown mechanism", false, map[string]string{"greeting": ready, "AUTH": "504 5.7.4 Unrecognized authentication type"}, upstream.Mailbox},
		{"other 535", false, map[string]string{"greeting": ready, "AUTH": "535 5.7.8 Authentication credentials invalid"}, upstream.Mailbox},
		{"535 without an enhanced code", false, map[string]string{"greeting": ready, "AUTH": "535 Authentication failed"}, upstream.Mailbox},
		{"5xx greeting, plaintext", false, map[string]string{"greeting": "554 5.7.1 Access denied"}, upstream.Mailbox},
		{"5xx greeting", true, map[string]string{"greeting": "554 5.7.1 Access denied"}, upstream.Transient},
		{"5xx EHLO", true, map[string]string{"greeting": ready, "EHLO": "550 5.7.1 Client host rejected"}, upstream.Transient},
		{"5xx STARTTLS", true, map[string]string{"greeting": ready, "STARTTLS": "554 5.7.3 Unable to initialize security subsystem"}, upstream.Transient},
		{"still the credential's", false, map[string]string{"greeting": ready, "AUTH": "535 5.7.3 Authentication unsuccessful [scripted]"}, upstream.Credential},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := o365.NewSMTPSender(o365.SMTPOptions{
				Addr:              scriptedSMTP(t, tc.replies),
				InsecurePlaintext: !tc.tls,
				TLS:               &tls.Config{ServerName: "scripted.localhost"},
				CommandTimeout:    10 * time.Second,
				DataTimeout:       10 * time.Second,
				IdleTimeout:       time.Minute,
				PerMinute:         1000,
				Limits:            freeLimits{},
				Router: func(context.Context, *queue.Message) (o365.Route, error) {
					return o365.Route{Mailbox: "box@contoso.com", Tokens: fixedToken{}, Kind: o365.AppOnly}, nil
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			_, err = s.Send(context.Background(), sinkMessage(1, "rcpt@example.com"))
			if err == nil {
				t.Fatal("sent")
			}
			if got := upstream.ClassOf(err); got != tc.want {
				t.Fatalf("class %v, want %v (%v)", got, tc.want, err)
			}
		})
	}
}
