package auth

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the token endpoint's Prometheus metrics. One Metrics serves
// every credential of a process; a nil *Metrics counts nothing.
type Metrics struct {
	tokens *prometheus.CounterVec
}

// NewMetrics registers the auth metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "holdfast_token_requests_total",
			Help: "Token requests to Entra ID by credential and result (ok or error).",
		}, []string{"credential", "result"}),
	}
	reg.MustRegister(m.tokens)
	return m
}

// Credential starts the series of a credential at zero, so that a rate
// shows from its first request.
func (m *Metrics) Credential(name string) {
	if m == nil {
		return
	}
	m.tokens.WithLabelValues(name, "ok")
	m.tokens.WithLabelValues(name, "error")
}

func (m *Metrics) tokenRequest(credential string, err error) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.tokens.WithLabelValues(credential, result).Inc()
}
