package queue_test

import (
	"context"
	"testing"
	"time"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

// TestCredentialExpiry: the soonest date of the relays that checked
// since the given time; a relay's older record does not count, a zero
// date removes the relay's record, and the records go after keep.
func TestCredentialExpiry(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	q := queue.New(rdb, queue.Options{})
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Millisecond)
	day := 24 * time.Hour
	set := func(replica string, in time.Duration, source string, checked time.Time) {
		t.Helper()
		e := queue.CredentialExpiry{Replica: replica, Source: source, CheckedAt: checked}
		if in != 0 {
			e.ExpiresAt = now.Add(in)
		}
		if err := q.SetCredentialExpiry(ctx, "contoso", e, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	soonest := func() (queue.CredentialExpiry, bool) {
		t.Helper()
		e, ok, err := q.SoonestCredentialExpiry(ctx, "contoso", now.Add(-time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		return e, ok
	}

	if _, ok := soonest(); ok {
		t.Fatal("a date with no record")
	}
	set("relay-1", 90*day, "graph", now)
	set("relay-2", 20*day, "graph", now)                 // a relay still on the older secret
	set("relay-3", 5*day, "config", now.Add(-time.Hour)) // no check since
	e, ok := soonest()
	if !ok || e.Replica != "relay-2" || !e.ExpiresAt.Equal(now.Add(20*day)) || e.Source != "graph" || !e.CheckedAt.Equal(now) {
		t.Fatalf("soonest = %+v, %v; want relay-2's, in 20 days from graph", e, ok)
	}
	set("relay-2", 0, "", now) // its date unknown now
	if e, ok := soonest(); !ok || e.Replica != "relay-1" {
		t.Fatalf("soonest after relay-2 forgot its date = %+v, %v; want relay-1's", e, ok)
	}
	if ttl := rdb.PTTL(ctx, queue.CredExpiryKey("contoso")).Val(); ttl <= 59*time.Minute || ttl > time.Hour {
		t.Errorf("the records' lifetime %v, want an hour", ttl)
	}
}
