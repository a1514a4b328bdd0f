package relay

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The open-relay test: swaks, as a spammer probing a relay would use it,
// tries every classic trick to make Holdfast accept mail it must not.
// Nothing may be stored unless an authenticated application sends as one
// of its own senders.

// openRelaySenders are the senders of the application in these tests: two
// addresses, an ASCII domain whose name has a "k" and an IDN domain with
// an "å", so that Unicode case folding has something to fold into.
var openRelaySenders = []string{"billing@contoso.com", "kelly@bank.example", "@kontoso.example", "@bånk.example"}

func newOpenRelayEnv(t *testing.T) *smtpEnv {
	return newSMTPEnv(t, func(o *Options) {
		// o.Apps shares its array with the fixture's options, whose
		// elements the fixture's apps point to: this changes the
		// application the listeners will serve, before they start.
		app := &o.Apps[0]
		if app.Username != crmUser {
			t.Fatalf("the fixture's first application is %q, want %q", app.Username, crmUser)
		}
		app.Senders = openRelaySenders
		app.rules = parseSenderRules(openRelaySenders)
	})
}

// swaksRun runs swaks against addr with args and returns its transcript.
// swaks exits non-zero when the server refuses something, which is what
// most of these runs expect, so its status is not an error here.
func swaksRun(t *testing.T, addr string, args ...string) string {
	t.Helper()
	swaks, err := exec.LookPath("swaks")
	if err != nil {
		t.Fatalf("swaks not found on PATH: install it (Debian: apt-get install swaks)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args = append([]string{"--server", addr, "--ehlo", "probe.test", "--timeout", "20"}, args...)
	out, err := exec.CommandContext(ctx, swaks, args...).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("swaks %v: %v\n%s", args, ctx.Err(), out)
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("swaks %v: %v\n%s", args, err, out)
	}
	if strings.Contains(string(out), "requires Net::SSLeay") {
		t.Fatalf("swaks cannot do STARTTLS: install Net::SSLeay (Debian: apt-get install libnet-ssleay-perl libio-socket-ssl-perl)")
	}
	return string(out)
}

// swaksReply returns the server's reply to the first client line that
// starts with cmd (e.g. "MAIL FROM:"), from a swaks transcript.
func swaksReply(out, cmd string) string {
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		// Client lines are "-> " (plain) or " ~> " (TLS); server lines
		// "<- ", "<~ ", and refusals "<** " or "<~* ".
		if !strings.Contains(l, "> "+cmd) {
			continue
		}
		for _, r := range lines[i+1:] {
			r = strings.TrimSpace(r)
			if strings.HasPrefix(r, "<") {
				_, text, _ := strings.Cut(r, " ")
				return strings.TrimSpace(text)
			}
		}
	}
	return ""
}

// storedCount is how many messages the queue holds.
func storedCount(t *testing.T, e *smtpEnv) int64 {
	t.Helper()
	st, err := e.f.queue.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st.Total.Ready + st.Total.Scheduled + st.Total.Leased + st.Total.Held + st.Total.Dead
}

// openRelayTricks are senders (and recipients) a relay must refuse from an
// application allowed only openRelaySenders. want is the start of the
// reply to MAIL FROM.
var openRelayTricks = []struct {
	name, from, want string
}{
	{"foreign sender", "ceo@evil.example", "550 5.7.60 "},
	{"sender's domain as a subdomain", "billing@contoso.com.evil.example", "550 5.7.60 "},
	{"percent hack", "billing%evil.example@contoso.com", "550 5.7.60 "},
	{"percent hack, allowed address first", "billing@contoso.com%evil.example", "501 5.1.7 "},
	{"percent hack to a foreign domain", "billing%contoso.com@evil.example", "550 5.7.60 "},
	{"bang path", "evil.example!ceo@contoso.com", "550 5.7.60 "},
	{"source route", "@contoso.com:ceo@evil.example", "550 5.7.60 "},
	{"quoted local part with an @", `"billing@contoso.com"@evil.example`, "501 5.1.7 "},
	{"IP-literal domain", "billing@[127.0.0.1]", "501 5.1.7 "},
	{"IPv6-literal domain", "billing@[IPv6:::1]", "501 5.1.7 "},
	{"Kelvin sign in a domain, without SMTPUTF8", "x@\u212Aontoso.example", "553 5.6.7 "},
}

func TestOpenRelayWithoutAuth(t *testing.T) {
	e := newOpenRelayEnv(t)
	froms := []struct{ name, from string }{{"allowed sender", "billing@contoso.com"}}
	for _, tc := range openRelayTricks {
		froms = append(froms, struct{ name, from string }{tc.name, tc.from})
	}
	for _, tc := range froms {
		for _, listener := range []struct {
			name, addr string
			tls        []string
		}{{"STARTTLS", e.addr, []string{"--tls"}}, {"plain", e.insecure, nil}} {
			t.Run(tc.name+"/"+listener.name, func(t *testing.T) {
				args := append(listener.tls, "--from", tc.from, "--to", "victim@example.org")
				out := swaksRun(t, listener.addr, args...)
				if got := swaksReply(out, "MAIL FROM:"); !strings.HasPrefix(got, "530 5.7.0 ") && !strings.HasPrefix(got, "5") {
					t.Errorf("MAIL FROM:<%s> without AUTH got %q, want a refusal (530 5.7.0)\n%s", tc.from, got, out)
				}
				if got := swaksReply(out, "RCPT TO:"); got != "" && !strings.HasPrefix(got, "5") {
					t.Errorf("RCPT TO without AUTH got %q, want a refusal\n%s", got, out)
				}
			})
		}
	}
	// Without AUTH, even the application's own sender gets 530.
	out := swaksRun(t, e.insecure, "--from", "billing@contoso.com", "--to", "victim@example.org")
	if got := swaksReply(out, "MAIL FROM:"); !strings.HasPrefix(got, "530 5.7.0 ") {
		t.Errorf("MAIL FROM without AUTH got %q, want 530 5.7.0", got)
	}
	if n := storedCount(t, e); n != 0 {
		t.Errorf("%d messages stored from unauthenticated sessions", n)
	}
}

func TestOpenRelayForeignSenderAfterAuth(t *testing.T) {
	e := newOpenRelayEnv(t)
	auth := []string{"--auth", "PLAIN", "--auth-user", crmUser, "--auth-password", crmPassword}
	for _, tc := range openRelayTricks {
		t.Run(tc.name, func(t *testing.T) {
			out := swaksRun(t, e.insecure, append(auth, "--from", tc.from, "--to", "victim@example.org")...)
			if got := swaksReply(out, "AUTH"); !strings.HasPrefix(got, "235 ") {
				t.Fatalf("AUTH got %q\n%s", got, out)
			}
			if got := swaksReply(out, "MAIL FROM:"); !strings.HasPrefix(got, tc.want) {
				t.Errorf("MAIL FROM:<%s> got %q, want %q…\n%s", tc.from, got, tc.want, out)
			}
		})
	}
	if n := storedCount(t, e); n != 0 {
		t.Fatalf("%d messages stored with a foreign sender", n)
	}
	// The allowed sender is accepted, also behind a source route (which
	// RFC 5321 says to ignore) and as a quoted local part that is the
	// same address; what is stored is the plain address.
	queued := regexp.MustCompile(`250 2\.0\.0 Queued as (\S+)`)
	for _, from := range []string{"billing@contoso.com", "@evil.example:billing@contoso.com", `"billing"@contoso.com`} {
		out := swaksRun(t, e.insecure, append(auth, "--from", from, "--to", "victim@example.org")...)
		m := queued.FindStringSubmatch(out)
		if m == nil {
			t.Errorf("allowed sender %s was not accepted:\n%s", from, out)
			continue
		}
		msg, err := e.f.queue.Get(context.Background(), m[1])
		if err != nil {
			t.Fatal(err)
		}
		if msg.From != "billing@contoso.com" {
			t.Errorf("MAIL FROM:<%s> stored as %q, want billing@contoso.com", from, msg.From)
		}
	}
}

// Unicode case folding: swaks (20201014) cannot announce SMTPUTF8, so
// these run as a raw SMTP conversation. A sender that only matches an
// allowed one after Unicode case mapping is a different address to
// Exchange: it must be refused, never accepted and dead-lettered later.
func TestOpenRelayUnicodeCaseFolding(t *testing.T) {
	e := newOpenRelayEnv(t)
	for _, tc := range []struct{ name, from string }{
		{"Kelvin sign in a domain", "x@\u212Aontoso.example"},
		{"Kelvin sign in an address", "\u212Aelly@bank.example"},
		{"Angstrom sign in an IDN domain", "x@b\u212Bnk.example"},
		{"upper-case A with ring in an IDN domain", "x@b\u00C5nk.example"},
		{"long s", "billing@contoso.com\u017F"},
		{"dotted capital I", "b\u0130lling@contoso.com"},
		{"fullwidth letters", "billing@\uff43ontoso.com"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialSMTP(t, e.insecure)
			c.login()
			c.cmd(fmt.Sprintf("MAIL FROM:<%s> SMTPUTF8", tc.from), "550 5.7.60 ")
		})
	}
	// Real IDN senders still work, in their own case and in ASCII upper
	// case.
	for _, from := range []string{"x@bånk.example", "X@BåNK.EXAMPLE", "KELLY@Bank.Example", "x@KONTOSO.example"} {
		t.Run(from, func(t *testing.T) {
			c := dialSMTP(t, e.insecure)
			c.login()
			c.cmd(fmt.Sprintf("MAIL FROM:<%s> SMTPUTF8", from), "250 ")
		})
	}
	if n := storedCount(t, e); n != 0 {
		t.Errorf("%d messages stored", n)
	}
}

// 10,000 RCPTs in one transaction: the first max_recipients (500) are
// accepted, every later one gets 452 4.5.3, the session survives and the
// message is stored once with 500 recipients.
func TestOpenRelayTenThousandRecipients(t *testing.T) {
	e := newOpenRelayEnv(t)
	const n = 10_000
	to := make([]string, n)
	for i := range to {
		to[i] = fmt.Sprintf("r%d@example.org", i)
	}
	// The list is longer than one command-line argument may be: it goes
	// in a swaks configuration file.
	config := filepath.Join(t.TempDir(), "swaksrc")
	if err := os.WriteFile(config, []byte("to "+strings.Join(to, ",")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := swaksRun(t, e.insecure, "--config", config, "--auth", "PLAIN", "--auth-user", crmUser, "--auth-password", crmPassword,
		"--pipeline", "--from", "billing@contoso.com", "--header", "To: undisclosed-recipients:;")
	accepted := len(regexp.MustCompile(`(?m)^\s*<\S*\s+250 .*<r\d+@example\.org>`).FindAllString(out, -1))
	refused := strings.Count(out, "452 4.5.3")
	t.Logf("%d RCPTs: %d accepted, %d refused with 452 4.5.3", n, accepted, refused)
	if accepted != 500 || refused != n-500 {
		t.Errorf("%d accepted and %d refused, want 500 and %d\n%s", accepted, refused, n-500, out[max(0, len(out)-3000):])
	}
	ms := smtpReady(t, e.f)
	if len(ms) != 1 {
		t.Fatalf("%d messages stored, want 1\n%s", len(ms), out[max(0, len(out)-3000):])
	}
	if len(ms[0].To) != 500 || ms[0].To[0] != to[0] || ms[0].To[499] != to[499] {
		t.Errorf("stored %d recipients (%v … ), want the first 500", len(ms[0].To), ms[0].To[:min(3, len(ms[0].To))])
	}
}
