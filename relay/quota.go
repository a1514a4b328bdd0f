package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"holdfast/queue"
	"holdfast/relay/o365"
	"holdfast/relay/upstream"
)

const (
	// recipientWindow is Exchange Online's rolling window for its
	// per-mailbox recipient quota.
	recipientWindow = 24 * time.Hour
	// minQuotaWait is the shortest wait after Exchange's quota reply:
	// recipients that Holdfast did not send (a person using the mailbox)
	// count too, so the window may free up later than Holdfast's own log
	// says.
	minQuotaWait = time.Minute
)

// recipientLog is what the exchange sender needs of the fleet-wide
// per-mailbox recipient counts.
type recipientLog interface {
	ReserveRecipients(ctx context.Context, mailbox, id string, n, limit int, window time.Duration) (time.Duration, error)
	ReleaseRecipients(ctx context.Context, mailbox, id string, n int) error
	QuotaFreesIn(ctx context.Context, mailbox string, window time.Duration) (time.Duration, error)
}

var _ recipientLog = (*queue.Limiter)(nil)

// recipientQuota keeps each mailbox under Exchange's recipient quota and
// turns the quota reply into a wait. Both waits go in a Throttled error's
// RetryAfter, so the message is deferred without spending an attempt.
type recipientQuota struct {
	rl    recipientLog
	limit int // recipients per mailbox per window; 0 only counts
	log   *slog.Logger
}

// reserve counts m's recipients against its mailbox before it is sent.
// It returns a Throttled error when they would go over the limit; counted
// says whether settle must release them if the send fails.
func (q *recipientQuota) reserve(ctx context.Context, m *queue.Message) (counted bool, err error) {
	_, _, mailbox, ok := parseRoute(m.Route)
	if q == nil || !ok {
		return false, nil
	}
	wait, err := q.rl.ReserveRecipients(ctx, mailbox, m.ID, len(m.To), q.limit, recipientWindow)
	if err != nil {
		q.log.Warn("cannot count recipients against the mailbox's quota; sending uncounted", "id", m.ID, "mailbox", mailbox, "err", err)
		return false, nil
	}
	if wait > 0 {
		return false, &upstream.Error{Class: upstream.Throttled, RetryAfter: wait,
			Text: fmt.Sprintf("%s has sent to its %d recipients of the last 24 hours; waiting until earlier ones leave the window", mailbox, q.limit)}
	}
	return true, nil
}

// settle releases the recipients of a message that was not sent (unless
// it may have been), and on Exchange's quota reply waits until the oldest
// counted recipients leave the window.
func (q *recipientQuota) settle(ctx context.Context, m *queue.Message, counted bool, err error) error {
	if q == nil || err == nil {
		return err
	}
	_, _, mailbox, _ := parseRoute(m.Route)
	ctx = context.WithoutCancel(ctx)
	if counted && !errors.Is(err, upstream.ErrOutcomeUnknown) {
		if rerr := q.rl.ReleaseRecipients(ctx, mailbox, m.ID, len(m.To)); rerr != nil {
			q.log.Warn("cannot release the recipients of an unsent message", "id", m.ID, "mailbox", mailbox, "err", rerr)
		}
	}
	var ue *upstream.Error
	if !errors.Is(err, o365.ErrSubmissionQuota) || !errors.As(err, &ue) {
		return err
	}
	wait, qerr := q.rl.QuotaFreesIn(ctx, mailbox, recipientWindow)
	switch {
	case qerr != nil:
		q.log.Warn("cannot read the mailbox's recipient log; waiting the default", "mailbox", mailbox, "err", qerr)
	case wait > 0:
		ue.RetryAfter = max(wait, minQuotaWait)
	}
	return err
}
