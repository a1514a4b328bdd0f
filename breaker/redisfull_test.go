package breaker

import (
	"context"
	"testing"
	"time"

	"holdfast/queue/redistest"
)

// TestBreakerWhileRedisFull: an auth outage holds mail until Redis
// reaches its maxmemory (noeviction). Once the credential works again,
// the breaker must still be probed and closed, or reset by an operator,
// and a fresh one recorded, or the held mail never drains and Redis stays
// full: every breaker script runs past maxmemory.
func TestBreakerWhileRedisFull(t *testing.T) {
	srv := redistest.Start(t)
	clk := newClock()
	s := New(srv.Client(t), Options{Now: clk.Now, Replica: "relay-1"})
	ctx := context.Background()
	const name = "cred:contoso"
	record(t, s, name, errExpired)
	if err := srv.Client(t).ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Client(t).ConfigSet(context.Background(), "maxmemory", "0") })
	clk.Add(time.Hour)

	if _, err := s.ProbeNowHere(ctx, name); err != nil {
		t.Errorf("ProbeNowHere (a rotated secret) with Redis full: %v", err)
	}
	if ok, err := s.AcquireProbe(ctx, name); err != nil || !ok {
		t.Fatalf("AcquireProbe of a due probe with Redis full = %v, %v; want true, nil", ok, err)
	}
	if err := s.RenewProbe(ctx, name); err != nil {
		t.Errorf("RenewProbe with Redis full: %v", err)
	}
	if err := s.Succeeded(ctx, name, "0123456789abcdef"); err != nil {
		t.Errorf("Succeeded with Redis full: %v", err)
	}
	if err := s.ProbeResult(ctx, name, nil); err != nil {
		t.Errorf("ProbeResult with Redis full: %v", err)
	}
	if st := status(t, s, name); st.State != Closed {
		t.Errorf("breaker %s with Redis full after a successful probe, want closed", st.State)
	}
	if err := s.Trip(ctx, name, "test"); err != nil {
		t.Errorf("Trip with Redis full: %v", err)
	}
	if err := s.Reset(ctx, name); err != nil {
		t.Errorf("Reset with Redis full: %v", err)
	}
	// A breaker never recorded before, and the AUTH places.
	other := "mbx:new@contoso.com"
	record(t, s, other, credErr)
	a, err := s.EnterAttempt(ctx, name, "tok", "box", false)
	if err != nil || a.Verdict != Go {
		t.Errorf("EnterAttempt with Redis full = %+v, %v; want Go", a, err)
	}
	if _, _, err := s.ExitAttempt(ctx, name, "tok", "box", Succeeded, ""); err != nil {
		t.Errorf("ExitAttempt with Redis full: %v", err)
	}
}

// TestTransitionLogWhileRedisFull: the transitions of a breaker worked
// while Redis is at its maxmemory still reach the fleet's log, which the
// status page shows.
func TestTransitionLogWhileRedisFull(t *testing.T) {
	srv := redistest.Start(t)
	clk := newClock()
	s := New(srv.Client(t), Options{Now: clk.Now, Replica: "relay-1"})
	ctx := context.Background()
	const name = "cred:contoso"
	if err := srv.Client(t).ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Client(t).ConfigSet(context.Background(), "maxmemory", "0") })
	if err := s.Trip(ctx, name, "rotating"); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Second)
	if err := s.Reset(ctx, name); err != nil {
		t.Fatal(err)
	}
	got, err := s.Recent(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].To != Closed || got[1].To != Open || got[1].Reason != "rotating" {
		t.Errorf("log with Redis full: %+v; want the close, then the open with its reason", got)
	}
}
