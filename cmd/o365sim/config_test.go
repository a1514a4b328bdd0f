package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"holdfast/cmd/o365sim/sim"
)

func TestExampleConfig(t *testing.T) {
	cfg, err := loadConfig("sim.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Tenants) != 1 || len(cfg.Tenants[0].Apps[0].Secrets) != 1 || cfg.Tenants[0].Apps[0].Secrets[0].ExpiresAt.IsZero() {
		t.Fatalf("config %+v", cfg)
	}
	cfg.HTTPSAddr, cfg.SMTPAddr, cfg.AdminAddr = "", "", ""
	if _, err := sim.New(cfg); err != nil {
		t.Fatal(err)
	}
}

func TestConfigUnknownField(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sim.yaml")
	if err := os.WriteFile(p, []byte("tenants:\n  - id: t\n    secret: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadConfig(p); err == nil {
		t.Fatal("unknown field accepted")
	}
}

// TestConfigSecretFile: a secret read from value_file, relative to the
// seed, so that the simulator restarted after a rotation agrees with the
// relay that reads the same file.
func TestConfigSecretFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "app.secret"), []byte("rotated-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	seed := func(secret string) string { return writeSecretSeed(t, dir, secret) }
	cfg, err := loadConfig(seed("value_file: app.secret"))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Tenants[0].Apps[0].Secrets[0].Value; got != "rotated-secret" {
		t.Errorf("secret %q, want the file's rotated-secret", got)
	}
	for _, bad := range []string{"value_file: missing.secret", "{value: x, value_file: app.secret}"} {
		if _, err := loadConfig(seed(bad)); err == nil || !strings.Contains(err.Error(), "value_file") {
			t.Errorf("%s: error %v, want one naming value_file", bad, err)
		}
	}
}

// TestConfigSecretExpiresIn: expires_in gives a secret an end relative to
// the simulator's start, as a Go duration or whole days; with expires_at
// as well, negative, zero or malformed, it is refused with an error that
// names the field.
func TestConfigSecretExpiresIn(t *testing.T) {
	dir := t.TempDir()
	seed := func(secret string) string { return writeSecretSeed(t, dir, secret) }
	for in, want := range map[string]time.Duration{"90d": 90 * 24 * time.Hour, "2160h": 2160 * time.Hour, "36h30m": 36*time.Hour + 30*time.Minute} {
		cfg, err := loadConfig(seed("{value: s, expires_in: " + in + "}"))
		if err != nil {
			t.Errorf("expires_in: %s: %v", in, err)
			continue
		}
		if got := cfg.Tenants[0].Apps[0].Secrets[0]; got.ExpiresIn != want || !got.ExpiresAt.IsZero() {
			t.Errorf("expires_in: %s: ExpiresIn %s, ExpiresAt %s; want %s and no ExpiresAt", in, got.ExpiresIn, got.ExpiresAt, want)
		}
	}
	const field = "tenants[0].apps[0].secrets[0].expires_in"
	for bad, says := range map[string]string{
		"{value: s, expires_in: -1h}":  "more than zero",
		"{value: s, expires_in: -90d}": "more than zero",
		"{value: s, expires_in: 0s}":   "more than zero",
		"{value: s, expires_in: 90}":   "such as 90d or 2160h",
		"{value: s, expires_in: 3mo}":  "such as 90d or 2160h",
		"{value: s, expires_in: 1.5d}": "such as 90d or 2160h",

		"{value: s, expires_in: 90d, expires_at: 2027-06-30T00:00:00Z}": "not both",
	} {
		_, err := loadConfig(seed(bad))
		if err == nil || !strings.Contains(err.Error(), field) || !strings.Contains(err.Error(), says) {
			t.Errorf("%s: error %v, want one naming %s that says %q", bad, err, field, says)
		}
	}
}

// writeSecretSeed writes to dir a simulator seed of one app with the
// secret given as YAML, and returns its path.
func writeSecretSeed(t *testing.T, dir, secret string) string {
	t.Helper()
	p := filepath.Join(dir, "sim.yaml")
	cfg := "tenants:\n  - id: t.example.com\n    apps:\n      - client_id: c\n        secrets:\n          - " + secret + "\n"
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
