package relay

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
)

// addRelay starts one more relay of e's fleet, under a name of its own,
// as a pod that a rollout or a crash replaced.
func (e *exchangeEnv) addRelay(t *testing.T) int {
	t.Helper()
	o := e.opts
	o.Replica = fmt.Sprintf("relay-%d", len(e.relays)+1)
	e.relays = append(e.relays, runRelay(t, o, e.log))
	return len(e.relays) - 1
}

// blockedFirst makes Exchange block the mailbox (550 5.2.251 at the end
// of every message's data) and returns the id of a first message from
// from, once it was refused.
func (e *exchangeEnv) blockedFirst(t *testing.T, from string) string {
	t.Helper()
	e.sim.SetFault(sim.Fault{SMTPDataRefusal: "sender_throttled"})
	first := e.submit(t, 0, from, "a@example.org", exchangeMessage(1, from))
	waitFor(t, 10*time.Second, "the first message refused", func() bool { return strings.Contains(e.get(t, first).LastError, "5.2.251") })
	return first
}

// TestPenaltyHoldsMailboxAcrossFleet: Exchange's block of a mailbox
// (550 5.2.251 "Sender throttled") is drawn again by every send while it
// lasts. Once one relay of the fleet is refused, no relay tries the
// mailbox until the block ends: not the others, and not one started
// after the refusal.
func TestPenaltyHoldsMailboxAcrossFleet(t *testing.T) {
	e := newExchangeEnv(t, 2, nil)
	from := "noreply@contoso.com"
	e.blockedFirst(t, from)
	late := e.addRelay(t)

	var held []string
	for n := 2; n < 8; n++ {
		held = append(held, e.submit(t, n%(late+1), from, fmt.Sprintf("r%d@example.org", n), exchangeMessage(n, from)))
	}
	// Each relay polls every 50 ms and looks at once after an enqueue.
	time.Sleep(2 * time.Second)
	if n := e.sim.Counters().Clients[simClientID].SMTPRefusedByFault; n != 1 {
		t.Errorf("%d submissions refused, want only the first: the others waited", n)
	}
	e.assertHeldUnspent(t, held, "")
}

// TestEndedWaitReleasesMailbox: an operator ends the fleet's wait of a
// mailbox Exchange blocked for 30 minutes, once the block is lifted, and
// makes its deferred mail due: every relay sends the mailbox's mail again
// within seconds, with no restart. With one relay, the relay that was
// refused, and holds its own record of the wait, is the only one that
// can send it.
func TestEndedWaitReleasesMailbox(t *testing.T) {
	for _, relays := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d relays", relays), func(t *testing.T) {
			e := newExchangeEnv(t, relays, nil)
			from := "noreply@contoso.com"
			first := e.blockedFirst(t, from)
			held := []string{first}
			for n := 2; n < 8; n++ {
				held = append(held, e.submit(t, n%relays, from, fmt.Sprintf("r%d@example.org", n), exchangeMessage(n, from)))
			}
			time.Sleep(time.Second)
			if n := e.sim.Counters().Clients[simClientID].SMTPRefusedByFault; n != 1 {
				t.Fatalf("%d submissions refused, want only the first: the others waited", n)
			}
			e.assertHeldUnspent(t, held[1:], "")

			e.sim.SetFault(sim.Fault{})
			ctx := t.Context()
			route := e.get(t, first).Route
			ended, err := queue.NewLimiter(e.f.redis.Client(t), nil).EndMailboxWaits(ctx, []string{from})
			if err != nil || len(ended) != 1 || time.Until(ended[0].Until) < 25*time.Minute {
				t.Fatalf("EndMailboxWaits = %+v, %v; want the 30-minute block", ended, err)
			}
			if _, err := e.f.queue.Flush(ctx, route); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			waitFor(t, 5*time.Second, "the mailbox's mail delivered after the wait ended", func() bool { return e.allDelivered(t, held) })
			t.Logf("wait ended to all %d messages delivered: %v", len(held), time.Since(start).Round(time.Millisecond))
		})
	}
}

// TestOwnWaitHoldsUntilRecorded: a replica's own record of a mailbox's
// wait holds the mailbox until the fleet's record covers it, and for good
// when the fleet's record was not written; once it is, the fleet's record
// decides.
func TestOwnWaitHoldsUntilRecorded(t *testing.T) {
	var w mailboxWaits
	end := time.Now().Add(30 * time.Minute)
	if !w.hold("Bob@contoso.com", end) {
		t.Fatal("a first hold is not new")
	}
	if d := w.wait("bob@contoso.com"); d < 29*time.Minute {
		t.Fatalf("wait before the fleet's record = %v, want about 30m", d)
	}
	w.recorded("bob@contoso.com", end)
	if d := w.wait("bob@contoso.com"); d != 0 {
		t.Fatalf("wait covered by the fleet's record = %v, want 0: the fleet decides", d)
	}
	if w.hold("bob@contoso.com", end.Add(time.Hour)) {
		t.Error("a hold of a held mailbox is new")
	}
	if d := w.wait("bob@contoso.com"); d < 89*time.Minute {
		t.Fatalf("wait past the fleet's record = %v, want about 90m: this replica holds on its own", d)
	}
	if w.hold("carol@contoso.com", time.Now()) {
		t.Error("a hold that has ended is new")
	}

	// A shorter hold that Redis did not take, after an operator ended the
	// fleet's record: this replica's own record holds whole again.
	dave := time.Now().Add(30 * time.Minute)
	w.hold("dave@contoso.com", dave)
	w.recorded("dave@contoso.com", dave)
	w.hold("dave@contoso.com", time.Now().Add(time.Minute))
	w.unrecorded("dave@contoso.com")
	if d := w.wait("dave@contoso.com"); d < 29*time.Minute {
		t.Errorf("wait after a hold Redis did not take = %v, want about 30m: the fleet's record may be gone", d)
	}
}

// TestGraphThrottleHoldsMailboxAcrossFleet: Graph's 429 for one mailbox
// holds that mailbox's Graph mail on every relay of the fleet, a relay
// started meanwhile included, for the Retry-After; the other mailboxes'
// mail goes on, and the held mail goes out when the wait ends.
func TestGraphThrottleHoldsMailboxAcrossFleet(t *testing.T) {
	const throttle = 6 * time.Second
	e := newExchangeEnv(t, 2, sendByGraphAs(3))
	e.sim.SetFault(sim.Fault{GraphThrottle: throttle, GraphThrottleMailbox: "box1@contoso.com"})
	first := e.submit(t, 0, "box1@contoso.com", "r@example.org", exchangeMessage(0, "box1@contoso.com"))
	waitFor(t, 5*time.Second, "box1's message throttled", func() bool { return strings.Contains(e.get(t, first).LastError, "429") })
	throttledAt := time.Now()
	late := e.addRelay(t)

	busy := []string{first}
	var others []string
	for n := 1; n <= 6; n++ {
		relay := n % (late + 1)
		busy = append(busy, e.submit(t, relay, "box1@contoso.com", fmt.Sprintf("r%d@example.org", n), exchangeMessage(n, "box1@contoso.com")))
		from := fmt.Sprintf("box%d@contoso.com", n%2+2)
		others = append(others, e.submit(t, relay, from, fmt.Sprintf("o%d@example.org", n), exchangeMessage(100+n, from)))
	}
	waitFor(t, 5*time.Second, "the other mailboxes' mail delivered", func() bool { return e.allDelivered(t, others) })
	time.Sleep(500 * time.Millisecond)
	e.assertGraphThrottleHeld(t, busy, throttle, throttledAt)
	for _, id := range busy {
		if m := e.get(t, id); m.State != queue.Delivered {
			t.Errorf("%s: %s", id, m.State)
		}
	}
}

// assertGraphThrottleHeld checks that Graph throttled one send of the
// mailbox, its first message busy[0], and that the rest of busy waits
// unspent; then, with the fault cleared, that busy is delivered, and not
// before the Retry-After counted from throttledAt.
func (e *exchangeEnv) assertGraphThrottleHeld(t *testing.T, busy []string, throttle time.Duration, throttledAt time.Time) {
	t.Helper()
	if n := e.sim.Counters().Clients[simClientID].GraphThrottledByFault; n != 1 {
		t.Errorf("%d sends throttled, want only the first: the mailbox's other mail waited on every relay", n)
	}
	e.assertHeldUnspent(t, busy[1:], "")
	e.sim.SetFault(sim.Fault{})
	waitFor(t, throttle+5*time.Second, "the throttled mailbox's mail delivered after its Retry-After", func() bool { return e.allDelivered(t, busy) })
	if took := time.Since(throttledAt); took < throttle-time.Second {
		t.Errorf("the throttled mailbox's mail delivered %v after its 429, within its Retry-After of %v", took, throttle)
	}
}

// TestBlockedWaitRecordedBeforeSlotFreed: a relay that Exchange refuses
// with 550 5.2.251 records the fleet's wait of the mailbox before it
// gives the connection's slot back, so a relay that takes the slot next
// finds the wait in the same script that counts its send. Redis's MONITOR
// gives the order of the two writes.
func TestBlockedWaitRecordedBeforeSlotFreed(t *testing.T) {
	// One connection a mailbox: the slot freed is the refused one's, not
	// that of a grant the relay did not use.
	e := newExchangeEnv(t, 1, func(o *Options) { o.Exchange.MaxConnectionsPerMailbox = 1 })
	e.sim.SetFault(sim.Fault{SMTPDataRefusal: "sender_throttled"})
	lines := monitorRedis(t, e.f.redis.Addr())
	from := "noreply@contoso.com"
	id := e.submit(t, 0, from, "a@example.org", exchangeMessage(1, from))
	waitFor(t, 10*time.Second, "the message refused", func() bool { return strings.Contains(e.get(t, id).LastError, "5.2.251") })

	waits, conns := "{lim:"+from+"}:waits", "{lim:"+from+"}:conns"
	held, freed := -1, -1
	deadline := time.After(10 * time.Second)
	for n := 0; held < 0 || freed < 0; n++ {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("MONITOR ended")
			}
			low := strings.ToLower(l)
			if held < 0 && strings.Contains(low, `"hset" "hf:`+waits) {
				held = n
			}
			if freed < 0 && strings.Contains(low, `"zrem" "hf:`+conns) {
				freed = n
			}
		case <-deadline:
			t.Fatalf("MONITOR did not show the wait recorded (%v) and the slot freed (%v)", held >= 0, freed >= 0)
		}
	}
	if held > freed {
		t.Errorf("the slot was freed (command %d) before the mailbox's wait was recorded (command %d): "+
			"another relay could take the slot and send into the block", freed, held)
	}
}

// monitorRedis runs MONITOR on its own connection to the Redis at addr and
// sends each line it prints, until the test ends.
func monitorRedis(t *testing.T, addr string) <-chan string {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	r := bufio.NewReader(nc)
	if _, err := io.WriteString(nc, "MONITOR\r\n"); err != nil {
		t.Fatal(err)
	}
	if l, err := r.ReadString('\n'); err != nil || l != "+OK\r\n" {
		t.Fatalf("MONITOR: %q %v", l, err)
	}
	lines := make(chan string, 100000)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	t.Cleanup(func() { nc.Close() })
	wg.Go(func() {
		defer close(lines)
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return
			}
			select {
			case lines <- l:
			default: // a test that stopped reading does not block the reader
			}
		}
	})
	return lines
}

// TestWaitingMailboxMailNotAgedAsReady: the mail of a mailbox Exchange
// blocked waits for the block's end, not for a worker. The oldest ready
// message's age (holdfast_queue_oldest_ready_age_seconds, and the status
// page's "Oldest ready message waiting"), on which an alert tells the
// operator that the relays are stuck, leaves it out; queue stats and the
// page's mailbox waits name it instead.
func TestWaitingMailboxMailNotAgedAsReady(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	from := "noreply@contoso.com"
	e.blockedFirst(t, from)
	for n := 2; n < 5; n++ {
		e.submit(t, 0, from, fmt.Sprintf("r%d@example.org", n), exchangeMessage(n, from))
	}
	time.Sleep(3 * time.Second)
	r := e.relays[0]
	if st, err := e.f.queue.Stats(t.Context()); err != nil || st.Total.Ready == 0 {
		t.Fatalf("queue stats %+v, %v: want the blocked mailbox's new mail ready", st.Total, err)
	}
	if age, ok := series(scrape(t, r), "holdfast_queue_oldest_ready_age_seconds", nil); !ok || age >= 1 {
		t.Errorf("holdfast_queue_oldest_ready_age_seconds = %v (%v), want 0: the only ready mail waits for Exchange's block", age, ok)
	}
	st, err := readStatus("http://" + r.OpsAddr())
	if err != nil {
		t.Fatal(err)
	}
	if st.OldestReady >= 1 || st.MailboxWaitCount != 1 {
		t.Errorf("status.json oldest_ready_seconds %v, mailbox waits %d; want 0 and 1", st.OldestReady, st.MailboxWaitCount)
	}
}
