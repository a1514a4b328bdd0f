package relay

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"holdfast/breaker"
)

// receiverOn serves h on addr, a loopback address that was free.
func receiverOn(t *testing.T, addr string, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// TestWebhookFailuresCounted: the relay's webhook series are at 0 from
// the start; a receiver answering 500, and then one that is down, move
// holdfast_webhook_posts_total{outcome="failed"} with each try of a
// breaker transition, and the try that gets through moves
// outcome="delivered". Meanwhile the transition counts as pending, and
// it is not counted as dropped. Neither the metrics nor the logs show the
// webhook URL's token.
func TestWebhookFailuresCounted(t *testing.T) {
	const token = "hooks-s3cret-T0KEN"
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := probe.Addr().String()
	probe.Close()
	var served500, served200 atomic.Int32
	failing := receiverOn(t, addr, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		served500.Add(1)
		http.Error(w, "receiver broken", http.StatusInternalServerError)
	})
	e := newExchangeEnv(t, 1, func(o *Options) { o.Breakers.WebhookURL = "http://" + addr + "/hooks/" + token })
	r := e.relays[0]

	metricsText := func() string {
		resp, err := http.Get("http://" + r.OpsAddr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	value := func(fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
		t.Helper()
		v, ok := series(fams, name, labels)
		if !ok {
			t.Fatalf("no series %s%v in /metrics", name, labels)
		}
		return v
	}
	posts := func(fams map[string]*dto.MetricFamily, outcome string) float64 {
		t.Helper()
		return value(fams, "holdfast_webhook_posts_total", map[string]string{"event": breaker.EventTransition, "outcome": outcome})
	}

	// At zero before the first post, for every event the relay posts.
	fams := scrape(t, r)
	for _, event := range []string{breaker.EventTransition, EventCredentialExpiring, EventCredentialRotation} {
		for _, outcome := range []string{"delivered", "failed"} {
			if v := value(fams, "holdfast_webhook_posts_total", map[string]string{"event": event, "outcome": outcome}); v != 0 {
				t.Errorf("posts_total{%s,%s} = %v at start, want 0", event, outcome, v)
			}
		}
		if v := value(fams, "holdfast_webhook_notices_dropped_total", map[string]string{"event": event}); v != 0 {
			t.Errorf("notices_dropped_total{%s} = %v at start, want 0", event, v)
		}
	}
	if v := value(fams, "holdfast_webhook_notices_pending", nil); v != 0 {
		t.Errorf("notices_pending = %v at start, want 0", v)
	}

	// The receiver answers 500.
	if err := r.gate.set.Trip(t.Context(), credentialBreaker("contoso"), "webhook test"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a failed post counted", func() bool { return posts(scrape(t, r), "failed") >= 1 })
	fams = scrape(t, r)
	if v := posts(fams, "delivered"); v != 0 {
		t.Errorf("posts_total{delivered} = %v while the receiver answers 500, want 0", v)
	}
	if v := value(fams, "holdfast_webhook_notices_pending", nil); v != 1 {
		t.Errorf("notices_pending = %v while the transition is retried, want 1", v)
	}

	// The receiver is down: its port refuses connections.
	failing.Close()
	answered := float64(served500.Load())
	waitFor(t, 5*time.Second, "a refused post counted", func() bool { return posts(scrape(t, r), "failed") > answered })

	// Back up, on the same address: the next try gets through.
	receiverOn(t, addr, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		served200.Add(1)
	})
	waitFor(t, 15*time.Second, "the delivered post counted", func() bool { return posts(scrape(t, r), "delivered") == 1 })
	fams = scrape(t, r)
	failed := posts(fams, "failed")
	if served200.Load() != 1 {
		t.Errorf("the receiver took %d posts, want 1", served200.Load())
	}
	refused := failed - float64(served500.Load())
	t.Logf("failed tries: %v answered 500, %v refused; then delivered", served500.Load(), refused)
	if served500.Load() < 1 || refused < 1 {
		t.Errorf("failed tries: %d answered 500 and %v refused, want at least one of each", served500.Load(), refused)
	}
	if v := value(fams, "holdfast_webhook_notices_pending", nil); v != 0 {
		t.Errorf("notices_pending = %v after delivery, want 0", v)
	}
	if v := value(fams, "holdfast_webhook_notices_dropped_total", map[string]string{"event": breaker.EventTransition}); v != 0 {
		t.Errorf("notices_dropped_total = %v for a transition delivered, want 0", v)
	}
	if strings.Contains(metricsText(), token) || strings.Contains(e.logs.String(), token) {
		t.Error("the metrics or the logs show the webhook URL's token")
	}
}

// TestWebhookExpiryNoticeCounted: a credential.expiring warning that a
// receiver answering 500 never takes counts its quick tries as failed
// and itself as dropped, under its own event; the next check posts it
// again, and once the receiver answers it counts as delivered.
func TestWebhookExpiryNoticeCounted(t *testing.T) {
	var broken atomic.Bool
	broken.Store(true)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if broken.Load() {
			http.Error(w, "receiver broken", http.StatusInternalServerError)
		}
	}))
	t.Cleanup(hook.Close)
	e := newExchangeEnv(t, 1, func(o *Options) {
		o.Breakers.WebhookURL = hook.URL
		o.Expiry.CheckInterval = Duration(2 * time.Second)
		o.Credentials[0].ExpiresAt = time.Now().Add(20 * 24 * time.Hour).UTC().Format(time.DateOnly)
	})
	r := e.relays[0]
	count := func(name string, labels map[string]string) float64 {
		t.Helper()
		v, ok := series(scrape(t, r), name, labels)
		if !ok {
			t.Fatalf("no series %s %v in /metrics", name, labels)
		}
		return v
	}
	expiring := func(outcome string) map[string]string {
		return map[string]string{"event": EventCredentialExpiring, "outcome": outcome}
	}
	dropped := map[string]string{"event": EventCredentialExpiring}

	waitFor(t, 20*time.Second, "the warning given up", func() bool {
		return count("holdfast_webhook_notices_dropped_total", dropped) >= 1
	})
	if f, d := count("holdfast_webhook_posts_total", expiring("failed")), count("holdfast_webhook_posts_total", expiring("delivered")); f < 5 || d != 0 {
		t.Errorf("posts_total{credential.expiring}: failed %v, delivered %v; want at least the 5 quick tries failed, none delivered", f, d)
	}
	broken.Store(false)
	waitFor(t, 20*time.Second, "the warning delivered at a later check", func() bool {
		return count("holdfast_webhook_posts_total", expiring("delivered")) == 1
	})
	if v := count("holdfast_webhook_posts_total", map[string]string{"event": breaker.EventTransition, "outcome": "failed"}); v != 0 {
		t.Errorf("posts_total{breaker.transition,failed} = %v with no transition made, want 0", v)
	}
}
