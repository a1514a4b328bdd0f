package relay

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"holdfast/breaker"
)

// hgetallCalls is how many HGETALL Redis has run, from INFO commandstats.
func hgetallCalls(t *testing.T, e *exchangeEnv) int64 {
	t.Helper()
	info, err := e.f.redis.Client(t).Info(t.Context(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(info, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_hgetall:calls=")
		if ok {
			n, _ := strconv.ParseInt(rest[:strings.IndexByte(rest, ',')], 10, 64)
			return n
		}
	}
	return 0
}

// TestIdleBreakerReads: an idle relay does not read every breaker
// record several times a second. The records stay until forgotten (one
// for each mailbox that ever failed), and each relay read them all five
// times a second, twice by its watch and three times by its probe and
// hold loops: at 1,131 records and three relays, 15,000 reads a second
// with no mail at all. Now the loops use the watch's view, and the
// watch reads every record every 10 polls (5 s), the open ones at each.
func TestIdleBreakerReads(t *testing.T) {
	const records, window = 200, 6 * time.Second
	e := newExchangeEnv(t, 1, nil)
	ctx := t.Context()
	ops := breaker.New(e.f.redis.Client(t), breaker.Options{Logger: discardLogger()})
	for i := range records {
		name := mailboxBreaker(fmt.Sprintf("m%03d@contoso.com", i))
		if err := ops.Trip(ctx, name, "x"); err != nil {
			t.Fatal(err)
		}
		if err := ops.Reset(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "the relay to know every record", func() bool {
		return e.relays[0].gate.set.Cached(mailboxBreaker(fmt.Sprintf("m%03d@contoso.com", records-1))).Generation == 2
	})
	time.Sleep(time.Second)
	before := hgetallCalls(t, e)
	time.Sleep(window)
	reads := hgetallCalls(t, e) - before
	t.Logf("%d record reads in %v, %d records", reads, window, records)
	// Before: 5 full reads a second, 6,000 here. Now: one or two full
	// reads in the window; at least one, which covers a transition
	// whose message was lost.
	if reads < records || reads >= 3*records {
		t.Errorf("%d record reads in %v with %d records, want from %d (a full read every 5 s) to %d", reads, window, records, records, 3*records)
	}
}

// TestStaleMarkRecordedOnce: a relay that finds itself stale for a
// closed credential breaker has its mark in the record, written again by
// its probe loop at most once (when the loop looked between the relay's
// state and its mark). The loop works from the watch's view, which reads
// a closed breaker's record every 5 s: before the mark updated the view,
// the loop found it missing and wrote it again every second.
func TestStaleMarkRecordedOnce(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	g := e.relays[0].gate
	fp := g.x.creds["contoso"].Fingerprint()
	time.Sleep(time.Second) // past the watch's first read of every record
	g.markStale("contoso", fp)
	time.Sleep(6 * time.Second) // the probe loop's ticks, and one more full read
	if n := strings.Count(e.logs.String(), "recorded this relay's stale state for the credential"); n > 1 {
		t.Errorf("the stale mark written again %d times by the probe loop, want once at most", n)
	}
	if st := e.breakerStatus(t, credentialBreaker("contoso")); !slices.Contains(st.StaleReplicas, g.replica) {
		t.Errorf("the record lists the stale replicas %q, want %q among them", st.StaleReplicas, g.replica)
	}
}
