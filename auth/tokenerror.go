package auth

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"
)

// Token endpoint error codes (the "error" field) that callers classify on.
const (
	CodeInvalidClient          = "invalid_client"
	CodeUnauthorizedClient     = "unauthorized_client"
	CodeInvalidTenant          = "invalid_tenant"
	CodeInvalidRequest         = "invalid_request"
	CodeInvalidGrant           = "invalid_grant"
	CodeTemporarilyUnavailable = "temporarily_unavailable"
)

// AADSTS codes with a meaning of their own for Holdfast.
const (
	AADSTSSecretExpired       = "AADSTS7000222" // client secret expired
	AADSTSInvalidSecret       = "AADSTS7000215" // wrong client secret
	AADSTSAssertionInvalid    = "AADSTS700027"  // client assertion signature invalid
	AADSTSAppNotFound         = "AADSTS700016"  // application not found in the directory
	AADSTSAppDisabled         = "AADSTS7000112" // application disabled
	AADSTSTenantNotFound      = "AADSTS90002"   // tenant not found
	AADSTSRefreshTokenExpired = "AADSTS700082"  // refresh token expired after inactivity
	AADSTSGrantRevoked        = "AADSTS50173"   // grant revoked, a fresh token is needed
	AADSTSConsentMissing      = "AADSTS65001"   // consent missing
)

// SubErrorConsentRequired is the "suberror" sent with AADSTS65001.
const SubErrorConsentRequired = "consent_required"

// maxDescriptionLen bounds TokenError.Description.
const maxDescriptionLen = 512

// TokenError is an error answer from the Entra ID token endpoint.
//
// Description holds only the first line of error_description, without the
// AADSTS prefix and without the trace, correlation and timestamp suffix.
type TokenError struct {
	HTTPStatus    int
	Code          string        // the "error" field, e.g. "invalid_client"
	AADSTS        string        // e.g. "AADSTS7000222"
	Description   string        // first line of error_description
	SubError      string        // the "suberror" field, e.g. "consent_required"
	RetryAfter    time.Duration // from Retry-After on 429 and 503
	CorrelationID string
	TraceID       string
	// Fingerprint identifies the secret or certificate the request used
	// (Credential.Fingerprint), so that a refusal of an old secret is
	// told from a refusal of the one that works.
	Fingerprint string
	// Written is when that material's files were written (zero when not
	// known): a replica's stale file is older than the one that works.
	Written time.Time
}

// Error returns e.g.
// "token endpoint: 401 invalid_client AADSTS7000222: The provided client secret keys for app '…' are expired. …".
func (e *TokenError) Error() string {
	var b strings.Builder
	b.WriteString("token endpoint: ")
	b.WriteString(strconv.Itoa(e.HTTPStatus))
	if e.Code != "" {
		b.WriteString(" ")
		b.WriteString(e.Code)
	}
	if e.SubError != "" {
		b.WriteString(" (")
		b.WriteString(e.SubError)
		b.WriteString(")")
	}
	if e.AADSTS != "" {
		b.WriteString(" ")
		b.WriteString(e.AADSTS)
	}
	if e.Description != "" {
		if e.AADSTS != "" {
			b.WriteString(":")
		}
		b.WriteString(" ")
		b.WriteString(e.Description)
	}
	if e.RetryAfter > 0 {
		b.WriteString(" (retry after ")
		b.WriteString(e.RetryAfter.String())
		b.WriteString(")")
	}
	return b.String()
}

// Unavailable reports whether the endpoint asked to be tried again later
// (TokenUnavailable) rather than refused the request.
func (e *TokenError) Unavailable() bool { return TokenUnavailable(e.HTTPStatus, e.Code) }

// TokenUnavailable reports whether a token endpoint's answer of this HTTP
// status and "error" field asks to be tried again later: a 429, a 5xx,
// or temporarily_unavailable. Such an answer says nothing of the
// credential or the grant.
func TokenUnavailable(status int, code string) bool {
	return status == http.StatusTooManyRequests || status >= 500 || code == CodeTemporarilyUnavailable
}

// SecretExpired reports whether the endpoint said the client secret has
// expired (AADSTS7000222).
func (e *TokenError) SecretExpired() bool {
	return e.AADSTS == AADSTSSecretExpired
}

// SecretUnknown reports whether the endpoint did not know the client
// secret sent (AADSTS7000215): a wrong secret, an old one deleted, or a
// new one not propagated yet.
func (e *TokenError) SecretUnknown() bool {
	return e.AADSTS == AADSTSInvalidSecret
}

// SecretRefused reports whether the endpoint refused the client secret
// itself: expired (AADSTS7000222) or unknown (AADSTS7000215). Another of
// the app's secrets may still get a token; and Entra answers either for
// a new secret it has not propagated yet.
func (e *TokenError) SecretRefused() bool {
	return e.SecretExpired() || e.SecretUnknown()
}

// entraError is the JSON error body of the token endpoint.
type entraError struct {
	Error         string `json:"error"`
	Description   string `json:"error_description"`
	ErrorCodes    []int  `json:"error_codes"`
	SubError      string `json:"suberror"`
	TraceID       string `json:"trace_id"`
	CorrelationID string `json:"correlation_id"`
}

var aadstsPrefix = regexp.MustCompile(`^\s*(AADSTS\d+)\s*:?\s*`)

// NewTokenError converts an *oauth2.RetrieveError into a *TokenError. It
// reads the status, the error code and description, the JSON body's
// error_codes, suberror, trace_id and correlation_id, and the Retry-After
// header (seconds or an HTTP date, relative to now). Each of secrets is
// replaced by "[redacted]" in the description.
func NewTokenError(re *oauth2.RetrieveError, now time.Time, secrets ...string) *TokenError {
	e := &TokenError{Code: re.ErrorCode}
	var body entraError
	if len(re.Body) > 0 && json.Unmarshal(re.Body, &body) == nil {
		if e.Code == "" {
			e.Code = body.Error
		}
		e.SubError = body.SubError
		e.TraceID = body.TraceID
		e.CorrelationID = body.CorrelationID
		if len(body.ErrorCodes) > 0 {
			e.AADSTS = "AADSTS" + strconv.Itoa(body.ErrorCodes[0])
		}
	}
	desc := re.ErrorDescription
	if desc == "" {
		desc = body.Description
	}
	// Scrub before the description is cut: a secret cut in two would
	// no longer match.
	for _, sec := range secrets {
		if sec != "" {
			desc = strings.ReplaceAll(desc, sec, "[redacted]")
		}
	}
	if m := aadstsPrefix.FindStringSubmatch(desc); m != nil {
		if e.AADSTS == "" {
			e.AADSTS = m[1]
		}
		desc = desc[len(m[0]):]
	}
	e.Description = firstLine(desc)
	if re.Response != nil {
		e.HTTPStatus = re.Response.StatusCode
		switch e.HTTPStatus {
		case http.StatusTooManyRequests, http.StatusServiceUnavailable:
			e.RetryAfter = parseRetryAfter(re.Response.Header.Get("Retry-After"), now)
		}
	}
	return e
}

// firstLine returns the first line of an error description, cut before
// Entra's "Trace ID:" suffix and bounded in length.
func firstLine(s string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = s[:i]
	}
	if i := strings.Index(s, "Trace ID:"); i >= 0 {
		s = s[:i]
	}
	s = strings.TrimSpace(s)
	return truncate(s, maxDescriptionLen)
}

// parseRetryAfter reads a Retry-After value given in seconds or as an HTTP
// date. It returns 0 when the value is missing, malformed or in the past.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n <= 0 {
			return 0
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d.Round(time.Second)
		}
	}
	return 0
}

// tokenErr turns an error from an oauth2 token request into a *TokenError
// when the endpoint answered, and wraps it otherwise (dial failures,
// timeouts, bad JSON). secrets are scrubbed from the description.
func tokenErr(err error, now time.Time, secrets ...string) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		return NewTokenError(re, now, secrets...)
	}
	return fmt.Errorf("token endpoint: %w", err)
}
