package relay

import (
	"fmt"
	"maps"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// defaultAuthority is Entra ID's public cloud.
const defaultAuthority = "https://login.microsoftonline.com"

// validateExchange checks the options the "exchange" sender needs and
// fills in per-credential and per-app defaults.
func (o *Options) validateExchange() error {
	x := &o.Exchange
	if _, _, err := net.SplitHostPort(x.SMTPAddr); err != nil {
		return fmt.Errorf("exchange.smtp_addr: %q is not host:port", x.SMTPAddr)
	}
	if x.InsecurePlaintext {
		host, _, _ := net.SplitHostPort(x.SMTPAddr)
		if !isLoopback(host) {
			return fmt.Errorf("exchange.insecure_plaintext: only allowed with a loopback smtp_addr, not %q", x.SMTPAddr)
		}
	}
	if u, err := url.Parse(x.GraphURL); err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("exchange.graph_url: %q is not an https URL", x.GraphURL)
	}
	if x.MaxConnectionsPerMailbox < 1 {
		return fmt.Errorf("exchange.max_connections_per_mailbox: must be at least 1")
	}
	if x.MessagesPerMinute < 1 {
		return fmt.Errorf("exchange.messages_per_minute: must be at least 1")
	}
	if x.RecipientsPerDay < 0 {
		return fmt.Errorf("exchange.recipients_per_day: must not be negative")
	}
	for _, d := range []struct {
		field string
		v     Duration
	}{
		{"exchange.connect_timeout", x.ConnectTimeout},
		{"exchange.command_timeout", x.CommandTimeout},
		{"exchange.data_timeout", x.DataTimeout},
		{"exchange.dead_destination_probe", x.DeadDestinationProbe},
		{"exchange.fallback_recheck", x.FallbackRecheck},
	} {
		if d.v < Duration(100*time.Millisecond) {
			return fmt.Errorf("%s: must be at least 100ms", d.field)
		}
	}
	if x.GrantRedeemAfter < Duration(time.Hour) || x.GrantRedeemAfter > Duration(maxGrantRedeemAfter) {
		return fmt.Errorf("exchange.grant_redeem_after: must be between 1h and 60 days (1440h), not %s: Entra lets a grant unused for 90 days lapse",
			x.GrantRedeemAfter.D())
	}
	if len(o.Credentials) == 0 {
		return fmt.Errorf("credentials: the exchange sender needs at least one credential")
	}
	names := map[string]bool{}
	for i := range o.Credentials {
		c := &o.Credentials[i]
		field := fmt.Sprintf("credentials[%d]", i)
		if err := c.validate(field); err != nil {
			return err
		}
		if names[c.Name] {
			return fmt.Errorf("%s.name: %q is used twice", field, c.Name)
		}
		names[c.Name] = true
	}
	for i := range o.Apps {
		a := &o.Apps[i]
		field := fmt.Sprintf("apps[%d]", i)
		if !names[a.Credential] {
			return fmt.Errorf("%s.credential: %q is not one of the credentials (%s); the exchange sender needs one for every app",
				field, a.Credential, strings.Join(slices.Sorted(maps.Keys(names)), ", "))
		}
		if _, err := parseAddress(a.Mailbox); err != nil {
			return fmt.Errorf("%s.mailbox: %q is not a mailbox address", field, a.Mailbox)
		}
		for sender, mbx := range a.SenderMailboxes {
			if _, err := parseSenderRule(sender); err != nil {
				return fmt.Errorf("%s.sender_mailboxes: %v", field, err)
			}
			if _, err := parseAddress(mbx); err != nil {
				return fmt.Errorf("%s.sender_mailboxes[%s]: %q is not a mailbox address", field, sender, mbx)
			}
		}
		switch a.Via {
		case "":
			a.Via = "smtp"
		case "smtp", "graph":
		default:
			return fmt.Errorf("%s.via: must be smtp or graph, not %q", field, a.Via)
		}
		switch {
		case a.Fallback == "":
		case a.Fallback != "graph":
			return fmt.Errorf("%s.fallback: must be graph or left out, not %q", field, a.Fallback)
		case a.Via == "graph":
			return fmt.Errorf("%s.fallback: graph is a fallback for via: smtp; this app already sends by Graph", field)
		}
	}
	return nil
}

func (c *Credential) validate(field string) error {
	if c.Name == "" || strings.ContainsAny(c.Name, ": ") || !validRoute(c.Name) {
		return fmt.Errorf("%s.name: required; printable ASCII without spaces or colons", field)
	}
	if c.Tenant == "" {
		return fmt.Errorf("%s.tenant: required (the directory id or domain)", field)
	}
	if c.ClientID == "" {
		return fmt.Errorf("%s.client_id: required (the application id)", field)
	}
	if c.Authority == "" {
		c.Authority = defaultAuthority
	}
	if u, err := url.Parse(c.Authority); err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("%s.authority: %q is not an https URL", field, c.Authority)
	}
	secret, cert, fed := c.ClientSecretFile != "" || len(c.ClientSecretFiles) > 0, c.CertFile != "" || c.KeyFile != "", c.ClientAssertionFile != ""
	switch {
	case c.ClientSecretFile != "" && len(c.ClientSecretFiles) > 0:
		return fmt.Errorf("%s.client_secret_files: set client_secret_file or client_secret_files, not both", field)
	case len(c.ExpiresAtByFile) > 0 && len(c.ClientSecretFiles) == 0:
		return fmt.Errorf("%s.expires_at_by_file: only with client_secret_files (for one secret, use expires_at)", field)
	case secret && cert:
		return fmt.Errorf("%s.client_secret_file: set a client secret or a certificate, not both", field)
	case fed && (secret || cert):
		return fmt.Errorf("%s.client_assertion_file: set exactly one of client_secret_file, cert_file and key_file, or client_assertion_file", field)
	case !secret && !cert && !fed:
		return fmt.Errorf("%s.client_secret_file: set client_secret_file, cert_file and key_file, or client_assertion_file", field)
	case c.ExpiresAtFile != "" && c.ClientSecretFile == "" && !cert:
		return fmt.Errorf("%s.expires_at_file: only with client_secret_file or cert_file (for client_secret_files, use expires_at_by_file)", field)
	case cert && (c.CertFile == "" || c.KeyFile == ""):
		return fmt.Errorf("%s.cert_file: a certificate credential needs both cert_file and key_file", field)
	}
	if _, err := c.Expiry(); err != nil {
		return fmt.Errorf("%s.expires_at: %v", field, err)
	}
	if _, err := c.secretExpiries(); err != nil {
		return fmt.Errorf("%s.expires_at_by_file: %v", field, err)
	}
	if c.RotateGrace == 0 {
		c.RotateGrace = Duration(7 * 24 * time.Hour)
	}
	if c.RotateLifetime == 0 {
		c.RotateLifetime = Duration(180 * 24 * time.Hour)
	}
	switch {
	case c.AutoRotateBefore < 0:
		return fmt.Errorf("%s.auto_rotate_before: durations cannot be negative", field)
	case c.RotateGrace < 0:
		return fmt.Errorf("%s.rotate_grace: durations cannot be negative", field)
	case c.RotateLifetime < Duration(24*time.Hour) || c.RotateLifetime > Duration(2*365*24*time.Hour):
		return fmt.Errorf("%s.rotate_lifetime: from 1d to 730d (Entra's longest)", field)
	case c.AutoRotateBefore > 0 && len(c.ClientSecretFiles) == 0:
		return fmt.Errorf("%s.auto_rotate_before: needs client_secret_files naming a directory the relay may write the new secret in", field)
	case c.AutoRotateBefore >= c.RotateLifetime:
		return fmt.Errorf("%s.auto_rotate_before: must be shorter than rotate_lifetime (%v), or every new secret would be rotated at once", field, c.RotateLifetime.D())
	}
	return nil
}

// secretExpiries parses ExpiresAtByFile.
func (c *Credential) secretExpiries() (map[string]time.Time, error) {
	if len(c.ExpiresAtByFile) == 0 {
		return nil, nil
	}
	out := map[string]time.Time{}
	for file, v := range c.ExpiresAtByFile {
		t, err := parseDate(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", file, err)
		}
		if !c.listsSecretFile(file) {
			return nil, fmt.Errorf("%s is neither one of client_secret_files %q nor a file in one of them; its date would be ignored",
				file, c.ClientSecretFiles)
		}
		out[filepath.Clean(file)] = t
	}
	return out, nil
}

// listsSecretFile reports whether file is one of ClientSecretFiles, or a
// file directly in one of them (a directory), paths compared cleaned.
func (c *Credential) listsSecretFile(file string) bool {
	file = filepath.Clean(file)
	for _, e := range c.ClientSecretFiles {
		if e = filepath.Clean(e); file == e || filepath.Dir(file) == e {
			return true
		}
	}
	return false
}

// Expiry parses ExpiresAt; the zero time when it is not set.
func (c *Credential) Expiry() (time.Time, error) {
	if c.ExpiresAt == "" {
		return time.Time{}, nil
	}
	return parseDate(c.ExpiresAt)
}

// parseDate parses an RFC 3339 time or a YYYY-MM-DD date.
func parseDate(v string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339, "2006-01-02"} {
		if t, err := time.Parse(layout, v); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is neither RFC 3339 nor YYYY-MM-DD", v)
}
