package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
	"holdfast/queue/redistest"
	"holdfast/relay"
)

// TestQueueStatsMailboxWaits: a mailbox the upstream asked the fleet to
// leave alone shows in "queue stats", with until when and why, in text
// and in JSON, and "queue flush" of its route says its mail still waits;
// an ended wait and a mailbox without mail do not show.
func TestQueueStatsMailboxWaits(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfig(t, srv.Addr())
	rdb := srv.Client(t)
	ctx := t.Context()
	q := queue.New(rdb, queue.Options{})
	enqueueEach(t, q, "app:contoso:billing@contoso.com", "app:contoso:noreply@contoso.com")
	lim := queue.NewLimiter(rdb, nil)
	hold := func(mailbox, kind string, d time.Duration) {
		t.Helper()
		if _, err := lim.HoldMailbox(ctx, mailbox, kind, d); err != nil {
			t.Fatal(err)
		}
	}
	hold("billing@contoso.com", "blocked", 30*time.Minute)
	hold("noreply@contoso.com", "graph", 50*time.Millisecond)
	hold("alice@contoso.com", "blocked", time.Hour) // no mail
	time.Sleep(100 * time.Millisecond)              // the graph wait ends

	out := mustRun(t, "queue", "stats", "--config", cfg)
	var lines []string
	for l := range strings.Lines(out) {
		if strings.HasPrefix(l, "mailbox ") {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "mailbox billing@contoso.com waits until ") ||
		!strings.Contains(lines[0], "(in 30m0s)") && !strings.Contains(lines[0], "(in 29m59s)") ||
		!strings.HasSuffix(lines[0], ": Exchange holds its sending (550 5.2.25x, or its daily recipient quota)") {
		t.Fatalf("queue stats printed the waits %q, want billing's block alone:\n%s", lines, out)
	}

	out = mustRun(t, "queue", "flush", "--config", cfg, "--route", "app:contoso:billing@contoso.com")
	if !strings.Contains(out, "mailbox billing@contoso.com waits until ") || !strings.Contains(out, "; its mail goes out then\n") {
		t.Errorf("queue flush of a waiting mailbox's route does not say it waits:\n%s", out)
	}
	if out := mustRun(t, "queue", "flush", "--config", cfg, "--route", "app:contoso:noreply@contoso.com"); strings.Contains(out, "waits") {
		t.Errorf("queue flush of a route whose wait ended says it waits:\n%s", out)
	}

	var stats struct {
		MailboxWaits []relay.MailboxWait `json:"mailbox_waits"`
	}
	decode(t, mustRun(t, "queue", "stats", "--json", "--config", cfg), &stats)
	if w := stats.MailboxWaits; len(w) != 1 || w[0].Mailbox != "billing@contoso.com" ||
		time.Until(w[0].Until) < 29*time.Minute || !strings.HasPrefix(w[0].Why, "Exchange holds") {
		t.Fatalf("queue stats --json mailbox_waits = %+v", w)
	}
	if !strings.Contains(mustRun(t, "queue", "stats", "--json", "--config", writeConfig(t, redistest.Start(t).Addr())), `"mailbox_waits": []`) {
		t.Error(`queue stats --json of an empty queue has no "mailbox_waits": []`)
	}
}

// TestQueueFlushEndWaits: "queue flush --end-waits" ends the waits of the
// mailbox of the route given, or of every route's mailbox, says what it
// ended and until when each would have lasted, or that nothing waited,
// and leaves a mailbox without mail alone.
func TestQueueFlushEndWaits(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfig(t, srv.Addr())
	rdb := srv.Client(t)
	ctx := t.Context()
	q := queue.New(rdb, queue.Options{})
	const billing, noreply = "app:contoso:billing@contoso.com", "app:contoso:noreply@contoso.com"
	enqueueEach(t, q, billing, noreply)
	lim := queue.NewLimiter(rdb, nil)
	hold := func(mailbox, kind string, d time.Duration) time.Time {
		t.Helper()
		if _, err := lim.HoldMailbox(ctx, mailbox, kind, d); err != nil {
			t.Fatal(err)
		}
		return time.Now().Add(d)
	}
	billingUntil := hold("billing@contoso.com", "blocked", 30*time.Minute)
	hold("noreply@contoso.com", "graph", 10*time.Minute)
	hold("alice@contoso.com", "blocked", time.Hour) // no mail
	waiting := func() []string {
		t.Helper()
		waits, err := lim.MailboxWaits(ctx, []string{"alice@contoso.com", "billing@contoso.com", "noreply@contoso.com"})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, w := range waits {
			out = append(out, w.Mailbox)
		}
		return out
	}

	out := mustRun(t, "queue", "flush", "--config", cfg, "--route", noreply)
	if !strings.Contains(out, "queue flush --end-waits ends the waits on every relay") {
		t.Errorf("queue flush of a waiting mailbox's route does not name --end-waits:\n%s", out)
	}
	out = mustRun(t, "queue", "flush", "--config", cfg, "--route", billing, "--end-waits")
	prefix := "mailbox billing@contoso.com: wait ended (was until "
	line := ""
	for l := range strings.Lines(out) {
		if strings.HasPrefix(l, prefix) {
			line = strings.TrimSpace(l)
		}
	}
	until, _, _ := strings.Cut(strings.TrimPrefix(line, prefix), ": ")
	if at, err := time.Parse(time.RFC3339, until); err != nil || at.Sub(billingUntil).Abs() > 2*time.Second ||
		!strings.HasSuffix(line, ": Exchange holds its sending (550 5.2.25x, or its daily recipient quota))") ||
		!strings.Contains(out, "route "+billing+": 0 scheduled messages made due now\n") || strings.Contains(out, "waits until") {
		t.Fatalf("queue flush --end-waits --route billing printed:\n%s", out)
	}
	if got := waiting(); len(got) != 2 || got[0] != "alice@contoso.com" || got[1] != "noreply@contoso.com" {
		t.Fatalf("after the end of billing's wait, the mailboxes waiting are %v; want alice and noreply", got)
	}

	// Every route's waits end only when asked: on a terminal, or with --yes.
	r := runCmd(t, "queue", "flush", "--config", cfg, "--end-waits")
	if r.code != exitError || !strings.Contains(r.stderr, "the waits of 1 mailbox would end on every relay; run again with --yes") ||
		!strings.Contains(r.stdout, "mailbox noreply@contoso.com waits until ") || strings.Contains(r.stdout, "made due now") {
		t.Fatalf("queue flush --end-waits without --route or --yes: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	r = runTTY(t, "n\n", "queue", "flush", "--config", cfg, "--end-waits")
	if r.code != exitOK || !strings.Contains(r.stdout, "end the waits of 1 mailbox on every relay? ") ||
		!strings.Contains(r.stdout, "no wait ended, nothing flushed\n") || strings.Contains(r.stdout, "made due now") {
		t.Fatalf("queue flush --end-waits answered no: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if got := waiting(); len(got) != 2 {
		t.Fatalf("after queue flush --end-waits was refused, the mailboxes waiting are %v; want alice and noreply still", got)
	}
	out = mustRun(t, "queue", "flush", "--config", cfg, "--end-waits", "--yes")
	if !strings.Contains(out, "mailbox noreply@contoso.com: wait ended (was until ") ||
		!strings.Contains(out, ": Graph throttles it (429); its mail that goes by Graph waits)\n") ||
		strings.Contains(out, "alice") || strings.Contains(out, "billing@contoso.com: wait") {
		t.Fatalf("queue flush --end-waits printed:\n%s", out)
	}
	if got := waiting(); len(got) != 1 || got[0] != "alice@contoso.com" {
		t.Fatalf("after the end of every route's waits, the mailboxes waiting are %v; want alice's, which has no mail", got)
	}
	if out := mustRun(t, "queue", "flush", "--config", cfg, "--end-waits"); !strings.HasPrefix(out, "no mailbox waited\n") {
		t.Fatalf("queue flush --end-waits with nothing waiting printed:\n%s", out)
	}
}

// TestFleetEndWaits: Exchange blocks a mailbox (550 5.2.251) and the two
// running relays leave its mail alone for the block's 30 minutes. Once
// the block is lifted, "queue flush --end-waits" ends the wait, and both
// relays, without a restart, deliver the held mail within seconds, each
// message once, with no further refusal.
func TestFleetEndWaits(t *testing.T) {
	const messages = 12 // every other one from the blocked mailbox
	f := startIncFleet(t, incFleetOptions{mailboxes: 2})
	blocked := f.mailboxes[0]
	f.sim.SetFault(sim.Fault{SMTPDataRefusal: "sender_throttled", SMTPDataRefusalMailbox: blocked})
	sub := f.startSubmitter(2, func(n int) string { return f.mailboxes[n%2] })
	sub.submit(0)
	incWait(t, 10*time.Second, "the blocked mailbox's first message refused", func() bool { return f.counters().SMTPRefusedByFault > 0 })
	refusedAt := time.Now()
	for n := 1; n < messages; n++ {
		sub.submit(n)
	}
	sub.close()
	sub.results(t, messages)
	f.waitDelivered(messages/2, 10*time.Second)
	time.Sleep(2 * time.Second) // room for a relay to try the blocked mailbox
	if n := f.counters().SMTPRefusedByFault; n != 1 {
		t.Fatalf("%d submissions refused, want the first alone: the relays wait", n)
	}
	if n := f.delivered(); n != messages/2 {
		t.Fatalf("%d messages delivered during the block, want the other mailbox's %d", n, messages/2)
	}
	waits, err := relay.MailboxWaits(t.Context(), f.redis.Client(t), []string{"app:contoso:" + blocked}, time.Now)
	if err != nil || len(waits) != 1 || waits[0].Until.Sub(refusedAt) < 29*time.Minute {
		t.Fatalf("the fleet's waits = %+v, %v; want the blocked mailbox's 30 minutes", waits, err)
	}

	f.sim.SetFault(sim.Fault{})
	start := time.Now()
	out := f.cli(0, "queue", "flush", "--end-waits", "--yes")
	want := fmt.Sprintf("mailbox %s: wait ended (was until %s: Exchange holds its sending (550 5.2.25x, or its daily recipient quota))\n",
		blocked, waits[0].Until.Format(time.RFC3339))
	if !strings.HasPrefix(out, want) || strings.Count(out, "wait ended") != 1 || strings.Contains(out, "waits until") {
		t.Errorf("queue flush --end-waits printed:\n%s\nwant it to begin with:\n%s", out, want)
	}
	f.waitDelivered(messages, time.Until(start.Add(5*time.Second)))
	t.Logf("wait ended to the blocked mailbox's %d messages delivered: %v", messages/2, time.Since(start).Round(time.Millisecond))
	time.Sleep(300 * time.Millisecond) // room for a duplicate to show
	f.checkOnce(messages)
	if n := f.counters().SMTPRefusedByFault; n != 1 {
		t.Errorf("%d submissions refused in all, want the first alone", n)
	}
	f.checkRunning()
}

// TestQueueFlushHeldRoute: "queue flush" leaves a route an open breaker
// holds as it is, and says so: how many messages, why, and what releases
// them. A route with nothing held gets no such line.
func TestQueueFlushHeldRoute(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfig(t, srv.Addr())
	ctx := t.Context()
	q := queue.New(srv.Client(t), queue.Options{})
	const held, flowing = "app:contoso:billing@contoso.com", "app:contoso:noreply@contoso.com"
	enqueueEach(t, q, held, held, flowing)
	const why = "credential: breaker cred:contoso open: tripped by an operator"
	if err := q.HoldRoute(ctx, held, why); err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, "queue", "flush", "--config", cfg)
	want := "route " + held + ": 2 messages held (" + why + "); a flush leaves them held: they go when the breaker closes (holdfast breaker status)\n"
	if !strings.Contains(out, want) || strings.Contains(out, flowing+": 1 messages held") || strings.Count(out, "held (") != 1 {
		t.Errorf("queue flush printed:\n%s\nwant the line %q for the held route alone", out, want)
	}
}

// TestQueueStatsLeavesOutEmptyRoutes: a route with no mail left (kept
// until pruned a day later) gets no row in queue stats, which says how
// many it left out; --json lists it.
func TestQueueStatsLeavesOutEmptyRoutes(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfig(t, srv.Addr())
	ctx := t.Context()
	q := queue.New(srv.Client(t), queue.Options{})
	var gone string
	for _, route := range []string{"crm", "web"} {
		id, _, err := q.Enqueue(ctx, queue.Submission{Route: route, App: "crm", From: "a@contoso.com",
			To: []string{"b@example.org"}, Body: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		gone = id
	}
	if err := q.Delete(ctx, gone); err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, "queue", "stats", "--config", cfg)
	if !strings.Contains(out, "\ncrm ") || strings.Contains(out, "\nweb ") || !strings.Contains(out, "1 routes with no mail not shown (--json lists every route)\n") {
		t.Errorf("queue stats printed:\n%s\nwant crm's row, not web's, and a line for web", out)
	}
	var js struct {
		Routes []struct {
			Route string `json:"route"`
		} `json:"routes"`
	}
	decode(t, mustRun(t, "queue", "stats", "--json", "--config", cfg), &js)
	if len(js.Routes) != 2 {
		t.Errorf("queue stats --json lists %+v, want both routes", js.Routes)
	}
}
