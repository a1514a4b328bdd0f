package relay

import (
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func exchangeTestOptions() Options {
	o := DefaultOptions()
	o.SMTP.Listeners = []Listener{{Addr: "127.0.0.1:2525", Insecure: true}}
	o.Delivery.Sender = "exchange"
	o.Credentials = []Credential{{Name: "contoso", Tenant: "contoso.onmicrosoft.com", ClientID: "app-1", ClientSecretFile: "/run/secret"}}
	o.Apps = []App{{Name: "crm", PasswordHash: "$2a$10$abcdefghijklmnopqrstuv", Senders: []string{"@contoso.com"},
		Credential: "contoso", Mailbox: "noreply@contoso.com"}}
	return o
}

// TestValidateExchange changes one field per case; the error must name it.
func TestValidateExchange(t *testing.T) {
	o := exchangeTestOptions()
	if err := o.Validate(); err != nil {
		t.Fatalf("valid options: %v", err)
	}
	if o.Credentials[0].Authority != defaultAuthority || o.Apps[0].Via != "smtp" {
		t.Fatalf("defaults not filled: %+v %+v", o.Credentials[0], o.Apps[0])
	}
	for _, tc := range []struct {
		field  string
		change func(*Options)
	}{
		{"exchange.smtp_addr", func(o *Options) { o.Exchange.SMTPAddr = "smtp.office365.com" }},
		{"exchange.insecure_plaintext", func(o *Options) { o.Exchange.InsecurePlaintext = true }},
		{"exchange.graph_url", func(o *Options) { o.Exchange.GraphURL = "http://graph.microsoft.com" }},
		{"exchange.max_connections_per_mailbox", func(o *Options) { o.Exchange.MaxConnectionsPerMailbox = 0 }},
		{"exchange.messages_per_minute", func(o *Options) { o.Exchange.MessagesPerMinute = 0 }},
		{"exchange.recipients_per_day", func(o *Options) { o.Exchange.RecipientsPerDay = -1 }},
		{"exchange.command_timeout", func(o *Options) { o.Exchange.CommandTimeout = Duration(time.Millisecond) }},
		{"credentials", func(o *Options) { o.Credentials = nil }},
		{"credentials[0].name", func(o *Options) { o.Credentials[0].Name = "a:b" }},
		{"credentials[0].tenant", func(o *Options) { o.Credentials[0].Tenant = "" }},
		{"credentials[0].client_id", func(o *Options) { o.Credentials[0].ClientID = "" }},
		{"credentials[0].authority", func(o *Options) { o.Credentials[0].Authority = "http://login.example" }},
		{"credentials[0].client_secret_file", func(o *Options) { o.Credentials[0].ClientSecretFile = "" }},
		{"credentials[0].client_secret_file", func(o *Options) { o.Credentials[0].CertFile = "c.pem" }},
		{"credentials[0].cert_file", func(o *Options) {
			o.Credentials[0].ClientSecretFile = ""
			o.Credentials[0].KeyFile = "k.pem"
		}},
		{"credentials[0].expires_at", func(o *Options) { o.Credentials[0].ExpiresAt = "next year" }},
		{"credentials[0].client_secret_files", func(o *Options) { o.Credentials[0].ClientSecretFiles = []string{"b.secret"} }},
		{"credentials[0].expires_at_by_file", func(o *Options) {
			o.Credentials[0].ExpiresAtByFile = map[string]string{"a.secret": "2027-02-14"}
		}},
		{"credentials[0].expires_at_by_file", func(o *Options) {
			o.Credentials[0].ClientSecretFile = ""
			o.Credentials[0].ClientSecretFiles = []string{"a.secret", "b.secret"}
			o.Credentials[0].ExpiresAtByFile = map[string]string{"a.secret": "soon"}
		}},
		{"credentials[0].expires_at_by_file", func(o *Options) {
			o.Credentials[0].ClientSecretFile = ""
			o.Credentials[0].ClientSecretFiles = []string{"/run/secrets"}
			o.Credentials[0].ExpiresAtByFile = map[string]string{"/run/secret/a": "2027-02-14"}
		}},
		{"credentials[0].expires_at_file", func(o *Options) {
			o.Credentials[0].ClientSecretFile = ""
			o.Credentials[0].ClientSecretFiles = []string{"a.secret", "b.secret"}
			o.Credentials[0].ExpiresAtFile = "a.expires_at"
		}},
		{"credentials[1].name", func(o *Options) { o.Credentials = append(o.Credentials, o.Credentials[0]) }},
		{"apps[0].credential", func(o *Options) { o.Apps[0].Credential = "fabrikam" }},
		{"apps[0].mailbox", func(o *Options) { o.Apps[0].Mailbox = "noreply" }},
		{"apps[0].sender_mailboxes", func(o *Options) { o.Apps[0].SenderMailboxes = map[string]string{"not an address": "a@b.c"} }},
		{"apps[0].sender_mailboxes[@contoso.com]", func(o *Options) { o.Apps[0].SenderMailboxes = map[string]string{"@contoso.com": "x"} }},
		{"credentials[0].auto_rotate_before", func(o *Options) { o.Credentials[0].AutoRotateBefore = Duration(14 * 24 * time.Hour) }},
		{"credentials[0].auto_rotate_before", func(o *Options) {
			o.Credentials[0].ClientSecretFile = ""
			o.Credentials[0].ClientSecretFiles = []string{"/run/secrets"}
			o.Credentials[0].AutoRotateBefore = Duration(200 * 24 * time.Hour)
		}},
		{"credentials[0].rotate_lifetime", func(o *Options) { o.Credentials[0].RotateLifetime = Duration(time.Hour) }},
		{"apps[0].via", func(o *Options) { o.Apps[0].Via = "ews" }},
		{"apps[0].fallback", func(o *Options) { o.Apps[0].Fallback = "smtp" }},
		{"apps[0].fallback", func(o *Options) { o.Apps[0].Via, o.Apps[0].Fallback = "graph", "graph" }},
		{"exchange.fallback_recheck", func(o *Options) { o.Exchange.FallbackRecheck = Duration(time.Millisecond) }},
		{"exchange.grant_redeem_after", func(o *Options) { o.Exchange.GrantRedeemAfter = Duration(time.Minute) }},
		{"exchange.grant_redeem_after", func(o *Options) { o.Exchange.GrantRedeemAfter = Duration(61 * 24 * time.Hour) }},
		{"expiry.check_interval", func(o *Options) { o.Expiry.CheckInterval = Duration(time.Millisecond) }},
		// The dir sender would write the mail of configured credentials
		// into a folder and call it delivered.
		{"delivery.sender", func(o *Options) { o.Delivery.Sender = "dir" }},
		// An ingress-only replica routes as the fleet does: its apps and
		// credentials are checked as the exchange sender's.
		{"apps[0].credential", func(o *Options) { o.Delivery.Sender, o.Apps[0].Credential = "off", "nosuch" }},
	} {
		t.Run(tc.field, func(t *testing.T) {
			o := exchangeTestOptions()
			tc.change(&o)
			err := o.Validate()
			if err == nil || !strings.HasPrefix(err.Error(), tc.field+":") {
				t.Fatalf("Validate: %v; want an error naming %s", err, tc.field)
			}
		})
	}
	o = exchangeTestOptions()
	o.Credentials[0].ExpiresAt = "2027-02-14"
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if exp, _ := o.Credentials[0].Expiry(); exp.Format("2006-01-02") != "2027-02-14" {
		t.Fatalf("expiry %v", exp)
	}
}

// TestDurationDays: durations take whole days ("14d") as well as Go's
// units; a bad one is refused with its line.
func TestDurationDays(t *testing.T) {
	var o struct {
		A, B Duration
	}
	if err := yaml.Unmarshal([]byte("a: 14d\nb: 90m\n"), &o); err != nil {
		t.Fatal(err)
	}
	if o.A.D() != 14*24*time.Hour || o.B.D() != 90*time.Minute {
		t.Fatalf("parsed %v and %v", o.A.D(), o.B.D())
	}
	for _, bad := range []string{"a: 1.5d\n", "a: -2d\n", "a: d\n"} {
		if err := yaml.Unmarshal([]byte(bad), &o); err == nil || !strings.Contains(err.Error(), "14d") {
			t.Errorf("%q: %v, want an error naming the forms", bad, err)
		}
	}
}

// TestWebhookURLNotEchoed checks that a webhook URL the configuration
// check refuses is not printed: its path or query often holds the
// receiver's token, and the error goes to logs and terminals.
func TestWebhookURLNotEchoed(t *testing.T) {
	for _, u := range []string{
		"ftp://hooks.example/hooks/s3cr3t-token",
		"https:///hooks/s3cr3t-token",
		"hooks.example/hooks/s3cr3t-token",
		"https://hooks.example/hooks/s3cr3t-token%zz",
		"https://user:s3cr3t-token@[::1/hooks",
	} {
		o := exchangeTestOptions()
		o.Breakers.WebhookURL = u
		err := o.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), "breakers.webhook_url:") {
			t.Errorf("%q: got %v, want an error naming breakers.webhook_url", u, err)
			continue
		}
		if strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("%q: the error prints the URL: %v", u, err)
		}
	}
}
