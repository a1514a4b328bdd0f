package queue_test

import (
	"context"
	"testing"
	"time"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

// TestCredentialExpiry: the soonest date among the relays' records that
// still count, before a record of no date; a record past its
// end is removed at the next write, and the hash goes with the last end.
func TestCredentialExpiry(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	q := queue.New(rdb, queue.Options{})
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Millisecond)
	day := 24 * time.Hour
	set := func(replica string, in time.Duration, checked time.Time, keep time.Duration) {
		t.Helper()
		e := queue.CredentialExpiry{Replica: replica, Source: "graph", CheckedAt: checked, Until: checked.Add(keep)}
		if in != 0 {
			e.ExpiresAt = now.Add(in)
		}
		if err := q.SetCredentialExpiry(ctx, "contoso", e); err != nil {
			t.Fatal(err)
		}
	}
	soonest := func() (queue.CredentialExpiry, bool) {
		t.Helper()
		e, ok, err := q.SoonestCredentialExpiry(ctx, "contoso", now)
		if err != nil {
			t.Fatal(err)
		}
		return e, ok
	}
	replicas := func() []string {
		t.Helper()
		return rdb.HKeys(ctx, queue.CredExpiryKey("contoso")).Val()
	}

	if _, ok := soonest(); ok {
		t.Fatal("a date with no record")
	}
	set("relay-3", 5*day, now.Add(-2*time.Hour), time.Hour) // a pod replaced
	if e, ok := soonest(); ok {
		t.Fatalf("soonest = %+v; want none: the only record ended", e)
	}
	set("relay-1", 90*day, now, 25*time.Hour)
	set("relay-2", 20*day, now, time.Hour) // still on the older secret, checking hourly
	e, ok := soonest()
	if !ok || e.Replica != "relay-2" || !e.ExpiresAt.Equal(now.Add(20*day)) || e.Source != "graph" ||
		!e.CheckedAt.Equal(now) || !e.Until.Equal(now.Add(time.Hour)) {
		t.Fatalf("soonest = %+v, %v; want relay-2's, in 20 days from graph", e, ok)
	}
	if got := replicas(); len(got) != 2 {
		t.Errorf("records %v; want relay-1's and relay-2's, the ended one removed", got)
	}
	if ttl := rdb.PTTL(ctx, queue.CredExpiryKey("contoso")).Val(); ttl <= 24*time.Hour || ttl > 25*time.Hour {
		t.Errorf("the records' lifetime %v, want relay-1's 25 hours", ttl)
	}
	set("relay-2", 0, now, time.Hour) // its date unknown now
	if e, ok := soonest(); !ok || e.Replica != "relay-1" {
		t.Fatalf("soonest after relay-2 forgot its date = %+v, %v; want relay-1's", e, ok)
	}
	set("relay-1", 0, now, 25*time.Hour)
	if e, ok := soonest(); !ok || !e.ExpiresAt.IsZero() || e.Source != "" {
		t.Fatalf("soonest when no relay knows a date = %+v, %v; want a record of no date", e, ok)
	}
	if got := replicas(); len(got) != 2 {
		t.Errorf("records %v; want relay-1's and relay-2's", got)
	}
}

// TestCredentialDateBinding: a date belongs to the first fingerprint
// recorded with it; later ones are told that one, and each date has its
// own, unless the date was stated for them, which adds them.
func TestCredentialDateBinding(t *testing.T) {
	srv := redistest.Start(t)
	q := queue.New(srv.Client(t), queue.Options{})
	ctx := context.Background()
	if _, ok, err := q.CredentialDateOwner(ctx, "contoso", "config 2027-02-14T00:00:00Z"); err != nil || ok {
		t.Fatalf("before any record: %v %v", ok, err)
	}
	for _, tc := range []struct {
		date, fp string
		stated   bool
		want     string
		belongs  bool
	}{
		{"config 2027-02-14T00:00:00Z", "aaaa", false, "aaaa", true},
		{"config 2027-02-14T00:00:00Z", "bbbb", false, "aaaa", false},
		{"file 2027-02-14T00:00:00Z", "bbbb", false, "bbbb", true},
		{"config 2027-08-14T00:00:00Z", "bbbb", false, "bbbb", true},
		// Stated for another secret: both own the date.
		{"file 2027-02-14T00:00:00Z", "cccc", true, "bbbb cccc", true},
		{"file 2027-02-14T00:00:00Z", "cccc", true, "bbbb cccc", true},
		{"file 2027-02-14T00:00:00Z", "bbbb", false, "bbbb cccc", true},
		{"file 2027-02-14T00:00:00Z", "dddd", false, "bbbb cccc", false},
		{"config 2027-09-14T00:00:00Z", "eeee", true, "eeee", true},
	} {
		got, err := q.BindCredentialDate(ctx, "contoso", tc.date, tc.fp, tc.stated)
		if err != nil || got != tc.want || queue.DateBelongsTo(got, tc.fp) != tc.belongs {
			t.Fatalf("bind %s to %s (stated %v): %q %v, want %q", tc.date, tc.fp, tc.stated, got, err, tc.want)
		}
	}
	if fp, ok, err := q.CredentialDateOwner(ctx, "contoso", "config 2027-02-14T00:00:00Z"); err != nil || !ok || fp != "aaaa" {
		t.Fatalf("owner: %q %v %v", fp, ok, err)
	}
	if fp, ok, err := q.CredentialDateOwner(ctx, "contoso", "file 2027-02-14T00:00:00Z"); err != nil || !ok || fp != "bbbb cccc" {
		t.Fatalf("owners: %q %v %v", fp, ok, err)
	}
}
