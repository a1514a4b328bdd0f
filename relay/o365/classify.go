// Package o365 delivers mail to Exchange Online: SMTP submission with
// XOAUTH2 and Microsoft Graph sendMail. It owns turning Microsoft's
// replies into Holdfast's error classes (see classify.go), which is the
// one place where that decision is made.
package o365

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"holdfast/auth"
	"holdfast/relay/upstream"
)

// SMTPReply is an SMTP reply from Exchange Online.
type SMTPReply struct {
	Code     int
	Enhanced string // e.g. "5.7.3"
	Text     string
}

// AuthKind says what kind of token authenticated an SMTP or Graph
// session, which decides whose fault a rejected token is.
type AuthKind int

const (
	// AppOnly tokens come from client credentials: one token serves every
	// mailbox of the app registration, so a rejection is the credential's.
	AppOnly AuthKind = iota
	// Delegated tokens come from one mailbox's refresh token: a rejection
	// is that mailbox's.
	Delegated
)

// Throttle delays for replies that name none.
const (
	// quotaDelay follows 554 5.2.0 SubmissionQuotaExceededException: the
	// mailbox's 10,000 recipients per rolling 24 hours are spent.
	quotaDelay = time.Hour
	// penaltyDelay follows 550 5.2.251-5.2.255 "Sender throttled due to
	// continuous ...": Exchange blocks the mailbox for a while.
	penaltyDelay = 30 * time.Minute
	// concurrencyDelay follows 432 4.3.2: another connection will free up.
	concurrencyDelay = 30 * time.Second
)

// ErrMailboxBlocked is carried by the Throttled errors of Exchange's
// timed holds of a whole mailbox: the recipient quota (ErrSubmissionQuota)
// and 550 5.2.251 to 5.2.255 "Sender throttled". The mailbox's other
// mail waits too: the same refusal repeated draws the penalty, or a
// longer one.
var ErrMailboxBlocked = errors.New("the mailbox's sending is held by Exchange for a while")

// ErrMailboxThrottled is carried by the Throttled error of Graph's 429
// ApplicationThrottled: Graph throttles each app and mailbox apart, so
// the wait it asks is that mailbox's Graph sends', not every mailbox's.
var ErrMailboxThrottled = errors.New("the app's Graph requests for the mailbox are throttled")

// ErrSubmissionQuota is carried by the Throttled error of Exchange's
// 554 5.2.0 SubmissionQuotaExceededException, so that the caller can wait
// for the mailbox's rolling quota to have room instead of quotaDelay. It
// wraps ErrMailboxBlocked.
var ErrSubmissionQuota = fmt.Errorf("the mailbox's recipient quota for the rolling 24 hours is spent: %w", ErrMailboxBlocked)

// ErrSMTPAuthDisabled is carried by the Mailbox error of 535 5.7.139:
// SMTP AUTH is disabled for the mailbox or the whole tenant, which Graph
// does not need.
var ErrSMTPAuthDisabled = errors.New("SMTP AUTH is disabled for the mailbox or the tenant")

// Step is the part of an SMTP session a reply answered.
type Step int

const (
	// AtMessage: MAIL FROM, RCPT TO, DATA, BDAT or the end of the data.
	// A reply there may be about the message.
	AtMessage Step = iota
	// AtSession: the greeting, EHLO or STARTTLS before the AUTH. A
	// refusal there is of the session or the endpoint, not the message,
	// and is tried again later (as Postfix defers, by default, past a
	// server that greets with 5xx).
	AtSession
	// AtAuth: AUTH XOAUTH2, and over plaintext the greeting and EHLO
	// that go-smtp sends with it. A refusal there that the table does
	// not list holds the mailbox's mail on its breaker: mail must never
	// bounce because of an auth outage.
	AtAuth
)

// ClassifySMTP classifies a failed SMTP reply to the step at. freshToken
// says whether the token used for AUTH was fetched for this attempt; a
// 535 5.7.3 on a cached token may only mean the token expired early, so
// it is transient (the sender drops the token and the next attempt
// fetches a new one).
func ClassifySMTP(r SMTPReply, at Step, kind AuthKind, freshToken bool) *upstream.Error {
	e := &upstream.Error{Code: r.Code, Enhanced: r.Enhanced, Text: r.Text}
	text := strings.ToLower(r.Text)
	switch {
	case smtpTokenRefused(r.Code, r.Enhanced):
		switch {
		case !freshToken:
			e.Class = upstream.Transient
		case kind == Delegated:
			e.Class = upstream.Mailbox
		default:
			e.Class = upstream.Credential
		}
	case r.Code == 535 && r.Enhanced == "5.7.139":
		// SMTP AUTH disabled for the mailbox or the tenant.
		e.Class, e.Err = upstream.Mailbox, ErrSMTPAuthDisabled
	case tokenExpiringSoon(r):
		// The high volume endpoint refuses a token close to its expiry.
		// The sender retries at once with a new token; reaching here means
		// even a new one was refused, which is not the credential's fault.
		e.Class = upstream.Transient
	case r.Code == 501 && r.Enhanced == "5.5.124":
		// The mailbox address given in XOAUTH2 is not valid.
		e.Class = upstream.Mailbox
	case r.Code == 530:
		// "Client not authenticated": the session lost its AUTH, which is
		// not the message's fault.
		e.Class = upstream.Transient
	case r.Code == 432:
		e.Class, e.RetryAfter = upstream.Throttled, concurrencyDelay
	case strings.Contains(text, "submissionquotaexceeded"):
		e.Class, e.RetryAfter, e.Err = upstream.Throttled, quotaDelay, ErrSubmissionQuota
	case strings.Contains(text, "sendasdenied"):
		// 554 5.2.252 SendAsDenied, or the older 554 5.2.0 form: this
		// message's sender, whichever code carries it.
		e.Class = upstream.Permanent
	case r.Code == 550 && strings.HasPrefix(r.Enhanced, "5.2.25"):
		// 550 5.2.251 to 5.2.255 "Sender throttled due to continuous
		// ...": the mailbox is blocked for a while.
		e.Class, e.RetryAfter, e.Err = upstream.Throttled, penaltyDelay, ErrMailboxBlocked
	case at == AtSession:
		e.Class = upstream.Transient
	case at == AtAuth && r.Code >= 500:
		e.Class = upstream.Mailbox
	case r.Code >= 400 && r.Code < 500:
		e.Class = upstream.Transient
	case r.Code >= 500 && r.Code < 600 && strings.HasPrefix(r.Enhanced, "4."):
		// 451 5.7.3 "STARTTLS is required" style replies carry a 5xx
		// enhanced code on a 4xx reply; the reverse (5xx with 4.x.x) is
		// treated as temporary too.
		e.Class = upstream.Transient
	default:
		e.Class = upstream.Permanent
	}
	return e
}

// tokenExpiringSoon reports the reply "501 5.5.127 Invalid XOAUTH2 auth
// data - Token will expire soon".
func tokenExpiringSoon(r SMTPReply) bool {
	return r.Code == 501 && r.Enhanced == "5.5.127"
}

// RetryWithNewToken reports whether an AUTH reply to a cached token means
// only that this token is stale, so that the sender fetches a new one and
// authenticates again at once, spending no attempt: 535 5.7.3 (the token
// may have expired early) and 501 5.5.127 (it expires soon).
func RetryWithNewToken(r SMTPReply, freshToken bool) bool {
	return !freshToken && (tokenExpiringSoon(r) || smtpTokenRefused(r.Code, r.Enhanced))
}

// TokenFailure is what the token endpoint said, as far as classification
// needs it.
type TokenFailure struct {
	HTTPStatus int
	Code       string // the OAuth "error" field
	AADSTS     string // e.g. "AADSTS7000222"
	Text       string // error_description, without secrets
	RetryAfter time.Duration
}

// ClassifyToken classifies a failed token request. Microsoft asks clients
// to act on the "error" field, not on AADSTS numbers, so only the HTTP
// status and that field decide; the AADSTS code travels in the text for
// operators. An error the endpoint does not explain is held as a
// credential failure rather than bounced: mail must never bounce because
// of an auth outage.
func ClassifyToken(f TokenFailure, kind AuthKind) *upstream.Error {
	text := strings.TrimSpace(f.Code + " " + f.AADSTS)
	if f.AADSTS != "" && f.Text != "" {
		text += ":"
	}
	e := &upstream.Error{Code: f.HTTPStatus, Text: strings.TrimSpace(text + " " + f.Text)}
	e.Reason = e.Text
	switch {
	case f.HTTPStatus == 429:
		e.Class, e.RetryAfter = upstream.Throttled, f.RetryAfter
	case auth.TokenUnavailable(f.HTTPStatus, f.Code):
		e.Class, e.RetryAfter = upstream.Transient, f.RetryAfter
	case f.Code == auth.CodeInvalidGrant && kind == Delegated:
		e.Class = upstream.Mailbox
	default:
		// invalid_client, unauthorized_client, invalid_tenant,
		// invalid_request (older tenant-not-found), invalid_scope:
		// among them a wrong or expired secret (AADSTS7000215,
		// 7000222), certificate (700027) or federated assertion
		// (700211 issuer, 700212 audience, 700213 subject, 700024
		// validity), and an assertion file found expired before sending.
		e.Class = upstream.Credential
		// The one AADSTS number acted on: an expired secret will not
		// come back by itself, so its breaker opens at once.
		e.OpensAtOnce = f.AADSTS == auth.AADSTSSecretExpired
	}
	return e
}

// GraphFailure is a failed Graph request.
type GraphFailure struct {
	HTTPStatus int
	Code       string // error.code, e.g. "ErrorAccessDenied"
	Message    string
	RetryAfter time.Duration
}

// ClassifyGraph classifies a failed Graph sendMail.
func ClassifyGraph(f GraphFailure, kind AuthKind) *upstream.Error {
	e := &upstream.Error{Code: f.HTTPStatus, Text: strings.TrimSpace(f.Code + " " + f.Message)}
	switch {
	case f.HTTPStatus == 429:
		e.Class, e.RetryAfter, e.Err = upstream.Throttled, f.RetryAfter, ErrMailboxThrottled
	case GraphTokenRefused(f.HTTPStatus) && kind == Delegated:
		e.Class = upstream.Mailbox
	case GraphTokenRefused(f.HTTPStatus):
		e.Class = upstream.Credential
	case f.HTTPStatus == 403 && f.Code == "ErrorSendAsDenied":
		// The mailbox may not send as this message's From, as SMTP's
		// 554 5.2.252: the message's own failure.
		e.Class = upstream.Permanent
	case f.HTTPStatus == 403:
		// The app may not act for this mailbox (application access
		// policy, missing permission on the mailbox).
		e.Class = upstream.Mailbox
	case f.HTTPStatus >= 500 || f.HTTPStatus == 408:
		e.Class, e.RetryAfter = upstream.Transient, f.RetryAfter
	default:
		e.Class = upstream.Permanent
	}
	return e
}
