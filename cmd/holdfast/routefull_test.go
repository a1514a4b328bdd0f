package main

import (
	"errors"
	"os"
	"strings"
	"testing"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

// TestQueueStatsRouteFull: a route that holds queue.max_messages_per_route
// messages is named by "queue stats", which says its new mail is refused,
// and marked "full" in its JSON; a route below the bound is not.
func TestQueueStatsRouteFull(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfig(t, srv.Addr())
	f, err := os.OpenFile(cfg, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("queue:\n  max_messages_per_route: 2\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	ctx := t.Context()
	q := queue.New(srv.Client(t), queue.Options{MaxPerRoute: 2})
	for i, route := range []string{"crm", "crm", "web", "crm"} {
		_, _, err := q.Enqueue(ctx, queue.Submission{Route: route, App: route, From: "billing@contoso.com",
			To: []string{"ann@example.org"}, Body: []byte("Subject: x\r\n\r\nx\r\n")})
		// The count queue stats reads is the one the store refuses by.
		if last := i == 3; last != errors.Is(err, queue.ErrRouteFull) || !last && err != nil {
			t.Fatalf("store %d of %s: %v", i, route, err)
		}
	}

	out := mustRun(t, "queue", "stats", "--config", cfg)
	var full []string
	for l := range strings.Lines(out) {
		if strings.Contains(l, "max_messages_per_route") {
			full = append(full, strings.TrimSpace(l))
		}
	}
	if len(full) != 1 || !strings.HasPrefix(full[0], "route crm holds 2 messages not yet delivered, queue.max_messages_per_route: ") ||
		!strings.Contains(full[0], "452 4.3.1") {
		t.Fatalf("queue stats named the full routes %q, want crm alone:\n%s", full, out)
	}

	var stats struct {
		Routes []struct {
			Route string `json:"route"`
			Full  bool   `json:"full"`
		} `json:"routes"`
	}
	decode(t, mustRun(t, "queue", "stats", "--json", "--config", cfg), &stats)
	if len(stats.Routes) != 2 || stats.Routes[0].Route != "crm" || !stats.Routes[0].Full || stats.Routes[1].Full {
		t.Fatalf("queue stats --json routes = %+v, want crm full and web not", stats.Routes)
	}
}
