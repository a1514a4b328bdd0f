package main

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// recorder is an SMTP server that accepts AUTH PLAIN for any password
// and records each message's Message-ID and size.
type recorder struct {
	mu    sync.Mutex
	ids   []string
	sizes []int
}

func (r *recorder) NewSession(*smtp.Conn) (smtp.Session, error) { return &recSession{r: r}, nil }

type recSession struct{ r *recorder }

func (s *recSession) AuthMechanisms() []string { return []string{sasl.Plain} }
func (s *recSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(string, string, string) error { return nil }), nil
}
func (s *recSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *recSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *recSession) Data(r io.Reader) error {
	body, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	h, err := textproto.NewReader(bufio.NewReader(strings.NewReader(string(body)))).ReadMIMEHeader()
	if err != nil {
		return err
	}
	s.r.mu.Lock()
	s.r.ids = append(s.r.ids, h.Get("Message-Id"))
	s.r.sizes = append(s.r.sizes, len(body))
	s.r.mu.Unlock()
	return nil
}
func (s *recSession) Reset()        {}
func (s *recSession) Logout() error { return nil }

// TestMessagesHaveTheirOwnIDs: every message of a run has a Message-ID of
// its own, so that a receiver can count duplicates, and about the size
// asked for.
func TestMessagesHaveTheirOwnIDs(t *testing.T) {
	rec := &recorder{}
	srv := smtp.NewServer(rec)
	srv.Domain = "localhost"
	srv.AllowInsecureAuth = true
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	defer func() {
		srv.Close()
		if err := <-served; err != nil && !errors.Is(err, smtp.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	}()
	const n = 60
	for _, reconnect := range []bool{false, true} {
		rec.mu.Lock()
		rec.ids, rec.sizes = nil, nil
		rec.mu.Unlock()
		r := run(config{addr: l.Addr().String(), user: "u", pass: "p", from: "a@example.com,b@example.com",
			to: "c@example.org", sessions: 4, messages: n, size: 2048, timeout: 30 * time.Second, reconnect: reconnect})
		if r.Accepted != n || r.Failed != 0 {
			t.Fatalf("reconnect %v: %d accepted, %d failed (%s)", reconnect, r.Accepted, r.Failed, r.FirstError)
		}
		rec.mu.Lock()
		seen := map[string]bool{}
		for i, id := range rec.ids {
			if !strings.HasPrefix(id, "<hfload.") || seen[id] {
				t.Errorf("reconnect %v: Message-ID %q (new: %v)", reconnect, id, !seen[id])
			}
			seen[id] = true
			if s := rec.sizes[i]; s < 2048-100 || s > 2048 {
				t.Errorf("reconnect %v: a message of %d bytes, want about 2048", reconnect, s)
			}
		}
		if len(seen) != n {
			t.Errorf("reconnect %v: %d distinct Message-IDs, want %d", reconnect, len(seen), n)
		}
		rec.mu.Unlock()
	}
}
