package relay

import (
	"strings"
	"sync"
	"time"
)

// mailboxThrottles keeps, per mailbox, until when Graph asked this
// replica to leave the mailbox alone. Graph throttles each app and
// mailbox apart (429 ApplicationThrottled, "over its MailboxConcurrency
// limit"): one busy mailbox's Retry-After holds back that mailbox's mail,
// not the Graph endpoint and every other mailbox with it.
type mailboxThrottles struct {
	mu    sync.Mutex
	until map[string]time.Time
}

// throttle leaves mailbox alone for d from now. It reports whether the
// mailbox was not throttled already.
func (t *mailboxThrottles) throttle(mailbox string, d time.Duration) bool {
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
func (t *mailboxThrottles) wait(mailbox string) time.Duration {
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
