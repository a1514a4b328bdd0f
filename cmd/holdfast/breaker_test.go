package main

import (
	"strings"
	"testing"

	"holdfast/queue/redistest"
)

func TestBreakerCommands(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfigCredentials(t, srv.Addr(), "contoso")

	out := mustRun(t, "breaker", "trip", "--config", cfg, "cred:contoso")
	if !strings.Contains(out, "cred:contoso: tripped") {
		t.Fatalf("trip: %q", out)
	}
	out = mustRun(t, "breaker", "status", "--config", cfg)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[1], "cred:contoso") || !strings.Contains(lines[1], " open ") ||
		!strings.Contains(lines[1], "tripped by an operator") {
		t.Fatalf("status after trip:\n%s", out)
	}
	if out := mustRun(t, "breaker", "probe", "--config", cfg, "cred:contoso"); !strings.Contains(out, "probe requested") {
		t.Fatalf("probe: %q", out)
	}
	mustRun(t, "breaker", "reset", "--config", cfg, "cred:contoso")
	if list := breakerList(t, cfg); len(list) != 1 || list[0].State != "closed" {
		t.Fatalf("status after reset: %+v", list)
	}
	r := runCmd(t, "breaker", "probe", "--config", cfg, "cred:contoso")
	if r.code != exitError || !strings.Contains(r.stderr, "it is closed") {
		t.Fatalf("probe of a closed breaker: exit %d, %q", r.code, r.stderr)
	}
	if r := runCmd(t, "breaker", "trip", "--config", cfg); r.code != exitUsage {
		t.Fatalf("trip without a name: exit %d", r.code)
	}
	// hold: open until reset, and not probed.
	if out := mustRun(t, "breaker", "hold", "--config", cfg, "cred:contoso"); !strings.Contains(out, "cred:contoso: held") {
		t.Fatalf("hold: %q", out)
	}
	out = mustRun(t, "breaker", "status", "--config", cfg)
	if !strings.Contains(out, "held until reset") || !strings.Contains(out, "held by an operator") {
		t.Fatalf("status after hold:\n%s", out)
	}
	if list := breakerList(t, cfg); len(list) != 1 || list[0].State != "open" || !list[0].HeldByOperator {
		t.Fatalf("status --json after hold: %+v", list)
	}
	if out := mustRun(t, "breaker", "trip", "--config", cfg, "cred:contoso"); !strings.Contains(out, "still held by an operator") {
		t.Fatalf("trip of a held breaker: %q", out)
	}
	r = runCmd(t, "breaker", "probe", "--config", cfg, "cred:contoso")
	if r.code != exitError || !strings.Contains(r.stderr, "held by an operator until reset") {
		t.Fatalf("probe of a held breaker: exit %d, %q", r.code, r.stderr)
	}
	mustRun(t, "breaker", "reset", "--config", cfg, "cred:contoso")
	if list := breakerList(t, cfg); len(list) != 1 || list[0].State != "closed" || list[0].HeldByOperator {
		t.Fatalf("status after the hold's reset: %+v", list)
	}
	// A mailbox is named in lower case, as the relays check it.
	r = runCmd(t, "breaker", "trip", "--config", cfg, "mbx:Alice@Contoso.com")
	if r.code != exitOK || strings.Contains(r.stderr, "alice") || !strings.Contains(r.stdout, "mbx:alice@contoso.com: tripped") {
		t.Fatalf("trip of a mailbox: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestBreakerUnknownName: a name no relay checks (a typo, a credential
// not in the configuration) is refused by trip and probe, and opens
// nothing; reset forgets a record left by a credential taken out of the
// configuration, so that it is no longer listed or exported as open.
func TestBreakerUnknownName(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfigCredentials(t, srv.Addr(), "contoso")
	mustRun(t, "breaker", "trip", "--config", cfg, "cred:contoso")

	for _, verb := range []string{"trip", "probe"} {
		r := runCmd(t, "breaker", verb, "--config", cfg, "cred:nope", "contoso")
		if r.code != exitUsage || r.stdout != "" || !strings.Contains(r.stderr, "cred:nope") ||
			!strings.Contains(r.stderr, "cred:contoso") {
			t.Fatalf("%s of unknown names: exit %d, stdout %q, stderr %q; want exit 2 naming it and the known ones", verb, r.code, r.stdout, r.stderr)
		}
	}
	if list := breakerList(t, cfg); len(list) != 1 || list[0].Name != "cred:contoso" {
		t.Fatalf("after refused trips the breakers are %+v; want cred:contoso only", list)
	}

	// The credential leaves the configuration while its breaker is open.
	// A plain reset refuses the name (a typo, or the wrong --config, must
	// not remove a record relays use) and points at --forget.
	other := writeConfigCredentials(t, srv.Addr(), "fabrikam")
	r := runCmd(t, "breaker", "reset", "--config", other, "cred:contoso")
	if r.code != exitUsage || r.stdout != "" || !strings.Contains(r.stderr, "--forget") {
		t.Fatalf("reset of a credential no longer configured: exit %d, stdout %q, stderr %q; want 2 pointing at --forget", r.code, r.stdout, r.stderr)
	}
	for _, names := range [][]string{{"cred:fabrikam"}, {"cred:nope"}, {"cred:contoso", "cred:fabrikam"}} {
		r := runCmd(t, append([]string{"breaker", "reset", "--forget", "--config", other}, names...)...)
		if r.code != exitUsage || r.stdout != "" {
			t.Fatalf("reset --forget %v (configured, or without a record): exit %d, stdout %q, stderr %q; want 2 and nothing removed", names, r.code, r.stdout, r.stderr)
		}
	}
	r = runCmd(t, "breaker", "reset", "--forget", "--config", other, "cred:contoso")
	if r.code != exitOK || !strings.Contains(r.stdout, "cred:contoso: forgotten") {
		t.Fatalf("reset --forget of a credential no longer configured: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if list := breakerList(t, other); len(list) != 1 || list[0].Name != "cred:fabrikam" || list[0].State != "closed" {
		t.Fatalf("after forgetting cred:contoso the breakers are %+v; want cred:fabrikam, closed", list)
	}
}

// TestBreakerForgetMailbox: a mailbox breaker's record, left by a trip of
// a mistyped address or by a mailbox no longer used, can be removed with
// reset --forget; without a record the name is refused.
func TestBreakerForgetMailbox(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfigCredentials(t, srv.Addr(), "contoso")
	mustRun(t, "breaker", "trip", "--config", cfg, "mbx:typo@contoso.com")
	if list := breakerList(t, cfg); len(list) != 2 || list[1].Name != "mbx:typo@contoso.com" || list[1].State != "open" {
		t.Fatalf("after the trip the breakers are %+v; want cred:contoso and mbx:typo@contoso.com, open", list)
	}
	r := runCmd(t, "breaker", "reset", "--forget", "--config", cfg, "mbx:typo@contoso.com")
	if r.code != exitOK || !strings.Contains(r.stdout, "mbx:typo@contoso.com: forgotten") {
		t.Fatalf("reset --forget of a mailbox breaker: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if list := breakerList(t, cfg); len(list) != 1 || list[0].Name != "cred:contoso" {
		t.Fatalf("after forgetting the mailbox breaker the breakers are %+v; want cred:contoso only", list)
	}
	r = runCmd(t, "breaker", "reset", "--forget", "--config", cfg, "mbx:typo@contoso.com")
	if r.code != exitUsage || !strings.Contains(r.stderr, "no such breaker record") {
		t.Fatalf("reset --forget of a forgotten mailbox breaker: exit %d, stderr %q; want 2, no such record", r.code, r.stderr)
	}
}

// breakerRow is a breaker as "breaker status --json" lists it.
type breakerRow struct {
	Name           string `json:"name"`
	State          string `json:"state"`
	HeldByOperator bool   `json:"held_by_operator"`
}

// breakerList runs "breaker status --json" with the configuration cfg.
func breakerList(t *testing.T, cfg string) []breakerRow {
	t.Helper()
	var list []breakerRow
	decode(t, mustRun(t, "breaker", "status", "--config", cfg, "--json"), &list)
	return list
}
