package main

import (
	"context"
	"sync"
	"time"

	"holdfast/cmd/o365sim/sim"
)

// recorder notes when each mailbox received each message, to show that
// the relays kept to the per-mailbox rate limit.
type recorder struct {
	mu   sync.Mutex
	at   map[string][]time.Time // by mailbox
	stop func()
}

// recorderPoll is how often the recorder looks at the simulator.
const recorderPoll = 100 * time.Millisecond

func startRecorder(s *sim.Sim) *recorder {
	r := &recorder{at: map[string][]time.Time{}}
	seen := 0
	r.stop = every(context.Background(), recorderPoll, func(context.Context) {
		if s.ReceivedCount() <= seen {
			return
		}
		all := s.Received()
		now := time.Now()
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, m := range all[seen:] {
			r.at[m.Mailbox] = append(r.at[m.Mailbox], now)
		}
		seen = len(all)
	})
	return r
}

// maxPerMinute is the most messages one mailbox received within any
// minute. The recorder sees a reception up to one poll after it happened,
// so the window is narrowed by two polls: receptions a minute apart are
// never counted together.
func (r *recorder) maxPerMinute() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	best := 0
	for _, ts := range r.at {
		best = max(best, maxInWindow(ts, time.Minute-2*recorderPoll))
	}
	return best
}

// maxInWindow is the most of the sorted times that fall within any span
// of length w.
func maxInWindow(ts []time.Time, w time.Duration) int {
	best, lo := 0, 0
	for hi := range ts {
		for ts[hi].Sub(ts[lo]) >= w {
			lo++
		}
		best = max(best, hi-lo+1)
	}
	return best
}
