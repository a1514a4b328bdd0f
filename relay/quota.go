package relay

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"holdfast/queue"
	"holdfast/relay/o365"
	"holdfast/relay/upstream"
)

const (
	// recipientWindow is Exchange Online's rolling window for its
	// per-mailbox recipient quota (10,000 recipients).
	recipientWindow = 24 * time.Hour
	// minQuotaWait is the shortest wait after a quota reply: recipients
	// that Holdfast did not send (a person using the mailbox) count too,
	// so the window may free up later than Holdfast's own log says.
	minQuotaWait = time.Minute
)

// recipientLog is what the exchange sender needs of the fleet-wide
// per-mailbox recipient counts.
type recipientLog interface {
	CountRecipients(ctx context.Context, mailbox, id string, n int, window time.Duration) error
	QuotaFreesIn(ctx context.Context, mailbox string, window time.Duration) (time.Duration, error)
}

var _ recipientLog = (*queue.Limiter)(nil)

// quotaAware counts the recipients of a delivered message against its
// mailbox and, when Exchange says the mailbox's quota is spent, makes the
// message wait until the oldest counted recipients leave the window. The
// wait goes in the Throttled error's RetryAfter, so the message is
// deferred without spending an attempt.
func quotaAware(ctx context.Context, rl recipientLog, m *queue.Message, err error, log *slog.Logger) error {
	if rl == nil {
		return err
	}
	_, _, mailbox, ok := parseRoute(m.Route)
	if !ok {
		return err
	}
	ctx = context.WithoutCancel(ctx)
	if err == nil {
		if cerr := rl.CountRecipients(ctx, mailbox, m.ID, len(m.To), recipientWindow); cerr != nil {
			log.Warn("cannot count the recipients of a delivered message", "id", m.ID, "mailbox", mailbox, "err", cerr)
		}
		return nil
	}
	var ue *upstream.Error
	if !errors.Is(err, o365.ErrSubmissionQuota) || !errors.As(err, &ue) {
		return err
	}
	wait, qerr := rl.QuotaFreesIn(ctx, mailbox, recipientWindow)
	switch {
	case qerr != nil:
		log.Warn("cannot read the mailbox's recipient log; waiting the default", "mailbox", mailbox, "err", qerr)
	case wait > 0:
		ue.RetryAfter = max(wait, minQuotaWait)
	}
	return err
}
