package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

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
	seed := func(secret string) string {
		p := filepath.Join(dir, "sim.yaml")
		cfg := "tenants:\n  - id: t.example.com\n    apps:\n      - client_id: c\n        secrets:\n          - " + secret + "\n"
		if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
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
