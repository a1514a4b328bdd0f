package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"holdfast/auth"
	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
	"holdfast/queue/redistest"
	"holdfast/relay"
)

// TestDevConfigAgrees runs the relay with "make run"'s configuration
// (deploy/local/holdfast.dev.yaml, its listeners and files moved to a
// temporary directory) against the simulator seeded with
// deploy/local/sim.yaml: the demo app may send from any @example.com
// address, as the README says, and every such message is delivered, none
// dead-lettered with SendAsDenied. The simulator reads its secret from the
// relay's secret file, so they agree after a rotation and a restart. The
// secret ends a plausible time after the simulator's start, past the
// expiry monitor's 30-day warning, and the relay reads that date from
// Graph, not 9999-12-31.
func TestDevConfigAgrees(t *testing.T) {
	dir := t.TempDir()
	// sim.yaml names ../../var/dev/dev.secret, relative to itself.
	seedDir := filepath.Join(dir, "deploy", "local")
	secretFile := filepath.Join(dir, "var", "dev", "dev.secret")
	for _, d := range []string{seedDir, filepath.Dir(secretFile)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	seed, err := os.ReadFile("../../deploy/local/sim.yaml")
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(seedDir, "sim.yaml"), string(seed))
	// A rotated secret, as after the README tour: a restarted simulator
	// must accept it.
	mustWrite(t, secretFile, "rotated-secret\n")
	cfg, err := loadConfig(filepath.Join(seedDir, "sim.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.HTTPSAddr, cfg.SMTPAddr, cfg.AdminAddr = "", "", ""
	lifetime := cfg.Tenants[0].Apps[0].Secrets[0].ExpiresIn
	if lifetime < 31*24*time.Hour || lifetime > 2*365*24*time.Hour {
		t.Errorf("the dev secret's expires_in is %s, want from 31 days (past the 30-day warning) to two years", lifetime)
	}
	before := time.Now().Truncate(time.Second)
	s, err := sim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	o, err := relay.Load("../../deploy/local/holdfast.dev.yaml")
	if err != nil {
		t.Fatal(err)
	}
	srv := redistest.Start(t)
	o.Redis.Addrs = []string{srv.Addr()}
	o.SMTP.Listeners = []relay.Listener{{Addr: "127.0.0.1:0", Insecure: true}}
	o.SMTP.CertFile, o.SMTP.KeyFile = "", ""
	o.HTTP.Addr = "127.0.0.1:0"
	o.Ops.Addr = "127.0.0.1:0"
	o.Credentials[0].Authority = s.AuthorityURL()
	o.Credentials[0].ClientSecretFile = secretFile
	o.Exchange.SMTPAddr, o.Exchange.GraphURL = s.SMTPAddr(), s.GraphURL()
	o.Exchange.CAFile = filepath.Join(dir, "sim-ca.pem")
	mustWrite(t, o.Exchange.CAFile, string(s.CACertPEM()))
	o.Exchange.GrantKeyFile = filepath.Join(dir, "grants.key")
	mustWrite(t, o.Exchange.GrantKeyFile, strings.Repeat("ab", 32))
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(t.Context(), o, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	r.Start()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r.Shutdown(ctx)
	}()

	c, err := smtp.Dial(r.SMTPAddrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "demo", "demo-password")); err != nil {
		t.Fatal(err)
	}
	senders := []string{"app@example.com", "billing@example.com", "alice@example.com", "bob@example.com", "Carol@Example.com"}
	for i, from := range senders {
		msg := fmt.Sprintf("From: <%s>\r\nTo: <someone@example.org>\r\nSubject: tour %d\r\n\r\nhello\r\n", from, i)
		if err := c.SendMail(from, []string{"someone@example.org"}, strings.NewReader(msg)); err != nil {
			t.Errorf("send from %s: %v", from, err)
		}
	}
	err = c.Mail("someone@fabrikam.example", nil)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 60}) {
		t.Errorf("MAIL FROM a sender outside @example.com: %v, want 550 5.7.60", err)
	}

	deadline := time.Now().Add(15 * time.Second)
	for s.ReceivedCount() < len(senders) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	q := queue.New(srv.Client(t), queue.Options{})
	st, err := q.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if n := s.ReceivedCount(); n != len(senders) || st.Total.Dead != 0 {
		t.Errorf("%d of %d delivered, %d dead letters; queue %+v", n, len(senders), st.Total.Dead, st.Total)
		for _, rt := range st.Routes {
			if rt.Dead > 0 {
				ms, _ := q.List(t.Context(), rt.Route, queue.Dead, 0, 10)
				for _, m := range ms {
					t.Logf("dead: from %s via %s: %s", m.From, m.Route, m.LastError)
				}
			}
		}
	}
	checkDevExpiry(t, r.Expiry(), before.Add(lifetime), after.Add(lifetime))

	got := map[string]string{}
	for _, m := range s.Received() {
		got[strings.ToLower(m.From)] = m.Mailbox
	}
	for from, mailbox := range map[string]string{"billing@example.com": "billing@example.com",
		"alice@example.com": "alice@example.com", "bob@example.com": "app@example.com"} {
		if got[from] != mailbox {
			t.Errorf("mail from %s sent as %q, want %s", from, got[from], mailbox)
		}
	}
}

// checkDevExpiry waits for the expiry monitor's read of Graph at start
// and checks that it found the dev secret's end from first to last, with
// no warning.
func checkDevExpiry(t *testing.T, m *relay.ExpiryMonitor, first, last time.Time) {
	t.Helper()
	var ce relay.CredentialExpiry
	deadline := time.Now().Add(10 * time.Second)
	for {
		ce = m.Expiries()[0]
		if ce.Source == relay.SourceGraph || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if ce.Source != relay.SourceGraph || ce.Level != auth.LevelOK || ce.ExpiresAt.Before(first) || ce.ExpiresAt.After(last) {
		t.Errorf("the dev credential's expiry: %s from %q, level %s (Graph error %q); want from Graph, level ok, from %s to %s",
			ce.ExpiresAt.Format(time.RFC3339), ce.Source, ce.Level, ce.GraphError, first.Format(time.RFC3339), last.Format(time.RFC3339))
	}
}

func mustWrite(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
