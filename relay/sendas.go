package relay

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/emersion/go-smtp"
)

// noMailboxError is a sender the application may use (its senders allow
// it) but that no mailbox can send as: it has no delegated grant, no
// sender_mailboxes entry maps it, and it is not the application's
// mailbox. Such mail is refused at MAIL FROM (or POST), with 550 5.7.60,
// rather than accepted and dead-lettered later with Exchange's
// SendAsDenied.
type noMailboxError struct {
	app, from, mailbox string
}

func (e *noMailboxError) Error() string {
	return fmt.Sprintf("no mailbox of app %s can send as %s: it is not the app's mailbox %s, no sender_mailboxes entry maps it and it has no delegated grant",
		e.app, e.from, e.mailbox)
}

// hint is what the submitter is told.
func (e *noMailboxError) hint() string {
	return fmt.Sprintf("no mailbox of this application sends as %s; send from an address it has a mailbox for, or ask the operator to map it in sender_mailboxes or register a delegated grant", e.from)
}

// smtpError is the 550 5.7.60 reply, in Exchange Online's wording.
func (e *noMailboxError) smtpError() *smtp.SMTPError {
	return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 60},
		Message: "Client does not have permissions to send as this sender: " + e.hint()}
}

// senderRoute returns the route of the app's mail from this sender,
// decided once, before the message is transferred: the app's Route when
// routing does not depend on the sender. It fails with a *noMailboxError
// when no mailbox sends as the sender, or with another error when the
// check could not be made (the grant lookup failed).
func (in *ingress) senderRoute(ctx context.Context, app *App, from string) (string, error) {
	if in.route == nil {
		return app.Route, nil
	}
	return in.route(ctx, app, from)
}

// asNoMailbox returns err's *noMailboxError, if it is one.
func asNoMailbox(err error) (*noMailboxError, bool) {
	var nm *noMailboxError
	ok := errors.As(err, &nm)
	return nm, ok
}

// failSender answers a POST whose sender no mailbox sends as with 403,
// or 503 when the check could not be made.
func (h *api) failSender(w http.ResponseWriter, r *http.Request, app *App, err error) {
	if nm, ok := asNoMailbox(err); ok {
		h.fail(w, r, app, http.StatusForbidden, "sender_not_permitted", "5.7.60 Client does not have permissions to send as this sender: "+nm.hint()+".")
		return
	}
	h.in.log.Error("cannot check the sender's mailbox", "app", app.Name, "err", err)
	w.Header().Set("Retry-After", storeRetryAfter)
	h.fail(w, r, app, http.StatusServiceUnavailable, "queue_unavailable", "The relay could not look up the sender's mailbox in its store (Redis), and nothing was kept; send it again after the Retry-After delay.")
}
