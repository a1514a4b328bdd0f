package breaker

import (
	"context"
	"strings"
	"time"
)

// watchFullEvery is how many polls apart Watch reads every record; at
// the others it reads those of the breakers open here.
const watchFullEvery = 10

// Watch keeps this Set's view of every breaker current until ctx ends, so
// that OnTransition fires on this replica for transitions made by others:
// at once for each transition published on the events channel (within
// milliseconds fleet-wide), and by re-reading records, which also covers
// a missed message or a lost subscription: each Poll those of the
// breakers open here (a close, a probe asked for), and every record each
// watchFullEvery polls. The records stay until forgotten, one for each
// mailbox that ever failed, and every relay reads them: a read of every
// record each Poll cost Redis thousands of reads a second with no mail.
// A replica starts from "closed, generation 0": a breaker already open
// when Watch starts is reported once as a transition to open.
//
// With Options.Replica set, Watch also tells whether another process
// runs under the same name (see ReplicaShared).
//
// With OnMade set, each poll also takes over the notices whose poster
// stopped renewing its claim (see NoticeLease), and the first poll those
// of an earlier process of this replica.
func (s *Set) Watch(ctx context.Context) {
	ps := s.rdb.Subscribe(ctx, eventsChannel)
	defer func() { _ = ps.Close() }()
	events := ps.Channel()
	t := time.NewTicker(s.o.Poll)
	defer t.Stop()
	// Every claim is read until a first pass has read them all.
	all := true
	// The replica's name is announced at the first poll Redis answers,
	// then every announcePolls poll periods.
	an := s.newAnnouncer()
	// full: this poll reads every record; polls since one did.
	full, polls := true, 0
	for {
		if an.due() {
			if err := an.announce(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("breaker watch: cannot announce this replica's name", "err", err)
			}
		}
		var err error
		if full {
			_, err = s.List(ctx)
			if err == nil {
				polls = 0
			}
		} else if open := s.openNames(); len(open) > 0 {
			_, err = s.Fresh(ctx, open...)
		}
		polls++
		full = polls >= watchFullEvery
		if err != nil && ctx.Err() == nil {
			s.log.Warn("breaker watch", "err", err)
		}
		if err := s.takeOver(ctx, all); err != nil {
			if ctx.Err() == nil {
				s.log.Warn("breaker watch: notices of stopped replicas", "err", err)
			}
		} else {
			all = false
		}
		for waiting := true; waiting; {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				waiting = false
			case m, ok := <-events:
				if !ok {
					events = nil
					continue
				}
				name, _, _ := strings.Cut(m.Payload, " ")
				if validName(name) != nil {
					continue
				}
				if _, err := s.read(ctx, name); err != nil && ctx.Err() == nil {
					s.log.Warn("breaker watch", "breaker", name, "err", err)
				}
			}
		}
	}
}
