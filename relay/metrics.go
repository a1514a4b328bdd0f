package relay

import (
	"context"
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"holdfast/queue"
	"holdfast/relay/upstream"
)

// latencyBuckets resolve a delivery's latency from 10 ms to 24 h: a
// healthy relay delivers in well under a second, an incident holds mail
// for hours.
var latencyBuckets = []float64{
	0.01, 0.025, 0.05,
	0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
	60, 120, 300, 600, 1800,
	3600, 7200, 4 * 3600, 8 * 3600, 12 * 3600, 24 * 3600,
}

// metrics are the relay's own Prometheus metrics. A nil *metrics records
// nothing: the relay runs the same with metrics off.
type metrics struct {
	received  *prometheus.CounterVec
	refusedBy *prometheus.CounterVec
	accept    *prometheus.HistogramVec
	outcomes  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	send      *prometheus.HistogramVec
	authTries *prometheus.CounterVec
	trans     *prometheus.CounterVec

	// minute holds what this process delivered since the last flush to
	// the fleet's per-minute counts.
	mu     sync.Mutex
	minute queue.MinuteDelta
}

func newMetrics(reg prometheus.Registerer, version string) *metrics {
	m := &metrics{
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "holdfast_messages_received_total",
			Help: "Messages accepted from applications, by ingress (smtp or http) and app.",
		}, []string{"ingress", "app"}),
		refusedBy: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "holdfast_messages_refused_total",
			Help: "Messages refused with a temporary failure because the queue did not store them, by ingress, app and reason: " +
				"route_full (its route holds queue.max_messages_per_route), redis_full (Redis at its maxmemory), " +
				"not_durable (redis.strict) or store_failed (Redis failed or did not answer in time).",
		}, []string{"ingress", "app", "reason"}),
		accept: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "holdfast_ingress_accept_duration_seconds",
			Help:    "Time to durably store one submitted message, by ingress (its route was decided at MAIL FROM, or before the HTTP body was read).",
			Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5},
		}, []string{"ingress"}),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "holdfast_deliveries_total",
			Help: "Delivery attempts by outcome (delivered, retried, held, dead) and error class (none for delivered).",
		}, []string{"outcome", "class"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:                            "holdfast_delivery_latency_seconds",
			Help:                            "Time from acceptance to the upstream's 250 (SMTP) or 202 (Graph), by credential.",
			Buckets:                         latencyBuckets,
			NativeHistogramBucketFactor:     1.1,
			NativeHistogramMaxBucketNumber:  160,
			NativeHistogramMinResetDuration: time.Hour,
		}, []string{"credential"}),
		send: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "holdfast_upstream_send_duration_seconds",
			Help:    "Duration of one upstream send, successful or not, by transport (smtp or graph).",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300},
		}, []string{"transport"}),
		authTries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "holdfast_upstream_auth_total",
			Help: "SMTP AUTH XOAUTH2 attempts against Exchange Online, by result (ok or error).",
		}, []string{"result"}),
		trans: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "holdfast_breaker_transitions_total",
			Help: "Auth circuit breaker transitions seen by this replica, by kind (credential or mailbox) and new state.",
		}, []string{"kind", "to"}),
		minute: queue.MinuteDelta{Latency: map[int]int64{}},
	}
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "holdfast_build_info",
		Help:        "Always 1; the labels name the running build.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	build.Set(1)
	reg.MustRegister(m.received, m.refusedBy, m.accept, m.outcomes, m.latency, m.send, m.authTries, m.trans, build)
	for _, r := range []string{"ok", "error"} {
		m.authTries.WithLabelValues(r)
	}
	for _, kind := range []string{"credential", "mailbox"} {
		for _, to := range []string{"open", "closed", "half_open"} {
			m.trans.WithLabelValues(kind, to)
		}
	}
	// At zero from the start: a series that first appears at 1 increases
	// by nothing, and the alert on dead letters would miss the first.
	m.outcomes.WithLabelValues("delivered", "none")
	for _, outcome := range []string{"retried", "held", "dead"} {
		for c := upstream.Transient; c <= upstream.Mailbox; c++ {
			m.outcomes.WithLabelValues(outcome, c.String())
		}
	}
	return m
}

// ingressOf is the ingress label of a submission's protocol.
func ingressOf(protocol string) string {
	if protocol == "HTTP" || protocol == "HTTPS" {
		return "http"
	}
	return "smtp"
}

func (m *metrics) accepted(protocol, app string, took time.Duration) {
	if m == nil {
		return
	}
	ing := ingressOf(protocol)
	m.received.WithLabelValues(ing, app).Inc()
	m.accept.WithLabelValues(ing).Observe(took.Seconds())
}

// The reasons of holdfast_messages_refused_total.
const (
	refusedRouteFull   = "route_full"
	refusedRedisFull   = "redis_full"
	refusedNotDurable  = "not_durable"
	refusedStoreFailed = "store_failed"
)

// knowApps starts each application's refusal counts at zero, so that
// the first refusal shows as an increase, and the alert on it fires.
func (m *metrics) knowApps(apps []App) {
	for _, app := range apps {
		for _, ing := range []string{"smtp", "http"} {
			for _, reason := range []string{refusedRouteFull, refusedRedisFull, refusedNotDurable, refusedStoreFailed} {
				m.refusedBy.WithLabelValues(ing, app.Name, reason)
			}
		}
	}
}

// refused counts a message refused with a temporary failure, for reason:
// at the end of its transfer, or, for route_full, before its body too.
func (m *metrics) refused(protocol, app, reason string) {
	if m == nil {
		return
	}
	m.refusedBy.WithLabelValues(ingressOf(protocol), app, reason).Inc()
}

// delivered records a message the upstream accepted after latency.
func (m *metrics) delivered(credential string, latency time.Duration) {
	if m == nil {
		return
	}
	m.outcomes.WithLabelValues("delivered", "none").Inc()
	m.latency.WithLabelValues(credential).Observe(latency.Seconds())
	b := latencyBucket(latency)
	m.mu.Lock()
	m.minute.Delivered++
	m.minute.Latency[b]++
	m.mu.Unlock()
}

// earlierLatencyShift is how many buckets latencyBuckets has before the
// first of the earlier list, which began at 100 ms: bucket I of the
// minutes' counts written with the earlier list (queue.Minute's
// EarlierLatency) is bucket I+earlierLatencyShift now. The earlier
// list's first bucket, 0 to 100 ms, is read as 50 to 100 ms.
const earlierLatencyShift = 3

// latencyBucket is the index of the first bucket holding d, or
// len(latencyBuckets) past the last.
func latencyBucket(d time.Duration) int {
	s := d.Seconds()
	for i, le := range latencyBuckets {
		if s <= le {
			return i
		}
	}
	return len(latencyBuckets)
}

// failed records a failed attempt that left the message in state.
func (m *metrics) failed(class upstream.Class, state queue.State) {
	if m == nil {
		return
	}
	outcome := "retried"
	switch state {
	case queue.Held:
		outcome = "held"
	case queue.Dead:
		outcome = "dead"
	}
	m.outcomes.WithLabelValues(outcome, class.String()).Inc()
}

func (m *metrics) sent(transport string, took time.Duration) {
	if m == nil || transport == "" {
		return
	}
	m.send.WithLabelValues(transport).Observe(took.Seconds())
}

func (m *metrics) upstreamAuth(err error) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.authTries.WithLabelValues(result).Inc()
}

func (m *metrics) transition(kind, to string) {
	if m == nil {
		return
	}
	m.trans.WithLabelValues(kind, to).Inc()
}

// takeMinute returns what was delivered since the last call and starts
// afresh.
func (m *metrics) takeMinute() queue.MinuteDelta {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := m.minute
	m.minute = queue.MinuteDelta{Latency: map[int]int64{}}
	return d
}

// flushMinutes adds this process's deliveries, and a sample of the held
// messages, to the fleet's per-minute counts every interval until ctx
// ends, and once more then.
func (m *metrics) flushMinutes(ctx context.Context, q *queue.Queue, every time.Duration, held func(context.Context) (int64, error)) {
	t := time.NewTicker(every)
	defer t.Stop()
	// flush samples the held count, bounded as a scrape is (a hung Redis
	// must not keep it, and the summary it takes a turn of, for long),
	// then adds the minute's counts within a bound of their own: a
	// sample that waited out its bound does not lose them.
	flush := func(ctx context.Context, bound time.Duration) {
		d := m.takeMinute()
		d.Held = -1
		hctx, cancel := context.WithTimeout(ctx, bound)
		if n, err := held(hctx); err == nil {
			d.Held = n
		}
		cancel()
		actx, cancel := context.WithTimeout(ctx, bound)
		defer cancel()
		if err := q.AddMinute(actx, time.Now(), d); err != nil {
			// Lost counts only thin the status page's chart.
			return
		}
	}
	for {
		select {
		case <-ctx.Done():
			flush(context.Background(), 2*time.Second)
			return
		case <-t.C:
			flush(ctx, scrapeTimeout)
		}
	}
}
