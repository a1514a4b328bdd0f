package main

import (
	"os"
	"path/filepath"
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
