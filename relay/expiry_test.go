package relay

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"holdfast/auth"
	"holdfast/breaker"
	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
	"holdfast/queue/redistest"
	"holdfast/relay/o365"
)

// webhookSink records the JSON bodies posted to it.
type webhookSink struct {
	srv *httptest.Server

	mu     sync.Mutex
	bodies []map[string]any
}

func newWebhookSink(t *testing.T) *webhookSink {
	t.Helper()
	w := &webhookSink{}
	w.srv = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Errorf("webhook body is not JSON: %s", raw)
		}
		w.mu.Lock()
		w.bodies = append(w.bodies, m)
		w.mu.Unlock()
	}))
	t.Cleanup(w.srv.Close)
	return w
}

// events returns the bodies of one event type.
func (w *webhookSink) events(typ string) []map[string]any {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []map[string]any
	for _, b := range w.bodies {
		if b["type"] == typ {
			out = append(out, b)
		}
	}
	return out
}

// expiryGauge is the text exposition of the expiry gauge for the given
// "credential source unix" lines.
func expiryGauge(lines ...string) string {
	var b strings.Builder
	b.WriteString("# HELP holdfast_credential_expiry_timestamp_seconds When a credential's secret or certificate expires, in Unix seconds, by where the date comes from (entra, config, file, certificate, graph).\n")
	b.WriteString("# TYPE holdfast_credential_expiry_timestamp_seconds gauge\n")
	for _, l := range lines {
		var cred, src string
		var v int64
		fmt.Sscan(l, &cred, &src, &v)
		fmt.Fprintf(&b, "holdfast_credential_expiry_timestamp_seconds{credential=%q,source=%q} %d\n", cred, src, v)
	}
	return b.String()
}

// gaugeIs reports whether the relay's registry holds exactly want.
func gaugeIs(s *Server, want string) bool {
	return testutil.GatherAndCompare(s.reg, strings.NewReader(want), "holdfast_credential_expiry_timestamp_seconds") == nil
}

// TestExpiryGraphEndDate moves the secret's end date in Graph to 20 days
// ahead: within one check interval it shows as the gauge, exact to the
// second, as one warning log line and as one credential.expiring webhook,
// however many replicas run and checks pass.
func TestExpiryGraphEndDate(t *testing.T) {
	const interval = 2 * time.Second
	hook := newWebhookSink(t)
	newer := time.Now().Add(400 * 24 * time.Hour).UTC().Truncate(time.Second)
	e := newExchangeEnv(t, 2, func(o *Options) {
		o.Expiry.CheckInterval = Duration(interval)
		o.Breakers.WebhookURL = hook.srv.URL + "/hooks/secret-token"
	})
	if id := e.sim.AddSecret(simTenant, simClientID, sim.Secret{Value: "Xyz~next-secret", ExpiresAt: newer, DisplayName: "next"}); id == "" {
		t.Fatal("AddSecret")
	}
	// The check at start reads the year-long secret: no warning.
	waitFor(t, 2*interval, "the first Graph read", func() bool {
		ce := e.relays[0].Expiry().Expiries()[0]
		return ce.Source == SourceGraph && ce.Level == auth.LevelOK
	})

	end := time.Now().Add(20 * 24 * time.Hour).UTC().Truncate(time.Second)
	if !e.sim.SetSecretEnd(simTenant, simClientID, simSecret, end) {
		t.Fatal("SetSecretEnd")
	}
	moved := time.Now()
	want := expiryGauge(fmt.Sprintf("contoso graph %d", end.Unix()))
	waitFor(t, interval+time.Second, "the gauge at the new end date", func() bool {
		return gaugeIs(e.relays[0], want) && gaugeIs(e.relays[1], want)
	})
	took := time.Since(moved)
	if took > interval+time.Second {
		t.Fatalf("seen after %s, check interval %s", took, interval)
	}
	t.Logf("the new end date was in both replicas' gauges %s after it moved (check interval %s)", took.Round(time.Millisecond), interval)
	if b, err := e.relays[0].breakerReporter().Get(context.Background(), "cred:contoso"); err != nil || !b.CredentialExpires.Equal(end) {
		t.Fatalf("GET /v1/breakers/cred:contoso: credential_expires_at %s (%v), want %s", b.CredentialExpires, err, end)
	}
	waitFor(t, 5*time.Second, "the webhook", func() bool { return len(hook.events("credential.expiring")) > 0 })

	ev := hook.events("credential.expiring")[0]
	if ev["credential"] != "contoso" || ev["level"] != "warning" || ev["days_left"] != float64(20) || ev["source"] != "graph" ||
		ev["expires_at"] != end.Format(time.RFC3339) || ev["newest_expires_at"] != newer.Format(time.RFC3339) ||
		!strings.HasPrefix(ev["id"].(string), "credential.expiring:contoso:warning:") ||
		!strings.Contains(ev["message"].(string), "expires in 20 days") {
		t.Fatalf("event %v", ev)
	}
	ce := e.relays[1].Expiry().Expiries()[0]
	if ce.ExpiresAt != end || ce.Level != auth.LevelWarning || len(ce.Expiries) != 2 || !ce.Expiries[0].InUse ||
		ce.Expiries[0].Hint != simSecret[:3] || ce.Expiries[1].InUse || ce.Expiries[1].Hint != "Xyz" || !ce.Expiries[1].ExpiresAt.Equal(newer) {
		t.Fatalf("expiries %+v", ce)
	}

	// More checks on both replicas, and a reload: still once a day.
	e.relays[1].Expiry().Reloaded("contoso")
	time.Sleep(2*interval + 500*time.Millisecond)
	if n := len(hook.events("credential.expiring")); n != 1 {
		t.Fatalf("%d credential.expiring events, want 1 a day", n)
	}
	logs := e.logs.String()
	if n := strings.Count(logs, "credential contoso expires in 20 days"); n != 1 {
		t.Fatalf("%d warning lines, want 1:\n%s", n, logs)
	}
	if !strings.Contains(logs, "level=WARN msg=\"credential contoso expires in 20 days") || !strings.Contains(logs, "days_left=20") {
		t.Fatalf("no warning line:\n%s", logs)
	}
	if strings.Contains(logs, "secret-token") || strings.Contains(logs, simSecret) {
		t.Fatal("the logs show the webhook URL's token or the secret")
	}
}

// rsaCert writes a self-signed RSA certificate valid until notAfter, and
// its key, into dir; it returns the files and the certificate PEM.
func rsaCert(t *testing.T, dir string, notAfter time.Time) (certFile, keyFile string, certPEM []byte) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "holdfast-expiry-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeFile(t, certFile, string(certPEM))
	writeFile(t, keyFile, string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})))
	return certFile, keyFile, certPEM
}

// TestExpirySources: a config expires_at and a certificate's NotAfter show
// under their own source label; an app that may not read itself in Graph
// falls back to them, and says so once, at info, naming the permission.
func TestExpirySources(t *testing.T) {
	const certClientID = "22222222-3333-4444-8555-666666666666"
	notAfter := time.Now().Add(90 * 24 * time.Hour).UTC().Truncate(time.Second)
	certFile, keyFile, certPEM := rsaCert(t, t.TempDir(), notAfter)
	e := newExchangeEnvSim(t, 1, func(c *sim.Config) {
		c.Tenants[0].Apps[0].GraphRoles = []string{"Mail.Send"}
		c.Tenants[0].Apps = append(c.Tenants[0].Apps, sim.App{ClientID: certClientID, CertificatesPEM: [][]byte{certPEM}})
	}, func(o *Options) {
		o.Expiry.CheckInterval = Duration(time.Second)
		o.Credentials[0].ExpiresAt = "2027-02-14T11:30:00Z"
		o.Credentials = append(o.Credentials, Credential{Name: "certs", Tenant: simTenant, ClientID: certClientID,
			Authority: o.Credentials[0].Authority, CertFile: certFile, KeyFile: keyFile})
	})
	configured := time.Date(2027, 2, 14, 11, 30, 0, 0, time.UTC)
	want := expiryGauge(
		fmt.Sprintf("certs certificate %d", notAfter.Unix()),
		fmt.Sprintf("certs graph %d", notAfter.Unix()),
		fmt.Sprintf("contoso config %d", configured.Unix()),
	)
	waitFor(t, 5*time.Second, "both credentials checked", func() bool {
		for _, ce := range e.relays[0].Expiry().Expiries() {
			if ce.CheckedAt.IsZero() {
				return false
			}
		}
		return true
	})
	if err := testutil.GatherAndCompare(e.relays[0].reg, strings.NewReader(want), "holdfast_credential_expiry_timestamp_seconds"); err != nil {
		t.Fatal(err)
	}
	list := e.relays[0].Expiry().Expiries()
	if c := list[0]; c.Credential != "contoso" || c.Source != SourceConfig || c.Level != auth.LevelOK ||
		!strings.Contains(c.GraphError, "Authorization_RequestDenied") {
		t.Fatalf("contoso %+v", c)
	}
	if c := list[1]; c.Credential != "certs" || c.Source != SourceCertificate || !c.ExpiresAt.Equal(notAfter) || c.GraphError != "" ||
		len(c.Expiries) != 2 || c.Expiries[1].Source != SourceGraph || !c.Expiries[1].InUse || c.Expiries[1].Thumbprint != c.Expiries[0].Thumbprint {
		t.Fatalf("certs %+v", c)
	}

	// Checked again at every interval; the refusal is logged once.
	time.Sleep(2500 * time.Millisecond)
	logs := e.logs.String()
	if n := strings.Count(logs, "cannot read the credential's expiry from Microsoft Graph"); n != 1 {
		t.Fatalf("%d lines about Graph, want 1:\n%s", n, logs)
	}
	if !strings.Contains(logs, "level=INFO msg=\"cannot read the credential's expiry from Microsoft Graph") ||
		!strings.Contains(logs, "missing_permission=Application.Read.All") {
		t.Fatalf("the refusal is not logged at info with the permission:\n%s", logs)
	}
}

func TestExpiryLevels(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	for _, tc := range []struct {
		end   time.Time
		level string
		days  int
	}{
		{time.Time{}, auth.LevelUnknown, 0},
		{now.Add(31 * day), auth.LevelOK, 31},
		{now.Add(30 * day), auth.LevelWarning, 30},
		{now.Add(20*day - time.Minute), auth.LevelWarning, 20},
		{now.Add(7 * day), auth.LevelCritical, 7},
		{now.Add(2 * time.Hour), auth.LevelCritical, 1},
		{now, auth.LevelExpired, 0},
		{now.Add(-36 * time.Hour), auth.LevelExpired, -2},
		// Graph's date for a secret without an end, past a time.Duration.
		{time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC), auth.LevelOK, 2912109},
	} {
		ce := CredentialExpiry{ExpiresAt: tc.end}
		if got := auth.ExpiryLevel(tc.end, now); got != tc.level {
			t.Errorf("%s: level %s, want %s", tc.end, got, tc.level)
		}
		if !tc.end.IsZero() && ce.DaysLeft(now) != tc.days {
			t.Errorf("%s: %d days left, want %d", tc.end, ce.DaysLeft(now), tc.days)
		}
	}
}

func TestExpiryMetricLint(t *testing.T) {
	m := newExpiryMonitor(expiryConfig{credentials: []Credential{{Name: "contoso", ExpiresAt: "2027-02-14"}}})
	problems, err := testutil.CollectAndLint(m)
	if err != nil || len(problems) != 0 {
		t.Fatalf("lint: %v %v", err, problems)
	}
	if err := testutil.CollectAndCompare(m, strings.NewReader(expiryGauge(
		fmt.Sprintf("contoso config %d", time.Date(2027, 2, 14, 0, 0, 0, 0, time.UTC).Unix())))); err != nil {
		t.Fatal(err)
	}
}

// TestExpiryRereadOnReload rotates the secret file to a newer secret: the
// monitor reads Graph again at once, long before its interval, and finds
// the new secret in use.
func TestExpiryRereadOnReload(t *testing.T) {
	e := newExchangeEnv(t, 1, func(o *Options) { o.Expiry.CheckInterval = Duration(time.Hour) })
	mon := e.relays[0].Expiry()
	waitFor(t, 5*time.Second, "the check at start", func() bool { return !mon.Expiries()[0].CheckedAt.IsZero() })
	first := mon.Expiries()[0]

	newer := time.Now().Add(200 * 24 * time.Hour).UTC().Truncate(time.Second)
	e.sim.AddSecret(simTenant, simClientID, sim.Secret{Value: "Rot~rotated-secret", ExpiresAt: newer})
	writeFile(t, e.secretFile, "Rot~rotated-secret\n")
	waitFor(t, 5*time.Second, "a check after the reload", func() bool {
		ce := mon.Expiries()[0]
		return ce.CheckedAt.After(first.CheckedAt) && ce.ExpiresAt.Equal(newer)
	})
	ce := mon.Expiries()[0]
	if len(ce.Expiries) != 2 || ce.Expiries[0].Hint != "Rot" || !ce.Expiries[0].InUse || ce.Expiries[1].InUse {
		t.Fatalf("after the rotation %+v", ce.Expiries)
	}
	want := expiryGauge(fmt.Sprintf("contoso graph %d", newer.Unix()))
	if err := testutil.GatherAndCompare(e.relays[0].reg, strings.NewReader(want), "holdfast_credential_expiry_timestamp_seconds"); err != nil {
		t.Fatal(err)
	}
}

// TestExpiryReloadedWhileRunning: file changes reported while the
// monitor works through earlier ones (a Secret's files replaced one by
// one, each a reload) are each taken: the last one is checked, and
// nothing is written to a set the monitor has taken.
func TestExpiryReloadedWhileRunning(t *testing.T) {
	e := newExchangeEnv(t, 1, func(o *Options) { o.Expiry.CheckInterval = Duration(time.Hour) })
	mon := e.relays[0].Expiry()
	waitFor(t, 5*time.Second, "the check at start", func() bool { return !mon.Expiries()[0].CheckedAt.IsZero() })
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 50 {
				mon.Reloaded("contoso")
				time.Sleep(time.Millisecond)
			}
		})
	}
	wg.Wait()
	last := time.Now()
	mon.Reloaded("contoso")
	waitFor(t, 5*time.Second, "a check after the last reload", func() bool {
		return mon.Expiries()[0].CheckedAt.After(last)
	})
}

// TestExpiryNoTokenUnderOpenBreaker: while the credential's breaker is
// open the monitor requests no token, keeps the Graph dates it had, and
// reads Graph again soon after the breaker lets it.
func TestExpiryNoTokenUnderOpenBreaker(t *testing.T) {
	e := newExchangeEnv(t, 1, func(o *Options) { o.Expiry.CheckInterval = Duration(time.Second) })
	mon := e.relays[0].Expiry()
	waitFor(t, 5*time.Second, "the check at start", func() bool { return mon.Expiries()[0].Source == SourceGraph })
	if err := e.relays[0].gate.set.Trip(context.Background(), credentialBreaker("contoso"), "test"); err != nil {
		t.Fatal(err)
	}
	before := e.sim.Counters().Clients[simClientID]
	time.Sleep(2500 * time.Millisecond) // two check intervals
	if after := e.sim.Counters().Clients[simClientID]; after.TokenRequests != before.TokenRequests {
		t.Fatalf("%d token requests under the open breaker", after.TokenRequests-before.TokenRequests)
	}
	ce := mon.Expiries()[0]
	if ce.Source != SourceGraph || !strings.Contains(ce.GraphError, "breaker is open") {
		t.Fatalf("under the open breaker: %+v", ce)
	}

	// The same monitor logic with a short retry: allowed again, Graph is
	// read at the next retry, not the next interval.
	var mu sync.Mutex
	allowed := false
	live := e.relays[0].exchange.creds
	m := newExpiryMonitor(expiryConfig{credentials: e.opts.Credentials, live: live, graphURL: e.opts.Exchange.GraphURL,
		interval: time.Hour, retry: 100 * time.Millisecond,
		graphAllowed: func(context.Context, string) bool { mu.Lock(); defer mu.Unlock(); return allowed }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, 5*time.Second, "the first check", func() bool { return !m.Expiries()[0].CheckedAt.IsZero() })
	if ce := m.Expiries()[0]; ce.Source != "" || ce.GraphError == "" {
		t.Fatalf("not allowed: %+v", ce)
	}
	mu.Lock()
	allowed = true
	mu.Unlock()
	waitFor(t, 2*time.Second, "Graph read at a retry", func() bool { return m.Expiries()[0].Source == SourceGraph })
}

// memNotices is an in-memory noticeClaimer: one claim per key.
type memNotices struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (n *memNotices) Claim(_ context.Context, kind, name, level string, _ time.Duration) (bool, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	k := kind + "/" + name + "/" + level
	if n.seen[k] {
		return false, nil
	}
	n.seen[k] = true
	return true, nil
}

func (n *memNotices) Release(_ context.Context, kind, name, level string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.seen, kind+"/"+name+"/"+level)
	return nil
}

// memEvents records posted events.
type memEvents struct {
	mu  sync.Mutex
	got []ExpiringEvent
}

func (p *memEvents) Post(_ context.Context, _ string, v any) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.got = append(p.got, v.(ExpiringEvent))
	return nil
}

// TestExpiryNotifyLevels: critical within 7 days and expired past the
// date are logged at error; more than 30 days left notifies no one.
func TestExpiryNotifyLevels(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	logs := &syncBuffer{}
	events := &memEvents{}
	m := newExpiryMonitor(expiryConfig{
		credentials: []Credential{
			{Name: "soon", ExpiresAt: "2026-12-06T12:00:00Z"},
			{Name: "gone", ExpiresAt: "2026-11-30"},
			{Name: "fine", ExpiresAt: "2027-06-01"},
		},
		notices: &memNotices{seen: map[string]bool{}},
		events:  events,
		log:     slog.New(slog.NewTextHandler(logs, nil)),
		now:     func() time.Time { return now },
	})
	m.CheckAll(context.Background())
	m.CheckAll(context.Background())
	m.line.wait()
	if len(events.got) != 2 {
		t.Fatalf("events %+v", events.got)
	}
	byName := map[string]ExpiringEvent{}
	for _, ev := range events.got {
		byName[ev.Credential] = ev
	}
	if ev := byName["soon"]; ev.Level != auth.LevelCritical || ev.DaysLeft != 5 || ev.Source != SourceConfig || ev.ID != "credential.expiring:soon:critical:2026-12-01" {
		t.Fatalf("soon: %+v", ev)
	}
	if ev := byName["gone"]; ev.Level != auth.LevelExpired || ev.DaysLeft != -2 || !strings.Contains(ev.Message, "credential gone expired on 2026-11-30T00:00:00Z") {
		t.Fatalf("gone: %+v", ev)
	}
	out := logs.String()
	if strings.Count(out, "level=ERROR") != 2 || !strings.Contains(out, `msg="credential soon expires in 5 days`) || strings.Contains(out, "fine") {
		t.Fatalf("logs:\n%s", out)
	}
}

// TestSecretsOrderedByGraph: with two secret files and no configured
// dates, the secret Graph gives the later end date becomes the one tried
// first once the monitor has read Graph, its dates are marked in use,
// and mail is delivered with it.
func TestSecretsOrderedByGraph(t *testing.T) {
	const second = "Nxt~second-secret-value"
	later := time.Now().Add(400 * 24 * time.Hour).UTC().Truncate(time.Second)
	e := newExchangeEnvSim(t, 1, func(c *sim.Config) {
		c.Tenants[0].Apps[0].Secrets = append(c.Tenants[0].Apps[0].Secrets, sim.Secret{Value: second, ExpiresAt: later})
	}, withSecondSecretFile(t, second))
	cred := e.relays[0].exchange.creds["contoso"]
	waitFor(t, 5*time.Second, "the later secret preferred after the Graph read", func() bool {
		hint, _ := cred.InUse()
		return hint == "Nxt"
	})
	waitFor(t, 5*time.Second, "its Graph date marked in use", func() bool {
		for _, x := range e.relays[0].Expiry().Expiries()[0].Expiries {
			if x.Source == SourceGraph && x.InUse {
				return x.Hint == "Nxt" && x.ExpiresAt.Equal(later)
			}
		}
		return false
	})
	id := e.submit(t, 0, "billing@contoso.com", "r@example.org", exchangeMessage(1, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the delivery", func() bool { return e.get(t, id).State == queue.Delivered })
	if hint, _ := cred.InUse(); hint != "Nxt" {
		t.Fatalf("after the delivery the secret in use is %q, want Nxt", hint)
	}
}

// TestSecretsOrderedByGraphSharedHint: Graph also lists an expired secret
// that shares its 3-character hint with the later one. The later one is
// still preferred, and of the two only the valid one is marked in use:
// the credential is not reported expired.
func TestSecretsOrderedByGraphSharedHint(t *testing.T) {
	const second = "Nxt~second-secret-value"
	later := time.Now().Add(400 * 24 * time.Hour).UTC().Truncate(time.Second)
	gone := time.Now().Add(-24 * time.Hour).UTC().Truncate(time.Second)
	e := newExchangeEnvSim(t, 1, func(c *sim.Config) {
		c.Tenants[0].Apps[0].Secrets = append(c.Tenants[0].Apps[0].Secrets,
			sim.Secret{Value: second, ExpiresAt: later},
			sim.Secret{Value: "Nxt~an-older-secret-value", ExpiresAt: gone})
	}, withSecondSecretFile(t, second))
	cred := e.relays[0].exchange.creds["contoso"]
	waitFor(t, 5*time.Second, "the later secret preferred after the Graph read", func() bool {
		hint, _ := cred.InUse()
		return hint == "Nxt"
	})
	var ce CredentialExpiry
	waitFor(t, 5*time.Second, "its Graph date marked in use", func() bool {
		ce = e.relays[0].Expiry().Expiries()[0]
		for _, x := range ce.Expiries {
			if x.Source == SourceGraph && x.InUse && x.Hint == "Nxt" && x.ExpiresAt.Equal(later) {
				return true
			}
		}
		return false
	})
	for _, x := range ce.Expiries {
		if x.InUse && x.ExpiresAt.Equal(gone) {
			t.Errorf("the expired secret sharing the hint is marked in use: %+v", x)
		}
	}
	if ce.Level == auth.LevelExpired {
		t.Errorf("the credential is reported expired: %+v", ce)
	}
}

// withSecondSecretFile configures the credential with two secret files:
// the fixture's, then one holding second.
func withSecondSecretFile(t *testing.T, second string) func(*Options) {
	return func(o *Options) {
		first := o.Credentials[0].ClientSecretFile
		path := filepath.Join(filepath.Dir(first), "second.secret")
		writeFile(t, path, second+"\n")
		o.Credentials[0].ClientSecretFile = ""
		o.Credentials[0].ClientSecretFiles = []string{first, path}
	}
}

// TestExpiryEntraSaysExpired: when Entra answers that the secret in use
// expired (AADSTS7000222), the monitor says expired at once, with Entra
// as the source, whatever date it read earlier; the breaker being open,
// it cannot read Graph again. A rotated secret file clears it.
func TestExpiryEntraSaysExpired(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	mon := e.relays[0].Expiry()
	waitFor(t, 5*time.Second, "the check at start", func() bool { return mon.Expiries()[0].Source == SourceGraph })
	if ce := mon.Expiries()[0]; ce.Level != auth.LevelOK {
		t.Fatalf("at start: %+v", ce)
	}

	e.sim.ExpireSecret(simTenant, simClientID)
	e.relays[0].exchange.creds["contoso"].Invalidate()
	id := e.submit(t, 0, "billing@contoso.com", "a@example.org", exchangeMessage(1, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the message held", func() bool { return e.get(t, id).State == queue.Held })
	waitFor(t, 5*time.Second, "the monitor told by Entra", func() bool { return mon.Expiries()[0].Level == auth.LevelExpired })
	ce := mon.Expiries()[0]
	if ce.Source != SourceEntra || ce.ExpiresAt.After(time.Now()) || time.Since(ce.ExpiresAt) > 15*time.Second {
		t.Errorf("after AADSTS7000222: source %q, expires_at %v; want %q and about now", ce.Source, ce.ExpiresAt, SourceEntra)
	}
	if v := e.metricSum(t, 0, "holdfast_credential_expiry_timestamp_seconds", map[string]string{"credential": "contoso", "source": SourceEntra}); v <= 0 || v > float64(time.Now().Unix()) {
		t.Errorf("holdfast_credential_expiry_timestamp_seconds{source=entra} = %v; want about now", v)
	}
	// Graph's earlier date of this same secret is not "a newer secret".
	waitFor(t, 5*time.Second, "the expired notice", func() bool { return strings.Contains(e.logs.String(), "credential contoso expired") })
	if strings.Contains(e.logs.String(), "newer secret") {
		t.Errorf("the notice sends the operator to deploy the secret that just expired:\n%s", e.logs.String())
	}

	const rotated = "second-secret-value~9876543210"
	e.sim.RotateSecret(simTenant, simClientID, rotated)
	writeFile(t, e.secretFile, rotated+"\n")
	waitFor(t, 15*time.Second, "the rotated secret delivering", func() bool { return e.get(t, id).State == queue.Delivered })
	waitFor(t, 10*time.Second, "the monitor past the rotation", func() bool {
		ce := mon.Expiries()[0]
		return ce.Level == auth.LevelOK && ce.Source == SourceGraph
	})
}

// TestExpiryFallbackSecretNotExpired: with two secret files, Entra says
// the one in use expired and the other works: mail keeps flowing on the
// other, and the credential is never reported expired (no log at error,
// no credential.expiring notice), which would also use up the fleet's
// one expired notice of the day.
func TestExpiryFallbackSecretNotExpired(t *testing.T) {
	const second = "Snd~second-secret-value"
	var mu sync.Mutex
	var notices []ExpiringEvent
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev ExpiringEvent
		if json.NewDecoder(r.Body).Decode(&ev) == nil && ev.Type == "credential.expiring" {
			mu.Lock()
			notices = append(notices, ev)
			mu.Unlock()
		}
	}))
	defer hook.Close()
	e := newExchangeEnvSim(t, 1, func(c *sim.Config) {
		// The first secret ends later: it stays the one tried first.
		c.Tenants[0].Apps[0].Secrets = append(c.Tenants[0].Apps[0].Secrets,
			sim.Secret{Value: second, ExpiresAt: time.Now().Add(200 * 24 * time.Hour)})
	}, func(o *Options) {
		withSecondSecretFile(t, second)(o)
		o.Breakers.WebhookURL = hook.URL
	})
	mon := e.relays[0].Expiry()
	cred := e.relays[0].exchange.creds["contoso"]
	waitFor(t, 5*time.Second, "the check at start", func() bool { return mon.Expiries()[0].Source == SourceGraph })
	if hint, _ := cred.InUse(); hint != simSecret[:3] {
		t.Fatalf("secret in use %q at start, want the first", hint)
	}

	if !e.sim.SetSecretEnd(simTenant, simClientID, simSecret, time.Now().Add(-time.Second)) {
		t.Fatal("cannot end the first secret")
	}
	cred.Invalidate()
	id := e.submit(t, 0, "billing@contoso.com", "a@example.org", exchangeMessage(1, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "delivery with the second secret", func() bool { return e.get(t, id).State == queue.Delivered })
	if hint, _ := cred.InUse(); hint != second[:3] {
		t.Errorf("secret in use %q after the fallback, want the second", hint)
	}
	time.Sleep(time.Second) // room for a wrong notice to show
	if ce := mon.Expiries()[0]; ce.Level == auth.LevelExpired {
		t.Errorf("the credential is reported expired while its second secret works: %+v", ce)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, ev := range notices {
		if ev.Level == auth.LevelExpired {
			t.Errorf("an expired notice went out while the second secret works: %+v", ev)
		}
	}
	if strings.Contains(e.logs.String(), "expiry_level=expired") {
		t.Error("the relay logged the credential as expired")
	}
}

// TestExpiryEntraFleetWide: the fleet's breaker opens because one relay
// was told the secret expired (AADSTS7000222); every relay whose file
// holds that secret (the fingerprint the breaker knows as working) says
// expired too, without a token request of its own: its cached token may
// keep it from asking Entra for an hour.
func TestExpiryEntraFleetWide(t *testing.T) {
	e := newExchangeEnv(t, 3, nil)
	for i, r := range e.relays {
		waitFor(t, 5*time.Second, fmt.Sprintf("relay %d's check at start", i), func() bool { return r.Expiry().Expiries()[0].Source == SourceGraph })
	}
	// A delivery: the breaker knows the working secret's fingerprint.
	id := e.submit(t, 0, "billing@contoso.com", "warm@example.org", exchangeMessage(1, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "a delivery", func() bool { return e.get(t, id).State == queue.Delivered })

	// Relay 0's refused token request, as the delivery path records it.
	before := e.sim.Counters().Clients[simClientID].TokenRequests
	refused := o365.ClassifyToken(o365.TokenFailure{HTTPStatus: 401, Code: "invalid_client", AADSTS: "AADSTS7000222",
		Text: "The provided client secret keys for app '…' are expired."}, o365.AppOnly)
	e.relays[0].gate.failed(context.Background(), "app:contoso:billing@contoso.com", refused)
	for i, r := range e.relays {
		waitFor(t, 5*time.Second, fmt.Sprintf("relay %d saying expired", i), func() bool {
			ce := r.Expiry().Expiries()[0]
			return ce.Level == auth.LevelExpired && ce.Source == SourceEntra
		})
	}
	if n := e.sim.Counters().Clients[simClientID].TokenRequests - before; n != 0 {
		t.Errorf("%d token requests to learn the expiry fleet-wide, want none", n)
	}

	// A relay whose file holds another secret (rotated already) does not
	// take the fleet's refusal for its own.
	writeFile(t, e.secretFile, "a-rotated-secret-value\n")
	for _, r := range e.relays {
		if _, err := r.exchange.creds["contoso"].Reload(); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2 * time.Second) // a few reconciliations
	for i, r := range e.relays {
		for _, x := range r.Expiry().Expiries()[0].Expiries {
			if x.Source == SourceEntra && x.InUse {
				t.Errorf("relay %d: its rotated secret is marked expired: %+v", i, x)
			}
		}
	}
}

// slowPoster records what it is given, and answers credential a's
// created step only once another event has been recorded, or 300 ms
// have passed.
type slowPoster struct {
	mu    sync.Mutex
	got   []string
	later chan struct{} // closed when another event is recorded
}

func (p *slowPoster) Post(_ context.Context, _ string, v any) error {
	ev := v.(RotationEvent)
	name := ev.Credential + ":" + ev.Step
	slow := name == "a:"+RotationCreated
	if slow {
		select {
		case <-p.later:
		case <-time.After(300 * time.Millisecond):
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.got = append(p.got, name)
	if !slow && len(p.got) == 1 {
		close(p.later)
	}
	return nil
}

// TestEventsInOrder: a receiver that answers an event late still gets a
// credential's events in the order they were made; another credential's
// do not wait for them.
func TestEventsInOrder(t *testing.T) {
	p := &slowPoster{later: make(chan struct{})}
	var line eventLine
	log := slog.New(slog.DiscardHandler)
	for _, ev := range []RotationEvent{{Credential: "a", Step: RotationCreated}, {Credential: "a", Step: RotationPropagated},
		{Credential: "a", Step: RotationSwitched}} {
		line.post(context.Background(), p, log, EventCredentialRotation, ev.Credential, ev, nil)
	}
	line.wait()
	want := []string{"a:" + RotationCreated, "a:" + RotationPropagated, "a:" + RotationSwitched}
	if !slices.Equal(p.got, want) {
		t.Errorf("posted %v, want %v", p.got, want)
	}

	p = &slowPoster{later: make(chan struct{})}
	line.post(context.Background(), p, log, EventCredentialRotation, "a", RotationEvent{Credential: "a", Step: RotationCreated}, nil)
	line.post(context.Background(), p, log, EventCredentialRotation, "b", RotationEvent{Credential: "b", Step: RotationCreated}, nil)
	line.wait()
	if want := []string{"b:" + RotationCreated, "a:" + RotationCreated}; !slices.Equal(p.got, want) {
		t.Errorf("posted %v, want %v: b's event waited for a's", p.got, want)
	}
}

// flakyEvents fails the first fail posts, then records the events.
type flakyEvents struct {
	memEvents
	fail int
}

func (p *flakyEvents) Post(ctx context.Context, event string, v any) error {
	p.mu.Lock()
	if p.fail > 0 {
		p.fail--
		p.mu.Unlock()
		return errors.New("webhook: 503 Service Unavailable")
	}
	p.mu.Unlock()
	return p.memEvents.Post(ctx, event, v)
}

// TestExpiryNoticeAfterFailedPost: a day's expiry notice that could not
// be posted (the receiver down through the tries) is posted at the next
// check, by another replica, the same day; not the next day.
func TestExpiryNoticeAfterFailedPost(t *testing.T) {
	srv := redistest.Start(t)
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	events := &flakyEvents{fail: 1}
	replica := func() *ExpiryMonitor {
		return newExpiryMonitor(expiryConfig{
			credentials: []Credential{{Name: "contoso", ExpiresAt: "2026-12-20"}},
			notices:     breaker.NewNotices(srv.Client(t)),
			events:      events,
			log:         discardLogger(),
			now:         func() time.Time { return now },
		})
	}
	a, b := replica(), replica()
	a.CheckAll(t.Context())
	a.line.wait()
	if events.fail != 0 || len(events.got) != 0 {
		t.Fatalf("first post: %d failures left, %d posted; want it failed", events.fail, len(events.got))
	}
	now = now.Add(4 * time.Hour)
	b.CheckAll(t.Context())
	b.line.wait()
	a.CheckAll(t.Context())
	a.line.wait()
	if len(events.got) != 1 || events.got[0].ID != "credential.expiring:contoso:warning:2026-12-01" {
		t.Fatalf("posted %+v after the failed post and two checks; want the day's notice once", events.got)
	}
}

// TestBreakerStatusShowsFleetExpiry: the command line (holdfast breaker
// status), which cannot ask Graph, shows the end date the relays' expiry
// monitors read there.
func TestBreakerStatusShowsFleetExpiry(t *testing.T) {
	const interval = 2 * time.Second
	e := newExchangeEnv(t, 2, func(o *Options) { o.Expiry.CheckInterval = Duration(interval) })
	cli := func() time.Time {
		t.Helper()
		rdb := e.f.redis.Client(t)
		r := NewBreakerReporter(breaker.New(rdb, breaker.Options{}), queue.New(rdb, e.opts.Queue.Options()), e.opts)
		b, err := r.Get(context.Background(), "cred:contoso")
		if err != nil {
			t.Fatal(err)
		}
		return b.CredentialExpires
	}
	for _, days := range []int{200, 20} {
		end := time.Now().Add(time.Duration(days) * 24 * time.Hour).UTC().Truncate(time.Second)
		if !e.sim.SetSecretEnd(simTenant, simClientID, simSecret, end) {
			t.Fatal("SetSecretEnd")
		}
		waitFor(t, 2*interval+time.Second, fmt.Sprintf("the end date in %d days on the command line", days),
			func() bool { return cli().Equal(end) })
	}
}

// TestExpiryMessageUnderADay: a credential that expires in hours is said
// to expire within a day, not "in 1 days".
func TestExpiryMessageUnderADay(t *testing.T) {
	at := time.Date(2026, 12, 7, 16, 0, 0, 0, time.UTC)
	for days, want := range map[int]string{1: "credential c expires within a day, on 2026-12-07T16:00:00Z", 2: "credential c expires in 2 days, on 2026-12-07T16:00:00Z"} {
		msg := expiryMessage(ExpiringEvent{Credential: "c", Level: auth.LevelCritical, DaysLeft: days, ExpiresAt: at, Source: "expires_at"})
		if !strings.HasPrefix(msg, want) {
			t.Errorf("%d days left: %q, want it to start %q", days, msg, want)
		}
	}
}

// TestExpiryRecordRetried: a result the fleet's record refused (Redis
// out of reach at the check) is recorded at a retry once Redis takes it,
// the latest result, with one warning and one line when it is recorded;
// before, "holdfast breaker status" showed the result before it until
// the next check, 12 hours later.
func TestExpiryRecordRetried(t *testing.T) {
	logs := &syncBuffer{}
	var (
		mu       sync.Mutex
		down     = true
		recorded []CredentialExpiry
		tries    int
	)
	m := newExpiryMonitor(expiryConfig{
		credentials: []Credential{{Name: "contoso", ExpiresAt: "2027-06-01"}},
		interval:    time.Hour,
		retry:       20 * time.Millisecond,
		record: func(_ context.Context, ce CredentialExpiry) error {
			mu.Lock()
			defer mu.Unlock()
			tries++
			if down {
				return errors.New("dial tcp 127.0.0.1:6379: i/o timeout")
			}
			recorded = append(recorded, ce)
			return nil
		},
		log: slog.New(slog.NewTextHandler(logs, nil)),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, 5*time.Second, "three tries while Redis is away", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return tries >= 3
	})
	mu.Lock()
	down = false
	mu.Unlock()
	waitFor(t, 5*time.Second, "the result recorded once Redis takes it", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(recorded) == 1
	})
	time.Sleep(100 * time.Millisecond) // five more retries
	mu.Lock()
	defer mu.Unlock()
	if len(recorded) != 1 || !recorded[0].ExpiresAt.Equal(time.Date(2027, 6, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("recorded %+v, want the check's result once", recorded)
	}
	out := logs.String()
	if strings.Count(out, "cannot record the credential's expiry") != 1 || strings.Count(out, "expiry recorded") != 1 {
		t.Errorf("want one warning and one line when recorded:\n%s", out)
	}
}

// TestExpiryUnknownExported: a credential whose expiry no source knows
// (no expires_at, and Graph refuses the app its own registration) is
// exported as unknown, holdfast_credential_expiry_known 0, for
// HoldfastCredentialExpiryUnknown: before, it had no series at all, and
// the expiry alerts could not come for the very case of the February 2025
// outage. A date set in the configuration makes it known.
func TestExpiryUnknownExported(t *testing.T) {
	known := func(e *exchangeEnv) (float64, bool) {
		return series(scrape(t, e.relays[0]), "holdfast_credential_expiry_known", map[string]string{"credential": "contoso"})
	}
	e := newExchangeEnvSim(t, 1, func(c *sim.Config) {
		c.Tenants[0].Apps[0].GraphRoles = []string{"Mail.Send"} // may not read itself
	}, nil)
	waitFor(t, 5*time.Second, "the credential checked", func() bool { return !e.relays[0].Expiry().Expiries()[0].CheckedAt.IsZero() })
	if v, ok := known(e); !ok || v != 0 {
		t.Errorf("holdfast_credential_expiry_known{credential=\"contoso\"} = %v (exported: %v), want 0", v, ok)
	}

	e = newExchangeEnvSim(t, 1, func(c *sim.Config) {
		c.Tenants[0].Apps[0].GraphRoles = []string{"Mail.Send"}
	}, func(o *Options) { o.Credentials[0].ExpiresAt = "2027-02-14T11:30:00Z" })
	waitFor(t, 5*time.Second, "the credential checked", func() bool { return !e.relays[0].Expiry().Expiries()[0].CheckedAt.IsZero() })
	if v, ok := known(e); !ok || v != 1 {
		t.Errorf("with expires_at: holdfast_credential_expiry_known{credential=\"contoso\"} = %v (exported: %v), want 1", v, ok)
	}
}
