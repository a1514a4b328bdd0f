package main

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"holdfast/breaker"
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
	if out := mustRun(t, "breaker", "probe", "--wait", "0", "--config", cfg, "cred:contoso"); out != "cred:contoso: probe requested: a relay probes it within a second\n" {
		t.Fatalf("probe --wait 0: %q", out)
	}
	mustRun(t, "breaker", "reset", "--config", cfg, "cred:contoso")
	if list := breakerList(t, cfg); len(list) != 1 || list[0].State != "closed" {
		t.Fatalf("status after reset: %+v", list)
	}
	// A closed breaker is what a probe would bring about: success, so a
	// script that rotates a secret, then probes, passes when a relay
	// closed the breaker first.
	r := runCmd(t, "breaker", "probe", "--config", cfg, "cred:contoso")
	if r.code != exitOK || r.stdout != "cred:contoso: closed; there is nothing to probe\n" {
		t.Fatalf("probe of a closed breaker: exit %d, %q %q", r.code, r.stdout, r.stderr)
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
	if r.code != exitError || r.stdout != "cred:contoso: held by an operator until holdfast breaker reset; not probed\n" ||
		r.stderr != "holdfast: breaker probe: still open: cred:contoso (held by an operator)\n" {
		t.Fatalf("probe of a held breaker: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}
	mustRun(t, "breaker", "reset", "--config", cfg, "cred:contoso")
	if list := breakerList(t, cfg); len(list) != 1 || list[0].State != "closed" || list[0].HeldByOperator {
		t.Fatalf("status after the hold's reset: %+v", list)
	}
	if out := mustRun(t, "breaker", "reset", "--config", cfg, "cred:contoso"); out != "cred:contoso: reset: it was closed already (its failure count is cleared)\n" {
		t.Fatalf("reset of a closed breaker: %q", out)
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
	r := runCmd(t, "breaker", "trip", "--config", cfg, "mbx:billing")
	if r.code != exitUsage || !strings.Contains(r.stderr, `"billing" is not a mailbox address`) {
		t.Fatalf("trip of mbx:billing: exit %d, stderr %q; want exit 2 saying it is not an address", r.code, r.stderr)
	}
	if list := breakerList(t, cfg); len(list) != 1 || list[0].Name != "cred:contoso" {
		t.Fatalf("after refused trips the breakers are %+v; want cred:contoso only", list)
	}

	// The credential leaves the configuration while its breaker is open.
	// A plain reset refuses the name (a typo, or the wrong --config, must
	// not remove a record relays use) and points at --forget.
	other := writeConfigCredentials(t, srv.Addr(), "fabrikam")
	r = runCmd(t, "breaker", "reset", "--config", other, "cred:contoso")
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

// TestBreakerProbeWaits: "breaker probe" waits for the probe it asked
// for and prints its result: still open with the reason a relay's probe
// gave, or closed; with no relay to probe, it says so when --wait ends.
func TestBreakerProbeWaits(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfigCredentials(t, srv.Addr(), "contoso")
	set := breaker.New(srv.Client(t), breaker.Options{})
	// relay stands in for a relay's probe loop: it takes the probe once
	// it is asked for, and gives result.
	relay := func(result error) (stop func()) {
		ctx, cancel := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		wg.Go(func() {
			for ctx.Err() == nil {
				if ok, err := set.AcquireProbe(ctx, "cred:contoso"); err == nil && ok {
					if err := set.ProbeResult(ctx, "cred:contoso", result); err != nil {
						t.Errorf("probe result: %v", err)
					}
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
		return func() { cancel(); wg.Wait() }
	}

	const requested = "cred:contoso: probe requested: a relay probes it within a second\n"
	mustRun(t, "breaker", "trip", "--config", cfg, "cred:contoso")
	stop := relay(errors.New("AADSTS7000222: The provided client secret keys for app are expired"))
	// A breaker left open fails the command (exit 1), so that a script
	// knows its mail still waits.
	r := runCmd(t, "breaker", "probe", "--config", cfg, "cred:contoso")
	stop()
	if want := requested + "cred:contoso: probed: still open: AADSTS7000222: The provided client secret keys for app are expired; next probe "; !strings.HasPrefix(r.stdout, want) ||
		r.code != exitError || r.stderr != "holdfast: breaker probe: still open: cred:contoso\n" {
		t.Errorf("probe refused by Entra: exit %d, printed %q and %q; want exit 1, %q...", r.code, r.stdout, r.stderr, want)
	}

	r = runCmd(t, "breaker", "probe", "--wait", "300ms", "--config", cfg, "cred:contoso")
	if want := requested + "cred:contoso: no probe result within 300ms: no relay runs, or the probe waits"; !strings.HasPrefix(r.stdout, want) ||
		r.code != exitError || r.stderr != "holdfast: breaker probe: still open: cred:contoso (no result)\n" {
		t.Errorf("probe with no relay: exit %d, printed %q and %q; want exit 1, %q...", r.code, r.stdout, r.stderr, want)
	}

	// That request is still pending: a fresh trip, and a relay to take
	// the next.
	mustRun(t, "breaker", "reset", "--config", cfg, "cred:contoso")
	mustRun(t, "breaker", "trip", "--config", cfg, "cred:contoso")
	stop = relay(nil)
	out := mustRun(t, "breaker", "probe", "--config", cfg, "cred:contoso")
	stop()
	if out != requested+"cred:contoso: probed: closed, its mail is released\n" {
		t.Errorf("a probe that succeeded printed %q", out)
	}

	// Two breakers with no relay: one wait for both, not one each.
	mustRun(t, "breaker", "trip", "--config", cfg, "mbx:a@contoso.com", "mbx:b@contoso.com")
	start := time.Now()
	r = runCmd(t, "breaker", "probe", "--wait", "1s", "--config", cfg, "mbx:a@contoso.com", "mbx:b@contoso.com")
	if took := time.Since(start); took > 1900*time.Millisecond || strings.Count(r.stdout, "no probe result within 1s") != 2 {
		t.Errorf("two probes with no relay took %v and printed %q; want one wait of 1s for both", took, r.stdout)
	}
	if r.code != exitError || r.stderr != "holdfast: breaker probe: still open: mbx:a@contoso.com (no result), mbx:b@contoso.com (no result)\n" {
		t.Errorf("two probes with no relay: exit %d, %q", r.code, r.stderr)
	}
}

// TestBreakerProbeMixed: a probe of a held, a closed and an open breaker
// asks for the open one's probe whatever the order, reports each, and
// fails naming those left open.
func TestBreakerProbeMixed(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfigCredentials(t, srv.Addr(), "contoso")
	mustRun(t, "breaker", "hold", "--config", cfg, "mbx:h@contoso.com")
	mustRun(t, "breaker", "trip", "--config", cfg, "mbx:o@contoso.com")
	for _, order := range [][]string{
		{"mbx:h@contoso.com", "mbx:c@contoso.com", "mbx:o@contoso.com"},
		{"mbx:o@contoso.com", "mbx:c@contoso.com", "mbx:h@contoso.com"},
	} {
		r := runCmd(t, append([]string{"breaker", "probe", "--wait", "300ms", "--config", cfg}, order...)...)
		for _, want := range []string{
			"mbx:h@contoso.com: held by an operator until holdfast breaker reset; not probed\n",
			"mbx:c@contoso.com: closed; there is nothing to probe\n",
			"mbx:o@contoso.com: probe requested: a relay probes it within a second\n",
			"mbx:o@contoso.com: no probe result within 300ms",
		} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("order %v: stdout lacks %q:\n%s", order, want, r.stdout)
			}
		}
		if r.code != exitError || r.stderr != "holdfast: breaker probe: still open: mbx:h@contoso.com (held by an operator), mbx:o@contoso.com (no result)\n" {
			t.Errorf("order %v: exit %d, stderr %q", order, r.code, r.stderr)
		}
	}
}

// TestBreakerProbeAfterLeaseHeld: a probe already under way when
// "breaker probe" asks (a relay holds its lease, and may have read the
// secret before it was rotated) does not answer the request. Its result
// comes first, a failure; the probe that follows it, with a lease granted
// after the request, succeeds, and that is what the command prints.
func TestBreakerProbeAfterLeaseHeld(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfigCredentials(t, srv.Addr(), "contoso")
	set := breaker.New(srv.Client(t), breaker.Options{})
	ctx := t.Context()
	const name = "cred:contoso"
	mustRun(t, "breaker", "trip", "--config", cfg, name)
	if _, err := set.ProbeNow(ctx, name); err != nil {
		t.Fatal(err)
	}
	if ok, err := set.AcquireProbe(ctx, name); !ok || err != nil {
		t.Fatalf("the probe under way was not granted: %v, %v", ok, err)
	}

	var stdout, stderr syncBuffer
	var wg sync.WaitGroup
	defer wg.Wait()
	cmdCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	code := exitError
	wg.Go(func() {
		code = run(cmdCtx, []string{"breaker", "probe", "--config", cfg, name}, &env{
			stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr,
			getenv: func(string) string { return "" }, now: time.Now,
		})
	})
	const requested = "cred:contoso: probe requested: a relay probes it within a second\n"
	deadline := time.Now().Add(5 * time.Second)
	for stdout.String() != requested {
		if time.Now().After(deadline) {
			t.Fatalf("the command did not ask for the probe within 5s: stdout %q, stderr %q", stdout.String(), stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := set.ProbeResult(ctx, name, errors.New("AADSTS7000215: Invalid client secret provided")); err != nil {
		t.Fatal(err)
	}
	// Several of the command's polls see the earlier probe's failure
	// before the next probe runs.
	time.Sleep(5 * probePoll)
	if ok, err := set.AcquireProbe(ctx, name); !ok || err != nil {
		t.Fatalf("the probe asked for was not granted after the earlier one: %v, %v", ok, err)
	}
	if err := set.ProbeResult(ctx, name, nil); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if code != exitOK || stdout.String() != requested+"cred:contoso: probed: closed, its mail is released\n" {
		t.Errorf("exit %d, printed %q (stderr %q); want the result of the probe granted after the request, closed", code, stdout.String(), stderr.String())
	}
}

// TestPendingProbeAnswered: a probe result answers a request when its
// probe's lease was granted after the request; a record with no answered
// count (results only from relays of an earlier version) is answered by
// any result newer than the one before the request.
func TestPendingProbeAnswered(t *testing.T) {
	before := time.UnixMilli(1_800_000_000_000)
	later := before.Add(time.Second)
	p := pendingProbe{name: "cred:contoso", before: before, asked: 7}
	for _, c := range []struct {
		name string
		st   breaker.Status
		want bool
	}{
		{"no result yet", breaker.Status{LastProbe: before, Answered: 6, AnsweredKnown: true}, false},
		{"a probe under way at the request", breaker.Status{LastProbe: later, Answered: 6, AnsweredKnown: true}, false},
		{"a probe granted after the request", breaker.Status{LastProbe: later, Answered: 7, AnsweredKnown: true}, true},
		{"one granted after a later request too", breaker.Status{LastProbe: later, Answered: 9, AnsweredKnown: true}, true},
		{"an earlier relay's, no result yet", breaker.Status{LastProbe: before}, false},
		{"an earlier relay's result", breaker.Status{LastProbe: later}, true},
	} {
		if got := p.answered(c.st); got != c.want {
			t.Errorf("%s: answered = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestBreakerProbeReopened: a breaker that closed and opened again while
// "breaker probe" waited (a new opening clears the request, so no probe
// answers it) is reported as such at once, not as no result when the
// wait ends.
func TestBreakerProbeReopened(t *testing.T) {
	srv := redistest.Start(t)
	set := breaker.New(srv.Client(t), breaker.Options{})
	ctx := t.Context()
	const name = "cred:contoso"
	if err := set.Trip(ctx, name, "tripped by an operator"); err != nil {
		t.Fatal(err)
	}
	before, err := set.Status(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	n, err := set.AskProbe(ctx, name)
	if err != nil || n == 0 {
		t.Fatalf("AskProbe = %d, %v", n, err)
	}
	if ok, err := set.AcquireProbe(ctx, name); !ok || err != nil {
		t.Fatalf("the probe was not granted: %v, %v", ok, err)
	}
	if err := set.ProbeResult(ctx, name, nil); err != nil {
		t.Fatal(err)
	}
	if err := set.Trip(ctx, name, "tripped again"); err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &out, getenv: func(string) string { return "" }, now: time.Now}
	p := pendingProbe{name: name, asked: n, before: before.LastProbe, generation: before.Generation}
	start := time.Now()
	if open, err := awaitProbes(ctx, e, set, []pendingProbe{p}, 2*time.Second); err != nil || !slices.Equal(open, []string{name}) {
		t.Errorf("awaitProbes = %v, %v; want %s still open", open, err, name)
	}
	want := name + ": closed since the request, its mail released, and open again: tripped again\n"
	if took := time.Since(start); out.String() != want || took > time.Second {
		t.Errorf("after %v printed %q; want at once %q", took.Round(time.Millisecond), out.String(), want)
	}
}
