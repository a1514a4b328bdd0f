package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"holdfast/cmd/o365sim/sim"
	"holdfast/relay"
)

// fileConfig is the YAML seed; see sim.example.yaml.
type fileConfig struct {
	Listen struct {
		HTTPS string `yaml:"https"`
		SMTP  string `yaml:"smtp"`
		Admin string `yaml:"admin"`
	} `yaml:"listen"`
	TokenLifetime       string `yaml:"token_lifetime"`
	Seed                uint64 `yaml:"seed"`
	ExpiringTokenMargin string `yaml:"expiring_token_margin"`
	RecipientQuota      int    `yaml:"recipient_quota"`
	Tenants             []struct {
		ID   string `yaml:"id"`
		Apps []struct {
			ClientID string `yaml:"client_id"`
			Secrets  []struct {
				Value       string `yaml:"value"`
				ValueFile   string `yaml:"value_file"`
				ExpiresAt   string `yaml:"expires_at"`
				ExpiresIn   string `yaml:"expires_in"`
				KeyID       string `yaml:"key_id"`
				DisplayName string `yaml:"display_name"`
			} `yaml:"secrets"`
			CertificateFiles []string `yaml:"certificate_files"`
			SendAs           []string `yaml:"send_as"`
			GraphRoles       []string `yaml:"graph_roles"`
			OwnsItself       bool     `yaml:"owns_itself"`
			Federated        []struct {
				Issuer    string   `yaml:"issuer"`
				Subject   string   `yaml:"subject"`
				Audiences []string `yaml:"audiences"`
			} `yaml:"federated_credentials"`
		} `yaml:"apps"`
		Mailboxes []struct {
			Address          string   `yaml:"address"`
			SMTPAuthDisabled bool     `yaml:"smtp_auth_disabled"`
			SendAs           []string `yaml:"send_as"`
		} `yaml:"mailboxes"`
	} `yaml:"tenants"`
}

// loadConfig reads the YAML seed strictly. Certificate and secret files
// are relative to the seed's directory.
func loadConfig(path string) (sim.Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return sim.Config{}, err
	}
	var fc fileConfig
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&fc); err != nil && !errors.Is(err, io.EOF) {
		return sim.Config{}, fmt.Errorf("%s: %w", path, err)
	}
	cfg := sim.Config{HTTPSAddr: fc.Listen.HTTPS, SMTPAddr: fc.Listen.SMTP, AdminAddr: fc.Listen.Admin, RecipientQuota: fc.RecipientQuota}
	if fc.RecipientQuota < 0 {
		return sim.Config{}, fmt.Errorf("%s: recipient_quota: must not be negative", path)
	}
	if fc.TokenLifetime != "" {
		if cfg.TokenLifetime, err = time.ParseDuration(fc.TokenLifetime); err != nil {
			return sim.Config{}, fmt.Errorf("%s: token_lifetime: %w", path, err)
		}
	}
	cfg.Seed = fc.Seed
	if fc.ExpiringTokenMargin != "" {
		if cfg.ExpiringTokenMargin, err = time.ParseDuration(fc.ExpiringTokenMargin); err != nil {
			return sim.Config{}, fmt.Errorf("%s: expiring_token_margin: %w", path, err)
		}
	}
	dir := filepath.Dir(path)
	for ti, t := range fc.Tenants {
		tn := sim.Tenant{ID: t.ID}
		for ai, a := range t.Apps {
			app := sim.App{ClientID: a.ClientID, SendAsMailboxes: a.SendAs, GraphRoles: a.GraphRoles, OwnsItself: a.OwnsItself}
			for _, fc := range a.Federated {
				app.FederatedCredentials = append(app.FederatedCredentials, sim.FederatedCredential{Issuer: fc.Issuer, Subject: fc.Subject, Audiences: fc.Audiences})
			}
			for si, sec := range a.Secrets {
				s := sim.Secret{Value: sec.Value, KeyID: sec.KeyID, DisplayName: sec.DisplayName}
				if sec.ValueFile != "" {
					if s.Value, err = readSecretFile(dir, sec.ValueFile, sec.Value); err != nil {
						return sim.Config{}, fmt.Errorf("%s: tenants[%d].apps[%d].secrets[%d].value_file: %w", path, ti, ai, si, err)
					}
				}
				if sec.ExpiresAt != "" {
					if s.ExpiresAt, err = time.Parse(time.RFC3339, sec.ExpiresAt); err != nil {
						return sim.Config{}, fmt.Errorf("%s: tenants[%d].apps[%d].secrets[%d].expires_at: %w", path, ti, ai, si, err)
					}
				}
				if sec.ExpiresIn != "" {
					if s.ExpiresIn, err = parseExpiresIn(sec.ExpiresIn, sec.ExpiresAt); err != nil {
						return sim.Config{}, fmt.Errorf("%s: tenants[%d].apps[%d].secrets[%d].expires_in: %w", path, ti, ai, si, err)
					}
				}
				app.Secrets = append(app.Secrets, s)
			}
			for ci, f := range a.CertificateFiles {
				if !filepath.IsAbs(f) {
					f = filepath.Join(dir, f)
				}
				pem, err := os.ReadFile(f)
				if err != nil {
					return sim.Config{}, fmt.Errorf("%s: tenants[%d].apps[%d].certificate_files[%d]: %w", path, ti, ai, ci, err)
				}
				app.CertificatesPEM = append(app.CertificatesPEM, pem)
			}
			tn.Apps = append(tn.Apps, app)
		}
		for _, m := range t.Mailboxes {
			tn.Mailboxes = append(tn.Mailboxes, sim.Mailbox{Address: m.Address, SMTPAuthDisabled: m.SMTPAuthDisabled, SendAs: m.SendAs})
		}
		cfg.Tenants = append(cfg.Tenants, tn)
	}
	return cfg, nil
}

// parseExpiresIn reads a secret's expires_in: a Go duration ("2160h") or
// whole days ("90d"), as Holdfast's own durations are written
// (relay.ParseDuration), more than zero. Setting expires_at as well is
// an error.
func parseExpiresIn(s, expiresAt string) (time.Duration, error) {
	if expiresAt != "" {
		return 0, errors.New("set expires_at or expires_in, not both")
	}
	d, err := relay.ParseDuration(s)
	switch {
	case err != nil && !strings.HasPrefix(s, "-"):
		return 0, fmt.Errorf("%q is not a duration such as 90d or 2160h", s)
	case err != nil || d <= 0:
		return 0, fmt.Errorf("must be more than zero, not %s", s)
	}
	return d, nil
}

// readSecretFile reads a secret's value_file, trimmed of surrounding
// white space, so that a restarted simulator agrees with a relay reading
// the same file. Setting value as well is an error.
func readSecretFile(dir, file, value string) (string, error) {
	if value != "" {
		return "", errors.New("set value or value_file, not both")
	}
	if !filepath.IsAbs(file) {
		file = filepath.Join(dir, file)
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	v := strings.TrimSpace(string(raw))
	if v == "" {
		return "", fmt.Errorf("%s is empty", file)
	}
	return v, nil
}
