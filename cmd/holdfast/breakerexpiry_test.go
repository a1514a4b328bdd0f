package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

// TestBreakerStatusExpiryFromRelays: "breaker status" shows the soonest
// expiry that the relays recorded and that still counts (two checks of
// 12 h and an hour by default); with none, what the configuration gives
// (here nothing).
func TestBreakerStatusExpiryFromRelays(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfigCredentials(t, srv.Addr(), "contoso")
	q := queue.New(srv.Client(t), queue.Options{})
	expires := func() string {
		t.Helper()
		out := mustRun(t, "breaker", "status", "--config", cfg)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		head := lines[0]
		i, j := strings.Index(head, "EXPIRES"), strings.Index(head, "REASON")
		if len(lines) != 2 || i < 0 || j < i || len(lines[1]) < j {
			t.Fatalf("status:\n%s", out)
		}
		return strings.TrimSpace(lines[1][i:j])
	}
	if got := expires(); got != "-" {
		t.Fatalf("EXPIRES with no relay's record and no expires_at: %q, want -", got)
	}
	now := time.Now()
	record := func(replica string, in time.Duration, checked time.Time) time.Time {
		t.Helper()
		at := now.Add(in)
		e := queue.CredentialExpiry{Replica: replica, ExpiresAt: at, Source: "graph", CheckedAt: checked, Until: checked.Add(25 * time.Hour)}
		if err := q.SetCredentialExpiry(t.Context(), "contoso", e); err != nil {
			t.Fatal(err)
		}
		return at
	}
	day := 24 * time.Hour
	at := record("relay-1", 90*day-time.Hour, now)   // 89 days and 23 hours: 90, as creds check counts
	record("relay-2", 5*day, now.Add(-26*time.Hour)) // stopped a day ago
	if want := fmt.Sprintf("%s (90d)", at.UTC().Format(time.DateOnly)); expires() != want {
		t.Errorf("EXPIRES = %q, want relay-1's %q", expires(), want)
	}
	at = record("relay-2", 20*day-time.Hour, now.Add(-time.Hour)) // still on the older secret
	if want := fmt.Sprintf("%s (20d, ROTATE)", at.UTC().Format(time.DateOnly)); expires() != want {
		t.Errorf("EXPIRES = %q, want relay-2's %q", expires(), want)
	}
}
