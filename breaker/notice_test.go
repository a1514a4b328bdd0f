package breaker

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"holdfast/queue/redistest"
)

func TestNoticesClaimOncePerPeriodAcrossReplicas(t *testing.T) {
	srv := redistest.Start(t)
	a, b := NewNotices(srv.Client(t)), NewNotices(srv.Client(t))
	ctx := context.Background()
	claim := func(n *Notices, level string) bool {
		t.Helper()
		ok, err := n.Claim(ctx, "expiry", "contoso", level, 300*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !claim(a, "warning") {
		t.Fatal("first claim refused")
	}
	if claim(a, "warning") || claim(b, "warning") {
		t.Fatal("a second claim within the period was granted")
	}
	if !claim(b, "critical") {
		t.Fatal("another level shares the claim")
	}
	time.Sleep(400 * time.Millisecond)
	if !claim(b, "warning") {
		t.Fatal("no claim after the period")
	}
}

func TestWebhookPostRetries(t *testing.T) {
	var calls atomic.Int32
	var down atomic.Bool
	got := make(chan []byte, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("Content-Type %q", r.Header.Get("Content-Type"))
		}
		if calls.Add(1) == 1 || down.Load() {
			http.Error(w, "down", http.StatusBadGateway)
			return
		}
		body, _ := io.ReadAll(r.Body)
		got <- body
	}))
	defer srv.Close()
	w := newWebhook(srv.URL, srv.Client(), nil, nil, 10*time.Millisecond)
	defer w.Close()
	if err := w.Post(context.Background(), "credential.expiring", map[string]any{"type": "credential.expiring", "credential": "contoso"}); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(<-got, &m); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 2 || m["type"] != "credential.expiring" || m["credential"] != "contoso" {
		t.Fatalf("%d calls, body %v", calls.Load(), m)
	}

	// A receiver that never accepts: the tries end with its error.
	down.Store(true)
	calls.Store(0)
	err := w.Post(context.Background(), "x", map[string]any{"type": "x"})
	if err == nil || calls.Load() != webhookTries {
		t.Fatalf("err %v after %d calls", err, calls.Load())
	}
}
