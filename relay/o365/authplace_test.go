package o365_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2/clientcredentials"

	"holdfast/queue"
	"holdfast/relay/o365"
)

// TestAuthPlaceCoversAuthAlone: a session is set up (greeting, EHLO,
// STARTTLS, the TLS handshake, EHLO) before its AUTH takes a fleet-wide
// place, so that the place is held for the AUTH alone: across a network
// the set-up takes several round trips, and the places, a few per
// credential, bound how many sessions it opens a second. Between the
// place's taking and its return the sender writes one thing, the AUTH.
func TestAuthPlaceCoversAuthAlone(t *testing.T) {
	s := startSim(t)
	p := newProxy(t, s.SMTPAddr(), nil)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: s.RootCAs()}
	t.Cleanup(tr.CloseIdleConnections)
	tokens := &simTokens{client: &http.Client{Transport: tr, Timeout: 10 * time.Second}, cfg: clientcredentials.Config{
		ClientID: clientID, ClientSecret: secret, TokenURL: s.TokenURL(tenant), Scopes: []string{"https://outlook.office365.com/.default"}}}

	var (
		mu     sync.Mutex
		during []int64 // the sender's writes while each place was held
		ended  []o365.AuthOutcome
	)
	turn := func(context.Context, bool) (o365.AuthTurn, error) {
		at := p.writes.Load()
		return o365.AuthTurn{Placed: true, Exit: func(o o365.AuthOutcome, _ error) error {
			mu.Lock()
			defer mu.Unlock()
			during = append(during, p.writes.Load()-at)
			ended = append(ended, o)
			return nil
		}}, nil
	}
	snd, err := o365.NewSMTPSender(o365.SMTPOptions{
		Addr: p.ln.Addr().String(), TLS: &tls.Config{RootCAs: s.RootCAs()},
		CommandTimeout: 10 * time.Second, DataTimeout: 10 * time.Second, IdleTimeout: time.Minute,
		PerMinute: 1000, Limits: freeLimits{},
		Router: func(context.Context, *queue.Message) (o365.Route, error) {
			return o365.Route{Mailbox: mailbox, Tokens: tokens, Kind: o365.AppOnly, Turn: turn}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { snd.Close() })
	m := &queue.Message{ID: "m1", From: mailbox, To: []string{"x@example.org"},
		Body: []byte("From: <" + mailbox + ">\r\nTo: <x@example.org>\r\nSubject: t\r\n\r\nbody\r\n")}
	if _, err := snd.Send(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	if s.ReceivedCount() != 1 {
		t.Fatalf("%d messages received, want 1", s.ReceivedCount())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(during) != 1 || ended[0] != o365.AuthOK {
		t.Fatalf("places taken and their outcomes: %v %v, want one, AuthOK", during, ended)
	}
	if during[0] != 1 {
		t.Errorf("the sender wrote %d times while it held its AUTH place, want once (the AUTH)", during[0])
	}
}
