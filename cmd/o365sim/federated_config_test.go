package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestConfigFederatedAndTokenOptions(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sim.yaml")
	seed := `seed: 7
expiring_token_margin: 10m
tenants:
  - id: t
    apps:
      - client_id: 11111111-2222-4333-8444-555555555555
        federated_credentials:
          - issuer: https://oidc.example/issuer
            subject: system:serviceaccount:mail:holdfast
`
	if err := os.WriteFile(p, []byte(seed), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Seed != 7 || cfg.ExpiringTokenMargin != 10*time.Minute || cfg.TokenLifetime != 0 {
		t.Fatalf("seed %d, margin %v, lifetime %v", cfg.Seed, cfg.ExpiringTokenMargin, cfg.TokenLifetime)
	}
	fc := cfg.Tenants[0].Apps[0].FederatedCredentials
	if len(fc) != 1 || fc[0].Issuer != "https://oidc.example/issuer" || fc[0].Subject != "system:serviceaccount:mail:holdfast" {
		t.Fatalf("federated credentials %+v", fc)
	}
}
