package o365

import (
	"errors"
	"net/http"

	"holdfast/auth"
	"holdfast/relay/upstream"
)

// The rest of the table: the questions other code asks about a failure
// besides its class. Each answer is decided here and nowhere else.

// smtpTokenRefused is Exchange refusing the token offered at AUTH
// XOAUTH2: 535 5.7.3.
func smtpTokenRefused(code int, enhanced string) bool {
	return code == 535 && enhanced == "5.7.3"
}

// TokenRefused reports whether err is Exchange refusing the token offered
// at SMTP AUTH (535 5.7.3), whatever class the token's kind and freshness
// gave it.
func TokenRefused(err error) bool {
	var ue *upstream.Error
	return errors.As(err, &ue) && smtpTokenRefused(ue.Code, ue.Enhanced)
}

// DelegatedTokenRefused reports whether err is Exchange refusing a
// delegated (one mailbox's) token at AUTH: a mailbox-class 535 5.7.3.
func DelegatedTokenRefused(err error) bool {
	return upstream.ClassOf(err) == upstream.Mailbox && TokenRefused(err)
}

// AppTokenRefused reports whether err is Exchange refusing a new app-only
// token at AUTH: a credential-class 535 5.7.3, which may yet be one
// mailbox's missing permission.
func AppTokenRefused(err error) bool {
	return upstream.ClassOf(err) == upstream.Credential && TokenRefused(err)
}

// GraphTokenRefused reports whether a Graph status is Graph refusing the
// bearer token (401 InvalidAuthenticationToken). On a cached token it may
// only mean the token expired early, so the sender tries once more with a
// new one before classifying.
func GraphTokenRefused(status int) bool {
	return status == http.StatusUnauthorized
}

// EntraRefused reports whether a failed token request is Entra refusing
// the credentials or the grant (HTTP 400 or 401: an expired or wrong
// secret, an unknown app or tenant, a revoked grant), as opposed to
// throttling it or being unavailable.
func EntraRefused(err error) bool {
	var te *auth.TokenError
	return errors.As(err, &te) && entraRefusedStatus(te.HTTPStatus)
}

// SecretMayBePropagating reports whether a failed token request is an
// answer Entra gives a client secret it has not propagated yet:
// AADSTS7000215, as for a secret it does not know (a wrong one, an old one
// deleted), or at times AADSTS7000222, as for one expired.
func SecretMayBePropagating(err error) bool {
	var te *auth.TokenError
	return errors.As(err, &te) && te.SecretRefused()
}

func entraRefusedStatus(status int) bool {
	return status == http.StatusBadRequest || status == http.StatusUnauthorized
}

// RouteProblem is a route the relay cannot send on because of its own
// configuration.
type RouteProblem int

const (
	// RouteMalformed: the route is not app:CRED:MAILBOX or
	// mbx:CRED:MAILBOX. Another replica with a newer configuration may
	// know it, so it is retried.
	RouteMalformed RouteProblem = iota
	// CredentialMissing: the route's credential is not configured; the
	// credential's mail is held until it is.
	CredentialMissing
	// GrantsMissing: delegated grants are not configured; the mailbox's
	// mail is held until they are.
	GrantsMissing
)

// ClassifyRoute classifies a route the relay cannot send on.
func ClassifyRoute(p RouteProblem, text string) *upstream.Error {
	e := &upstream.Error{Text: text}
	switch p {
	case CredentialMissing:
		e.Class = upstream.Credential
	case GrantsMissing:
		e.Class = upstream.Mailbox
	default:
		e.Class = upstream.Transient
	}
	return e
}
