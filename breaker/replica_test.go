package breaker

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestReplicaShared: two running replicas under one name each learn that
// the name is shared, and stop saying so once the other stops; a replica
// started again after it was killed, and a replica under a name of its
// own, never do.
func TestReplicaShared(t *testing.T) {
	const poll = 10 * time.Millisecond
	period := announcePolls * poll
	sets, _ := replicas(t, 5, func(i int, o *Options) {
		o.Poll = poll
		o.Replica = []string{"relay-1", "relay-1", "relay-2", "relay-3", "relay-3"}[i]
	})
	var wg sync.WaitGroup
	all, stopAll := context.WithCancel(context.Background())
	defer wg.Wait()
	defer stopAll()
	watch := func(s *Set) context.CancelFunc {
		ctx, cancel := context.WithCancel(all)
		wg.Go(func() { s.Watch(ctx) })
		return cancel
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(20 * period); !cond(); time.Sleep(poll) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within %v", what, 20*period)
			}
		}
	}
	rdb := sets[0].rdb
	ctx := context.Background()

	// relay-3's first process announces, then is killed: it stops
	// without a word, and its announcement stays.
	stop3 := watch(sets[3])
	waitFor("relay-3's announcement", func() bool { return rdb.Get(ctx, replicaKey("relay-3")).Val() == sets[3].id })
	stop3()

	_, stop1, _ := watch(sets[0]), watch(sets[1]), watch(sets[2])
	watch(sets[4])
	waitFor("relay-1's two processes finding each other", func() bool {
		return sets[0].ReplicaShared() && sets[1].ReplicaShared()
	})
	// Five more periods: the other two never see a second process.
	for deadline := time.Now().Add(5 * period); time.Now().Before(deadline); time.Sleep(poll) {
		if sets[2].ReplicaShared() {
			t.Fatal("relay-2, alone under its name, reports it shared")
		}
		if sets[4].ReplicaShared() {
			t.Fatal("relay-3, started again after it was killed, reports its name shared")
		}
	}
	if !sets[0].ReplicaShared() || !sets[1].ReplicaShared() {
		t.Fatal("relay-1's processes stopped reporting their shared name while both run")
	}
	stop1()
	waitFor("relay-1's remaining process seeing it alone", func() bool { return !sets[0].ReplicaShared() })
}

// TestAnnounceSequence follows one replica's announcements step by step:
// an earlier process's id found by the first is not another relay; one
// found later is, and the name stays shared until sharedFor
// announcements in a row find no other.
func TestAnnounceSequence(t *testing.T) {
	sets, _ := replicas(t, 1, func(_ int, o *Options) { o.Replica = "relay-1" })
	s := sets[0]
	ctx := context.Background()
	key := replicaKey("relay-1")
	other := func() {
		t.Helper()
		if err := s.rdb.Set(ctx, key, "0123456789abcdef", time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
	}
	a := s.newAnnouncer()
	step := func(what string, want bool) {
		t.Helper()
		if err := a.announce(ctx); err != nil {
			t.Fatal(err)
		}
		if got := s.ReplicaShared(); got != want {
			t.Fatalf("%s: ReplicaShared %v, want %v", what, got, want)
		}
		if id := s.rdb.Get(ctx, key).Val(); id != s.id {
			t.Fatalf("%s: the name holds %q, want this process's id", what, id)
		}
		if ttl := s.rdb.PTTL(ctx, key).Val(); ttl <= 0 || ttl > 3*a.period {
			t.Fatalf("%s: the announcement lasts %v, want up to %v", what, ttl, 3*a.period)
		}
	}
	other() // a killed process's announcement
	step("first, finding an earlier process", false)
	step("second, finding its own", false)
	other() // a live process announced since
	step("finding another", true)
	for i := 1; i < sharedFor; i++ {
		step("finding its own after another", true)
	}
	step("the last of the announcements in a row finding its own", false)
	if err := s.rdb.Del(ctx, key).Err(); err != nil {
		t.Fatal(err)
	}
	step("finding none (lapsed, or Redis emptied)", false)
}
