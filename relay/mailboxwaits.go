package relay

import (
	"context"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"holdfast/queue"
	"holdfast/relay/ops"
)

// Kinds of the fleet's record of a mailbox's waits
// (queue.Limiter.HoldMailbox), one for each mailboxWaits of the exchange
// sender.
const (
	waitBlocked = "blocked"
	waitGraph   = "graph"
)

// mailboxWaits keeps, per mailbox, until when the upstream asked this
// replica to leave the mailbox alone: Graph's 429 (o365.ErrMailboxThrottled),
// or Exchange's holds of the whole mailbox (o365.ErrMailboxBlocked). One
// mailbox's wait holds back that mailbox's mail, not an endpoint and
// every other mailbox with it. The exchange sender records each wait for
// the fleet too, under kind, so that the other replicas, and those
// started meanwhile, leave the mailbox alone as well (exchange.Reserve);
// this replica's own record spares it the round trip, and holds when
// Redis did not take the fleet's.
type mailboxWaits struct {
	kind string
	set  expiries // lower-cased mailbox: until when it is left alone
}

// hold leaves mailbox alone for d from now. It reports whether the
// mailbox was not held already.
func (t *mailboxWaits) hold(mailbox string, d time.Duration) bool {
	if d <= 0 {
		return false
	}
	now := time.Now()
	return t.set.extend(strings.ToLower(mailbox), now.Add(d), now)
}

// wait is how long mailbox is still left alone, or 0.
func (t *mailboxWaits) wait(mailbox string) time.Duration {
	return t.set.left(strings.ToLower(mailbox), time.Now())
}

// MailboxWait is a wait the upstream asked of a mailbox, as the fleet
// recorded it: until when no relay sends its mail, and why. The status
// page shows the same.
type MailboxWait = ops.MailboxWait

// waitReasons says what each kind of wait is.
var waitReasons = map[string]string{
	waitBlocked: "Exchange holds its sending (550 5.2.25x, or its daily recipient quota)",
	waitGraph:   "Graph throttles it (429); its mail that goes by Graph waits",
}

// MailboxWaits returns the waits not yet ended of the mailboxes of
// routes, as "holdfast queue stats" shows them. now is the clock.
func MailboxWaits(ctx context.Context, rdb redis.UniversalClient, routes []string, now func() time.Time) ([]MailboxWait, error) {
	seen := map[string]bool{}
	var mailboxes []string
	for _, r := range routes {
		if _, _, m, ok := parseRoute(r); ok && !seen[m] {
			seen[m] = true
			mailboxes = append(mailboxes, m)
		}
	}
	waits, err := queue.NewLimiter(rdb, now).MailboxWaits(ctx, mailboxes)
	if err != nil {
		return nil, err
	}
	out := make([]MailboxWait, 0, len(waits))
	for _, w := range waits {
		why := waitReasons[w.Kind]
		if why == "" {
			why = w.Kind
		}
		out = append(out, MailboxWait{Mailbox: w.Mailbox, Until: w.Until.UTC(), Why: why})
	}
	return out, nil
}
