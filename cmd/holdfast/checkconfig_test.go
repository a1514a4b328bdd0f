package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
