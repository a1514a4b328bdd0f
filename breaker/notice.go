package breaker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Notices lets a fleet of replicas send a recurring notice, such as "the
// credential expires in 20 days", once per period between them, across
// restarts: the first replica to claim it in Redis sends it.
type Notices struct {
	rdb redis.UniversalClient
}

// NewNotices returns notices kept in rdb.
func NewNotices(rdb redis.UniversalClient) *Notices { return &Notices{rdb: rdb} }

// Claim reports whether the caller is the first, fleet-wide, to claim the
// notice kind/name/level within every: the claim lasts every, and the
// first call after it ends claims it again.
func (n *Notices) Claim(ctx context.Context, kind, name, level string, every time.Duration) (bool, error) {
	ok, err := n.rdb.SetNX(ctx, noticeKey(kind, name, level), "1", every).Result()
	if err != nil {
		return false, fmt.Errorf("notice %s %s: %w", kind, name, err)
	}
	return ok, nil
}

// Release gives up the claim of the notice kind/name/level, which its
// claimant could not send: the next Claim, by any replica, gets it.
func (n *Notices) Release(ctx context.Context, kind, name, level string) error {
	if err := n.rdb.Del(ctx, noticeKey(kind, name, level)).Err(); err != nil {
		return fmt.Errorf("notice %s %s: %w", kind, name, err)
	}
	return nil
}

// Post sends v, an event of type event (e.g. "credential.expiring"), as
// JSON to the webhook now, for events other than transitions. It makes
// the quick tries of a transition, not the slow ones after them (a
// caller that waits for it at shutdown must not wait long), and returns
// when the receiver accepted it, the tries are spent, or ctx ends. Unlike
// Notify it blocks, so call it from a goroutine that may wait. The
// metrics count it under event: name it in NewWebhookMetrics.
func (w *Webhook) Post(ctx context.Context, event string, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("webhook encode: %w", err)
	}
	w.mu.Lock()
	w.posting++
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.posting--
		w.mu.Unlock()
	}()
	_, err = w.deliver(ctx, event, body, time.Time{}, nil)
	if err != nil && !errors.Is(err, context.Canceled) {
		w.mx.drop(event)
	}
	return err
}
