package relay

import (
	"strings"
	"sync"
	"time"
)

// mailboxWaits keeps, per mailbox, until when the upstream asked this
// replica to leave the mailbox alone: Graph's 429 (o365.ErrMailboxThrottled),
// or Exchange's holds of the whole mailbox (o365.ErrMailboxBlocked). One
// mailbox's wait holds back that mailbox's mail, not an endpoint and
// every other mailbox with it.
type mailboxWaits struct {
	mu    sync.Mutex
	until map[string]time.Time
}

// hold leaves mailbox alone for d from now. It reports whether the
// mailbox was not held already.
func (t *mailboxWaits) hold(mailbox string, d time.Duration) bool {
	if d <= 0 {
		return false
	}
	key, end := strings.ToLower(mailbox), time.Now().Add(d)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.until == nil {
		t.until = map[string]time.Time{}
	}
	prev, was := t.until[key]
	if end.After(prev) {
		t.until[key] = end
	}
	return !was || !prev.After(time.Now())
}

// wait is how long mailbox is still left alone, or 0.
func (t *mailboxWaits) wait(mailbox string) time.Duration {
	key := strings.ToLower(mailbox)
	t.mu.Lock()
	defer t.mu.Unlock()
	end, ok := t.until[key]
	if !ok {
		return 0
	}
	d := time.Until(end)
	if d <= 0 {
		delete(t.until, key)
		return 0
	}
	return d
}
