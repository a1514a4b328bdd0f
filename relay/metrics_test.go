package relay

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"holdfast/queue"
	"holdfast/relay/upstream"
)

// scrape fetches the relay's /metrics from the operators' listener and
// parses it.
func scrape(t *testing.T, r *Server) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + r.OpsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %s\n%s", resp.Status, b)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// series returns the value of the family's series whose labels include
// want (a counter's or gauge's value, a histogram's sample count).
func series(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}

// TestDeliveryLatencyHistogram: after N deliveries through the simulator,
// the delivery latency histogram's count for the credential, as scraped
// from /metrics, has risen by exactly N, and the other delivery metrics
// moved with it.
func TestDeliveryLatencyHistogram(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	r := e.relays[0]
	cred := map[string]string{"credential": "contoso"}
	// Warm up so the token is cached and every series exists.
	e.submit(t, 0, "billing@contoso.com", "warm@example.org", exchangeMessage(0, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the first delivery", func() bool { return e.sim.ReceivedCount() == 1 })
	waitFor(t, 5*time.Second, "the first delivery counted", func() bool {
		n, _ := series(scrape(t, r), "holdfast_delivery_latency_seconds", cred)
		return n == 1
	})
	before := scrape(t, r)
	lat0, _ := series(before, "holdfast_delivery_latency_seconds", cred)
	del0, _ := series(before, "holdfast_deliveries_total", map[string]string{"outcome": "delivered", "class": "none"})
	rcv0, _ := series(before, "holdfast_messages_received_total", map[string]string{"ingress": "smtp", "app": "crm"})

	const n = 25
	for i := 1; i <= n; i++ {
		e.submit(t, 0, "billing@contoso.com", fmt.Sprintf("r%d@example.org", i), exchangeMessage(i, "billing@contoso.com"))
	}
	waitFor(t, 20*time.Second, "n deliveries", func() bool { return e.sim.ReceivedCount() == n+1 })
	var after map[string]*dto.MetricFamily
	waitFor(t, 5*time.Second, "the histogram to count them", func() bool {
		after = scrape(t, r)
		v, _ := series(after, "holdfast_delivery_latency_seconds", cred)
		return v >= lat0+n
	})
	if v, _ := series(after, "holdfast_delivery_latency_seconds", cred); v-lat0 != n {
		t.Errorf("latency count rose by %v, want %d", v-lat0, n)
	}
	if v, _ := series(after, "holdfast_deliveries_total", map[string]string{"outcome": "delivered", "class": "none"}); v-del0 != n {
		t.Errorf("deliveries_total{delivered} rose by %v, want %d", v-del0, n)
	}
	if v, _ := series(after, "holdfast_messages_received_total", map[string]string{"ingress": "smtp", "app": "crm"}); v-rcv0 != n {
		t.Errorf("messages_received_total{smtp,crm} rose by %v, want %d", v-rcv0, n)
	}
	if v, ok := series(after, "holdfast_upstream_send_duration_seconds", map[string]string{"transport": "smtp"}); !ok || v < n+1 {
		t.Errorf("upstream_send_duration{smtp} count %v, want at least %d", v, n+1)
	}
	// One Outlook token serves every delivery; the expiry monitor's Graph
	// token is a token request too.
	c := e.sim.Counters().Clients[simClientID]
	if c.TokenRequests-c.GraphTokenRequests != 1 {
		t.Errorf("the simulator saw %d Outlook token requests, want 1 (one token serves them all)", c.TokenRequests-c.GraphTokenRequests)
	}
	if v, _ := series(after, "holdfast_token_requests_total", map[string]string{"credential": "contoso", "result": "ok"}); v != float64(c.TokenRequests) {
		t.Errorf("token_requests_total{contoso,ok} = %v, want the simulator's %d", v, c.TokenRequests)
	}
	if v, _ := series(after, "holdfast_upstream_auth_total", map[string]string{"result": "ok"}); v < 1 {
		t.Errorf("upstream_auth_total{ok} = %v, want at least 1", v)
	}
	if v, _ := series(after, "holdfast_ready", nil); v != 1 {
		t.Errorf("holdfast_ready = %v, want 1", v)
	}
	if v, _ := series(after, "holdfast_queue_messages", map[string]string{"state": "held", "credential": "contoso"}); v != 0 {
		t.Errorf("queue_messages{held,contoso} = %v, want 0", v)
	}
	if v, ok := series(after, "holdfast_queue_messages", map[string]string{"state": "moving", "credential": "contoso"}); !ok || v != 0 {
		t.Errorf("queue_messages{moving,contoso} = %v (present %v), want 0", v, ok)
	}
	if v, ok := series(after, "holdfast_breaker_open", cred); !ok || v != 0 {
		t.Errorf("breaker_open{contoso} = %v (present %v), want 0", v, ok)
	}
}

// TestCapacityGauges: /metrics says how many SMTP connections are open and
// how many body bytes are held, and carries the Go runtime's and the
// process's own metrics (goroutines, memory, open files).
func TestCapacityGauges(t *testing.T) {
	f := newFixture(t)
	s := startRelayOn(t, f, nil)
	for range 2 {
		dialSMTP(t, s.SMTPAddrs()[0])
	}
	var fams map[string]*dto.MetricFamily
	waitFor(t, 5*time.Second, "2 connections in holdfast_smtp_connections", func() bool {
		fams = scrape(t, s)
		v, _ := series(fams, "holdfast_smtp_connections", nil)
		return v == 2
	})
	if v, ok := series(fams, "holdfast_inflight_bytes", nil); !ok || v != 0 {
		t.Errorf("holdfast_inflight_bytes = %v (present %v), want 0", v, ok)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "process_open_fds"} {
		if v, ok := series(fams, name, nil); !ok || v <= 0 {
			t.Errorf("%s = %v (present %v), want more than 0", name, v, ok)
		}
	}
}

// TestMetricsLint: the whole set passes the Prometheus linter, every name
// starts with holdfast_ (but the Go runtime's go_ and the process's
// process_, named by client_golang), and no label carries a mailbox or
// message.
func TestMetricsLint(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	e.submit(t, 0, "billing@contoso.com", "a@example.org", exchangeMessage(1, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "a delivery", func() bool { return e.sim.ReceivedCount() == 1 })
	reg := e.relays[0].Registry()
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	allowed := map[string]bool{"ingress": true, "app": true, "outcome": true, "class": true, "credential": true,
		"result": true, "kind": true, "to": true, "transport": true, "state": true, "source": true,
		"version": true, "goversion": true, "limit": true, "quantile": true, "reason": true,
		"node": true} // a Redis server's address: one per master of a Cluster
	for _, f := range fams {
		if n := f.GetName(); !strings.HasPrefix(n, "holdfast_") && !strings.HasPrefix(n, "go_") && !strings.HasPrefix(n, "process_") {
			t.Errorf("metric %s does not start with holdfast_", f.GetName())
		}
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if !allowed[lp.GetName()] || strings.Contains(lp.GetValue(), "@") {
					t.Errorf("%s: label %s=%q is not a bounded label", f.GetName(), lp.GetName(), lp.GetValue())
				}
			}
		}
	}
}

// TestLatencySummary: p50 and p95 of the last hour's buckets interpolate
// within a bucket, as histogram_quantile does.
func TestLatencySummary(t *testing.T) {
	// 100 deliveries: 50 in (0.1 s, 0.25 s], 45 in (0.25 s, 0.5 s], 5 in
	// (1 h, 2 h].
	ms := []queue.Minute{
		{Latency: map[int]int64{latencyBucket(200 * time.Millisecond): 30, latencyBucket(300 * time.Millisecond): 45}},
		{Latency: map[int]int64{latencyBucket(200 * time.Millisecond): 20, latencyBucket(90 * time.Minute): 5}},
	}
	l := latencySummary(ms)
	if l.Count != 100 {
		t.Fatalf("count %d", l.Count)
	}
	if got := time.Duration(l.P50); got != 250*time.Millisecond {
		t.Errorf("p50 %v, want 250ms (the top of the second bucket)", got)
	}
	if got := time.Duration(l.P95); got != 500*time.Millisecond {
		t.Errorf("p95 %v, want 500ms", got)
	}
	if l := latencySummary([]queue.Minute{{Latency: map[int]int64{latencyBucket(90 * time.Minute): 4}}}); time.Duration(l.P95) <= time.Hour {
		t.Errorf("p95 of hour-long deliveries %v", time.Duration(l.P95))
	}
	// Deliveries of 20 ms, as to a local upstream, are told apart from
	// 100 ms ones: 40 of them fall in (10 ms, 25 ms].
	if l := latencySummary([]queue.Minute{{Latency: map[int]int64{latencyBucket(20 * time.Millisecond): 40}}}); time.Duration(l.P50) != 18*time.Millisecond {
		t.Errorf("p50 of 20 ms deliveries %v, want 18ms: the middle of (10ms, 25ms], to the millisecond", time.Duration(l.P50))
	}
	// Counts written with the earlier list, which began at 100 ms, keep
	// their bounds: its bucket 1 is (100 ms, 250 ms], its bucket 0 is read
	// as (50 ms, 100 ms].
	if latencyBuckets[earlierLatencyShift] != 0.1 {
		t.Fatalf("bucket %d is %v s, the earlier list's first bound was 0.1 s", earlierLatencyShift, latencyBuckets[earlierLatencyShift])
	}
	l = latencySummary([]queue.Minute{
		{EarlierLatency: map[int]int64{0: 50}},
		{EarlierLatency: map[int]int64{1: 40}, Latency: map[int]int64{latencyBucket(200 * time.Millisecond): 10}},
	})
	if l.Count != 100 || time.Duration(l.P50) != 100*time.Millisecond || time.Duration(l.P95) != 235*time.Millisecond {
		t.Errorf("with earlier counts: %d deliveries, p50 %v, p95 %v; want 100, 100ms and 235ms",
			l.Count, time.Duration(l.P50), time.Duration(l.P95))
	}
}

// TestRedisMemoryMetrics: the relay exports Redis's used memory and
// maxmemory per server, and follows a change of maxmemory at its next
// check.
func TestRedisMemoryMetrics(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	rdb := f.redis.Client(t)
	if err := rdb.ConfigSet(ctx, "maxmemory", "100mb").Err(); err != nil {
		t.Fatal(err)
	}
	o := f.opts
	o.Redis.Addrs = []string{f.redis.Addr()}
	o.Delivery.Sender = "off"
	o.Redis.CheckInterval = Duration(100 * time.Millisecond)
	s := runRelay(t, o, discardLogger())
	node := map[string]string{"node": f.redis.Addr()}
	fams := scrape(t, s)
	if v, ok := series(fams, "holdfast_redis_maxmemory_bytes", node); !ok || v != 100<<20 {
		t.Fatalf("holdfast_redis_maxmemory_bytes %v %v, want 100 MiB", v, ok)
	}
	if v, ok := series(fams, "holdfast_redis_memory_used_bytes", node); !ok || v <= 0 {
		t.Fatalf("holdfast_redis_memory_used_bytes %v %v", v, ok)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory", "200mb").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the new maxmemory exported", func() bool {
		v, _ := series(scrape(t, s), "holdfast_redis_maxmemory_bytes", node)
		return v == 200<<20
	})
	// Redis stopped: the figures of before are not exported as current.
	f.redis.Stop(t)
	waitFor(t, 15*time.Second, "the memory figures gone while Redis is down", func() bool {
		_, ok := series(scrape(t, s), "holdfast_redis_memory_used_bytes", node)
		return !ok
	})
}

// TestDeliveryOutcomesStartAtZero: every outcome and class of
// holdfast_deliveries_total is exported at zero from the start, so that
// increase() counts a relay's first dead letter (a series that first
// appears at 1 increases by nothing, and HoldfastDeadLettersIncreasing
// missed the first dead letter of each class on each relay, after every
// restart).
func TestDeliveryOutcomesStartAtZero(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	fams := scrape(t, e.relays[0])
	for _, outcome := range []string{"retried", "held", "dead"} {
		for c := upstream.Transient; c <= upstream.Mailbox; c++ {
			if v, ok := series(fams, "holdfast_deliveries_total", map[string]string{"outcome": outcome, "class": c.String()}); !ok || v != 0 {
				t.Errorf("holdfast_deliveries_total{outcome=%q,class=%q} = %v (exported: %v), want 0", outcome, c, v, ok)
			}
		}
	}
	if v, ok := series(fams, "holdfast_deliveries_total", map[string]string{"outcome": "delivered", "class": "none"}); !ok || v != 0 {
		t.Errorf("holdfast_deliveries_total{outcome=\"delivered\",class=\"none\"} = %v (exported: %v), want 0", v, ok)
	}
}

// TestBreakerSeriesThroughRedisOutage: while Redis does not answer, the
// breaker series stay as last read (nothing changes a record meanwhile):
// before, they vanished from the scrape, and HoldfastBreakerOpen told the
// on-call person that an open breaker had resolved.
func TestBreakerSeriesThroughRedisOutage(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	r := e.relays[0]
	ctx := t.Context()
	if err := r.gate.set.Trip(ctx, credentialBreaker("contoso"), "held for the test"); err != nil {
		t.Fatal(err)
	}
	cred := map[string]string{"credential": "contoso"}
	if v, ok := series(scrape(t, r), "holdfast_breaker_open", cred); !ok || v != 1 {
		t.Fatalf("holdfast_breaker_open = %v (exported: %v) with the breaker tripped, want 1", v, ok)
	}
	e.f.redis.Pause(t)
	defer e.f.redis.Resume(t)
	if v, ok := series(scrape(t, r), "holdfast_breaker_open", cred); !ok || v != 1 {
		t.Errorf("holdfast_breaker_open = %v (exported: %v) while Redis does not answer, want 1 as last read", v, ok)
	}
}
