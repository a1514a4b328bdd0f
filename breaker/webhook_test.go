package breaker

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestWebhookRetries(t *testing.T) {
	var calls atomic.Int32
	got := make(chan []byte, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("request %s with Content-Type %q", r.Method, r.Header.Get("Content-Type"))
		}
		if calls.Add(1) <= 2 {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		body, _ := io.ReadAll(r.Body)
		got <- body
	}))
	defer srv.Close()
	w := newWebhook(srv.URL, srv.Client(), nil, 10*time.Millisecond)
	defer w.Close()

	at := time.UnixMilli(1_800_000_000_000).UTC()
	w.Notify(Transition{Name: "app:contoso", From: Closed, To: Open, Reason: expiredReason, At: at, Generation: 1})
	var body []byte
	select {
	case body = <-got:
	case <-time.After(5 * time.Second):
		t.Fatalf("no delivery after %d calls", calls.Load())
	}
	if n := calls.Load(); n != 3 {
		t.Fatalf("%d calls, want 3 (two failures, then success)", n)
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"breaker": "app:contoso", "from": "closed", "to": "open", "reason": expiredReason,
		"at": "2027-01-15T08:00:00Z", "generation": float64(1)}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("body %s = %v, want %v", k, m[k], v)
		}
	}
}

func TestWebhookGivesUp(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer srv.Close()
	w := newWebhook(srv.URL, srv.Client(), nil, time.Millisecond)
	w.Notify(Transition{Name: "a", To: Open})
	w.Notify(Transition{Name: "b", To: Open})
	deadline := time.Now().Add(5 * time.Second)
	for calls.Load() < 2*webhookTries && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	w.Close()
	if n := calls.Load(); n != 2*webhookTries {
		t.Fatalf("%d calls, want %d (%d tries for each of two transitions)", n, 2*webhookTries, webhookTries)
	}
}

func TestWebhookNeverBlocks(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var names []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		var tr struct{ Breaker string }
		_ = json.NewDecoder(r.Body).Decode(&tr)
		mu.Lock()
		names = append(names, tr.Breaker)
		mu.Unlock()
	}))
	defer srv.Close()
	w := newWebhook(srv.URL, srv.Client(), nil, time.Millisecond)

	start := time.Now()
	const n = 3 * webhookQueue
	for i := range n {
		w.Notify(Transition{Name: string(rune('A' + i%26)), Generation: int64(i)})
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("%d Notify calls took %v with the receiver stuck", n, d)
	}
	w.mu.Lock()
	queued := len(w.queue)
	last := w.queue[len(w.queue)-1].Generation
	w.mu.Unlock()
	if queued > webhookQueue || last != n-1 {
		t.Fatalf("queue holds %d, last generation %d; want at most %d and the newest kept", queued, last, webhookQueue)
	}
	close(release)
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		got := len(names)
		mu.Unlock()
		if got >= queued || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	w.Close()
	mu.Lock()
	defer mu.Unlock()
	if len(names) < queued || len(names) > queued+1 {
		t.Fatalf("%d delivered, want the %d queued (plus the one in flight)", len(names), queued)
	}
}

// TestWebhookErrorHidesURL: a failed POST is logged without the URL, whose
// path often carries a token.
func TestWebhookErrorHidesURL(t *testing.T) {
	w := newWebhook("http://127.0.0.1:1/hooks/T0KEN-s3cret", http.DefaultClient, nil, time.Millisecond)
	defer w.Close()
	err := w.post(t.Context(), []byte("{}"))
	if err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "webhook POST") {
		t.Fatalf("post error %v", err)
	}
}
