package breaker

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
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
	w := newWebhook(srv.URL, srv.Client(), nil, nil, 10*time.Millisecond)
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

// TestWebhookGivesUp: a receiver that never accepts gets the quick tries,
// then the slow ones until the patience runs out, of each transition in
// turn.
func TestWebhookGivesUp(t *testing.T) {
	var mu sync.Mutex
	var names []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var tr struct{ Breaker string }
		_ = json.NewDecoder(r.Body).Decode(&tr)
		mu.Lock()
		names = append(names, tr.Breaker)
		mu.Unlock()
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer srv.Close()
	w := newWebhook(srv.URL, srv.Client(), nil, nil, time.Millisecond)
	w.slowEvery, w.patience = 5*time.Millisecond, 100*time.Millisecond
	w.Notify(Transition{Name: "a", To: Open})
	w.Notify(Transition{Name: "b", To: Open})
	calls := func() (a, b int, ordered bool) {
		mu.Lock()
		defer mu.Unlock()
		ordered = true
		for i, n := range names {
			if n == "a" {
				a++
				ordered = ordered && (i == 0 || names[i-1] == "a")
			} else {
				b++
			}
		}
		return a, b, ordered
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		a1, b1, _ := calls()
		time.Sleep(300 * time.Millisecond) // longer than the patience
		a2, b2, _ := calls()
		if a1 == a2 && b1 == b2 && b2 > 0 || time.Now().After(deadline) {
			break
		}
	}
	w.Close()
	a, b, ordered := calls()
	t.Logf("tries: %d for the first transition, %d for the second", a, b)
	if a <= webhookTries || b <= webhookTries {
		t.Errorf("%d and %d tries, want more than the %d quick ones for each", a, b, webhookTries)
	}
	// The quick tries take 15 ms here; then one every 5 ms up to 100 ms.
	if most := webhookTries + 100/5; a > most || b > most {
		t.Errorf("%d and %d tries, want at most %d within the patience", a, b, most)
	}
	if !ordered {
		t.Errorf("tries of the two transitions interleaved: %v", names)
	}
}

// TestWebhookOutlivesOutage: a receiver down for longer than the quick
// tries gets the transition once it is back, and the next one after it.
func TestWebhookOutlivesOutage(t *testing.T) {
	const downFor = 3 * webhookTries
	var calls atomic.Int32
	got := make(chan string, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) <= downFor {
			http.Error(w, "deploying", http.StatusBadGateway)
			return
		}
		var tr struct{ Breaker string }
		_ = json.NewDecoder(r.Body).Decode(&tr)
		got <- tr.Breaker
	}))
	defer srv.Close()
	w := newWebhook(srv.URL, srv.Client(), nil, nil, time.Millisecond)
	w.slowEvery, w.patience = 5*time.Millisecond, time.Minute
	defer w.Close()
	w.Notify(Transition{Name: "a", To: Open})
	w.Notify(Transition{Name: "a", To: Closed})
	for _, want := range []string{"a", "a"} {
		select {
		case name := <-got:
			if name != want {
				t.Fatalf("delivered %q, want %q", name, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("not delivered after %d calls; the receiver failed the first %d", calls.Load(), downFor)
		}
	}
	if n := calls.Load(); n != downFor+2 {
		t.Errorf("%d calls, want %d (the failed ones, then one for each transition)", n, downFor+2)
	}
}

// TestWebhookPatienceFromTransition: a transition that waited in the
// queue past the patience (behind others, while the receiver was down)
// gets the quick tries only.
func TestWebhookPatienceFromTransition(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	w := newWebhook(srv.URL, srv.Client(), nil, nil, time.Millisecond)
	w.slowEvery, w.patience = 5*time.Millisecond, time.Minute
	w.Notify(Transition{Name: "a", To: Open, At: time.Now().Add(-2 * time.Minute)})
	deadline := time.Now().Add(5 * time.Second)
	for calls.Load() < webhookTries && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // room for slow tries, were there any
	w.Close()
	if n := calls.Load(); n != webhookTries {
		t.Errorf("%d tries of a transition made 2 minutes before, with a patience of 1 minute; want the %d quick ones", n, webhookTries)
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
	w := newWebhook(srv.URL, srv.Client(), nil, nil, time.Millisecond)

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
	w := newWebhook("http://127.0.0.1:1/hooks/T0KEN-s3cret", http.DefaultClient, nil, nil, time.Millisecond)
	defer w.Close()
	err := w.post(t.Context(), []byte("{}"))
	if err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "webhook POST") {
		t.Fatalf("post error %v", err)
	}
}

// TestWebhookRepostsAfterForget: a breaker whose record was lost whole
// (a Redis that lost its data; Forget keeps the generation) counts its
// generations again, so a new transition may carry the ID of one posted
// before; it is posted all the same. The same transition notified again
// (taken over by this relay's own Watch) is not.
func TestWebhookRepostsAfterForget(t *testing.T) {
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var tr Transition
		_ = json.NewDecoder(r.Body).Decode(&tr)
		mu.Lock()
		got = append(got, tr.ID+" "+tr.At.Format(time.RFC3339))
		mu.Unlock()
	}))
	defer srv.Close()
	w := newWebhook(srv.URL, srv.Client(), nil, nil, time.Millisecond)
	defer w.Close()
	first := Transition{ID: "cred:contoso@1", Name: "cred:contoso", To: Open, Generation: 1,
		At: time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)}
	again := first
	again.At = first.At.Add(time.Hour)
	posted := func(n int) []string {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			out := slices.Clone(got)
			mu.Unlock()
			if len(out) >= n || time.Now().After(deadline) {
				return out
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	w.Notify(first)
	posted(1)
	w.Notify(first)
	w.Notify(again)
	time.Sleep(100 * time.Millisecond) // room for a repeat to show
	want := []string{"cred:contoso@1 2026-12-01T08:00:00Z", "cred:contoso@1 2026-12-01T09:00:00Z"}
	if out := posted(2); !slices.Equal(out, want) {
		t.Fatalf("posted %v, want %v", out, want)
	}
}

// doneLedger records the transitions whose claims a Webhook ended.
type doneLedger struct {
	mu   sync.Mutex
	done []string
}

func (l *doneLedger) KeepNotices(context.Context, []Transition)    {}
func (l *doneLedger) ReleaseNotices(context.Context, []Transition) {}
func (l *doneLedger) NoticeDone(_ context.Context, t Transition) {
	l.mu.Lock()
	l.done = append(l.done, t.ID)
	l.mu.Unlock()
}

func (l *doneLedger) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.done)
}

// TestWebhookEndsRetakenClaim: a transition posted whose claim was left
// (NoticeDone failed in a Redis blip) lapses, and this relay's own Watch
// takes it over. The Webhook does not post it again; it ends its claim
// again, rather than let it lapse and be taken over every lease.
func TestWebhookEndsRetakenClaim(t *testing.T) {
	var posts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { posts.Add(1) }))
	defer srv.Close()
	w := newWebhook(srv.URL, srv.Client(), nil, nil, time.Millisecond)
	w.keepEvery = 10 * time.Millisecond
	l := &doneLedger{}
	w.Track(l)
	defer w.Close()
	tr := Transition{ID: "cred:contoso@1", Name: "cred:contoso", To: Open, Generation: 1, At: time.Now()}
	w.Notify(tr)
	deadline := time.Now().Add(5 * time.Second)
	for l.count() < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the posted transition's claim was not ended")
		}
		time.Sleep(5 * time.Millisecond)
	}
	w.Notify(tr) // taken over again
	for l.count() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the claim taken over again was not ended again")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if n := posts.Load(); n != 1 {
		t.Errorf("posted %d times, want 1", n)
	}
	if n := l.count(); n != 2 {
		t.Errorf("claim ended %d times, want 2", n)
	}
}

// TestWebhookRedirectIsNotDelivery: a receiver that answers a POST with
// 301, 302 or 303 has not taken the notice (an HTTP client follows those
// with a GET without the body, and a landing page's 200 would count as
// delivered): the notice is tried again, and posted once the receiver
// takes it. A 307 keeps the POST and its body, and delivers.
func TestWebhookRedirectIsNotDelivery(t *testing.T) {
	var (
		mu     sync.Mutex
		status = http.StatusFound
		posts  []string // method and body length of each request to /hook and /moved
	)
	got := make(chan struct{}, 10)
	mux := http.NewServeMux()
	mux.HandleFunc("/hook", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		st := status
		posts = append(posts, r.Method+" /hook")
		mu.Unlock()
		if st != http.StatusOK {
			http.Redirect(w, r, "/moved", st)
			return
		}
		if len(body) > 0 {
			got <- struct{}{}
		}
	})
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		posts = append(posts, r.Method+" /moved")
		mu.Unlock()
		if r.Method == http.MethodPost && len(body) > 0 {
			got <- struct{}{}
		}
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	w := newWebhook(srv.URL+"/hook", srv.Client(), slog.New(slog.DiscardHandler), nil, 10*time.Millisecond)
	w.slowEvery, w.patience = 20*time.Millisecond, time.Minute
	defer w.Close()

	w.Notify(Transition{Name: "cred:contoso", From: Closed, To: Open, Reason: expiredReason, At: time.Now(), Generation: 1})
	time.Sleep(200 * time.Millisecond)
	select {
	case <-got:
		t.Fatal("a 302 counted as delivered")
	default:
	}
	mu.Lock()
	if slices.Contains(posts, "GET /moved") {
		t.Errorf("the redirect was followed with a GET: %q", posts)
	}
	tries := len(posts)
	status = http.StatusTemporaryRedirect
	mu.Unlock()
	if tries < 2 {
		t.Errorf("%d tries while the receiver answered 302, want it tried again", tries)
	}
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the notice was not delivered through the 307")
	}
}
