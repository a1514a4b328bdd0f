package o365_test

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"holdfast/queue"
	"holdfast/relay/o365"
	"holdfast/relay/upstream"
)

// permSink is an in-process SMTP server that takes any XOAUTH2 token
// except at the mailboxes the app has no permission on, where it answers
// 535 5.7.3 as Exchange does to a bad token. It counts the AUTHs at each
// mailbox.
type permSink struct {
	denied map[string]bool

	mu    sync.Mutex
	auths map[string]int
	got   int
}

func (k *permSink) NewSession(*smtp.Conn) (smtp.Session, error) { return &permSession{k: k}, nil }

func (k *permSink) count(mailbox string) (auths, messages int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.auths[mailbox], k.got
}

type permSession struct{ k *permSink }

func (s *permSession) AuthMechanisms() []string { return []string{"XOAUTH2"} }
func (s *permSession) Auth(string) (sasl.Server, error) {
	return permAuth{s.k}, nil
}
func (s *permSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *permSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *permSession) Data(r io.Reader) error {
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	s.k.mu.Lock()
	s.k.got++
	s.k.mu.Unlock()
	return nil
}
func (s *permSession) Reset()        {}
func (s *permSession) Logout() error { return nil }

type permAuth struct{ k *permSink }

func (a permAuth) Next(ir []byte) ([]byte, bool, error) {
	user, _, _ := strings.Cut(strings.TrimPrefix(string(ir), "user="), "\x01")
	a.k.mu.Lock()
	a.k.auths[user]++
	a.k.mu.Unlock()
	if a.k.denied[user] {
		return nil, false, &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful"}
	}
	return nil, true, nil
}

// TestRefusalAtAnotherMailbox: Exchange refused the relay's token at
// denied@ (the cached token, then the new one, which the source gives the
// same). A session for another mailbox holding that token goes ahead
// when it has a fleet-wide place, or is a probe; it waits as throttled,
// with no AUTH, when the places could not be read or the route takes
// none; and a session for denied@ does not try the token there again.
func TestRefusalAtAnotherMailbox(t *testing.T) {
	const denied, box = "denied@contoso.com", "box@contoso.com"
	placed := func(context.Context, bool) (o365.AuthTurn, error) { return o365.AuthTurn{Placed: true}, nil }
	unread := func(context.Context, bool) (o365.AuthTurn, error) { return o365.AuthTurn{}, nil }
	for _, c := range []struct {
		name  string
		turn  func(context.Context, bool) (o365.AuthTurn, error)
		from  string
		probe bool
		goes  bool
	}{
		{name: "another mailbox with a place", turn: placed, from: box, goes: true},
		{name: "another mailbox, places unreadable", turn: unread, from: box},
		{name: "another mailbox, no places", from: box},
		{name: "another mailbox's probe", from: box, probe: true, goes: true},
		{name: "the same mailbox", turn: placed, from: denied},
	} {
		t.Run(c.name, func(t *testing.T) {
			k := &permSink{denied: map[string]bool{denied: true}, auths: map[string]int{}}
			addr := serveSMTP(t, k)
			turn := placed
			route := func(mailbox string) o365.Route {
				return o365.Route{Mailbox: mailbox, Tokens: fixedToken{}, Kind: o365.AppOnly, Turn: turn}
			}
			s, err := o365.NewSMTPSender(o365.SMTPOptions{
				Addr: addr, InsecurePlaintext: true,
				CommandTimeout: 10 * time.Second, DataTimeout: 10 * time.Second, IdleTimeout: time.Minute,
				PerMinute: 1000, Limits: freeLimits{},
				Router: func(_ context.Context, m *queue.Message) (o365.Route, error) { return route(m.From), nil },
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			ctx := context.Background()

			_, err = s.Send(ctx, &queue.Message{ID: "m1", From: denied, To: []string{"a@example.org"}, Body: []byte("Subject: 1\r\n\r\nhi\r\n")})
			if upstream.ClassOf(err) != upstream.Credential {
				t.Fatalf("the send at %s: %v, want a credential failure", denied, err)
			}
			if n, _ := k.count(denied); n != 2 {
				t.Fatalf("%d AUTHs at %s, want 2 (the cached token, then the new one)", n, denied)
			}

			turn = c.turn
			if c.probe {
				err = s.Probe(ctx, o365.Route{Mailbox: c.from, Tokens: fixedToken{}, Kind: o365.AppOnly})
			} else {
				_, err = s.Send(ctx, &queue.Message{ID: "m2", From: c.from, To: []string{"a@example.org"}, Body: []byte("Subject: 2\r\n\r\nhi\r\n")})
			}
			auths, got := k.count(c.from)
			if c.from == denied {
				auths -= 2
			}
			if c.goes {
				if err != nil || auths != 1 {
					t.Errorf("at %s: %v after %d AUTHs there; want it to go ahead with one AUTH", c.from, err, auths)
				}
				if !c.probe && got != 1 {
					t.Errorf("%d messages received, want 1", got)
				}
				return
			}
			if upstream.ClassOf(err) != upstream.Throttled || auths != 0 {
				t.Errorf("at %s: %v after %d AUTHs there; want it throttled with none", c.from, err, auths)
			}
		})
	}
}
