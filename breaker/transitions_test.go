package breaker

import (
	"context"
	"testing"
	"time"
)

// TestRecentTransitions: every replica that sees a transition adds it to
// the fleet's log, which holds it once; Recent lists the newest first and
// keeps at most logKeep.
func TestRecentTransitions(t *testing.T) {
	sets, clk := replicas(t, 2, nil)
	ctx := context.Background()
	if err := sets[0].Trip(ctx, "cred:contoso", "rotating"); err != nil {
		t.Fatal(err)
	}
	// The other replica sees the same transition when it reads the record.
	if _, err := sets[1].List(ctx); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Second)
	if err := sets[1].Reset(ctx, "cred:contoso"); err != nil {
		t.Fatal(err)
	}
	if _, err := sets[0].List(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := sets[0].Recent(ctx, 20)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("%d transitions logged, want 2 (one open, one close): %+v", len(got), got)
	}
	if got[0].To != Closed || got[1].To != Open || got[1].Reason != "rotating" {
		t.Errorf("log %+v, want the close first, then the open with its reason", got)
	}
	if !got[0].At.After(got[1].At) {
		t.Errorf("newest first: %v then %v", got[0].At, got[1].At)
	}

	for range logKeep/2 + 10 {
		clk.Add(time.Second)
		if err := sets[0].Trip(ctx, "mbx:m@contoso.com", "bulk"); err != nil {
			t.Fatal(err)
		}
		clk.Add(time.Second)
		if err := sets[0].Reset(ctx, "mbx:m@contoso.com"); err != nil {
			t.Fatal(err)
		}
	}
	if all, err := sets[0].Recent(ctx, 1000); err != nil || len(all) != logKeep {
		t.Errorf("the log holds %d (err %v), want at most %d", len(all), err, logKeep)
	}
}

// TestFoundOpeningLoggedOnce: a breaker tripped again while open keeps
// its opening time and generation, with a new reason. A process that
// reads it for the first time (a relay starting, or `holdfast breaker
// status`) finds it open; that is the same opening the log holds, not
// another one.
func TestFoundOpeningLoggedOnce(t *testing.T) {
	sets, clk := replicas(t, 3, nil)
	ctx := context.Background()
	if err := sets[0].Trip(ctx, "cred:contoso", "first reason"); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Second)
	if err := sets[0].Trip(ctx, "cred:contoso", "second reason"); err != nil {
		t.Fatal(err)
	}
	for _, s := range sets[1:] {
		if _, err := s.List(ctx); err != nil {
			t.Fatal(err)
		}
	}
	got, err := sets[0].Recent(ctx, 20)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].To != Open || got[0].Reason != "first reason" {
		t.Errorf("log %+v, want the one opening, with the reason it opened for", got)
	}
}
