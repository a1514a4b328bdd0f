package ops

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type fakeStatus struct{ st Status }

func (f fakeStatus) Status(context.Context) (Status, error) { return f.st, nil }

type fakeExpiry []Expiry

func (f fakeExpiry) Expiries(context.Context) ([]Expiry, error) { return f, nil }

func get(t *testing.T, h http.Handler, path, password string) (int, string) {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, path, nil)
	if password != "" {
		r.SetBasicAuth("ops", password)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	b, _ := io.ReadAll(w.Result().Body)
	return w.Code, string(b)
}

// TestBasicAuth: with an admin token, / and /metrics want it as the
// password; /healthz and /readyz stay open for probes.
func TestBasicAuth(t *testing.T) {
	reg := prometheus.NewRegistry()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "holdfast_test", Help: "test"})
	reg.MustRegister(g)
	sum := sha256.Sum256([]byte("admin-token"))
	h := New(Config{Gatherer: reg, Ready: func(context.Context) error { return nil },
		Status: fakeStatus{}, AdminSHA256: sum[:]})
	for _, path := range []string{"/", "/metrics", "/status.json"} {
		if code, _ := get(t, h, path, ""); code != http.StatusUnauthorized {
			t.Errorf("%s without the token: %d, want 401", path, code)
		}
		if code, _ := get(t, h, path, "wrong"); code != http.StatusUnauthorized {
			t.Errorf("%s with a wrong token: %d, want 401", path, code)
		}
		if code, _ := get(t, h, path, "admin-token"); code != http.StatusOK {
			t.Errorf("%s with the token: %d, want 200", path, code)
		}
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, _ := get(t, h, path, ""); code != http.StatusOK {
			t.Errorf("%s: %d, want 200 without a token", path, code)
		}
	}
	if _, body := get(t, h, "/metrics", "admin-token"); !strings.Contains(body, "holdfast_test 0") {
		t.Errorf("/metrics does not serve the registry:\n%s", body)
	}
}

// TestReadyz: a failing readiness check answers 503 with its reason.
func TestReadyz(t *testing.T) {
	h := New(Config{Gatherer: prometheus.NewRegistry(), Status: fakeStatus{},
		Ready: func(context.Context) error { return errors.New("redis unreachable") }})
	code, body := get(t, h, "/readyz", "")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "redis unreachable") {
		t.Errorf("/readyz: %d %q", code, body)
	}
}

// TestExpiryLevels: amber at 30 days or less, red at 7 or less and once
// expired; days rounded up, as the command line and the webhook count.
func TestExpiryLevels(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	h := New(Config{Gatherer: prometheus.NewRegistry(), Ready: func(context.Context) error { return nil },
		Status: fakeStatus{Status{Now: now}},
		Expiry: fakeExpiry{
			{Credential: "far", At: now.Add(90 * day), Source: "config", Keys: []ExpiryKey{
				{Key: "secret New…", At: now.Add(90 * day), Source: "config", InUse: true},
				{Key: "secret Old…", At: now.Add(2 * day), Source: "config"},
			}},
			{Credential: "soon", At: now.Add(29*day + time.Hour), Source: "graph"},
			{Credential: "edge", At: now.Add(30 * day), Source: "graph"},
			{Credential: "close", At: now.Add(6*day + time.Hour), Source: "certificate"},
			{Credential: "gone", At: now.Add(-2*day - time.Hour), Source: "config"},
			{Credential: "unknown"},
		}})
	_, body := get(t, h, "/", "")
	for _, want := range []string{
		`<tr class="level-ok">
      <td>far</td>`,
		`<tr class="level-warn">
      <td>soon</td>`,
		`<td class="days nowrap">30 days</td>`,
		`<tr class="level-warn">
      <td>edge</td>`,
		`<tr class="level-crit">
      <td>close</td>`,
		`<td class="days nowrap">7 days</td>`,
		`<tr class="level-crit">
      <td>gone</td>`,
		`<td class="days nowrap">expired 2 days ago</td>`,
		// Both secrets of a rotation, the one sent with marked.
		`<div class="nowrap">secret New… 2026-05-30 (config) <b>in use</b></div><div class="nowrap">secret Old… 2026-03-03 (config)</div>`,
		`<tr class="level-unknown">
      <td>unknown</td>`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
}

// TestChartScale: bars scale to the busiest minute, held points follow
// the samples.
func TestChartScale(t *testing.T) {
	start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	var ms []Minute
	for i := range 60 {
		ms = append(ms, Minute{Start: start.Add(time.Duration(i) * time.Minute)})
	}
	ms[10].Delivered = 80
	ms[59].Held = 40
	c := drawChart(ms)
	if c.Top != 100 || len(c.Bars) != 1 || len(c.HeldDots) != 1 || c.TotalDone != 80 || c.LastHeld != 40 {
		t.Fatalf("chart %+v", c)
	}
	if b := c.Bars[0]; b.X != 101 || b.H != 80.0/100*(chartH-chartPadT) {
		t.Errorf("bar %+v", b)
	}
}

// TestTransports: the page says how each app's routes send and lists the
// routes that send by Graph as a fallback, with when SMTP is tried again.
func TestTransports(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	h := New(Config{Gatherer: prometheus.NewRegistry(), Ready: func(context.Context) error { return nil },
		Status: fakeStatus{Status{Now: now,
			Transports:         []Transport{{App: "crm", Via: "smtp", Fallback: "graph"}, {App: "billing", Via: "graph"}},
			GraphFallbacks:     []Fallback{{Route: "app:contoso:sales@contoso.com", Until: now.Add(time.Hour)}},
			GraphFallbackCount: 1}}})
	_, body := get(t, h, "/", "")
	for _, want := range []string{
		`<tr><td>crm</td><td>smtp</td><td>graph</td></tr>`,
		`<tr><td>billing</td><td>graph</td><td>held</td></tr>`,
		`<tr><td>app:contoso:sales@contoso.com</td><td>2026-03-01 13:00:00Z</td></tr>`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
}

// TestLatencyJSON: /status.json gives the latency percentiles the page
// shows, to the millisecond; whole seconds wrote 50 ms as 0.
func TestLatencyJSON(t *testing.T) {
	b, err := json.Marshal(Latency{Count: 7, P50: Seconds(50 * time.Millisecond), P95: Seconds(1500*time.Millisecond + 400*time.Microsecond)})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"count":7,"p50_seconds":0.05,"p95_seconds":1.5}`; string(b) != want {
		t.Errorf("latency as JSON: %s, want %s", b, want)
	}
	var back Latency
	if err := json.Unmarshal(b, &back); err != nil || back != (Latency{Count: 7, P50: Seconds(50 * time.Millisecond), P95: Seconds(1500 * time.Millisecond)}) {
		t.Errorf("latency read back: %+v, %v", back, err)
	}
	if page := human(Seconds(50 * time.Millisecond)); page != "50ms" {
		t.Errorf("the page shows 50 ms as %q", page)
	}
}

// TestDaysLeftFarOff: Graph shows a secret without an end as 9999-12-31,
// past the 292 years a time.Duration holds; it read 106751 days. Days are
// rounded up, as the command line counts them.
func TestDaysLeftFarOff(t *testing.T) {
	now := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	if got := daysLeft(time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC), now); got != "2912108 days" {
		t.Errorf("days left to 9999-12-31: %q", got)
	}
	if got := daysLeft(now.Add(36*time.Hour), now); got != "2 days" {
		t.Errorf("days left in 36 hours: %q", got)
	}
	if got := daysLeft(now.Add(-time.Hour), now); got != "expired today" {
		t.Errorf("an hour past the end: %q", got)
	}
}

// TestStatusJSONEmptyLists: a fleet with nothing to list answers [] for
// each list, never null, so that a script can iterate without a check.
func TestStatusJSONEmptyLists(t *testing.T) {
	h := New(Config{Gatherer: prometheus.NewRegistry(), Ready: func(context.Context) error { return nil },
		Status: fakeStatus{}, Expiry: fakeExpiry(nil)})
	code, body := get(t, h, "/status.json", "")
	if code != http.StatusOK {
		t.Fatalf("/status.json: %d %s", code, body)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"credential_breakers", "open_mailbox_breakers", "credential_expiry", "transitions", "minutes", "transports", "graph_fallbacks", "mailbox_waits", "full_routes"} {
		if l, ok := doc[k].([]any); !ok || len(l) != 0 {
			t.Errorf("%s: %v, want []", k, doc[k])
		}
	}
}

// TestMailboxWaits: the page lists the mailboxes Exchange or Graph asked
// the fleet to leave alone, with why and until when, and says how many
// there are in all when it lists only the first.
func TestMailboxWaits(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	h := New(Config{Gatherer: prometheus.NewRegistry(), Ready: func(context.Context) error { return nil },
		Status: fakeStatus{Status{Now: now,
			MailboxWaits:     []MailboxWait{{Mailbox: "billing@contoso.com", Until: now.Add(29 * time.Minute), Why: "Exchange holds its sending"}},
			MailboxWaitCount: 60}}})
	_, body := get(t, h, "/", "")
	for _, want := range []string{
		`<h2>Mailboxes Microsoft asked to wait (60)</h2>`,
		`<tr><td>billing@contoso.com<div class="reason">Exchange holds its sending</div></td><td class="nowrap" title="2026-03-01 12:29:00Z">in 29m</td></tr>`,
		`and 60 in all: holdfast queue stats lists every one.`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	_, body = get(t, New(Config{Gatherer: prometheus.NewRegistry(), Ready: func(context.Context) error { return nil },
		Status: fakeStatus{Status{Now: now}}}), "/", "")
	if !strings.Contains(body, "None: no mailbox's mail waits for Exchange or Graph.") {
		t.Error("the page of a fleet without waits does not say so")
	}
}

// TestFullRoutesCard: the page lists the routes at the queue's bound with
// what each holds, says how many there are in all when it lists only the
// first, and without any says which bound applies, or that none does.
func TestFullRoutesCard(t *testing.T) {
	page := func(st Status) string {
		t.Helper()
		_, body := get(t, New(Config{Gatherer: prometheus.NewRegistry(), Ready: func(context.Context) error { return nil },
			Status: fakeStatus{st}}), "/", "")
		return body
	}
	body := page(Status{MaxPerRoute: 100000, FullRouteCount: 51,
		FullRoutes: []FullRoute{{Route: "app:contoso:billing@contoso.com", Messages: 100004}}})
	for _, want := range []string{
		`<h2>Senders at their queue bound (51)</h2>`,
		`<tr><td>app:contoso:billing@contoso.com<div class="reason">new mail refused (452 4.3.1, HTTP 429) until some is delivered</div></td><td class="num">100004</td></tr>`,
		`and 51 in all: holdfast queue stats lists every one.`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if body := page(Status{MaxPerRoute: 100000}); !strings.Contains(body, "None: every route holds fewer than 100000 messages (queue.max_messages_per_route).") {
		t.Error("the page of a fleet with no route full does not say so")
	}
	if body := page(Status{}); !strings.Contains(body, "No bound: queue.max_messages_per_route is 0.") {
		t.Error("the page of a fleet with no bound does not say so")
	}
}

type failingStatus struct{ err error }

func (f failingStatus) Status(context.Context) (Status, error) { return Status{}, f.err }

// TestStatusUnreadable: with the fleet's state unreadable (Redis down),
// the page says so, answers 503, and shows nothing it could not read: no
// zero counts, and no "no credentials" or "no bound" that only an empty
// status would suggest. status.json answers 503 in JSON.
func TestStatusUnreadable(t *testing.T) {
	h := New(Config{Ready: func(context.Context) error { return nil },
		Status: failingStatus{errors.New("redis unreachable: connection refused")}})
	code, body := get(t, h, "/", "")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "Cannot read the fleet's state") ||
		!strings.Contains(body, "redis unreachable: connection refused") {
		t.Fatalf("page: %d\n%s", code, body)
	}
	for _, absent := range []string{"No credentials", "No bound", "No credentials configured", `<span>ready</span>`} {
		if strings.Contains(body, absent) {
			t.Errorf("the page, with the state unreadable, shows %q", absent)
		}
	}
	r := httptest.NewRequest(http.MethodGet, "/status.json", nil)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	var e struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Content-Type") != "application/json" ||
		json.Unmarshal(w.Body.Bytes(), &e) != nil || e.Error != "state_unavailable" || !strings.Contains(e.Message, "redis unreachable") {
		t.Errorf("status.json: %d %q %s", w.Code, w.Header().Get("Content-Type"), w.Body.String())
	}
}
