package main

import (
	"fmt"
	"strings"
	"testing"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

// TestQueueMove: the mail waiting on the route of a credential taken
// out of the configuration moves to the route of the one configured,
// more than a batch of it, after a count; a message being sent stays; a
// target whose credential is not configured, and a move without --yes
// and no terminal to ask on, are refused with nothing moved.
func TestQueueMove(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfigCredentials(t, srv.Addr(), "new")
	q := queue.New(srv.Client(t), queue.Options{})
	ctx := t.Context()
	const from, to = "app:old:billing@contoso.com", "app:new:billing@contoso.com"
	for i := range 601 {
		if _, _, err := q.Enqueue(ctx, queue.Submission{Route: from, App: "crm", From: "billing@contoso.com",
			To: []string{fmt.Sprintf("r%d@example.org", i)}, Body: []byte(fmt.Sprintf("Subject: %d\r\n\r\nx\r\n", i))}); err != nil {
			t.Fatal(err)
		}
	}
	sending := leaseOne(ctx, t, q, from)
	if err := q.HoldRoute(ctx, from, `credential "old" of route app:old:billing@contoso.com is not configured`); err != nil {
		t.Fatal(err)
	}

	if r := runCmd(t, "queue", "move", "--config", cfg, "--route", from, "--to", "app:gone:billing@contoso.com", "--yes"); r.code != exitUsage ||
		!strings.Contains(r.stderr, `credential "gone" is not configured`) {
		t.Errorf("move to an unconfigured credential's route: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := runCmd(t, "queue", "move", "--config", cfg, "--route", from, "--to", to); r.code != exitError ||
		!strings.Contains(r.stderr, "600 messages waiting on "+from+" to "+to+" would be moved; run again with --yes") {
		t.Errorf("move without --yes and no terminal: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r := runCmd(t, "queue", "move", "--config", cfg, "--route", from, "--to", to, "--yes")
	if r.code != exitOK {
		t.Fatalf("move: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{
		"moved 600 messages from " + from + " to " + to + "\n",
		"1 being sent stay on " + from,
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("move output lacks %q:\n%s", want, r.stdout)
		}
	}
	st, err := q.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, rs := range st.Routes {
		switch rs.Route {
		case from:
			if rs.Held+rs.Ready+rs.Scheduled != 0 || rs.Leased != 1 {
				t.Errorf("%s after the move: %+v", from, rs)
			}
		case to:
			if rs.Ready != 600 {
				t.Errorf("%s after the move: %+v, want 600 ready", to, rs)
			}
		}
	}
	if m, err := q.Get(ctx, sending.ID); err != nil || m.Route != from || m.State != queue.Leased {
		t.Errorf("the message being sent: %+v %v", m, err)
	}
	if r := runCmd(t, "queue", "move", "--config", cfg, "--route", from, "--to", to, "--yes"); r.code != exitOK ||
		!strings.Contains(r.stdout, "no messages waiting on "+from) {
		t.Errorf("move again: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
