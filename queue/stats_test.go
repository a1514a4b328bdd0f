package queue_test

import (
	"context"
	"fmt"
	"testing"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

// TestStatsAcrossBatchesAndScriptFlush: Stats counts every route when
// they span several script runs, and still answers after Redis forgot its
// scripts (a restart or failover does that).
func TestStatsAcrossBatchesAndScriptFlush(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	q := queue.New(rdb, queue.Options{})
	ctx := context.Background()
	const routes = 600
	for i := range routes {
		for range i%3 + 1 {
			if _, _, err := q.Enqueue(ctx, queue.Submission{Route: fmt.Sprintf("r%03d", i), App: "crm",
				From: "a@contoso.com", To: []string{"b@example.org"}, Body: []byte("Subject: s\r\n\r\nb\r\n")}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := q.HoldRoute(ctx, "r599", "breaker open"); err != nil {
		t.Fatal(err)
	}
	check := func() {
		t.Helper()
		st, err := q.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Routes) != routes || st.Total.Ready+st.Total.Held != 2*routes {
			t.Fatalf("%d routes, %d ready, %d held", len(st.Routes), st.Total.Ready, st.Total.Held)
		}
		for i, rs := range st.Routes {
			want := int64(i%3 + 1)
			if got := rs.Ready + rs.Held; rs.Route != fmt.Sprintf("r%03d", i) || got != want {
				t.Fatalf("route %d: %+v, want %d messages", i, rs, want)
			}
		}
		if last := st.Routes[routes-1]; last.Held != 3 || last.HoldReason != "breaker open" || last.Ready != 0 {
			t.Errorf("held route: %+v", last)
		}
	}
	check()
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	check()
}
