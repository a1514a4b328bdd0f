package relay_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"holdfast/relay"
)

// A bcrypt hash (cost 4) of "password"; Validate only checks the form.
const optTestHash = "$2a$04$Xq0PG9rS1Pd5yK4kI8j4UOa6T1eUj0W4w8oM1YgK1pZ9mQ8c0s8W2"

func optTestSHA(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// validOptions returns options that pass Validate, for the cases below to
// change one field each.
func validOptions() relay.Options {
	o := relay.DefaultOptions()
	o.Hostname = "relay.test"
	o.SMTP.CertFile = "/etc/holdfast/tls/cert.pem"
	o.SMTP.KeyFile = "/etc/holdfast/tls/key.pem"
	o.Apps = []relay.App{
		{Name: "crm", PasswordHash: optTestHash, TokenSHA256: optTestSHA("crm-token"),
			Senders: []string{"billing@contoso.com", "@crm.example"}},
		{Name: "web", TokenSHA256: optTestSHA("web-token"), Senders: []string{"web@fabrikam.example"}},
	}
	return o
}

func TestValidateValid(t *testing.T) {
	o := validOptions()
	if err := o.Validate(); err != nil {
		t.Fatalf("valid options: %v", err)
	}
	// Validate fills in the per-app defaults.
	for _, a := range o.Apps {
		if a.Username != a.Name || a.Route != a.Name {
			t.Errorf("app %s: username %q, route %q; want both to default to the name", a.Name, a.Username, a.Route)
		}
	}
	// Explicit ones are kept.
	o = validOptions()
	o.Apps[0].Username, o.Apps[0].Route = "crm-smtp", "crm-route"
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if o.Apps[0].Username != "crm-smtp" || o.Apps[0].Route != "crm-route" {
		t.Errorf("explicit username and route became %q and %q", o.Apps[0].Username, o.Apps[0].Route)
	}
}

// TestValidateAccepts lists single changes that are valid.
func TestValidateAccepts(t *testing.T) {
	tests := []struct {
		name   string
		change func(o *relay.Options)
	}{
		{"insecure on 127.0.0.1", func(o *relay.Options) { o.SMTP.Listeners[0] = relay.Listener{Addr: "127.0.0.1:2587", Insecure: true} }},
		{"insecure on localhost", func(o *relay.Options) { o.SMTP.Listeners[0] = relay.Listener{Addr: "localhost:2587", Insecure: true} }},
		{"insecure on ::1", func(o *relay.Options) { o.SMTP.Listeners[0] = relay.Listener{Addr: "[::1]:2587", Insecure: true} }},
		{"no certificate when every listener is insecure", func(o *relay.Options) {
			o.SMTP.Listeners = []relay.Listener{{Addr: "127.0.0.1:2587", Insecure: true}}
			o.SMTP.CertFile, o.SMTP.KeyFile = "", ""
		}},
		{"secure listener on all addresses", func(o *relay.Options) { o.SMTP.Listeners[0].Addr = ":587" }},
		{"redis cluster seeds", func(o *relay.Options) { o.Redis.Addrs = []string{"10.0.0.1:7000", "10.0.0.2:7000"} }},
		{"http over TLS", func(o *relay.Options) { o.HTTP.CertFile, o.HTTP.KeyFile = "c.pem", "k.pem" }},
		{"SMTP-only app", func(o *relay.Options) { o.Apps[0].TokenSHA256 = "" }},
		{"HTTP-only app", func(o *relay.Options) { o.Apps[0].PasswordHash = "" }},
		{"two apps on one route", func(o *relay.Options) { o.Apps[1].Route = "crm" }},
		{"json debug log", func(o *relay.Options) { o.Log = relay.LogOptions{Level: "debug", Format: "json"} }},
		{"replica named as a pod", func(o *relay.Options) { o.Replica = "holdfast-7d9c5b6f4-x2x9z" }},
		{"replica named as a host", func(o *relay.Options) { o.Replica = "mail-relay_01.eu-west-1.compute.internal" }},
		{"replica named by host and port", func(o *relay.Options) { o.Replica = "vm1:2525" }},
		{"replica of the longest name", func(o *relay.Options) { o.Replica = strings.Repeat("r", 253) }},
		{"hostname shared, replica set", func(o *relay.Options) { o.Hostname, o.Replica = "relay.example.com", "relay-1" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := validOptions()
			tt.change(&o)
			if err := o.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
		})
	}
}

// TestValidate changes one field of valid options per case and checks
// that the error names that field.
func TestValidate(t *testing.T) {
	tests := []struct {
		field  string // the error must start with field + ":"
		change func(o *relay.Options)
	}{
		{"hostname", func(o *relay.Options) { o.Hostname = "" }},
		{"hostname", func(o *relay.Options) { o.Hostname = "relay one" }},
		{"replica", func(o *relay.Options) { o.Replica = "" }},
		{"replica", func(o *relay.Options) { o.Replica = "relay 1" }},
		{"replica", func(o *relay.Options) { o.Replica = "relay-1\nx" }},
		{"replica", func(o *relay.Options) { o.Replica = strings.Repeat("r", 254) }},
		{"redis.addrs", func(o *relay.Options) { o.Redis.Addrs = nil }},
		{"redis.addrs[0]", func(o *relay.Options) { o.Redis.Addrs = []string{"localhost"} }},
		{"redis.addrs[1]", func(o *relay.Options) { o.Redis.Addrs = []string{"10.0.0.1:7000", "10.0.0.2"} }},
		{"smtp.listeners", func(o *relay.Options) { o.SMTP.Listeners = nil }},
		{"smtp.listeners[0].addr", func(o *relay.Options) { o.SMTP.Listeners[0].Addr = "2525" }},
		{"smtp.listeners[0].insecure", func(o *relay.Options) { o.SMTP.Listeners[0] = relay.Listener{Addr: "0.0.0.0:587", Insecure: true} }},
		{"smtp.listeners[0].insecure", func(o *relay.Options) { o.SMTP.Listeners[0] = relay.Listener{Addr: ":2587", Insecure: true} }},
		{"smtp.listeners[1].insecure", func(o *relay.Options) {
			o.SMTP.Listeners = append(o.SMTP.Listeners, relay.Listener{Addr: "192.0.2.10:2587", Insecure: true})
		}},
		{"smtp.cert_file", func(o *relay.Options) { o.SMTP.CertFile = "" }},
		{"smtp.cert_file", func(o *relay.Options) { o.SMTP.KeyFile = "" }},
		{"smtp.max_message_bytes", func(o *relay.Options) { o.SMTP.MaxMessageBytes = 100 }},
		{"smtp.max_recipients", func(o *relay.Options) { o.SMTP.MaxRecipients = 0 }},
		{"smtp.max_line_length", func(o *relay.Options) { o.SMTP.MaxLineLength = 998 }},
		{"smtp.read_timeout", func(o *relay.Options) { o.SMTP.ReadTimeout = 0 }},
		{"smtp.write_timeout", func(o *relay.Options) { o.SMTP.WriteTimeout = -1 }},
		{"smtp.max_connections", func(o *relay.Options) { o.SMTP.MaxConnections = 0 }},
		{"smtp.max_connections_per_ip", func(o *relay.Options) { o.SMTP.MaxConnectionsPerIP = 0 }},
		{"smtp.max_connections_per_app", func(o *relay.Options) { o.SMTP.MaxConnectionsPerApp = -1 }},
		{"smtp.max_connections_per_app", func(o *relay.Options) { o.SMTP.MaxConnectionsPerApp = o.SMTP.MaxConnections + 1 }},
		{"smtp.max_errors", func(o *relay.Options) { o.SMTP.MaxErrors = 0 }},
		{"http.max_connections_per_ip", func(o *relay.Options) { o.HTTP.MaxConnectionsPerIP = 0 }},
		{"smtp.max_inflight_bytes", func(o *relay.Options) { o.SMTP.MaxInflightBytes = 2*o.SMTP.MaxMessageBytes + 64<<10 - 1 }},
		{"smtp.max_inflight_bytes_per_app", func(o *relay.Options) { o.SMTP.MaxInflightBytesPerApp = 2*o.SMTP.MaxMessageBytes + 64<<10 - 1 }},
		{"smtp.max_inflight_bytes_per_app", func(o *relay.Options) { o.SMTP.MaxInflightBytesPerApp = o.SMTP.MaxInflightBytes + 1 }},
		{"smtp.max_inflight_bytes_per_app", func(o *relay.Options) { o.SMTP.MaxInflightBytesPerApp = -1 }},
		{"auth_throttle.exempt_networks", func(o *relay.Options) { o.AuthThrottle.ExemptNetworks = []string{"10.0.0.0/33"} }},
		{"auth_throttle.exempt_networks", func(o *relay.Options) { o.AuthThrottle.ExemptNetworks = []string{"proxy.local"} }},
		{"http.addr", func(o *relay.Options) { o.HTTP.Addr = "8025" }},
		{"http.max_connections", func(o *relay.Options) { o.HTTP.MaxConnections = 0 }},
		{"http.cert_file", func(o *relay.Options) { o.HTTP.CertFile = "c.pem" }},
		{"http.cert_file", func(o *relay.Options) { o.HTTP.KeyFile = "k.pem" }},
		// Validate reports the queue durations as one group.
		{"queue.lifetime", func(o *relay.Options) { o.Queue.Lifetime = 0 }},
		{"queue.backoff_max", func(o *relay.Options) { o.Queue.BackoffMax = relay.Duration(time.Second) }},
		{"queue.max_messages_per_route", func(o *relay.Options) { o.Queue.MaxMessagesPerRoute = -1 }},
		{"queue.delivered_retention", func(o *relay.Options) { o.Queue.DeliveredRetention = -1 }},
		{"queue.idempotency_ttl", func(o *relay.Options) { o.Queue.IdempotencyTTL = 0 }},
		{"queue.held_grace", func(o *relay.Options) { o.Queue.HeldGrace = 0 }},
		{"http.admin_token_sha256", func(o *relay.Options) { o.HTTP.AdminTokenSHA256 = "admin" }},
		{"ops.addr", func(o *relay.Options) { o.Ops.Addr = "8026" }},
		{"ops.basic_auth", func(o *relay.Options) { o.Ops.BasicAuth = true }},
		{"breakers.open_interval", func(o *relay.Options) { o.Breakers.OpenInterval = 0 }},
		{"breakers.max_interval", func(o *relay.Options) { o.Breakers.MaxInterval = relay.Duration(time.Second) }},
		{"breakers.threshold", func(o *relay.Options) { o.Breakers.Threshold = 0 }},
		{"breakers.escalate_mailboxes", func(o *relay.Options) { o.Breakers.EscalateMailboxes = 1 }},
		{"delivery.workers", func(o *relay.Options) { o.Delivery.Workers = 0 }},
		{"delivery.lease", func(o *relay.Options) { o.Delivery.Lease = relay.Duration(time.Second) }},
		{"delivery.poll", func(o *relay.Options) { o.Delivery.Poll = 0 }},
		{"delivery.sender", func(o *relay.Options) { o.Delivery.Sender = "graph" }},
		{"delivery.dir", func(o *relay.Options) { o.Delivery.Dir = "" }},
		{"log.level", func(o *relay.Options) { o.Log.Level = "loud" }},
		{"log.format", func(o *relay.Options) { o.Log.Format = "xml" }},
		{"apps", func(o *relay.Options) { o.Apps = nil }},
		{"apps[0].name", func(o *relay.Options) { o.Apps[0].Name = "" }},
		{"apps[1].name", func(o *relay.Options) { o.Apps[1].Name = "crm" }},
		{"apps[1].username", func(o *relay.Options) { o.Apps[1].Username = "crm" }},
		{"apps[1].username", func(o *relay.Options) { o.Apps[0].Username, o.Apps[1].Username = "shared", "shared" }},
		{"apps[1].token_sha256", func(o *relay.Options) { o.Apps[1].TokenSHA256 = o.Apps[0].TokenSHA256 }},
		{"apps[0]", func(o *relay.Options) { o.Apps[0].PasswordHash, o.Apps[0].TokenSHA256 = "", "" }},
		{"apps[0].password_hash", func(o *relay.Options) { o.Apps[0].PasswordHash = "hunter2" }},
		{"apps[0].token_sha256", func(o *relay.Options) { o.Apps[0].TokenSHA256 = "crm-token" }},
		{"apps[0].token_sha256", func(o *relay.Options) { o.Apps[0].TokenSHA256 = strings.ToUpper(optTestSHA("x")) }},
		{"apps[0].senders", func(o *relay.Options) { o.Apps[0].Senders = nil }},
		{"apps[0].senders[1]", func(o *relay.Options) { o.Apps[0].Senders[1] = "not an address" }},
		{"apps[1].senders[0]", func(o *relay.Options) { o.Apps[1].Senders[0] = "" }},
		{"apps[0].route", func(o *relay.Options) { o.Apps[0].Route = "crm route" }},
		{"apps[0].route", func(o *relay.Options) { o.Apps[0].Route = strings.Repeat("r", 201) }},
	}
	for _, tt := range tests {
		t.Run(tt.field, func(t *testing.T) {
			o := validOptions()
			tt.change(&o)
			err := o.Validate()
			if err == nil {
				t.Fatalf("Validate accepted the change; want an error naming %s", tt.field)
			}
			if !strings.HasPrefix(err.Error(), tt.field+":") {
				t.Fatalf("Validate: %v\nwant an error naming %s", err, tt.field)
			}
		})
	}
}

// minimalYAML is the least configuration that loads: one app and a
// listener that needs no certificate.
const minimalYAML = `
smtp:
  listeners:
    - addr: 127.0.0.1:2587
      insecure: true
apps:
  - name: crm
    token_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    senders: ["@contoso.com"]
`

func TestParseDefaults(t *testing.T) {
	o, err := relay.Parse([]byte(minimalYAML))
	if err != nil {
		t.Fatal(err)
	}
	want := relay.DefaultOptions()
	want.SMTP.Listeners = []relay.Listener{{Addr: "127.0.0.1:2587", Insecure: true}}
	want.Apps = []relay.App{{Name: "crm", Username: "crm", Route: "crm",
		TokenSHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		Senders:     []string{"@contoso.com"}}}
	if !reflect.DeepEqual(o, want) {
		t.Fatalf("Parse(minimal) =\n%+v\nwant the defaults:\n%+v", o, want)
	}
}

func TestDefaultOptions(t *testing.T) {
	o := relay.DefaultOptions()
	checks := []struct {
		name      string
		got, want any
	}{
		{"redis.addrs", o.Redis.Addrs, []string{"127.0.0.1:6379"}},
		{"smtp.listeners", o.SMTP.Listeners, []relay.Listener{{Addr: "127.0.0.1:2525"}}},
		{"smtp.max_message_bytes", o.SMTP.MaxMessageBytes, int64(36700160)},
		{"queue.lifetime", o.Queue.Lifetime.D(), 5 * 24 * time.Hour},
		{"queue.backoff_base", o.Queue.BackoffBase.D(), time.Minute},
		{"queue.backoff_max", o.Queue.BackoffMax.D(), time.Hour},
		{"queue.held_grace", o.Queue.HeldGrace.D(), 5 * 24 * time.Hour},
		{"queue.max_messages_per_route", o.Queue.MaxMessagesPerRoute, 100000},
		{"queue options", o.Queue.Options().MaxPerRoute, 100000},
		{"delivery.workers", o.Delivery.Workers, 8},
		{"breakers", o.Breakers, relay.BreakerOptions{Threshold: 3, OpenInterval: relay.Duration(30 * time.Second),
			MaxInterval: relay.Duration(5 * time.Minute), EscalateMailboxes: 3, PropagationWindow: relay.Duration(5 * time.Minute)}},
		{"log", o.Log, relay.LogOptions{Level: "info", Format: "text"}},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("default %s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if o.Hostname == "" {
		t.Error("default hostname is empty")
	}
	if host, _ := os.Hostname(); host != "" && o.Replica != host {
		t.Errorf("default replica = %q, want the machine's host name %q", o.Replica, host)
	}
	if len(o.Apps) != 0 {
		t.Errorf("default apps = %v, want none", o.Apps)
	}
}

// TestParseUnknownKey: an unknown key is named by its line and its path
// in the configuration, with the options its section takes.
func TestParseUnknownKey(t *testing.T) {
	tests := []struct{ yaml, path, line, options string }{
		{"colour: red\n" + minimalYAML, "colour", "line 1", "hostname, replica, shutdown_timeout,"},
		{"smtp:\n  listner: []\n", "smtp.listner", "line 2", "listeners,"},
		{"redis:\n  addrs: [\"127.0.0.1:6379\"]\n  pasword: x\n", "redis.pasword", "line 3", "password, password_file,"},
		{"apps:\n  - name: crm\n    passwrod_hash: x\n", "apps[0].passwrod_hash", "line 3", "password_hash, password_hash_file,"},
		{"smtp:\n  listeners:\n    - addr: 127.0.0.1:2525\n    - {addr: 127.0.0.1:2587, insecur: true}\n", "smtp.listeners[1].insecur", "line 4", "addr, insecure"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			_, err := relay.Parse([]byte(tt.yaml))
			if err == nil {
				t.Fatalf("Parse accepted the unknown key %s", tt.path)
			}
			if !strings.Contains(err.Error(), tt.line+": "+tt.path+": ") || !strings.Contains(err.Error(), tt.options) {
				t.Fatalf("Parse: %v\nwant an error naming %s at %s, with the options %s", err, tt.path, tt.line, tt.options)
			}
			if strings.Contains(err.Error(), "relay.") {
				t.Errorf("Parse: %v\nnames a Go type", err)
			}
		})
	}
}

func TestParseBadDuration(t *testing.T) {
	tests := []struct{ yaml, value, line string }{
		{"queue:\n  lifetime: 5 days\n", "5 days", "line 2"},
		{"delivery:\n  workers: 2\n  lease: soon\n", "soon", "line 3"},
		{"smtp:\n  read_timeout: 300\n", "300", "line 2"},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			_, err := relay.Parse([]byte(tt.yaml + minimalYAML[strings.Index(minimalYAML, "apps:"):]))
			if err == nil {
				t.Fatalf("Parse accepted the duration %q", tt.value)
			}
			if !strings.Contains(err.Error(), tt.line) || !strings.Contains(err.Error(), tt.value) {
				t.Fatalf("Parse: %v\nwant an error naming %q at %s", err, tt.value, tt.line)
			}
		})
	}
}

func TestParseBadType(t *testing.T) {
	_, err := relay.Parse([]byte("delivery:\n  workers: many\n"))
	if err == nil || !strings.Contains(err.Error(), "line 2: delivery.workers: ") || !strings.Contains(err.Error(), "many") {
		t.Fatalf("Parse of workers: many = %v; want an error at line 2 naming delivery.workers and the value", err)
	}
	for _, tt := range []struct{ yaml, want string }{
		{"log:\n  level:\n    x: 1\n", "line 3: log.level: a section of options where one value belongs"},
		{"queue:\n  lifetime: [1]\n", "line 2: queue.lifetime: a list where one value belongs"},
		{"smtp:\n  listeners: {addr: x}\n", "line 2: smtp.listeners: a section of options where a list belongs"},
		// Two options on the line: the decoder's words, not a guess.
		{"smtp: {listeners: [{addr: x, insecure: maybe}, {addr: y}]}\n", "line 1: cannot unmarshal !!str `maybe` into bool"},
	} {
		if _, err := relay.Parse([]byte(tt.yaml)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse(%q) = %v; want %q", tt.yaml, err, tt.want)
		}
	}
	_, err = relay.Parse([]byte("log:\n  level: verbose\n" + minimalYAML))
	if err == nil || !strings.Contains(err.Error(), "log.level") || !strings.Contains(err.Error(), "debug, info, warn or error") {
		t.Fatalf("Parse of level: verbose = %v; want an error listing the levels", err)
	}
}

func TestParseEmpty(t *testing.T) {
	for _, empty := range []string{"", "\n", "# only a comment\n", "---\n", "null\n", "~\n", "---\n# rendered empty\n"} {
		if _, err := relay.Parse([]byte(empty)); err == nil || !strings.Contains(err.Error(), "holds no settings") {
			t.Errorf("Parse(%q) = %v; want it called empty, not a setting it lacks", empty, err)
		}
	}
	_, err := relay.Parse([]byte("smtp:\n  listeners: [{addr: \"127.0.0.1:2587\", insecure: true}]\n"))
	if err == nil || !strings.HasPrefix(err.Error(), "apps:") {
		t.Fatalf("Parse without apps = %v; want the missing apps named", err)
	}
}

// writeSecret writes a secret file as an operator would, with a trailing
// newline.
func writeSecret(t *testing.T, dir, name, value string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(value+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestParseSecretFiles(t *testing.T) {
	dir := t.TempDir()
	redisPass := writeSecret(t, dir, "redis-password", "r3dis pass")
	hash := writeSecret(t, dir, "crm.hash", optTestHash)
	token := writeSecret(t, dir, "crm.token", optTestSHA("crm-token"))
	o, err := relay.Parse(fmt.Appendf(nil, `
redis:
  password_file: %s
smtp:
  listeners: [{addr: "127.0.0.1:2587", insecure: true}]
apps:
  - name: crm
    password_hash_file: %s
    token_sha256_file: %s
    senders: ["@contoso.com"]
`, redisPass, hash, token))
	if err != nil {
		t.Fatal(err)
	}
	if o.Redis.Password != "r3dis pass" {
		t.Errorf("redis password = %q, want the file's line without its newline", o.Redis.Password)
	}
	if o.Apps[0].PasswordHash != optTestHash {
		t.Errorf("password hash = %q, want %q", o.Apps[0].PasswordHash, optTestHash)
	}
	if o.Apps[0].TokenSHA256 != optTestSHA("crm-token") {
		t.Errorf("token sha256 = %q", o.Apps[0].TokenSHA256)
	}
}

func TestParseSecretFileErrors(t *testing.T) {
	dir := t.TempDir()
	hash := writeSecret(t, dir, "crm.hash", optTestHash)
	token := writeSecret(t, dir, "crm.token", optTestSHA("crm-token"))
	missing := filepath.Join(dir, "missing")
	head := "smtp:\n  listeners: [{addr: \"127.0.0.1:2587\", insecure: true}]\n"
	app := "apps:\n  - name: crm\n    senders: [\"@contoso.com\"]\n"
	tests := []struct {
		name, yaml, field string
	}{
		{"redis password and file", head + app + "redis:\n  password: x\n  password_file: " + hash + "\n", "redis.password_file"},
		{"redis password file missing", head + app + "redis:\n  password_file: " + missing + "\n", "redis.password_file"},
		{"hash and hash file", head + app + "    password_hash: \"" + optTestHash + "\"\n    password_hash_file: " + hash + "\n", "apps[0].password_hash_file"},
		{"hash file missing", head + app + "    password_hash_file: " + missing + "\n", "apps[0].password_hash_file"},
		{"token and token file", head + app + "    token_sha256: " + optTestSHA("t") + "\n    token_sha256_file: " + token + "\n", "apps[0].token_sha256_file"},
		{"token file missing", head + app + "    token_sha256_file: " + missing + "\n", "apps[0].token_sha256_file"},
		// The file's content is validated like an inline value.
		{"hash file holds no hash", head + app + "    password_hash_file: " + token + "\n", "apps[0].password_hash"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := relay.Parse([]byte(tt.yaml))
			if err == nil || !strings.HasPrefix(err.Error(), tt.field+":") {
				t.Fatalf("Parse = %v\nwant an error naming %s", err, tt.field)
			}
			if strings.Contains(tt.name, "missing") && !strings.Contains(err.Error(), missing) {
				t.Fatalf("Parse = %v\nwant the missing file's path", err)
			}
		})
	}
}

func TestLoadNamesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "holdfast.yaml")
	if _, err := relay.Load(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("Load of a missing file = %v; want its path named", err)
	}
	if err := os.WriteFile(path, []byte("log:\n  format: xml\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := relay.Load(path); err == nil || !strings.HasPrefix(err.Error(), path+": ") {
		t.Fatalf("Load of a bad file = %v; want it to start with the path", err)
	}
}

// exampleFile is the documented example configuration at the top of the
// repository.
const exampleFile = "../holdfast.example.yaml"

// TestLoadExample loads the example configuration and checks that it
// states every default.
func TestLoadExample(t *testing.T) {
	o, err := relay.Load(exampleFile)
	if err != nil {
		t.Fatalf("the example configuration does not load: %v", err)
	}
	// Apart from its app, its credential and the STARTTLS certificate,
	// which have no defaults, and the exchange sender, which its
	// credential needs, the example sets every option to its default.
	want := relay.DefaultOptions()
	want.SMTP.CertFile, want.SMTP.KeyFile = o.SMTP.CertFile, o.SMTP.KeyFile
	want.Delivery.Sender = "exchange"
	want.Apps = o.Apps
	want.Credentials = o.Credentials
	got, def := reflect.ValueOf(o), reflect.ValueOf(want)
	for i := range got.NumField() {
		if g, w := got.Field(i).Interface(), def.Field(i).Interface(); !reflect.DeepEqual(g, w) {
			t.Errorf("the example's %s differs from the defaults:\n got %+v\nwant %+v", got.Type().Field(i).Tag.Get("yaml"), g, w)
		}
	}
	if len(o.Apps) != 1 || o.Apps[0].PasswordHash == "" || o.Apps[0].TokenSHA256 == "" {
		t.Errorf("the example should have one app with both a password hash and a token hash: %+v", o.Apps)
	}
}

// TestExampleListsEveryOption checks that every option of Options appears
// in the example configuration, so that a new option gets documented.
func TestExampleListsEveryOption(t *testing.T) {
	data, err := os.ReadFile(exampleFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	// Options whose default cannot be written down appear in a comment.
	commented := map[string]bool{"hostname": true, "replica": true}
	for _, path := range yamlPaths(reflect.TypeFor[relay.Options](), "") {
		if commented[path] {
			if !strings.Contains(string(data), "# "+path+":") {
				t.Errorf("the example does not mention %s in a comment", path)
			}
			continue
		}
		if !hasPath(doc.Content[0], strings.Split(path, ".")) {
			t.Errorf("the example does not set %s", path)
		}
	}
}

// yamlPaths lists the dotted YAML paths of every leaf option in t. A
// slice of structs contributes the fields of its elements, marked "[]".
func yamlPaths(t reflect.Type, prefix string) []string {
	var out []string
	for f := range t.Fields() {
		name, flags, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if flags == "inline" && f.Type.Kind() == reflect.Struct {
			out = append(out, yamlPaths(f.Type, prefix)...)
			continue
		}
		if name == "" || name == "-" {
			continue
		}
		path := prefix + name
		ft := f.Type
		switch {
		case ft.Kind() == reflect.Struct:
			out = append(out, yamlPaths(ft, path+".")...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			out = append(out, yamlPaths(ft.Elem(), path+".[].")...)
		default:
			out = append(out, path)
		}
	}
	return out
}

// hasPath reports whether the YAML node has the key path; "[]" steps into
// the first element of a sequence.
func hasPath(n *yaml.Node, path []string) bool {
	if len(path) == 0 {
		return true
	}
	if path[0] == "[]" {
		return n.Kind == yaml.SequenceNode && len(n.Content) > 0 && hasPath(n.Content[0], path[1:])
	}
	if n.Kind != yaml.MappingNode {
		return false
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == path[0] {
			return hasPath(n.Content[i+1], path[1:])
		}
	}
	return false
}

func ExampleParse() {
	o, err := relay.Parse([]byte(`
smtp:
  listeners:
    - addr: 127.0.0.1:2587
      insecure: true      # AUTH without TLS: loopback development only
apps:
  - name: crm
    token_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    senders: ["@contoso.com"]
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	app := o.Apps[0]
	fmt.Println("username:", app.Username, "route:", app.Route)
	fmt.Println("workers:", o.Delivery.Workers, "lifetime:", o.Queue.Lifetime.D())
	// Output:
	// username: crm route: crm
	// workers: 8 lifetime: 120h0m0s
}

func ExampleOptions_Validate() {
	o := relay.DefaultOptions()
	o.SMTP.Listeners = []relay.Listener{{Addr: "0.0.0.0:587", Insecure: true}}
	fmt.Println(o.Validate())
	// Output: smtp.listeners[0].insecure: AUTH without TLS is only allowed on a loopback address, not "0.0.0.0:587"
}
