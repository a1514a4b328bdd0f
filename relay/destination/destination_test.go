package destination

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"holdfast/relay/o365"
	"holdfast/relay/upstream"
)

// tokenEndpoint is a stand-in token endpoint answering status (with
// Retry-After when retryAfter is set) and counting requests.
func tokenEndpoint(t *testing.T, status int, retryAfter string) (*httptest.Server, *atomic.Int64) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		if retryAfter != "" {
			w.Header().Set("Retry-After", retryAfter)
		}
		w.WriteHeader(status)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

func classify(resp *http.Response) error {
	if resp.StatusCode < 400 {
		return nil
	}
	return o365.ClassifyToken(o365.TokenFailure{HTTPStatus: resp.StatusCode, RetryAfter: RetryAfter(resp.Header)}, o365.AppOnly)
}

// hammer sends a token request every 5 ms for d, as many workers would.
func hammer(t *testing.T, s *Set, url string, d time.Duration) {
	client := &http.Client{Transport: s.Transport(http.DefaultTransport, func(*http.Request) string { return Token }, classify)}
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		resp, err := client.Post(url+"/tenant/oauth2/v2.0/token", "application/x-www-form-urlencoded", nil)
		if err == nil {
			resp.Body.Close()
		}
	}
}

// TestTokenEndpoint503: a token endpoint answering 503 gets 3 requests,
// then none until the probe interval has passed.
func TestTokenEndpoint503(t *testing.T) {
	srv, n := tokenEndpoint(t, http.StatusServiceUnavailable, "")
	s := New(Options{ProbeInterval: 2 * time.Second})
	hammer(t, s, srv.URL, time.Second)
	if got := n.Load(); got != 3 {
		t.Fatalf("%d token requests in 1s of 503, want 3", got)
	}
	if room, wait := s.Room(Token); room != 0 || wait <= 0 {
		t.Fatalf("room while open: %d, %v", room, wait)
	}
	time.Sleep(1100 * time.Millisecond)
	if room, _ := s.Room(Token); room != 1 {
		t.Fatalf("room after the probe interval: %d, want the one test", room)
	}
	if room, _ := s.Room(Token); room != 0 {
		t.Fatalf("room for a second test: %d, want 0", room)
	}
}

// TestTokenEndpointRetryAfter: a 429 with Retry-After stops every request
// to the endpoint for that long.
func TestTokenEndpointRetryAfter(t *testing.T) {
	srv, n := tokenEndpoint(t, http.StatusTooManyRequests, "1")
	s := New(Options{})
	hammer(t, s, srv.URL, 900*time.Millisecond)
	if got := n.Load(); got != 1 {
		t.Fatalf("%d token requests within Retry-After: 1, want 1", got)
	}
	hammer(t, s, srv.URL, 300*time.Millisecond)
	if got := n.Load(); got != 2 {
		t.Fatalf("%d token requests after Retry-After ran out, want 2", got)
	}
}

// TestCredentialFailuresDoNotOpen: a rejected secret says the endpoint
// answers: it never opens the breaker.
func TestCredentialFailuresDoNotOpen(t *testing.T) {
	s := New(Options{})
	for range 10 {
		done, err := s.Allow(Token)
		if err != nil {
			t.Fatalf("refused after credential failures: %v", err)
		}
		done(&upstream.Error{Class: upstream.Credential, Code: 401, Text: "invalid_client"})
	}
	if room, _ := s.Room(Token); room != -1 {
		t.Fatalf("room: %d", room)
	}
	// Refused connections do.
	for range 3 {
		done, _ := s.Allow(SMTP)
		done(errors.New("dial tcp: connection refused"))
	}
	if _, err := s.Allow(SMTP); upstream.ClassOf(err) != upstream.Throttled {
		t.Fatalf("allowed after 3 refused connections: %v", err)
	}
}
