package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"holdfast/cmd/o365sim/sim"
)

const (
	checkTenant   = "contoso.onmicrosoft.com"
	checkClientID = "44444444-5555-4666-8777-888888888888"
	checkSecret   = "Chk~live-secret-value"
)

// checkEnv is the simulator and a configuration whose one credential uses
// it. The configuration's Redis is never contacted by creds check.
type checkEnv struct {
	sim    *sim.Sim
	config string
}

func newCheckEnv(t *testing.T, secretEnd time.Time) *checkEnv {
	t.Helper()
	s := startCheckSim(t, sim.App{ClientID: checkClientID, Secrets: []sim.Secret{{Value: checkSecret, ExpiresAt: secretEnd}}})
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	incWriteFile(t, secretFile, checkSecret+"\n")
	// creds check never contacts Redis.
	return &checkEnv{sim: s, config: writeCheckConfig(t, s, dir, "127.0.0.1:1", fmt.Sprintf("client_secret_file: %q", secretFile))}
}

// startCheckSim starts a simulator with one tenant holding app.
func startCheckSim(t *testing.T, app sim.App, edit ...func(*sim.Config)) *sim.Sim {
	t.Helper()
	cfg := sim.Config{Tenants: []sim.Tenant{{ID: checkTenant, Apps: []sim.App{app}}}}
	for _, e := range edit {
		e(&cfg)
	}
	s, err := sim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// writeCheckConfig writes, in dir, a configuration whose one credential
// uses the simulator, its secret given by secretLine (a YAML key and
// value), and returns its path.
func writeCheckConfig(t *testing.T, s *sim.Sim, dir, redisAddr, secretLine string) string {
	t.Helper()
	caFile := filepath.Join(dir, "ca.pem")
	incWriteFile(t, caFile, string(s.CACertPEM()))
	cfg := fmt.Sprintf(`redis:
  addrs: [%q]
smtp:
  listeners:
    - addr: 127.0.0.1:0
      insecure: true
delivery:
  sender: exchange
apps:
  - name: crm
    token_sha256: %s
    senders: ["@contoso.com"]
    credential: contoso
    mailbox: noreply@contoso.com
credentials:
  - name: contoso
    tenant: %s
    client_id: %s
    authority: %q
    %s
exchange:
  graph_url: %q
  ca_file: %q
`, redisAddr, incSHA256("token"), checkTenant, checkClientID, s.AuthorityURL(), secretLine, s.GraphURL(), caFile)
	path := filepath.Join(dir, "holdfast.yaml")
	incWriteFile(t, path, cfg)
	return path
}

// runProcess runs the holdfast binary (this test binary as holdfast) and
// returns its exit status and output.
func runProcess(t *testing.T, args ...string) result {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), incidentExecEnv+"=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run holdfast: %v", err)
	}
	return result{cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()}
}

// summaryLine matches the first table's line of the credential.
func summaryLine(t *testing.T, out string) []string {
	t.Helper()
	for l := range strings.Lines(out) {
		if f := strings.Fields(l); len(f) == 6 && f[0] == "contoso" {
			return f
		}
	}
	t.Fatalf("no summary line for contoso in:\n%s", out)
	return nil
}

func TestCredsCheck(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Second)
	end := now.Add(100 * 24 * time.Hour)
	e := newCheckEnv(t, end)

	// Healthy: exit 0, the Graph date, its days and a working token.
	r := runProcess(t, "creds", "check", "--config", e.config)
	if r.code != exitOK {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if got, want := strings.Join(summaryLine(t, r.stdout), " "), "contoso "+end.Format(time.RFC3339)+" 100 graph ok ok"; got != want {
		t.Fatalf("summary %q, want %q\n%s", got, want, r.stdout)
	}
	if !regexp.MustCompile(`contoso +graph +yes +secret Chk… +` + regexp.QuoteMeta(end.Format(time.RFC3339)) + ` +100\n`).MatchString(r.stdout) {
		t.Fatalf("no Graph line for the secret in use:\n%s", r.stdout)
	}
	if strings.Contains(r.stdout+r.stderr, checkSecret) {
		t.Fatal("the secret is printed")
	}

	// 20 days left: exit 1 with the default --within 30d, 0 with 10d.
	soon := now.Add(20 * 24 * time.Hour)
	e.sim.SetSecretEnd(checkTenant, checkClientID, checkSecret, soon)
	r = runProcess(t, "creds", "check", "--config", e.config)
	if r.code != exitError || r.stderr != "holdfast: creds check: contoso: expires within 30d\n" {
		t.Fatalf("20 days left: exit %d, stderr %q\n%s", r.code, r.stderr, r.stdout)
	}
	if f := summaryLine(t, r.stdout); f[2] != "20" || f[4] != "warning" {
		t.Fatalf("summary %v", f)
	}
	if r = runProcess(t, "creds", "check", "--config", e.config, "--within", "10d"); r.code != exitOK {
		t.Fatalf("--within 10d: exit %d, stderr %q", r.code, r.stderr)
	}

	// Expired: the live token request fails.
	e.sim.ExpireSecret(checkTenant, checkClientID)
	r = runProcess(t, "creds", "check", "--config", e.config, "--within", "0")
	if r.code != exitError || !strings.Contains(r.stderr, "contoso: the live token request failed") ||
		!strings.Contains(r.stdout, "contoso: live token request: token endpoint: 401 invalid_client AADSTS7000222") {
		t.Fatalf("expired: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if f := summaryLine(t, r.stdout); f[5] != "FAILED" {
		t.Fatalf("summary %v", f)
	}
	// For a script: the token failed, and Entra's refusal dates the
	// expiry.
	r = runProcess(t, "creds", "check", "--config", e.config, "--within", "0", "--json")
	if r.code != exitError || !strings.Contains(r.stdout, `"token_ok": false`) || !strings.Contains(r.stdout, `"level": "expired"`) ||
		!strings.Contains(r.stdout, `"source": "entra"`) {
		t.Fatalf("expired, --json: exit %d\nstdout:\n%s", r.code, r.stdout)
	}
}

func TestCredsCheckGraphForbidden(t *testing.T) {
	e := newCheckEnv(t, time.Now().Add(100*24*time.Hour))
	e.sim.SetGraphRoles(checkTenant, checkClientID, []string{"Mail.Send"}, false)
	r := runCmd(t, "creds", "check", "--config", e.config, "--json")
	// No date is known without Graph: not a failure, but said.
	if r.code != exitOK || !strings.Contains(r.stdout, `"level": "unknown"`) || !strings.Contains(r.stdout, "Authorization_RequestDenied") ||
		!strings.Contains(r.stdout, `"token_ok": true`) {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	r = runCmd(t, "creds", "check", "--config", e.config)
	if !strings.Contains(r.stdout, "grant the app Application.Read.All") {
		t.Fatalf("no advice:\n%s", r.stdout)
	}
}

func TestCredsCheckBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--within", "soon"}, `holdfast: creds check: --within: "soon" is not a duration such as 30d or 72h`},
		{[]string{"--within", "-3d"}, `holdfast: creds check: --within: "-3d" is not a number of days such as 30d`},
		{[]string{"extra"}, `holdfast: creds check: unexpected argument "extra"`},
	} {
		r := runCmd(t, append([]string{"creds", "check", "--config", "/nonexistent.yaml"}, tc.args...)...)
		if r.code != exitUsage || !strings.HasPrefix(r.stderr, tc.want+"\n") || !strings.Contains(r.stderr, "usage: holdfast creds check") {
			t.Errorf("%v: exit %d, stderr %q", tc.args, r.code, r.stderr)
		}
	}
	r := runCmd(t, "creds", "check", "--config", "/nonexistent.yaml")
	if r.code != exitError || !strings.HasPrefix(r.stderr, "holdfast: creds check: read config: open /nonexistent.yaml") {
		t.Fatalf("missing config: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestCredsCheckTwoSecrets: with client_secret_files, the check lists each
// secret's configured date by its hint and marks the one that got the
// live token: here the older one, since Entra says the newer one expired.
func TestCredsCheckTwoSecrets(t *testing.T) {
	e := newCheckEnv(t, time.Now().Add(100*24*time.Hour))
	const second = "Nxt~second-secret-value"
	e.sim.AddSecret(checkTenant, checkClientID, sim.Secret{Value: second, ExpiresAt: time.Now().Add(-time.Hour)})
	raw, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`client_secret_file: "([^"]+)"`).FindStringSubmatch(string(raw))
	secondFile := filepath.Join(filepath.Dir(m[1]), "second")
	incWriteFile(t, secondFile, second+"\n")
	cfg := strings.Replace(string(raw), m[0], fmt.Sprintf(
		"client_secret_files: [%q, %q]\n    expires_at_by_file: {%q: \"2027-03-01\", %q: \"2027-09-01\"}",
		m[1], secondFile, m[1], secondFile), 1)
	incWriteFile(t, e.config, cfg)

	r := runProcess(t, "creds", "check", "--config", e.config)
	if r.code != exitOK {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{
		`contoso +config +yes +secret Chk… +2027-03-01T00:00:00Z`,
		`contoso +config +no +secret Nxt… +2027-09-01T00:00:00Z`,
	} {
		if !regexp.MustCompile(want).MatchString(r.stdout) {
			t.Errorf("no line %q in:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout+r.stderr, second) || strings.Contains(r.stdout+r.stderr, checkSecret) {
		t.Fatal("a secret is printed")
	}
}
