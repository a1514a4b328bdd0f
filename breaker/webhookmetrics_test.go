package breaker

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

const eventExpiring = "credential.expiring"

// webhookCounts reads the webhook metrics of event.
func webhookCounts(mx *WebhookMetrics, event string) (delivered, failed, dropped float64) {
	return testutil.ToFloat64(mx.posts.WithLabelValues(event, postDelivered)),
		testutil.ToFloat64(mx.posts.WithLabelValues(event, postFailed)),
		testutil.ToFloat64(mx.dropped.WithLabelValues(event))
}

// TestWebhookMetricsGivenUp: against a receiver that answers 500, every
// try of a transition and of an event counts as failed, and each notice
// whose tries are spent counts as dropped once, under its own event; a
// Post its caller cancels counts neither. Nothing is pending after.
func TestWebhookMetricsGivenUp(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer srv.Close()
	reg := prometheus.NewRegistry()
	mx := NewWebhookMetrics(reg, eventExpiring)
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 7 {
		t.Fatalf("%d series at start (%v), want 7: delivered, failed and dropped of two events, and pending", n, err)
	}
	w := newWebhook(srv.URL, srv.Client(), nil, mx, time.Millisecond)
	defer w.Close()
	w.slowEvery, w.patience = 5*time.Millisecond, 50*time.Millisecond

	w.Notify(Transition{Name: "a", To: Open, ID: "a:1"})
	deadline := time.Now().Add(5 * time.Second)
	for _, _, dropped := webhookCounts(mx, EventTransition); dropped == 0; _, _, dropped = webhookCounts(mx, EventTransition) {
		if time.Now().After(deadline) {
			t.Fatalf("transition not given up after %d tries", calls.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	delivered, failed, dropped := webhookCounts(mx, EventTransition)
	if tries := float64(calls.Load()); delivered != 0 || failed != tries || failed <= webhookTries || dropped != 1 {
		t.Errorf("transition: delivered %v, failed %v, dropped %v; want 0, the %v tries (more than the quick ones), 1",
			delivered, failed, dropped, tries)
	}

	before := calls.Load()
	if err := w.Post(t.Context(), eventExpiring, map[string]string{"type": eventExpiring}); err == nil {
		t.Fatal("Post to a receiver answering 500 succeeded")
	}
	delivered, failed, dropped = webhookCounts(mx, eventExpiring)
	if tries := float64(calls.Load() - before); delivered != 0 || failed != tries || tries != webhookTries || dropped != 1 {
		t.Errorf("event: delivered %v, failed %v, dropped %v after %v tries; want 0, %d, 1", delivered, failed, dropped, tries, webhookTries)
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := w.Post(ctx, eventExpiring, map[string]string{"type": eventExpiring}); err == nil {
		t.Fatal("Post with its context cancelled succeeded")
	}
	if _, f, d := webhookCounts(mx, eventExpiring); f != failed || d != dropped {
		t.Errorf("a cancelled Post moved failed to %v and dropped to %v, want %v and %v", f, d, failed, dropped)
	}
	if p := testutil.ToFloat64(mx.pending); p != 0 {
		t.Errorf("pending %v after every notice was given up, want 0", p)
	}
}

// TestWebhookMetricsPending: while the receiver does not answer, the
// transitions queued and the one being posted are pending, one pushed
// out of the full queue is dropped, and once the receiver answers every
// other is delivered and nothing is pending.
func TestWebhookMetricsPending(t *testing.T) {
	release := make(chan struct{})
	var arrived atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		<-release
	}))
	defer srv.Close()
	mx := NewWebhookMetrics(prometheus.NewRegistry())
	w := newWebhook(srv.URL, srv.Client(), nil, mx, time.Millisecond)
	defer w.Close()

	w.Notify(Transition{Name: "first", Generation: 1})
	deadline := time.Now().Add(5 * time.Second)
	for arrived.Load() == 0 {
		if time.Now().After(deadline) {
			close(release)
			t.Fatal("the first transition never reached the receiver")
		}
		time.Sleep(time.Millisecond)
	}
	const more = webhookQueue + 1 // one more than the queue holds
	for i := range more {
		w.Notify(Transition{Name: "next", Generation: int64(2 + i)})
	}
	p, d := testutil.ToFloat64(mx.pending), testutil.ToFloat64(mx.dropped.WithLabelValues(EventTransition))
	close(release)
	if p != webhookQueue+1 || d != 1 {
		t.Errorf("receiver stuck: pending %v, dropped %v; want %d (the queue and the one posted) and 1", p, d, webhookQueue+1)
	}
	deadline = time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(mx.pending) != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	delivered, failed, dropped := webhookCounts(mx, EventTransition)
	if p := testutil.ToFloat64(mx.pending); p != 0 || delivered != webhookQueue+1 || failed != 0 || dropped != 1 {
		t.Errorf("receiver back: pending %v, delivered %v, failed %v, dropped %v; want 0, %d, 0, 1",
			p, delivered, failed, dropped, webhookQueue+1)
	}
}
