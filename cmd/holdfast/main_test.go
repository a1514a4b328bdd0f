package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

// result is what one in-process run of the command printed.
type result struct {
	code           int
	stdout, stderr string
}

// runWith runs holdfast with args, stdin and the environment variables
// in vars, in-process.
func runWith(t *testing.T, stdin string, vars map[string]string, now time.Time, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	e := &env{
		stdin:  strings.NewReader(stdin),
		stdout: &stdout,
		stderr: &stderr,
		getenv: func(k string) string { return vars[k] },
		now:    func() time.Time { return now },
	}
	if now.IsZero() {
		e.now = time.Now
	}
	code := run(t.Context(), args, e)
	return result{code, stdout.String(), stderr.String()}
}

func runCmd(t *testing.T, args ...string) result {
	t.Helper()
	return runWith(t, "", nil, time.Time{}, args...)
}

// mustRun runs args and fails the test unless they succeed.
func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	r := runCmd(t, args...)
	if r.code != exitOK {
		t.Fatalf("holdfast %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

func TestCredsHash(t *testing.T) {
	const password = "correct horse battery staple"
	r := runWith(t, password+"\r\n", nil, time.Time{}, "creds", "hash")
	if r.code != exitOK {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	hash := strings.TrimSuffix(r.stdout, "\n")
	if strings.Contains(hash, "\n") {
		t.Fatalf("stdout has more than the hash: %q", r.stdout)
	}
	if err := bcrypt.CompareHashAndPassword([]byte(hash), []byte(password)); err != nil {
		t.Fatalf("printed hash %q does not verify the password: %v", hash, err)
	}
	if cost, err := bcrypt.Cost([]byte(hash)); err != nil || cost != bcrypt.DefaultCost {
		t.Errorf("cost = %d, %v; want %d", cost, err, bcrypt.DefaultCost)
	}
	if r.stderr != "" {
		t.Errorf("prompted on stderr although stdin is not a terminal: %q", r.stderr)
	}
}

func TestCredsHashWithoutNewline(t *testing.T) {
	r := runWith(t, "pw", nil, time.Time{}, "creds", "hash")
	if r.code != exitOK {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if err := bcrypt.CompareHashAndPassword([]byte(strings.TrimSpace(r.stdout)), []byte("pw")); err != nil {
		t.Fatal(err)
	}
}

func TestCredsHashRefusesEmpty(t *testing.T) {
	for _, stdin := range []string{"", "\n", "\r\n"} {
		r := runWith(t, stdin, nil, time.Time{}, "creds", "hash")
		if r.code != exitError || r.stdout != "" {
			t.Errorf("stdin %q: exit %d, stdout %q; want exit 1 and no output", stdin, r.code, r.stdout)
		}
		if want := "holdfast: creds hash: refusing an empty password\n"; r.stderr != want {
			t.Errorf("stdin %q: stderr %q, want %q", stdin, r.stderr, want)
		}
	}
}

func TestCredsToken(t *testing.T) {
	seen := map[string]bool{}
	for range 2 {
		out := mustRun(t, "creds", "token")
		var token, sum string
		if _, err := fmt.Sscanf(out, "token: %s\ntoken_sha256: %s\n", &token, &sum); err != nil {
			t.Fatalf("output %q: %v", out, err)
		}
		raw, err := base64.RawURLEncoding.DecodeString(token)
		if err != nil || len(raw) != 32 {
			t.Fatalf("token %q: %d bytes, %v; want 32 bytes of base64url", token, len(raw), err)
		}
		want := sha256.Sum256([]byte(token))
		if sum != hex.EncodeToString(want[:]) {
			t.Fatalf("token_sha256 %s is not the SHA-256 of token %s", sum, token)
		}
		if seen[token] {
			t.Fatalf("token %s printed twice", token)
		}
		seen[token] = true
	}
}

func TestCredsDevcert(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dev")
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	r := runWith(t, "", nil, now, "creds", "devcert", "--out", dir, "--host", "localhost, relay.test,127.0.0.1,::1")
	if r.code != exitOK {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	cert := readCert(t, certPath)
	for _, h := range []string{"localhost", "relay.test", "127.0.0.1", "::1"} {
		if err := cert.VerifyHostname(h); err != nil {
			t.Errorf("certificate is not valid for %s: %v", h, err)
		}
	}
	if err := cert.VerifyHostname("other.test"); err == nil {
		t.Error("certificate is valid for other.test, a host not asked for")
	}
	if got, want := cert.NotAfter, now.Add(365*24*time.Hour); !got.Equal(want) {
		t.Errorf("NotAfter = %v, want %v", got, want)
	}
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: "relay.test", Roots: roots, CurrentTime: now}); err != nil {
		t.Errorf("certificate does not verify against itself: %v", err)
	}
	if _, err := tls.LoadX509KeyPair(certPath, keyPath); err != nil {
		t.Fatalf("cert and key do not load as a pair: %v", err)
	}
	fi, err := os.Stat(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("key.pem mode %v, want 0600", mode)
	}

	// A second run keeps a certificate that is still good.
	before, _ := os.ReadFile(certPath)
	r = runWith(t, "", nil, now.Add(300*24*time.Hour), "creds", "devcert", "--out", dir)
	if r.code != exitOK || !strings.Contains(r.stdout, "kept") {
		t.Fatalf("second run: exit %d, stdout %q, stderr %q; want it kept", r.code, r.stdout, r.stderr)
	}
	if after, _ := os.ReadFile(certPath); !bytes.Equal(before, after) {
		t.Fatal("second run replaced a certificate that is valid for another 65 days")
	}

	// Within 7 days of expiry it is replaced.
	later := now.Add(360 * 24 * time.Hour)
	r = runWith(t, "", nil, later, "creds", "devcert", "--out", dir)
	if r.code != exitOK || strings.Contains(r.stdout, "kept") {
		t.Fatalf("run near expiry: exit %d, stdout %q, stderr %q; want a new certificate", r.code, r.stdout, r.stderr)
	}
	if got := readCert(t, certPath).NotAfter; !got.Equal(later.Add(365 * 24 * time.Hour)) {
		t.Fatalf("renewed NotAfter = %v", got)
	}

	// A missing key means a new pair, even if the certificate is good.
	if err := os.Remove(keyPath); err != nil {
		t.Fatal(err)
	}
	if r := runWith(t, "", nil, later, "creds", "devcert", "--out", dir); r.code != exitOK || strings.Contains(r.stdout, "kept") {
		t.Fatalf("run without key: exit %d, stdout %q; want a new pair", r.code, r.stdout)
	}
	if _, err := tls.LoadX509KeyPair(certPath, keyPath); err != nil {
		t.Fatalf("new pair does not load: %v", err)
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("%s holds no PEM certificate", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	return cert
}

func TestVersion(t *testing.T) {
	if got := mustRun(t, "version"); got != "holdfast "+version+"\n" {
		t.Fatalf("version printed %q", got)
	}
}

func TestUsage(t *testing.T) {
	tests := []struct {
		args   []string
		code   int
		stderr string // a part of stderr
	}{
		{nil, exitUsage, "usage:"},
		{[]string{"frobnicate"}, exitUsage, `holdfast: unknown command "frobnicate"` + "\n"},
		{[]string{"--config", "h.yaml", "queue", "stats", "--json"}, exitUsage,
			"holdfast: flags go after the command: holdfast queue stats --config h.yaml --json\n"},
		{[]string{"--config", "h.yaml", "frobnicate"}, exitUsage, `holdfast: unknown command "--config"`},
		{[]string{"--config", "my holdfast's.yaml", "breaker", "status"}, exitUsage,
			`holdfast: flags go after the command: holdfast breaker status --config 'my holdfast'\''s.yaml'` + "\n"},
		{[]string{"queue"}, exitUsage, "usage: holdfast queue COMMAND"},
		{[]string{"queue", "frobnicate"}, exitUsage, `holdfast: queue: unknown command "frobnicate"` + "\n"},
		{[]string{"queue", "stat"}, exitUsage, `holdfast: queue: unknown command "stat"; did you mean stats?` + "\n"},
		{[]string{"queu", "stats"}, exitUsage, `holdfast: unknown command "queu"; did you mean queue?` + "\n"},
		{[]string{"breaker", "stauts"}, exitUsage, `holdfast: breaker: unknown command "stauts"; did you mean status?` + "\n"},
		{[]string{"queue", "show"}, exitUsage, "holdfast: queue show: give exactly one message id"},
		{[]string{"queue", "show", "a", "b"}, exitUsage, "give exactly one message id"},
		{[]string{"queue", "list", "--state", "queued"}, exitUsage, "holdfast: queue list: --route is required"},
		{[]string{"queue", "list", "--route", "crm"}, exitUsage, "--state is required"},
		{[]string{"queue", "list", "--route", "crm", "--state", "delivered"}, exitUsage, `--state "delivered"`},
		{[]string{"queue", "list", "--route", "crm", "--state", "dead", "--limit", "0"}, exitUsage, "--limit"},
		{[]string{"queue", "stats", "--bogus"}, exitUsage, "flag provided but not defined: -bogus"},
		{[]string{"queue", "stats", "extra"}, exitUsage, `unexpected argument "extra"`},
		{[]string{"queue", "requeue"}, exitUsage, "give at least one message id"},
		{[]string{"queue", "delete"}, exitUsage, "give at least one message id"},
		{[]string{"queue", "flush", "crm"}, exitUsage, `unexpected argument "crm"`},
		{[]string{"queue", "flush", "--end-waits", "--route", "crm"}, exitUsage,
			`holdfast: queue flush: --end-waits: route "crm" sends as no Exchange mailbox`},
		{[]string{"queue", "flush", "--end-waits=soon"}, exitUsage, `invalid boolean value "soon" for -end-waits`},
		{[]string{"queue", "flush", "--yes"}, exitUsage, `holdfast: queue flush: --yes goes with --end-waits`},
		{[]string{"creds", "devcert"}, exitUsage, "--out is required"},
		{[]string{"creds", "devcert", "--out", "x", "--host", " , "}, exitUsage, "--host"},
		{[]string{"creds", "token", "extra"}, exitUsage, "unexpected argument"},
		{[]string{"version", "extra"}, exitUsage, "unexpected argument"},
		{[]string{"serve", "--config"}, exitUsage, "flag needs an argument"},
		{[]string{"help"}, exitOK, ""},
		{[]string{"queue", "help"}, exitOK, ""},
		{[]string{"queue", "stats", "-h"}, exitOK, "usage: holdfast queue stats [--config FILE] [--json]\n"},
		{[]string{"breaker", "trip", "-h"}, exitOK, "usage: holdfast breaker trip [--config FILE] NAME...\n"},
		{[]string{"serve", "-h"}, exitOK, "usage: holdfast serve [--config FILE] [--check-config]\n"},
		{[]string{"creds", "hash", "-h"}, exitOK, "usage: holdfast creds hash\n"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			r := runCmd(t, tt.args...)
			if r.code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", r.code, tt.code, r.stdout, r.stderr)
			}
			if !strings.Contains(r.stderr, tt.stderr) {
				t.Fatalf("stderr %q does not contain %q", r.stderr, tt.stderr)
			}
			if tt.code == exitUsage && r.stdout != "" {
				t.Fatalf("usage error printed on stdout: %q", r.stdout)
			}
		})
	}
}

func TestHelpListsEveryCommand(t *testing.T) {
	out := mustRun(t, "help")
	for _, c := range commands {
		if !strings.Contains(out, "  "+c.path+"   ") {
			t.Errorf("help does not list %q:\n%s", c.path, out)
		}
	}
}

func TestParseArgsInterspersed(t *testing.T) {
	r := runCmd(t, "queue", "show", "--json", "--config", "/nonexistent/holdfast.yaml", "someid")
	// The flags were parsed: the failure is about the config, not usage.
	if r.code != exitError || !strings.Contains(r.stderr, "/nonexistent/holdfast.yaml") {
		t.Fatalf("exit %d, stderr %q; want exit 1 naming the config file", r.code, r.stderr)
	}
	r = runCmd(t, "queue", "show", "someid", "--config", "/nonexistent/holdfast.yaml")
	if r.code != exitError || !strings.Contains(r.stderr, "/nonexistent/holdfast.yaml") {
		t.Fatalf("flags after the id: exit %d, stderr %q; want exit 1 naming the config file", r.code, r.stderr)
	}
}

func TestConfigFromEnvironment(t *testing.T) {
	r := runWith(t, "", map[string]string{"HOLDFAST_CONFIG": "/nonexistent/from-env.yaml"}, time.Time{}, "queue", "stats")
	if r.code != exitError {
		t.Fatalf("exit %d, want 1", r.code)
	}
	if want := "holdfast: queue stats: read config: open /nonexistent/from-env.yaml"; !strings.HasPrefix(r.stderr, want) {
		t.Fatalf("stderr %q, want it to start %q", r.stderr, want)
	}
	r = runCmd(t, "serve", "--config", "/nonexistent/serve.yaml")
	if r.code != exitError || !strings.HasPrefix(r.stderr, "holdfast: serve: read config: open /nonexistent/serve.yaml") {
		t.Fatalf("serve: exit %d, stderr %q", r.code, r.stderr)
	}
}

// writeConfig writes a configuration whose Redis is at addr.
func writeConfig(t *testing.T, addr string) string {
	t.Helper()
	sum := sha256.Sum256([]byte("test-token"))
	cfg := fmt.Sprintf(`redis:
  addrs: [%q]
smtp:
  listeners:
    - addr: 127.0.0.1:0
      insecure: true
ops:
  addr: 127.0.0.1:0
apps:
  - name: crm
    token_sha256: %s
    senders: ["@contoso.com"]
`, addr, hex.EncodeToString(sum[:]))
	path := filepath.Join(t.TempDir(), "holdfast.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// writeConfigCredentials is writeConfig with the exchange sender and the
// named credentials configured, the app sending with the first (their
// secret files are not read).
func writeConfigCredentials(t *testing.T, addr string, names ...string) string {
	t.Helper()
	path := writeConfig(t, addr)
	var b strings.Builder
	fmt.Fprintf(&b, "    credential: %s\n    mailbox: crm@contoso.com\ndelivery:\n  sender: exchange\n", names[0])
	b.WriteString("credentials:\n")
	for _, n := range names {
		fmt.Fprintf(&b, "  - name: %s\n    tenant: %s.example.com\n    client_id: 0d0e0f00-1111-4222-8333-444455556666\n    client_secret_file: /nonexistent/%s.secret\n", n, n, n)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(b.String()); err != nil {
		t.Fatal(err)
	}
	return path
}

// statsLine returns the fields of the stats table's line for route.
func statsLine(t *testing.T, out, route string) []string {
	t.Helper()
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) > 0 && f[0] == route {
			return f
		}
	}
	t.Fatalf("no line for %s in:\n%s", route, out)
	return nil
}

func TestQueueCommands(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfig(t, srv.Addr())
	q := queue.New(srv.Client(t), queue.Options{})
	ctx := t.Context()
	enqueue := func(s queue.Submission) string {
		t.Helper()
		id, _, err := q.Enqueue(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	id1 := enqueue(queue.Submission{Route: "crm", App: "crm", From: "billing@contoso.com",
		To: []string{"ann@example.org"}, Body: []byte("Subject: one\r\n\r\nfirst\r\n")})
	id2 := enqueue(queue.Submission{Route: "crm", App: "crm", From: "billing@contoso.com",
		To: []string{"bob@example.org", "cy@example.org"}, Body: []byte("Subject: two\r\n\r\nsecond\r\n"),
		IdempotencyKey: "order-42"})

	// stats: a table with the route and the total.
	out := mustRun(t, "queue", "stats", "--config", cfg)
	if got := statsLine(t, out, "ROUTE"); !slices.Equal(got, []string{"ROUTE", "READY", "SCHEDULED", "SENDING", "HELD", "DEAD", "OLDEST"}) {
		t.Fatalf("stats header %q", got)
	}
	for _, route := range []string{"crm", "total"} {
		if got := statsLine(t, out, route)[1:6]; !slices.Equal(got, []string{"2", "0", "0", "0", "0"}) {
			t.Fatalf("stats %s counts %q, want 2 ready:\n%s", route, got, out)
		}
	}

	var stats struct {
		Routes []statsJSON `json:"routes"`
		Total  statsJSON   `json:"total"`
	}
	decode(t, mustRun(t, "queue", "stats", "--json", "--config", cfg), &stats)
	if len(stats.Routes) != 1 || stats.Routes[0].Route != "crm" || stats.Routes[0].Ready != 2 || stats.Total.Ready != 2 {
		t.Fatalf("stats --json = %+v", stats)
	}
	if stats.Total.Oldest == nil || time.Since(*stats.Total.Oldest) > time.Minute {
		t.Fatalf("stats --json oldest = %v, want about now", stats.Total.Oldest)
	}

	// list: both, in due order; the ready alias works.
	out = mustRun(t, "queue", "list", "--config", cfg, "--route", "crm", "--state", "ready")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID ") {
		t.Fatalf("list printed:\n%s\nwant a header and two messages", out)
	}
	byID := map[string]string{}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		byID[f[0]] = strings.Join(f[2:], " ") // without the age
	}
	if byID[id1] != "23 0 billing@contoso.com ann@example.org -" || byID[id2] != "24 0 billing@contoso.com bob@example.org +1 -" {
		t.Fatalf("list printed:\n%s\nwant %s to ann@ and %s to bob@ and one more", out, id1, id2)
	}
	// Due order: the two pages of one message each are the two messages.
	var page1, page2 []messageJSON
	decode(t, mustRun(t, "queue", "list", "--config", cfg, "--route", "crm", "--state", "queued", "--limit", "1", "--json"), &page1)
	decode(t, mustRun(t, "queue", "list", "--config", cfg, "--route", "crm", "--state", "queued", "--offset", "1", "--json"), &page2)
	if len(page1) != 1 || len(page2) != 1 || page1[0].State != "queued" ||
		!slices.Equal(sortedIDs(page1[0].ID, page2[0].ID), sortedIDs(id1, id2)) {
		t.Fatalf("list --limit 1 = %+v, --offset 1 = %+v; want one message each, together %s and %s", page1, page2, id1, id2)
	}
	out = mustRun(t, "queue", "list", "--config", cfg, "--route", "crm", "--state", "dead")
	if out != "no dead messages in route crm\n" {
		t.Fatalf("list of no dead messages printed %q", out)
	}

	// show
	out = mustRun(t, "queue", "show", id2, "--config", cfg)
	for _, want := range []string{"id:", id2, "state:", "queued", "from:", "billing@contoso.com",
		"bob@example.org, cy@example.org", "idempotency key:", "order-42"} {
		if !strings.Contains(out, want) {
			t.Errorf("show does not contain %q:\n%s", want, out)
		}
	}
	var shown messageJSON
	decode(t, mustRun(t, "queue", "show", "--json", "--config", cfg, id1), &shown)
	if shown.ID != id1 || shown.Route != "crm" || shown.App != "crm" || !slices.Equal(shown.To, []string{"ann@example.org"}) ||
		shown.Size == 0 || shown.Submitted == nil || shown.Expires == nil {
		t.Fatalf("show --json = %+v", shown)
	}

	// requeue refuses a message that is not dead.
	r := runCmd(t, "queue", "requeue", "--config", cfg, id1)
	if r.code != exitError || !strings.Contains(r.stderr, id1+" is queued, not dead") {
		t.Fatalf("requeue of a queued message: exit %d, stderr %q", r.code, r.stderr)
	}

	// delete, then the message is gone.
	if out := mustRun(t, "queue", "delete", "--config", cfg, id1); out != "deleted "+id1+"\n" {
		t.Fatalf("delete printed %q", out)
	}
	r = runCmd(t, "queue", "show", "--config", cfg, id1)
	if want := "holdfast: queue show: no such message " + id1 + "\n"; r.code != exitError || r.stderr != want || r.stdout != "" {
		t.Fatalf("show of a deleted message: exit %d, stderr %q; want exit 1 and %q", r.code, r.stderr, want)
	}
	r = runCmd(t, "queue", "delete", "--config", cfg, id1, id2)
	if r.code != exitError || r.stdout != "deleted "+id2+"\n" ||
		!strings.Contains(r.stderr, "holdfast: queue delete: no such message "+id1+"\n") {
		t.Fatalf("delete of a gone and a live message: exit %d\nstdout %q\nstderr %q", r.code, r.stdout, r.stderr)
	}
	if got := statsLine(t, mustRun(t, "queue", "stats", "--config", cfg), "total")[1:7]; !slices.Equal(got, []string{"0", "0", "0", "0", "0", "-"}) {
		t.Fatalf("stats after deleting both: %q", got)
	}
}

func TestQueueRequeueAndFlush(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfig(t, srv.Addr())
	q := queue.New(srv.Client(t), queue.Options{})
	ctx := t.Context()
	for _, route := range []string{"crm", "web"} {
		if _, _, err := q.Enqueue(ctx, queue.Submission{Route: route, App: route, From: "a@contoso.com", To: []string{"b@example.org"}, Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	// crm's message is dead-lettered, web's fails once and is scheduled.
	dead := leaseOne(ctx, t, q, "crm")
	if err := q.Fail(ctx, dead, "550 5.1.1 unknown recipient"); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Retry(ctx, leaseOne(ctx, t, q, "web"), "421 4.3.2 try later"); err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, "queue", "stats", "--config", cfg)
	if got := statsLine(t, out, "total")[1:6]; !slices.Equal(got, []string{"0", "1", "0", "0", "1"}) {
		t.Fatalf("stats before:\n%s", out)
	}
	out = mustRun(t, "queue", "list", "--config", cfg, "--route", "crm", "--state", "dead")
	if !strings.Contains(out, dead.ID) || !strings.Contains(out, "550 5.1.1 unknown recipient") {
		t.Fatalf("list dead:\n%s", out)
	}

	if out := mustRun(t, "queue", "requeue", "--config", cfg, dead.ID); out != "requeued "+dead.ID+"\n" {
		t.Fatalf("requeue printed %q", out)
	}
	out = mustRun(t, "queue", "flush", "--config", cfg)
	// Over every route, a route with nothing to flush gets no line: with
	// hundreds of routes the ones flushed would be lost among them.
	if !strings.Contains(out, "route web: 1 scheduled messages made due now") || !strings.Contains(out, "1 messages in 2 routes") ||
		strings.Contains(out, "route crm:") {
		t.Fatalf("flush printed:\n%s", out)
	}
	out = mustRun(t, "queue", "stats", "--config", cfg)
	if got := statsLine(t, out, "total")[1:6]; !slices.Equal(got, []string{"2", "0", "0", "0", "0"}) {
		t.Fatalf("stats after requeue and flush:\n%s", out)
	}
	if out := mustRun(t, "queue", "flush", "--config", cfg, "--route", "web"); out != "route web: 0 scheduled messages made due now\n" {
		t.Fatalf("flush --route printed %q", out)
	}
}

func leaseOne(ctx context.Context, t *testing.T, q *queue.Queue, route string) *queue.Lease {
	t.Helper()
	res, err := q.Lease(ctx, route, 1, time.Minute)
	if err != nil || len(res.Leases) != 1 {
		t.Fatalf("lease %s: %d leases, %v", route, len(res.Leases), err)
	}
	return res.Leases[0]
}

func TestQueueRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfig(t, srv.Addr())
	srv.Stop(t)
	r := runCmd(t, "queue", "stats", "--config", cfg)
	if r.code != exitError || !strings.HasPrefix(r.stderr, "holdfast: queue stats: ") || strings.Count(r.stderr, "\n") != 1 {
		t.Fatalf("stats with Redis down: exit %d, stderr %q; want exit 1 and one line", r.code, r.stderr)
	}
}

func sortedIDs(ids ...string) []string {
	slices.Sort(ids)
	return ids
}

// syncBuffer is a bytes.Buffer that a running command writes to while the
// test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestServe runs the relay until its context ends, as SIGINT does.
func TestServe(t *testing.T) {
	srv := redistest.Start(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "holdfast.yaml")
	sum := sha256.Sum256([]byte("test-token"))
	err := os.WriteFile(cfg, fmt.Appendf(nil, `redis:
  addrs: [%q]
  strict: true
smtp:
  listeners: [{addr: "127.0.0.1:0", insecure: true}]
http:
  addr: 127.0.0.1:0
ops:
  addr: 127.0.0.1:0
delivery:
  dir: %s
log:
  format: json
apps:
  - name: crm
    token_sha256: %s
    senders: ["@contoso.com"]
`, srv.Addr(), filepath.Join(dir, "outbox"), hex.EncodeToString(sum[:])), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--config", cfg}, &env{
			stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr,
			getenv: func(string) string { return "" }, now: time.Now,
		})
	}()
	deadline := time.After(10 * time.Second)
	for !strings.Contains(stderr.String(), `"msg":"holdfast started"`) {
		select {
		case code := <-done:
			t.Fatalf("serve exited with %d before it started:\n%s", code, stderr.String())
		case <-deadline:
			t.Fatalf("serve did not log that it started within 10s:\n%s", stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	cancel()
	select {
	case code := <-done:
		if code != exitOK {
			t.Fatalf("serve exited with %d after its context ended, want 0:\n%s", code, stderr.String())
		}
	case <-time.After(40 * time.Second):
		t.Fatalf("serve did not stop after its context ended:\n%s", stderr.String())
	}
	if !strings.Contains(stderr.String(), `"version":"`+version+`"`) {
		t.Errorf("the log does not name the version:\n%s", stderr.String())
	}
}

func decode(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
}

// TestCommandsWhileRedisCannotWrite: a Redis that cannot write to its
// disk answers PING, and every write, with MISCONF. The commands that
// read still show the queue; one that writes fails with Redis's reason,
// not with "does not answer".
func TestCommandsWhileRedisCannotWrite(t *testing.T) {
	srv := redistest.Start(t, redistest.WithArgs("--save", "3600 1"))
	cfg := writeConfig(t, srv.Addr())
	rdb := srv.Client(t)
	q := queue.New(rdb, queue.Options{})
	if _, _, err := q.Enqueue(t.Context(), queue.Submission{Route: "crm", App: "crm", From: "a@contoso.com", To: []string{"b@example.org"}, Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	// A snapshot that cannot be written: the server's directory is gone.
	// Without save points it stops at once at the end, not after a
	// failed last snapshot.
	t.Cleanup(func() { rdb.ConfigSet(context.Background(), "save", "") })
	if err := os.RemoveAll(srv.Dir()); err != nil {
		t.Fatal(err)
	}
	if err := rdb.BgSave(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for err := rdb.Ping(t.Context()).Err(); err == nil || !strings.HasPrefix(err.Error(), "MISCONF"); err = rdb.Ping(t.Context()).Err() {
		if time.Now().After(deadline) {
			t.Fatalf("PING after a failed snapshot: %v, want MISCONF", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	r := runCmd(t, "queue", "stats", "--config", cfg)
	if r.code != exitOK || !strings.Contains(r.stdout, "crm") {
		t.Errorf("queue stats with Redis refusing writes: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runCmd(t, "breaker", "trip", "--config", cfg, "mbx:a@contoso.com")
	if r.code == exitOK || !strings.Contains(r.stderr, "MISCONF") || strings.Contains(r.stderr, "does not answer") {
		t.Errorf("breaker trip with Redis refusing writes: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
