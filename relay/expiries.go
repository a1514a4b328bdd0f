package relay

import (
	"sync"
	"time"
)

// expiries keeps, per key, the moment until which something about it
// lasts: a mailbox's wait (mailboxWaits), a route found full
// (fullRoutes). A key is forgotten when it is read past its end. The
// zero value is ready, with no bound on the keys it keeps.
type expiries struct {
	// max bounds the keys kept: when a new key would pass it, the keys
	// already ended are dropped, and if none had, all are. 0 is no bound.
	max int

	mu    sync.Mutex
	until map[string]time.Time
}

// extend makes key last until end, unless it already lasts longer. It
// reports whether key had not been lasting at now.
func (e *expiries) extend(key string, end, now time.Time) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	prev, was := e.until[key]
	if !was {
		e.makeRoom(now)
	}
	if end.After(prev) {
		e.until[key] = end
	}
	return !was || !prev.After(now)
}

// makeRoom readies the map for one more key; e.mu is held.
func (e *expiries) makeRoom(now time.Time) {
	if e.until == nil {
		e.until = map[string]time.Time{}
	}
	if e.max <= 0 || len(e.until) < e.max {
		return
	}
	for k, end := range e.until {
		if !end.After(now) {
			delete(e.until, k)
		}
	}
	if len(e.until) >= e.max {
		clear(e.until)
	}
}

// left is how long key still lasts after now, or 0.
func (e *expiries) left(key string, now time.Time) time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	end, ok := e.until[key]
	if !ok {
		return 0
	}
	if d := end.Sub(now); d > 0 {
		return d
	}
	delete(e.until, key)
	return 0
}

// forget drops key.
func (e *expiries) forget(key string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.until, key)
}
