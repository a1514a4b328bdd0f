package o365

import (
	"errors"
	"strings"
	"testing"
	"time"

	"holdfast/relay/upstream"
)

// The rows are the real replies listed in O365-REFERENCE.md.
func TestClassifySMTP(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reply SMTPReply
		kind  AuthKind
		fresh bool
		want  upstream.Class
		after time.Duration
	}{
		{"bad token, app-only", SMTPReply{535, "5.7.3", "Authentication unsuccessful [SN4PR0601CA0006.namprd06.prod.outlook.com]"}, AppOnly, true, upstream.Credential, 0},
		{"bad token, delegated", SMTPReply{535, "5.7.3", "Authentication unsuccessful [host]"}, Delegated, true, upstream.Mailbox, 0},
		{"rejected cached token", SMTPReply{535, "5.7.3", "Authentication unsuccessful [host]"}, AppOnly, false, upstream.Transient, 0},
		{"SMTP AUTH off for tenant", SMTPReply{535, "5.7.139", "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information."}, AppOnly, true, upstream.Mailbox, 0},
		{"SMTP AUTH off for mailbox", SMTPReply{535, "5.7.139", "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information."}, AppOnly, true, upstream.Mailbox, 0},
		{"basic auth", SMTPReply{535, "5.7.139", "Authentication unsuccessful, basic authentication is disabled."}, AppOnly, true, upstream.Mailbox, 0},
		{"bad XOAUTH2 user", SMTPReply{501, "5.5.124", "Invalid XOAUTH2 auth data - User address provided is not valid"}, AppOnly, true, upstream.Mailbox, 0},
		{"MAIL before AUTH", SMTPReply{530, "5.7.57", "Client not authenticated to send mail"}, AppOnly, true, upstream.Transient, 0},
		{"From not permitted", SMTPReply{550, "5.7.60", "SMTP; Client does not have permissions to send as this sender"}, AppOnly, true, upstream.Permanent, 0},
		{"SendAs denied", SMTPReply{554, "5.2.252", "SendAsDenied; a@contoso.com not allowed to send as b@contoso.com; STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied"}, AppOnly, true, upstream.Permanent, 0},
		{"SendAs denied, older form", SMTPReply{554, "5.2.0", "STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied"}, AppOnly, true, upstream.Permanent, 0},
		{"concurrent connections", SMTPReply{432, "4.3.2", "Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending for more information."}, AppOnly, true, upstream.Throttled, concurrencyDelay},
		{"daily recipients", SMTPReply{554, "5.2.0", "STOREDRV.Submission.Exception:SubmissionQuotaExceededException"}, AppOnly, true, upstream.Throttled, quotaDelay},
		{"repeat penalty 251", SMTPReply{550, "5.2.251", "Sender throttled due to continuous invalid recipient errors"}, AppOnly, true, upstream.Throttled, penaltyDelay},
		{"repeat penalty 252", SMTPReply{550, "5.2.252", "Sender throttled due to continuous send as denied errors"}, AppOnly, true, upstream.Throttled, penaltyDelay},
		{"SendAs denied on a 550", SMTPReply{550, "5.2.252", "SendAsDenied; a@contoso.com not allowed to send as b@contoso.com"}, AppOnly, true, upstream.Permanent, 0},
		{"repeat penalty 255", SMTPReply{550, "5.2.255", "Sender throttled due to continuous send as denied errors"}, AppOnly, true, upstream.Throttled, penaltyDelay},
		{"service not active", SMTPReply{421, "4.3.2", "Service not active"}, AppOnly, true, upstream.Transient, 0},
		{"temporary server error", SMTPReply{451, "4.7.0", "Temporary server error. Please try again later. PRX4"}, AppOnly, true, upstream.Transient, 0},
		{"no TLS", SMTPReply{451, "5.7.3", "STARTTLS is required to send mail"}, AppOnly, true, upstream.Transient, 0},
		{"unknown recipient", SMTPReply{550, "5.1.1", "RESOLVER.ADR.RecipNotFound; not found"}, AppOnly, true, upstream.Permanent, 0},
		{"too big", SMTPReply{552, "5.3.4", "Message size exceeds fixed maximum message size"}, AppOnly, true, upstream.Permanent, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := ClassifySMTP(tc.reply, AtMessage, tc.kind, tc.fresh)
			if e.Class != tc.want || e.RetryAfter != tc.after {
				t.Fatalf("class %v, retry after %v; want %v, %v", e.Class, e.RetryAfter, tc.want, tc.after)
			}
			if e.Code != tc.reply.Code || e.Enhanced != tc.reply.Enhanced || e.Text != tc.reply.Text {
				t.Fatalf("reply not kept: %+v", e)
			}
		})
	}
}

// The step a reply answered: refusals before the message never make it
// fail for good.
func TestClassifySMTPSteps(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reply SMTPReply
		at    Step
		want  upstream.Class
	}{
		{"5xx greeting", SMTPReply{554, "5.7.1", "Access denied"}, AtSession, upstream.Transient},
		{"5xx EHLO", SMTPReply{550, "", "Client host rejected"}, AtSession, upstream.Transient},
		{"5xx STARTTLS", SMTPReply{554, "5.7.3", "Unable to initialize security subsystem"}, AtSession, upstream.Transient},
		{"unknown mechanism", SMTPReply{504, "5.7.4", "Unrecognized authentication type"}, AtAuth, upstream.Mailbox},
		{"other 535", SMTPReply{535, "5.7.8", "Authentication credentials invalid"}, AtAuth, upstream.Mailbox},
		{"535 without an enhanced code", SMTPReply{535, "", "Authentication failed"}, AtAuth, upstream.Mailbox},
		{"temporary AUTH failure", SMTPReply{454, "4.7.0", "Temporary authentication failure"}, AtAuth, upstream.Transient},
		{"bad token at AUTH", SMTPReply{535, "5.7.3", "Authentication unsuccessful [host]"}, AtAuth, upstream.Credential},
		{"SMTP AUTH off at AUTH", SMTPReply{535, "5.7.139", "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox."}, AtAuth, upstream.Mailbox},
		{"the same 5xx at the message", SMTPReply{554, "5.7.1", "Access denied"}, AtMessage, upstream.Permanent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if e := ClassifySMTP(tc.reply, tc.at, AppOnly, true); e.Class != tc.want {
				t.Fatalf("class %v, want %v", e.Class, tc.want)
			}
		})
	}
}

// Token endpoint rows: HTTP status and the "error" field of Entra's JSON
// body, as in O365-REFERENCE.md.
func TestClassifyToken(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    TokenFailure
		kind AuthKind
		want upstream.Class
	}{
		{"secret expired", TokenFailure{401, "invalid_client", "AADSTS7000222", "The provided client secret keys for app '…' are expired.", 0}, AppOnly, upstream.Credential},
		{"wrong secret", TokenFailure{401, "invalid_client", "AADSTS7000215", "Invalid client secret provided.", 0}, AppOnly, upstream.Credential},
		{"bad assertion", TokenFailure{401, "invalid_client", "AADSTS700027", "Client assertion failed signature validation.", 0}, AppOnly, upstream.Credential},
		{"app not found", TokenFailure{400, "unauthorized_client", "AADSTS700016", "Application with identifier '…' was not found in the directory", 0}, AppOnly, upstream.Credential},
		{"app disabled", TokenFailure{400, "unauthorized_client", "AADSTS7000112", "Application is disabled.", 0}, AppOnly, upstream.Credential},
		{"tenant not found", TokenFailure{400, "invalid_tenant", "AADSTS90002", "Tenant '…' not found.", 0}, AppOnly, upstream.Credential},
		{"tenant not found, older", TokenFailure{400, "invalid_request", "AADSTS90002", "Tenant '…' not found.", 0}, AppOnly, upstream.Credential},
		{"refresh token expired", TokenFailure{400, "invalid_grant", "AADSTS700082", "The refresh token has expired due to inactivity.", 0}, Delegated, upstream.Mailbox},
		{"grant revoked", TokenFailure{400, "invalid_grant", "AADSTS50173", "The provided grant has expired due to it being revoked", 0}, Delegated, upstream.Mailbox},
		{"consent missing", TokenFailure{400, "invalid_grant", "AADSTS65001", "The user or administrator has not consented to use the application", 0}, Delegated, upstream.Mailbox},
		{"secret expired on a delegated redemption", TokenFailure{401, "invalid_client", "AADSTS7000222", "expired", 0}, Delegated, upstream.Credential},
		{"throttled", TokenFailure{429, "", "", "", 7 * time.Second}, AppOnly, upstream.Throttled},
		{"busy", TokenFailure{503, "temporarily_unavailable", "AADSTS50196", "The server is temporarily unavailable.", 0}, AppOnly, upstream.Transient},
		{"server error", TokenFailure{500, "", "", "", 0}, AppOnly, upstream.Transient},
		{"temporarily_unavailable on 400", TokenFailure{400, "temporarily_unavailable", "", "", 0}, AppOnly, upstream.Transient},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := ClassifyToken(tc.f, tc.kind)
			if e.Class != tc.want {
				t.Fatalf("class %v, want %v (%v)", e.Class, tc.want, e)
			}
			if tc.f.AADSTS != "" && !strings.Contains(e.Text, tc.f.AADSTS) {
				t.Fatalf("text %q lost the AADSTS code", e.Text)
			}
			if e.RetryAfter != tc.f.RetryAfter {
				t.Fatalf("retry after %v, want %v", e.RetryAfter, tc.f.RetryAfter)
			}
			// Only an expired secret opens its breaker at once; the
			// breaker asks the error, not its text.
			if want := tc.f.AADSTS == "AADSTS7000222"; e.BreakerOpensNow() != want {
				t.Fatalf("BreakerOpensNow() = %v, want %v", e.BreakerOpensNow(), want)
			}
			if e.BreakerCounts() != (tc.want == upstream.Credential || tc.want == upstream.Mailbox) {
				t.Fatalf("BreakerCounts() = %v for class %v", e.BreakerCounts(), e.Class)
			}
		})
	}
}

// TestClassifyTokenText: the text reads as the token error's does, with
// a colon after the AADSTS code alone: none is left dangling without one
// (an expired assertion file, refused before it was sent, has none).
func TestClassifyTokenText(t *testing.T) {
	for _, tc := range []struct {
		f    TokenFailure
		want string
	}{
		{TokenFailure{401, "invalid_client", "AADSTS7000222", "The secret expired.", 0}, "invalid_client AADSTS7000222: The secret expired."},
		{TokenFailure{401, "invalid_client", "", "the assertion in /var/run/token expired", 0}, "invalid_client the assertion in /var/run/token expired"},
		{TokenFailure{500, "", "", "", 0}, ""},
		{TokenFailure{429, "", "AADSTS50196", "", 0}, "AADSTS50196"},
	} {
		if got := ClassifyToken(tc.f, AppOnly).Text; got != tc.want {
			t.Errorf("ClassifyToken(%+v).Text = %q, want %q", tc.f, got, tc.want)
		}
	}
}

func TestClassifyGraph(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    GraphFailure
		kind AuthKind
		want upstream.Class
	}{
		{"bad token, app-only", GraphFailure{401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.", 0}, AppOnly, upstream.Credential},
		{"bad token, delegated", GraphFailure{401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.", 0}, Delegated, upstream.Mailbox},
		{"access denied", GraphFailure{403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.", 0}, AppOnly, upstream.Mailbox},
		{"SendAs denied", GraphFailure{403, "ErrorSendAsDenied", "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account., Cannot submit message.", 0}, AppOnly, upstream.Permanent},
		{"throttled", GraphFailure{429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.", 12 * time.Second}, AppOnly, upstream.Throttled},
		{"bad base64", GraphFailure{400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.", 0}, AppOnly, upstream.Permanent},
		{"service unavailable", GraphFailure{503, "ServiceUnavailable", "", 0}, AppOnly, upstream.Transient},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := ClassifyGraph(tc.f, tc.kind)
			if e.Class != tc.want || e.RetryAfter != tc.f.RetryAfter {
				t.Fatalf("class %v after %v, want %v after %v", e.Class, e.RetryAfter, tc.want, tc.f.RetryAfter)
			}
			// Only the 429 is one mailbox's wait.
			if throttled := errors.Is(e, ErrMailboxThrottled); throttled != (tc.f.HTTPStatus == 429) {
				t.Fatalf("marked as the mailbox's throttle: %v", throttled)
			}
		})
	}
}

// TestClassifySubmissionQuota: Exchange's quota reply, in the full form
// the simulator sends, is marked so that the relay can wait for the
// rolling window; other 554 5.2.0 replies are not. The quota and the
// repeat penalty are marked as holds of the whole mailbox; a 432 (one
// more connection than allowed) and SendAs denied are not.
func TestClassifySubmissionQuota(t *testing.T) {
	quota := ClassifySMTP(SMTPReply{554, "5.2.0", "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message.[EndDiagnosticData]"}, AtMessage, AppOnly, true)
	if quota.Class != upstream.Throttled || !errors.Is(quota, ErrSubmissionQuota) || !errors.Is(quota, ErrMailboxBlocked) {
		t.Fatalf("quota reply: %+v", quota)
	}
	sendAs := ClassifySMTP(SMTPReply{554, "5.2.0", "STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied"}, AtMessage, AppOnly, true)
	if errors.Is(sendAs, ErrSubmissionQuota) || errors.Is(sendAs, ErrMailboxBlocked) {
		t.Fatalf("SendAs denied marked as the quota: %+v", sendAs)
	}
	penalty := ClassifySMTP(SMTPReply{550, "5.2.253", "Sender throttled due to continuous ..."}, AtMessage, AppOnly, true)
	if !errors.Is(penalty, ErrMailboxBlocked) || errors.Is(penalty, ErrSubmissionQuota) {
		t.Fatalf("repeat penalty: %+v", penalty)
	}
	concurrent := ClassifySMTP(SMTPReply{432, "4.3.2", "Concurrent connections limit exceeded."}, AtAuth, AppOnly, true)
	if errors.Is(concurrent, ErrMailboxBlocked) {
		t.Fatalf("432 marked as a hold of the mailbox: %+v", concurrent)
	}
}
