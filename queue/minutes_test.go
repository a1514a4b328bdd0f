package queue_test

import (
	"context"
	"testing"
	"time"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

// TestMinutes: replicas' additions to a minute add up, the held sample is
// the last one taken, and Minutes lists the hour oldest first with empty
// minutes as zeros.
func TestMinutes(t *testing.T) {
	srv := redistest.Start(t)
	q := queue.New(srv.Client(t), queue.Options{})
	ctx := context.Background()
	now := time.Date(2026, 3, 1, 12, 30, 40, 0, time.UTC)
	add := func(at time.Time, d queue.MinuteDelta) {
		t.Helper()
		if err := q.AddMinute(ctx, at, d); err != nil {
			t.Fatal(err)
		}
	}
	add(now.Add(-5*time.Minute), queue.MinuteDelta{Delivered: 7, Held: 2, Latency: map[int]int64{0: 5, 3: 2}})
	add(now, queue.MinuteDelta{Delivered: 3, Held: 10, Latency: map[int]int64{1: 3}})
	add(now.Add(5*time.Second), queue.MinuteDelta{Delivered: 4, Held: -1, Latency: map[int]int64{1: 1, 2: 3}})
	add(now.Add(9*time.Second), queue.MinuteDelta{Held: 12})

	ms, err := q.Minutes(ctx, now, 60)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 60 || !ms[59].Start.Equal(time.Date(2026, 3, 1, 12, 30, 0, 0, time.UTC)) || !ms[0].Start.Equal(ms[59].Start.Add(-59*time.Minute)) {
		t.Fatalf("%d minutes from %v to %v", len(ms), ms[0].Start, ms[len(ms)-1].Start)
	}
	last := ms[59]
	if last.Delivered != 7 || last.Held != 12 || last.Latency[1] != 4 || last.Latency[2] != 3 {
		t.Errorf("this minute: %+v, want 7 delivered, 12 held, latency {1:4 2:3}", last)
	}
	if m := ms[54]; m.Delivered != 7 || m.Held != 2 || m.Latency[0] != 5 || m.Latency[3] != 2 {
		t.Errorf("five minutes ago: %+v", m)
	}
	if m := ms[30]; m.Delivered != 0 || m.Held != 0 || len(m.Latency) != 0 || len(m.EarlierLatency) != 0 {
		t.Errorf("an empty minute: %+v", m)
	}
}

// TestMinutesEarlierLatency: the latency counts that relays with the
// earlier bucket list wrote (fields "lat:I") are read apart from the
// current ones, so that the caller can place their buckets.
func TestMinutesEarlierLatency(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	q := queue.New(rdb, queue.Options{})
	ctx := context.Background()
	now := time.Date(2026, 12, 7, 12, 30, 40, 0, time.UTC)
	if err := q.AddMinute(ctx, now, queue.MinuteDelta{Delivered: 3, Held: -1, Latency: map[int]int64{0: 3}}); err != nil {
		t.Fatal(err)
	}
	if err := rdb.HIncrBy(ctx, queue.MinuteKey(now.Unix()/60), "lat:1", 5).Err(); err != nil {
		t.Fatal(err)
	}
	ms, err := q.Minutes(ctx, now, 1)
	if err != nil {
		t.Fatal(err)
	}
	if m := ms[0]; len(m.Latency) != 1 || m.Latency[0] != 3 || len(m.EarlierLatency) != 1 || m.EarlierLatency[1] != 5 {
		t.Errorf("latency %v and earlier %v, want {0:3} and {1:5}", m.Latency, m.EarlierLatency)
	}
}
