package deploy

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// metric is one metric the relay exports, as agreed across the project.
type metric struct {
	kind   string // counter, gauge or histogram
	labels []string
}

// agreedMetrics is every metric of the relay's /metrics that the alert
// rules and the dashboard may use, with its labels.
var agreedMetrics = map[string]metric{
	"holdfast_messages_received_total":             {"counter", []string{"ingress", "app"}},
	"holdfast_messages_refused_total":              {"counter", []string{"ingress", "app", "reason"}},
	"holdfast_deliveries_total":                    {"counter", []string{"outcome", "class"}},
	"holdfast_token_requests_total":                {"counter", []string{"credential", "result"}},
	"holdfast_upstream_auth_total":                 {"counter", []string{"result"}},
	"holdfast_breaker_transitions_total":           {"counter", []string{"kind", "to"}},
	"holdfast_delivery_latency_seconds":            {"histogram", []string{"credential"}},
	"holdfast_upstream_send_duration_seconds":      {"histogram", []string{"transport"}},
	"holdfast_ingress_accept_duration_seconds":     {"histogram", []string{"ingress"}},
	"holdfast_queue_messages":                      {"gauge", []string{"state", "credential"}},
	"holdfast_queue_oldest_ready_age_seconds":      {"gauge", nil},
	"holdfast_queue_oldest_held_age_seconds":       {"gauge", nil},
	"holdfast_breaker_open":                        {"gauge", []string{"credential"}},
	"holdfast_mailbox_breakers_open":               {"gauge", []string{"credential"}},
	"holdfast_grants":                              {"gauge", []string{"state"}},
	"holdfast_credential_expiry_timestamp_seconds": {"gauge", []string{"credential", "source"}},
	"holdfast_credential_expiry_known":             {"gauge", []string{"credential"}},
	"holdfast_credential_expiry_superseded":        {"gauge", []string{"credential", "source"}},
	"holdfast_smtp_connections_refused_total":      {"counter", []string{"limit"}},
	"holdfast_smtp_connections_evicted_total":      {"counter", nil},
	"holdfast_smtp_connections":                    {"gauge", nil},
	"holdfast_inflight_bytes":                      {"gauge", nil},
	"holdfast_ready":                               {"gauge", nil},
	"holdfast_redis_memory_used_bytes":             {"gauge", []string{"node"}},
	"holdfast_redis_maxmemory_bytes":               {"gauge", []string{"node"}},
	"holdfast_replica_name_shared":                 {"gauge", nil},
	"holdfast_webhook_posts_total":                 {"counter", []string{"event", "outcome"}},
	"holdfast_webhook_notices_dropped_total":       {"counter", []string{"event"}},
	"holdfast_webhook_notices_pending":             {"gauge", nil},
	"holdfast_build_info":                          {"gauge", []string{"version", "goversion"}},
}

// Labels Prometheus adds to every series it scrapes.
var targetLabels = []string{"job", "instance", "namespace", "pod", "service", "container", "endpoint"}

const dashboardFile = "grafana/holdfast.json"

// queries returns every PromQL expression of the alert rules and the
// dashboard, by where it is.
func queries(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, g := range readYAML(t, rulesFile)[0].(map[string]any)["groups"].([]any) {
		for _, r := range g.(map[string]any)["rules"].([]any) {
			r := r.(map[string]any)
			out["rule "+r["alert"].(string)] = r["expr"].(string)
		}
	}
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash map[string]any
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	for _, p := range dash["panels"].([]any) {
		p := p.(map[string]any)
		for i, tg := range p["targets"].([]any) {
			out["panel "+p["title"].(string)+" "+string(rune('A'+i))] = tg.(map[string]any)["expr"].(string)
		}
	}
	for _, v := range dash["templating"].(map[string]any)["list"].([]any) {
		if d, ok := v.(map[string]any)["definition"].(string); ok {
			out["variable "+v.(map[string]any)["name"].(string)] = d
		}
	}
	return out
}

var (
	metricName = regexp.MustCompile(`\b(holdfast_[a-z0-9_]+|up)\b`)
	// A metric with label matchers: name{a="x",b=~"y"}.
	matchers = regexp.MustCompile(`\b(holdfast_[a-z0-9_]+|up)\{([^}]*)\}`)
	// The label names of matchers.
	matcherLabel = regexp.MustCompile(`([a-z_]+)\s*(?:=~|!~|!=|=)`)
)

// baseName maps a histogram's series names to the histogram.
func baseName(name string) string {
	for _, suffix := range []string{"_bucket", "_count", "_sum"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && agreedMetrics[base].kind == "histogram" {
			return base
		}
	}
	return name
}

// usedMetrics returns every metric the rules and dashboard use, histograms
// by their base name, with the queries that use each.
func usedMetrics(t *testing.T) map[string][]string {
	t.Helper()
	used := map[string][]string{}
	for where, q := range queries(t) {
		for _, m := range metricName.FindAllString(q, -1) {
			used[baseName(m)] = append(used[baseName(m)], where)
		}
	}
	return used
}

// TestMetricNamesAgreed: every metric the alert rules and the dashboard
// use is one of the agreed names (up is Prometheus's own), used with its
// own labels, and a histogram only through its _bucket, _count or _sum
// series. The dashboard shows what the README promises.
func TestMetricNamesAgreed(t *testing.T) {
	used := usedMetrics(t)
	for name, where := range used {
		if _, ok := agreedMetrics[name]; !ok && name != "up" {
			t.Errorf("%s (used by %s) is not a metric the relay exports", name, strings.Join(where, ", "))
		}
	}
	for where, q := range queries(t) {
		for _, m := range matchers.FindAllStringSubmatch(q, -1) {
			name := baseName(m[1])
			if agreedMetrics[name].kind == "histogram" && name == m[1] {
				t.Errorf("%s: histogram %s is queried by its bare name; use %s_bucket, _count or _sum", where, name, name)
			}
			for _, l := range matcherLabel.FindAllStringSubmatch(m[2], -1) {
				if !slices.Contains(agreedMetrics[name].labels, l[1]) && !slices.Contains(targetLabels, l[1]) && l[1] != "le" {
					t.Errorf("%s: %s has no label %q", where, m[1], l[1])
				}
			}
		}
	}

	// The dashboard's promises: queue depth, latency percentiles, a breaker
	// state timeline, days to expiry, token and AUTH failures, messages
	// refused unstored, and the webhook: the path that tells of an
	// expiring secret without mail, failing or giving notices up.
	dashboard := map[string]bool{}
	for where, q := range queries(t) {
		if strings.HasPrefix(where, "panel ") {
			for _, m := range metricName.FindAllString(q, -1) {
				dashboard[baseName(m)] = true
			}
		}
	}
	for _, want := range []string{"holdfast_queue_messages", "holdfast_delivery_latency_seconds", "holdfast_breaker_open",
		"holdfast_credential_expiry_timestamp_seconds", "holdfast_token_requests_total", "holdfast_upstream_auth_total",
		"holdfast_messages_refused_total", "holdfast_webhook_posts_total", "holdfast_webhook_notices_pending",
		"holdfast_webhook_notices_dropped_total"} {
		if !dashboard[want] {
			t.Errorf("the dashboard shows nothing of %s", want)
		}
	}
	var dash struct {
		Panels []struct {
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	timeline := false
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			timeline = timeline || (p.Type == "state-timeline" && strings.Contains(tg.Expr, "holdfast_breaker_open"))
		}
	}
	if !timeline {
		t.Error("the dashboard has no state timeline of holdfast_breaker_open")
	}
	if len(used) < 12 {
		t.Errorf("the rules and dashboard use only %d metrics", len(used))
	}
}

// fleetWide are the metrics every replica exports for the whole fleet,
// the same on each (see the README's Monitoring): the gauges read from
// Redis at scrape time, and the count of breaker transitions, which
// every replica sees. Summed across the job they count each replica
// again.
var fleetWide = []string{
	"holdfast_queue_messages",
	"holdfast_queue_oldest_ready_age_seconds",
	"holdfast_queue_oldest_held_age_seconds",
	"holdfast_breaker_open",
	"holdfast_mailbox_breakers_open",
	"holdfast_grants",
	"holdfast_credential_expiry_timestamp_seconds",
	"holdfast_breaker_transitions_total",
	"holdfast_redis_memory_used_bytes",
	"holdfast_redis_maxmemory_bytes",
}

// TestFleetWideMetricsNotSummed: no alert rule or panel sums across
// replicas a metric that every replica exports for the whole fleet: the
// aggregation nearest such a metric is not sum (max by credential, then
// sum of the credentials, is right).
func TestFleetWideMetricsNotSummed(t *testing.T) {
	aggregation := regexp.MustCompile(`\b(sum|max|min|avg|count|topk|bottomk)\b`)
	for where, q := range queries(t) {
		for _, loc := range metricName.FindAllStringIndex(q, -1) {
			m := q[loc[0]:loc[1]]
			if !slices.Contains(fleetWide, baseName(m)) {
				continue
			}
			aggs := aggregation.FindAllString(q[:loc[0]], -1)
			if len(aggs) > 0 && aggs[len(aggs)-1] == "sum" {
				t.Errorf("%s sums %s across replicas, which every replica exports for the whole fleet; take max: %s", where, m, q)
			}
		}
	}
}
