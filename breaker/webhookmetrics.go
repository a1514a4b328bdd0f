package breaker

import (
	"context"
	"errors"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// EventTransition is the event label of a breaker transition's notice in
// the webhook metrics (its JSON body has no type).
const EventTransition = "breaker.transition"

// The outcomes of holdfast_webhook_posts_total.
const (
	postDelivered = "delivered"
	postFailed    = "failed"
)

// WebhookMetrics are a Webhook's Prometheus metrics: its POSTs by event
// and outcome, the notices it stopped trying, and those it has still to
// post. One Webhook uses one; a nil *WebhookMetrics counts nothing.
type WebhookMetrics struct {
	posts   *prometheus.CounterVec
	dropped *prometheus.CounterVec
	pending prometheus.GaugeFunc
	// count is the Webhook's count of notices still to post, read at
	// each scrape (follow).
	count atomic.Pointer[func() int]
}

// NewWebhookMetrics registers the webhook metrics on reg, each series of
// transitions and of events (the types given to Post) at zero, so that
// the first failure shows as an increase.
func NewWebhookMetrics(reg prometheus.Registerer, events ...string) *WebhookMetrics {
	m := &WebhookMetrics{
		posts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "holdfast_webhook_posts_total",
			Help: "POSTs to the operators' webhook (breakers.webhook_url), each try counted, by event and outcome: " +
				"delivered (a 2xx reply) or failed (no reply in time, a refused connection, a 3xx that would drop the body, a 4xx or 5xx).",
		}, []string{"event", "outcome"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "holdfast_webhook_notices_dropped_total",
			Help: "Webhook notices this relay stopped trying without the receiver taking them, by event: " +
				"its tries spent, or pushed out of a full queue.",
		}, []string{"event"}),
	}
	m.pending = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "holdfast_webhook_notices_pending",
		Help: "Webhook notices this relay has still to post: queued, or being posted and retried.",
	}, func() float64 {
		if f := m.count.Load(); f != nil {
			return float64((*f)())
		}
		return 0
	})
	reg.MustRegister(m.posts, m.dropped, m.pending)
	for _, event := range append([]string{EventTransition}, events...) {
		m.posts.WithLabelValues(event, postDelivered)
		m.posts.WithLabelValues(event, postFailed)
		m.dropped.WithLabelValues(event)
	}
	return m
}

// posted counts one POST of event that ended with err. One that ctx
// cancelled (the Webhook closing, its caller gone) says nothing of the
// receiver and is not counted; one past its deadline is a failure.
func (m *WebhookMetrics) posted(event string, err error) {
	if m == nil {
		return
	}
	switch {
	case err == nil:
		m.posts.WithLabelValues(event, postDelivered).Inc()
	case !errors.Is(err, context.Canceled):
		m.posts.WithLabelValues(event, postFailed).Inc()
	}
}

// drop counts a notice of event given up.
func (m *WebhookMetrics) drop(event string) {
	if m == nil {
		return
	}
	m.dropped.WithLabelValues(event).Inc()
}

// follow makes count the source of the notices still to post.
func (m *WebhookMetrics) follow(count func() int) {
	if m == nil {
		return
	}
	m.count.Store(&count)
}
