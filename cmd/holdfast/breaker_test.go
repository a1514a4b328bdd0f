package main

import (
	"strings"
	"testing"

	"holdfast/queue/redistest"
)

func TestBreakerCommands(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfig(t, srv.Addr())

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
	var list []struct {
		Name  string `json:"name"`
		State string `json:"state"`
	}
	decode(t, mustRun(t, "breaker", "status", "--config", cfg, "--json"), &list)
	if len(list) != 1 || list[0].State != "closed" {
		t.Fatalf("status after reset: %+v", list)
	}
	r := runCmd(t, "breaker", "probe", "--config", cfg, "cred:contoso")
	if r.code != exitError || !strings.Contains(r.stderr, "it is closed") {
		t.Fatalf("probe of a closed breaker: exit %d, %q", r.code, r.stderr)
	}
	if r := runCmd(t, "breaker", "trip", "--config", cfg); r.code != exitUsage {
		t.Fatalf("trip without a name: exit %d", r.code)
	}
	// A name no relay checks is tripped as asked, with a warning; a
	// mailbox is named in lower case, as the relays check it.
	r = runCmd(t, "breaker", "trip", "--config", cfg, "contoso", "mbx:Alice@Contoso.com")
	if r.code != exitOK || !strings.Contains(r.stderr, "warning: contoso is neither") || strings.Contains(r.stderr, "alice") ||
		!strings.Contains(r.stdout, "mbx:alice@contoso.com: tripped") {
		t.Fatalf("trip of unchecked names: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
