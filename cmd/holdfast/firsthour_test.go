package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

func TestVersionFlag(t *testing.T) {
	for _, arg := range []string{"--version", "-version"} {
		if out := mustRun(t, arg); out != "holdfast "+version+"\n" {
			t.Errorf("holdfast %s printed %q, want %q", arg, out, "holdfast "+version+"\n")
		}
	}
}

// TestIsTerminal: only a terminal counts as one. /dev/null is a character
// device too, and "queue purge </dev/null" from cron asked its question,
// read no answer and deleted nothing, with exit 0.
func TestIsTerminal(t *testing.T) {
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for _, f := range []*os.File{devNull, r} {
		if isTerminal(f) {
			t.Errorf("%s taken for a terminal", f.Name())
		}
	}
	pty, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open a pseudo-terminal: %v", err)
	}
	defer pty.Close()
	if !isTerminal(pty) {
		t.Error("a pseudo-terminal not taken for a terminal")
	}
}

// TestQueueWithoutConfig: without --config and with no ./holdfast.yaml,
// the error says how to point at a configuration.
func TestQueueWithoutConfig(t *testing.T) {
	t.Chdir(t.TempDir())
	for _, args := range [][]string{{"queue", "stats"}, {"breaker", "status"}} {
		r := runCmd(t, args...)
		if r.code != exitError || !strings.Contains(r.stderr, "open holdfast.yaml") ||
			!strings.Contains(r.stderr, "--config FILE or $HOLDFAST_CONFIG") || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%v: exit %d, stderr %q; want 1 and one line saying how to point at a configuration", args, r.code, r.stderr)
		}
	}
}

// TestQueueShowDelivered: the 250 of a delivered message is its upstream
// reply, not an error.
func TestQueueShowDelivered(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfig(t, srv.Addr())
	q := queue.New(srv.Client(t), queue.Options{})
	ctx := t.Context()
	if _, _, err := q.Enqueue(ctx, queue.Submission{Route: "crm", App: "crm", From: "a@contoso.com", To: []string{"b@example.org"}, Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	l := leaseOne(ctx, t, q, "crm")
	if err := q.Ack(ctx, l, "250 2.0.0 OK <x@sim> [Hostname=SIM]"); err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, "queue", "show", "--config", cfg, l.ID)
	if !strings.Contains(out, "upstream reply:") || !strings.Contains(out, "250 2.0.0 OK") || strings.Contains(out, "last error") {
		t.Errorf("show of a delivered message:\n%s", out)
	}
	// In JSON too, under the name the HTTP API gives it.
	var shownJSON struct {
		LastReply string     `json:"last_reply"`
		LastError *string    `json:"last_error"`
		Expires   *time.Time `json:"expires"`
		KeptUntil *time.Time `json:"kept_until"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, "queue", "show", "--json", "--config", cfg, l.ID)), &shownJSON); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(shownJSON.LastReply, "250 2.0.0 OK") || shownJSON.LastError != nil {
		t.Errorf("show --json of a delivered message: last_reply %q, last_error %v; want the 250 as last_reply alone", shownJSON.LastReply, shownJSON.LastError)
	}
	// As in the table, a delivered message's lifetime is not shown: only
	// until when its record is kept.
	if shownJSON.Expires != nil || shownJSON.KeptUntil == nil {
		t.Errorf("show --json of a delivered message: expires %v, kept_until %v; want kept_until alone", shownJSON.Expires, shownJSON.KeptUntil)
	}
	// Its record is kept for queue.delivered_retention (7 days by
	// default) from delivery; its queue lifetime no longer matters.
	m, err := q.Get(ctx, l.ID)
	if err != nil {
		t.Fatal(err)
	}
	if d := m.KeptUntil.Sub(m.Done); d < 7*24*time.Hour-time.Minute || d > 7*24*time.Hour+time.Minute {
		t.Errorf("the delivered record is kept until %v, %v after delivery; want 7 days", m.KeptUntil, d)
	}
	var shown time.Time
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "kept" && f[1] == "until:" {
			shown, _ = time.Parse(time.RFC3339, f[2])
		}
	}
	if d := shown.Sub(m.KeptUntil); d < -2*time.Second || d > 2*time.Second || strings.Contains(out, "expires:") {
		t.Errorf("show of a delivered message does not say it is kept until %v:\n%s", m.KeptUntil, out)
	}
	// A retried message keeps "last error".
	if _, _, err := q.Enqueue(ctx, queue.Submission{Route: "web", App: "web", From: "a@contoso.com", To: []string{"b@example.org"}, Body: []byte("y")}); err != nil {
		t.Fatal(err)
	}
	l = leaseOne(ctx, t, q, "web")
	if _, err := q.Retry(ctx, l, "421 4.3.2 try later"); err != nil {
		t.Fatal(err)
	}
	if out := mustRun(t, "queue", "show", "--config", cfg, l.ID); !strings.Contains(out, "last error:") {
		t.Errorf("show of a retried message:\n%s", out)
	}
}

// TestQueuePurge deletes by route, by state and by both, against a real
// Redis, only with --yes or a "y" on a terminal, and says how many.
func TestQueuePurge(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfig(t, srv.Addr())
	q := queue.New(srv.Client(t), queue.Options{})
	ctx := t.Context()
	enqueue := func(route string, n int) {
		t.Helper()
		for i := range n {
			if _, _, err := q.Enqueue(ctx, queue.Submission{Route: route, App: "crm", From: "a@contoso.com",
				To: []string{fmt.Sprintf("r%d@example.org", i)}, Body: []byte("x")}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// crm: 3 dead and 600 queued (more than one batch); web: 2 dead, 4 queued.
	enqueue("crm", 3)
	for range 3 {
		if err := q.Fail(ctx, leaseOne(ctx, t, q, "crm"), "550 5.1.1 unknown"); err != nil {
			t.Fatal(err)
		}
	}
	enqueue("crm", 600)
	enqueue("web", 2)
	for range 2 {
		if err := q.Fail(ctx, leaseOne(ctx, t, q, "web"), "550 5.1.1 unknown"); err != nil {
			t.Fatal(err)
		}
	}
	enqueue("web", 4)
	counts := func() (crmReady, crmDead, webReady, webDead int64) {
		t.Helper()
		st, err := q.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range st.Routes {
			switch r.Route {
			case "crm":
				crmReady, crmDead = r.Ready, r.Dead
			case "web":
				webReady, webDead = r.Ready, r.Dead
			}
		}
		return
	}

	// Refusals: no filter, a bad state, no --yes without a terminal, "n".
	if r := runCmd(t, "queue", "purge", "--config", cfg); r.code != exitUsage || !strings.Contains(r.stderr, "give --route, --state or both") {
		t.Errorf("purge without a filter: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := runCmd(t, "queue", "purge", "--config", cfg, "--state", "lost"); r.code != exitUsage || !strings.Contains(r.stderr, `--state "lost"`) {
		t.Errorf("purge --state lost: exit %d, stderr %q", r.code, r.stderr)
	}
	r := runCmd(t, "queue", "purge", "--config", cfg, "--state", "dead")
	if r.code != exitError || !strings.Contains(r.stderr, "5 messages in state dead would be deleted; run again with --yes") {
		t.Errorf("purge without --yes: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runTTY(t, "n\n", "queue", "purge", "--config", cfg, "--state", "dead")
	if r.code != exitOK || !strings.Contains(r.stdout, "delete 5 messages in state dead?") || !strings.Contains(r.stdout, "nothing deleted") {
		t.Errorf("purge answered n: exit %d, stdout %q", r.code, r.stdout)
	}
	if a, b, c, d := counts(); a != 600 || b != 3 || c != 4 || d != 2 {
		t.Fatalf("after the refusals: crm %d queued %d dead, web %d queued %d dead; want nothing deleted", a, b, c, d)
	}

	// By state and route, with "y" on a terminal.
	r = runTTY(t, "y\n", "queue", "purge", "--config", cfg, "--state", "dead", "--route", "web")
	if r.code != exitOK || !strings.Contains(r.stdout, "deleted 2 messages in state dead of route web") {
		t.Errorf("purge web dead: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	// By state, every route.
	out := mustRun(t, "queue", "purge", "--config", cfg, "--state", "dead", "--yes")
	if !strings.Contains(out, "route crm: 3 dead messages deleted") || !strings.Contains(out, "deleted 3 messages in state dead") {
		t.Errorf("purge dead:\n%s", out)
	}
	if a, b, c, d := counts(); a != 600 || b != 0 || c != 4 || d != 0 {
		t.Fatalf("after purging dead: crm %d queued %d dead, web %d queued %d dead", a, b, c, d)
	}
	// By route, every state: more than one batch.
	out = mustRun(t, "queue", "purge", "--config", cfg, "--route", "crm", "--yes")
	if !strings.Contains(out, "deleted 600 messages of route crm") {
		t.Errorf("purge crm:\n%s", out)
	}
	if a, b, c, d := counts(); a != 0 || b != 0 || c != 4 || d != 0 {
		t.Fatalf("after purging crm: crm %d queued %d dead, web %d queued %d dead; want web untouched", a, b, c, d)
	}
	if out := mustRun(t, "queue", "purge", "--config", cfg, "--route", "crm", "--yes"); out != "no messages of route crm\n" {
		t.Errorf("purge of an empty route printed %q", out)
	}
}

// TestRouteTypoHint: a command given a route that has had no mail says
// so on stderr, naming the routes that contain what was typed or are a
// typing mistake away, and
// still succeeds (there is nothing to do); a known route gets no hint.
func TestRouteTypoHint(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfig(t, srv.Addr())
	q := queue.New(srv.Client(t), queue.Options{})
	for _, r := range []string{"app:crm:billing@contoso.com", "app:crm:noreply@contoso.com", "app:web:web@fabrikam.example"} {
		if _, _, err := q.Enqueue(t.Context(), queue.Submission{Route: r, App: "crm", From: "a@contoso.com",
			To: []string{"b@example.org"}, Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		args []string
		hint string
	}{
		{[]string{"queue", "list", "--route", "app:crm:biling@contoso.com", "--state", "dead"},
			`no route "app:crm:biling@contoso.com" has mail now; did you mean app:crm:billing@contoso.com?`},
		{[]string{"queue", "list", "--route", "app:erp:sales@contoso.com", "--state", "dead"},
			`no route "app:erp:sales@contoso.com" has mail now; "holdfast queue stats" lists the routes`},
		{[]string{"queue", "purge", "--route", "crm", "--yes"},
			`no route "crm" has mail now; did you mean app:crm:billing@contoso.com or app:crm:noreply@contoso.com?`},
		{[]string{"queue", "flush", "--route", "FABRIKAM"},
			`did you mean app:web:web@fabrikam.example?`},
		{[]string{"queue", "drain", "--route", "web", "--timeout", "1s"},
			`did you mean app:web:web@fabrikam.example?`},
	} {
		r := runCmd(t, append(c.args, "--config", cfg)...)
		if r.code != exitOK || !strings.Contains(r.stderr, c.hint) {
			t.Errorf("holdfast %s: exit %d, stderr %q, want a hint %q", strings.Join(c.args, " "), r.code, r.stderr, c.hint)
		}
	}
	r := runCmd(t, "queue", "list", "--config", cfg, "--route", "app:crm:billing@contoso.com", "--state", "dead")
	if r.code != exitOK || r.stderr != "" {
		t.Errorf("list of a known route with no dead letters: exit %d, stderr %q, want no hint", r.code, r.stderr)
	}
}

// runTTY runs holdfast with stdin as a terminal that answers stdin.
func runTTY(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var stdout, stderr strings.Builder
	e := &env{stdin: strings.NewReader(stdin), stdout: &stdout, stderr: &stderr, stdinTTY: true,
		getenv: func(string) string { return "" }, now: time.Now}
	code := run(t.Context(), args, e)
	return result{code, stdout.String(), stderr.String()}
}

// TestMissingSecretFileNoConfigHint: a configuration that is there but
// names a missing secret file gets the file's error, not advice to point
// at another configuration.
func TestMissingSecretFileNoConfigHint(t *testing.T) {
	cfg := writeConfig(t, "127.0.0.1:1")
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "crm.hash")
	b = []byte(strings.Replace(string(b), "    senders:", "    password_hash_file: "+missing+"\n    senders:", 1))
	if err := os.WriteFile(cfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	r := runCmd(t, "queue", "stats", "--config", cfg)
	if r.code != exitError || !strings.Contains(r.stderr, "apps[0].password_hash_file") || !strings.Contains(r.stderr, missing) ||
		strings.Contains(r.stderr, "--config FILE") {
		t.Errorf("exit %d, stderr %q; want 1 naming the field and the file, and no --config hint", r.code, r.stderr)
	}
}

// TestJSONReadable: the commands' JSON keeps <, > and & as they are
// (upstream replies quote addresses in angle brackets), not \u003c.
func TestJSONReadable(t *testing.T) {
	var b strings.Builder
	if err := writeJSON(&b, map[string]string{"last_error": "550 5.1.1 <ann@example.org>: unknown & gone"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), `"550 5.1.1 <ann@example.org>: unknown & gone"`) {
		t.Errorf("writeJSON printed %s", b.String())
	}
}
