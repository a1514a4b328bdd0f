package breaker

import (
	"context"
	"strings"
	"time"
)

// Watch keeps this Set's view of every breaker current until ctx ends, so
// that OnTransition fires on this replica for transitions made by others:
// at once for each transition published on the events channel (within
// milliseconds fleet-wide), and by re-reading every record each Poll,
// which also covers a missed message or a lost subscription. A replica
// starts from "closed, generation 0": a breaker already open when Watch
// starts is reported once as a transition to open.
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
	for {
		if an.due() {
			if err := an.announce(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("breaker watch: cannot announce this replica's name", "err", err)
			}
		}
		if _, err := s.List(ctx); err != nil && ctx.Err() == nil {
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
