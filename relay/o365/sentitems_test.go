package o365_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
	"holdfast/relay/o365"
	"holdfast/relay/upstream"
)

const (
	tenant   = "contoso.onmicrosoft.com"
	clientID = "11111111-2222-3333-4444-555555555555"
	secret   = "graph-test-secret~0123456789"
	mailbox  = "noreply@contoso.com"
)

// simTokens fetches app-only Graph tokens from the simulator.
type simTokens struct {
	cfg    clientcredentials.Config
	client *http.Client
	// stale makes Token return a token Graph refuses, until Invalidate.
	stale       atomic.Bool
	invalidated atomic.Int32
}

func (s *simTokens) Token(ctx context.Context) (*oauth2.Token, error) {
	if s.stale.Load() {
		// A cached token Exchange no longer takes (expired early, or
		// issued before a change): Graph answers 401 to it.
		return &oauth2.Token{AccessToken: "stale-cached-token"}, nil
	}
	return s.cfg.Token(context.WithValue(ctx, oauth2.HTTPClient, s.client))
}

func (s *simTokens) Invalidate() {
	s.stale.Store(false)
	s.invalidated.Add(1)
}

// outcomes is an in-memory o365.Outcomes.
type outcomes struct {
	mu  sync.Mutex
	amb map[string]bool
}

func (o *outcomes) MarkAmbiguous(_ context.Context, id string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.amb[id] = true
	return nil
}

func (o *outcomes) Ambiguous(_ context.Context, id string) (bool, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.amb[id], nil
}

type graphEnv struct {
	sim    *sim.Sim
	out    *outcomes
	send   *o365.GraphSender
	tokens *simTokens
}

// startSim starts the simulator with the app and its one mailbox.
func startSim(t *testing.T) *sim.Sim {
	t.Helper()
	s, err := sim.New(sim.Config{Tenants: []sim.Tenant{{
		ID:        tenant,
		Apps:      []sim.App{{ClientID: clientID, Secrets: []sim.Secret{{Value: secret}}, SendAsMailboxes: []string{"*"}}},
		Mailboxes: []sim.Mailbox{{Address: mailbox}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// newGraphEnv starts the simulator and a Graph sender whose requests time
// out after timeout; baseURL, when set, replaces the simulator's Graph.
func newGraphEnv(t *testing.T, timeout time.Duration, baseURL string) *graphEnv {
	t.Helper()
	s := startSim(t)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: s.RootCAs()}
	client := &http.Client{Transport: tr, Timeout: timeout}
	t.Cleanup(tr.CloseIdleConnections)
	tokens := &simTokens{client: client, cfg: clientcredentials.Config{ClientID: clientID, ClientSecret: secret,
		TokenURL: s.TokenURL(tenant), Scopes: []string{"https://graph.microsoft.com/.default"}}}
	if baseURL == "" {
		baseURL = s.GraphURL()
	}
	e := &graphEnv{sim: s, out: &outcomes{amb: map[string]bool{}}, tokens: tokens}
	var err error
	e.send, err = o365.NewGraphSender(o365.GraphOptions{
		BaseURL:    baseURL,
		HTTPClient: client,
		Router: func(context.Context, *queue.Message) (o365.Route, error) {
			return o365.Route{Mailbox: mailbox, Tokens: tokens, Kind: o365.AppOnly}, nil
		},
		Outcomes: e.out,
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func graphMessage(id, msgID string) *queue.Message {
	h := ""
	if msgID != "" {
		h = "Message-ID: " + msgID + "\r\n"
	}
	return &queue.Message{ID: id, Route: "contoso", From: mailbox, To: []string{"x@example.org"},
		Body: []byte("From: <" + mailbox + ">\r\nTo: <x@example.org>\r\n" + h + "Subject: t\r\n\r\nbody\r\n")}
}

// TestGraphUnknownOutcomeNoDuplicate: after sendMail failed in a way that
// may have sent the message (500 or 504 after sending, a hang until the
// client's timeout), the next attempt finds the message in Sent Items and
// does not send it again, also for a message that had no Message-ID.
func TestGraphUnknownOutcomeNoDuplicate(t *testing.T) {
	for _, tc := range []struct {
		name, fault, msgID string
	}{
		{"500 after sending", "500", "<a500@test>"},
		{"504 after sending", "504", "<a504@test>"},
		{"hang after sending", "hang", "<hang@test>"},
		{"500 after sending, no Message-ID", "500", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newGraphEnv(t, time.Second, "")
			ctx := context.Background()
			m := graphMessage("0123abcdmsg"+strings.ReplaceAll(tc.fault, "h", "x"), tc.msgID)
			e.sim.SetFault(sim.Fault{GraphAfterSend: tc.fault})
			_, err := e.send.Send(ctx, m)
			if err == nil || upstream.ClassOf(err) != upstream.Transient || !errors.Is(err, upstream.ErrOutcomeUnknown) {
				t.Fatalf("first attempt: %v, want a transient error whose outcome is unknown", err)
			}
			if amb, _ := e.out.Ambiguous(ctx, m.ID); !amb {
				t.Fatal("the unknown outcome was not recorded")
			}
			e.sim.SetFault(sim.Fault{})
			reply, err := e.send.Send(ctx, m)
			if err != nil || !strings.Contains(reply, "Sent Items") {
				t.Fatalf("second attempt: %q %v, want found in Sent Items", reply, err)
			}
			got := e.sim.Received()
			if len(got) != 1 {
				t.Fatalf("Exchange got %d copies, want 1", len(got))
			}
			if tc.msgID == "" && got[0].MessageID != "<"+m.ID+"@contoso.com>" {
				t.Errorf("added Message-ID %q, want <%s@contoso.com>", got[0].MessageID, m.ID)
			}
		})
	}
}

// TestSentItemsLookupRetriesStaleToken: a Sent Items lookup whose cached
// token Graph refuses (401) is tried once more with a new token, as
// sendMail is, and finds the message: it is neither sent again nor
// counted against the credential.
func TestSentItemsLookupRetriesStaleToken(t *testing.T) {
	e := newGraphEnv(t, time.Second, "")
	ctx := context.Background()
	m := graphMessage("0123abcdstale", "<stale@test>")
	e.sim.SetFault(sim.Fault{GraphAfterSend: "500"})
	if _, err := e.send.Send(ctx, m); !errors.Is(err, upstream.ErrOutcomeUnknown) {
		t.Fatalf("first attempt: %v, want an unknown outcome", err)
	}
	e.sim.SetFault(sim.Fault{})
	e.tokens.stale.Store(true)
	reply, err := e.send.Send(ctx, m)
	if err != nil || !strings.Contains(reply, "Sent Items") {
		t.Fatalf("second attempt with a stale cached token: %q %v (class %v), want found in Sent Items",
			reply, err, upstream.ClassOf(err))
	}
	if n := e.tokens.invalidated.Load(); n != 1 {
		t.Errorf("the cached token was invalidated %d times, want 1", n)
	}
	if n := e.sim.ReceivedCount(); n != 1 {
		t.Fatalf("Exchange got %d copies, want 1", n)
	}
}

// TestGraphPlainFailureSentOnce: a 503 that did not send is retried after
// the lookup finds nothing, and the message arrives once; a 202 with
// Retry-After is a send; a connection refused before anything was
// written is not an unknown outcome.
func TestGraphPlainFailureSentOnce(t *testing.T) {
	e := newGraphEnv(t, time.Second, "")
	ctx := context.Background()
	m := graphMessage("0123abcdplain", "<plain@test>")
	e.sim.SetFault(sim.Fault{GraphFail: "503"})
	if _, err := e.send.Send(ctx, m); upstream.ClassOf(err) != upstream.Transient {
		t.Fatalf("503: %v", err)
	}
	e.sim.SetFault(sim.Fault{})
	if reply, err := e.send.Send(ctx, m); err != nil || !strings.HasPrefix(reply, "202") {
		t.Fatalf("retry: %q %v, want a 202", reply, err)
	}
	if n := e.sim.ReceivedCount(); n != 1 {
		t.Fatalf("Exchange got %d copies, want 1", n)
	}

	e.sim.SetFault(sim.Fault{GraphAcceptedRetryAfter: time.Minute})
	ra := graphMessage("0123abcdra", "<ra@test>")
	if reply, err := e.send.Send(ctx, ra); err != nil || !strings.HasPrefix(reply, "202") {
		t.Fatalf("202 with Retry-After: %q %v, want sent", reply, err)
	}
	if amb, _ := e.out.Ambiguous(ctx, ra.ID); amb || e.sim.ReceivedCount() != 2 {
		t.Fatalf("202 with Retry-After: ambiguous %v, %d received", amb, e.sim.ReceivedCount())
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "https://" + l.Addr().String()
	l.Close()
	refused := newGraphEnv(t, time.Second, closed)
	rm := graphMessage("0123abcdrefused", "<refused@test>")
	if _, err := refused.send.Send(ctx, rm); upstream.ClassOf(err) != upstream.Transient || errors.Is(err, upstream.ErrOutcomeUnknown) {
		t.Fatalf("refused: %v, want transient with a known outcome", err)
	}
	if amb, _ := refused.out.Ambiguous(ctx, rm.ID); amb {
		t.Fatal("a refused connection was taken for an unknown outcome")
	}
}
