package main

import (
	"strings"
	"testing"
	"time"

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
	for _, route := range []string{"app:contoso:billing@contoso.com", "app:contoso:noreply@contoso.com"} {
		if _, _, err := q.Enqueue(ctx, queue.Submission{Route: route, App: "crm", From: "billing@contoso.com",
			To: []string{"ann@example.org"}, Body: []byte("Subject: x\r\n\r\nx\r\n")}); err != nil {
			t.Fatal(err)
		}
	}
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
