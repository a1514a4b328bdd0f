// Package upstream holds the one error type that crosses the boundary
// between Holdfast's delivery workers and the senders that talk to
// Microsoft (or, in development, to a folder): an Error carrying the
// upstream's codes and the class that decides what happens to the message.
//
// It owns the vocabulary of classes; it does not decide which upstream
// reply falls in which class — each sender does that for its own replies.
package upstream

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Class says what a delivery failure means for the message and for the
// auth circuit breakers. See DESIGN.md, "Error classes".
type Class int

// The classes of delivery failures.
const (
	// Transient failures (refused or timed-out connections, 421, 451,
	// token endpoint 5xx) are retried with backoff, spending an attempt.
	Transient Class = iota
	// Permanent failures (550 5.1.1, 552, 554 5.2.252) dead-letter the
	// message at once.
	Permanent
	// Throttled failures (432 4.3.2, 429) are retried after the time given,
	// without spending an attempt.
	Throttled
	// Credential failures (the app registration's secret or certificate is
	// rejected) hold the message without spending an attempt and count on
	// the credential's breaker.
	Credential
	// Mailbox failures (a delegated grant is expired or revoked, SMTP AUTH
	// is disabled for the mailbox) hold the message without spending an
	// attempt and count on the mailbox's breaker.
	Mailbox
)

var classNames = [...]string{"transient", "permanent", "throttled", "credential", "mailbox"}

func (c Class) String() string {
	if c < 0 || int(c) >= len(classNames) {
		return fmt.Sprintf("class(%d)", int(c))
	}
	return classNames[c]
}

// MarshalText writes the class's name, as JSON logs and replies show it.
func (c Class) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// Error is a failed delivery. Code, Enhanced and Text are the upstream's
// SMTP reply (or the HTTP status and text), when there was one.
type Error struct {
	Class      Class
	Code       int           // SMTP reply code or HTTP status; 0 when there was no reply
	Enhanced   string        // enhanced status code, e.g. "5.7.3"
	Text       string        // the upstream's text, never a secret or token
	RetryAfter time.Duration // for Throttled: when to try again
	Err        error         // the underlying error, if any
	// OpensAtOnce says the failure opens its breaker without waiting for
	// the threshold: Entra said the client secret has expired.
	OpensAtOnce bool
	// Reason is what a breaker records as its reason; default: the code,
	// enhanced code and text.
	Reason string
}

func (e *Error) Error() string {
	msg := e.Class.String()
	if e.Code != 0 {
		msg += fmt.Sprintf(": %d", e.Code)
		if e.Enhanced != "" {
			msg += " " + e.Enhanced
		}
		if e.Text != "" {
			msg += " " + e.Text
		}
	} else if e.Text != "" {
		msg += ": " + e.Text
	}
	// An underlying error that carries the same text (a token endpoint's
	// refusal does) would say it all twice.
	if e.Err != nil {
		if under := e.Err.Error(); e.Text == "" || !strings.Contains(under, e.Text) {
			msg += ": " + under
		}
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// The breaker package asks a failure these questions through an interface
// of its own (breaker.Failure); the answers come from the class decided by
// the senders' classification.

// BreakerCounts reports whether the failure counts on a breaker: a
// Credential or Mailbox failure.
func (e *Error) BreakerCounts() bool { return e.Class == Credential || e.Class == Mailbox }

// BreakerOpensNow reports whether the failure opens its breaker at once.
func (e *Error) BreakerOpensNow() bool { return e.OpensAtOnce }

// BreakerReason is the upstream's code and text, e.g. "535 5.7.3
// Authentication unsuccessful" or "invalid_client AADSTS7000222: The
// provided client secret keys for app '…' are expired.".
func (e *Error) BreakerReason() string {
	if e.Reason != "" {
		return e.Reason
	}
	if e.Code == 0 {
		if e.Text != "" {
			return e.Text
		}
		return e.Error()
	}
	return strings.Join(strings.Fields(fmt.Sprintf("%d %s %s", e.Code, e.Enhanced, e.Text)), " ")
}

// ErrOutcomeUnknown marks a failed send that may still have sent the
// message: the request was written and no answer says what became of
// it. Such a message is flagged, so that its next attempt first asks the
// upstream whether it went out.
var ErrOutcomeUnknown = errors.New("the message may have been sent")

// ClassOf returns the class of a delivery error. An error that is not an
// *Error, such as a bare network error, is Transient: it is retried, never
// bounced.
func ClassOf(err error) Class {
	var e *Error
	if errors.As(err, &e) {
		return e.Class
	}
	return Transient
}

// AsksLater reports whether err is an upstream's "try again later", as
// the senders classified it: Transient or Throttled. Such an answer says
// nothing of a credential or a mailbox. An error no sender classified is
// not one.
func AsksLater(err error) bool {
	var e *Error
	return errors.As(err, &e) && (e.Class == Transient || e.Class == Throttled)
}

// RetryAfterOf returns the delay the upstream asked for, or zero.
func RetryAfterOf(err error) time.Duration {
	var e *Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	return 0
}
