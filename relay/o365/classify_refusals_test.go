package o365

import (
	"fmt"
	"testing"

	"holdfast/auth"
	"holdfast/relay/upstream"
)

// Rows from O365-REFERENCE.md: which replies are a refused token.
func TestTokenRefused(t *testing.T) {
	for _, tc := range []struct {
		reply SMTPReply
		kind  AuthKind
		fresh bool
		want  bool
		// delegated and app are DelegatedTokenRefused's and
		// AppTokenRefused's answers.
		delegated, app bool
	}{
		{SMTPReply{535, "5.7.3", "Authentication unsuccessful [host]"}, AppOnly, true, true, false, true},
		{SMTPReply{535, "5.7.3", "Authentication unsuccessful [host]"}, AppOnly, false, true, false, false},
		{SMTPReply{535, "5.7.3", "Authentication unsuccessful [host]"}, Delegated, true, true, true, false},
		{SMTPReply{535, "5.7.3", "Authentication unsuccessful [host]"}, Delegated, false, true, false, false},
		{SMTPReply{535, "5.7.139", "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox."}, AppOnly, true, false, false, false},
		{SMTPReply{535, "5.7.139", "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox."}, Delegated, true, false, false, false},
		{SMTPReply{501, "5.5.124", "Invalid XOAUTH2 auth data - User address provided is not valid"}, AppOnly, true, false, false, false},
		{SMTPReply{451, "5.7.3", "STARTTLS is required to send mail"}, AppOnly, true, false, false, false},
		{SMTPReply{530, "5.7.57", "Client not authenticated to send mail"}, AppOnly, true, false, false, false},
	} {
		t.Run(fmt.Sprintf("%d %s kind %d fresh %v", tc.reply.Code, tc.reply.Enhanced, tc.kind, tc.fresh), func(t *testing.T) {
			e := ClassifySMTP(tc.reply, AtAuth, tc.kind, tc.fresh)
			if got := TokenRefused(e); got != tc.want {
				t.Errorf("TokenRefused = %v, want %v", got, tc.want)
			}
			if got := DelegatedTokenRefused(e); got != tc.delegated {
				t.Errorf("DelegatedTokenRefused = %v, want %v", got, tc.delegated)
			}
			if got := AppTokenRefused(e); got != tc.app {
				t.Errorf("AppTokenRefused = %v, want %v", got, tc.app)
			}
		})
	}
	if TokenRefused(nil) || TokenRefused(fmt.Errorf("dial: refused")) {
		t.Error("an error that is no reply counted as a refused token")
	}
}

// Graph sendMail rows: only 401 InvalidAuthenticationToken is the token.
func TestGraphTokenRefused(t *testing.T) {
	for status, want := range map[int]bool{401: true, 403: false, 429: false, 400: false, 503: false, 202: false} {
		if got := GraphTokenRefused(status); got != want {
			t.Errorf("GraphTokenRefused(%d) = %v, want %v", status, got, want)
		}
	}
}

// Token endpoint rows: Entra refusing the credentials or grant (400, 401)
// as against throttling (429) or an outage (5xx).
func TestEntraRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		te   *auth.TokenError
		want bool
	}{
		{"secret expired", &auth.TokenError{HTTPStatus: 401, Code: "invalid_client", AADSTS: "AADSTS7000222"}, true},
		{"wrong secret", &auth.TokenError{HTTPStatus: 401, Code: "invalid_client", AADSTS: "AADSTS7000215"}, true},
		{"bad assertion", &auth.TokenError{HTTPStatus: 401, Code: "invalid_client", AADSTS: "AADSTS700027"}, true},
		{"app not found", &auth.TokenError{HTTPStatus: 400, Code: "unauthorized_client", AADSTS: "AADSTS700016"}, true},
		{"tenant not found", &auth.TokenError{HTTPStatus: 400, Code: "invalid_tenant", AADSTS: "AADSTS90002"}, true},
		{"refresh token expired", &auth.TokenError{HTTPStatus: 400, Code: "invalid_grant", AADSTS: "AADSTS700082"}, true},
		{"grant revoked", &auth.TokenError{HTTPStatus: 400, Code: "invalid_grant", AADSTS: "AADSTS50173"}, true},
		{"consent missing", &auth.TokenError{HTTPStatus: 400, Code: "invalid_grant", AADSTS: "AADSTS65001"}, true},
		{"throttled", &auth.TokenError{HTTPStatus: 429}, false},
		{"busy", &auth.TokenError{HTTPStatus: 503, Code: "temporarily_unavailable", AADSTS: "AADSTS90033"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := EntraRefused(fmt.Errorf("token: %w", tc.te)); got != tc.want {
				t.Errorf("EntraRefused = %v, want %v", got, tc.want)
			}
		})
	}
	if EntraRefused(fmt.Errorf("dial: refused")) {
		t.Error("a network error counted as a refusal")
	}
}

// A route the relay cannot send on: held on the right breaker, or retried.
func TestClassifyRoute(t *testing.T) {
	for p, want := range map[RouteProblem]upstream.Class{
		RouteMalformed:    upstream.Transient,
		CredentialMissing: upstream.Credential,
		GrantsMissing:     upstream.Mailbox,
	} {
		e := ClassifyRoute(p, "text")
		if e.Class != want || e.Text != "text" {
			t.Errorf("problem %d: %+v, want class %v", p, e, want)
		}
	}
}
