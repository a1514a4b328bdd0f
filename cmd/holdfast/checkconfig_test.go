package main

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestServeCheckConfig: --check-config validates without touching Redis
// (the address below has no server) and exits 0 with "config ok", or 2
// with the error naming the bad field.
func TestServeCheckConfig(t *testing.T) {
	good := writeConfig(t, "127.0.0.1:1")
	r := runCmd(t, "serve", "--check-config", "--config", good)
	if r.code != exitOK || r.stdout != "config ok\n" || r.stderr != "" {
		t.Fatalf("valid config: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}

	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, append(data, "delivery:\n  workers: 0\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	r = runCmd(t, "serve", "--check-config", "--config", bad)
	if r.code != 2 || r.stdout != "" || !strings.Contains(r.stderr, "delivery.workers: must be at least 1") {
		t.Fatalf("invalid config: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}

	unknown := filepath.Join(t.TempDir(), "unknown.yaml")
	if err := os.WriteFile(unknown, []byte("no_such_option: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = runCmd(t, "serve", "--check-config", "--config", unknown)
	if r.code != 2 || !strings.Contains(r.stderr, "no_such_option") {
		t.Fatalf("unknown key: exit %d, stderr %q", r.code, r.stderr)
	}

	r = runCmd(t, "serve", "--check-config", "--config", filepath.Join(t.TempDir(), "missing.yaml"))
	if r.code != 2 || !strings.Contains(r.stderr, "read config") {
		t.Fatalf("missing file: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestServeCheckConfigReadsFiles: --check-config reads every file serve
// needs at start, so a config it calls ok does not fail at start for a
// missing secret, certificate, CA or grant key. Each error names the
// field and the file.
func TestServeCheckConfigReadsFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	certPEM, keyPEM := devCert(t)
	files := map[string]string{
		"secret":    write("dev.secret", "s3cret-value\n"),
		"cert":      write("cert.pem", certPEM),
		"key":       write("key.pem", keyPEM),
		"ca":        write("ca.pem", certPEM),
		"grant_key": write("grants.key", strings.Repeat("ab", 32)+"\n"),
	}
	config := func(f map[string]string) string {
		return write("holdfast.yaml", fmt.Sprintf(`redis:
  addrs: ["127.0.0.1:1"]
smtp:
  listeners:
    - addr: 127.0.0.1:0
  cert_file: %s
  key_file: %s
http:
  addr: 127.0.0.1:0
  cert_file: %s
  key_file: %s
ops:
  addr: 127.0.0.1:0
delivery:
  sender: exchange
credentials:
  - name: dev
    tenant: dev.example.com
    client_id: 0d0e0f00-1111-4222-8333-444455556666
    client_secret_file: %s
exchange:
  ca_file: %s
  grant_key_file: %s
apps:
  - name: crm
    token_sha256: %s
    senders: ["@contoso.com"]
    credential: dev
    mailbox: app@contoso.com
`, f["cert"], f["key"], f["cert"], f["key"], f["secret"], f["ca"], f["grant_key"], strings.Repeat("0", 64)))
	}
	r := runCmd(t, "serve", "--check-config", "--config", config(files))
	if r.code != exitOK || r.stdout != "config ok\n" {
		t.Fatalf("every file present: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	for _, tc := range []struct{ file, field string }{
		{"secret", "credentials[0]: credential dev:"},
		{"cert", "smtp.cert_file"},
		{"ca", "exchange.ca_file"},
		{"grant_key", "exchange.grant_key_file"},
	} {
		missing := maps.Clone(files)
		missing[tc.file] = filepath.Join(dir, "no-such-"+tc.file)
		r := runCmd(t, "serve", "--check-config", "--config", config(missing))
		if r.code != exitUsage || r.stdout != "" || !strings.Contains(r.stderr, tc.field) || !strings.Contains(r.stderr, missing[tc.file]) {
			t.Errorf("%s missing: exit %d, stdout %q, stderr %q; want exit 2 naming %s and the file", tc.file, r.code, r.stdout, r.stderr, tc.field)
		}
		if strings.Contains(r.stderr, "credentials dev: credential dev") {
			t.Errorf("%s missing: the credential is named twice: %q", tc.file, r.stderr)
		}
	}
	// A key that does not match the HTTP certificate.
	otherCert, _ := devCert(t)
	bad := maps.Clone(files)
	bad["cert"] = write("other.pem", otherCert)
	r = runCmd(t, "serve", "--check-config", "--config", config(bad))
	if r.code != exitUsage || !strings.Contains(r.stderr, "cert_file") {
		t.Errorf("mismatched key: exit %d, stderr %q", r.code, r.stderr)
	}
}

// devCert returns a fresh self-signed certificate for localhost and its
// key, in PEM, as "holdfast creds devcert" makes them.
func devCert(t *testing.T) (certPEM, keyPEM string) {
	t.Helper()
	c, k, err := selfSigned([]string{"localhost"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return string(c), string(k)
}
