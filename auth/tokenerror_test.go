package auth

import (
	"errors"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

func TestTokenErrorFromEndpoint(t *testing.T) {
	tests := []struct {
		fixture string
		status  int
		header  map[string]string
		want    TokenError
	}{
		{
			fixture: "aadsts7000222", status: 401,
			want: TokenError{HTTPStatus: 401, Code: CodeInvalidClient, AADSTS: AADSTSSecretExpired,
				Description:   "The provided client secret keys for app '3f1b8a52-6c0e-4f7a-9d51-2e8c4b7a1d09' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.",
				CorrelationID: "9c2e5b18-4a7d-4e36-b0f1-83d6a5c2e417", TraceID: "0f8a3c71-2d4e-4b59-a1c6-7e93d2b84f00"},
		},
		{
			// This description has no line breaks before "Trace ID:".
			fixture: "aadsts7000215", status: 401,
			want: TokenError{HTTPStatus: 401, Code: CodeInvalidClient, AADSTS: AADSTSInvalidSecret,
				Description:   "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '3f1b8a52-6c0e-4f7a-9d51-2e8c4b7a1d09'.",
				CorrelationID: "1e7f4a23-8b5c-4d19-a6e0-c2b9d3f85a71", TraceID: "5b6d2e90-1c3a-4f87-9e02-d4a7b8c61f00"},
		},
		{
			fixture: "aadsts700016", status: 400,
			want: TokenError{HTTPStatus: 400, Code: CodeUnauthorizedClient, AADSTS: AADSTSAppNotFound,
				Description:   "Application with identifier '3f1b8a52-6c0e-4f7a-9d51-2e8c4b7a1d09' was not found in the directory 'Contoso'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
				CorrelationID: "4d8b2f61-9e7a-4c35-a1d2-b6f3e8c57a94", TraceID: "7a1c9e42-5d3b-4c68-b2f0-e9a4d7c13b00"},
		},
		{
			fixture: "aadsts90002", status: 400,
			want: TokenError{HTTPStatus: 400, Code: CodeInvalidTenant, AADSTS: AADSTSTenantNotFound,
				Description:   "Tenant 'contoso-typo.onmicrosoft.com' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant.",
				CorrelationID: "6f3a9d52-1e8b-4c74-b0a5-c7d2e9f13b86", TraceID: "2c5e8a13-7b4d-4f90-a3c1-d8e6b2f94700"},
		},
		{
			fixture: "aadsts700082", status: 400,
			want: TokenError{HTTPStatus: 400, Code: CodeInvalidGrant, AADSTS: AADSTSRefreshTokenExpired,
				Description:   "The refresh token has expired due to inactivity. The token was issued on 2024-10-01T09:12:44.1234567Z and was inactive for 90.00:00:00.",
				CorrelationID: "3b7d1f84-6c2a-4e95-a8b3-d5f9c1e74a20", TraceID: "8e2b4d71-3a6c-4f19-b5d0-a1c7e9f26300"},
		},
		{
			fixture: "aadsts50173", status: 400,
			want: TokenError{HTTPStatus: 400, Code: CodeInvalidGrant, AADSTS: AADSTSGrantRevoked,
				Description:   "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password. The grant was issued on '2025-01-06T08:15:02.0000000Z' and the TokensValidFrom date (before which tokens are not valid) for this user is '2025-02-10T16:40:11.0000000Z'.",
				CorrelationID: "5a2c8e17-9d3b-4f61-b4a0-e7c1d5f82b39", TraceID: "1d9f3b62-8e4a-4c07-a2b5-f6c8d1e93a00"},
		},
		{
			fixture: "aadsts65001", status: 400,
			want: TokenError{HTTPStatus: 400, Code: CodeInvalidGrant, AADSTS: AADSTSConsentMissing, SubError: SubErrorConsentRequired,
				Description:   "The user or administrator has not consented to use the application with ID '3f1b8a52-6c0e-4f7a-9d51-2e8c4b7a1d09' named 'Contoso CRM Mailer'. Send an interactive authorization request for this user and resource.",
				CorrelationID: "7c1f5a39-4e8d-4b02-a9c6-d3e7b1f58c62", TraceID: "9b4e1c83-2f7d-4a56-b3e0-c8d2a6f17400"},
		},
		{
			fixture: "throttled429", status: 429, header: map[string]string{"Retry-After": "30"},
			want: TokenError{HTTPStatus: 429, Code: CodeTemporarilyUnavailable, AADSTS: "AADSTS50196", RetryAfter: 30 * time.Second,
				Description:   "The server terminated an operation because it encountered a client request loop. Please contact your app vendor.",
				CorrelationID: "2e8c4a16-7d1f-4b93-b5a2-c6f0d9e13a57", TraceID: "4f7a2c91-6b3e-4d18-a0c5-e9b1d7f36200"},
		},
		{
			fixture: "unavailable503", status: 503, header: map[string]string{"Retry-After": "Fri, 14 Feb 2025 11:02:00 GMT"},
			want: TokenError{HTTPStatus: 503, Code: CodeTemporarilyUnavailable, AADSTS: "AADSTS90033", RetryAfter: 2 * time.Minute,
				Description:   "A transient error has occurred. Please try again.",
				CorrelationID: "8f2b6d41-3c9a-4e17-a5d8-b1c7e3f96a20", TraceID: "6c3d9f27-1a8e-4b45-b7c2-d0e5a9f84100"},
		},
		{
			// Retry-After is only read on 429 and 503.
			fixture: "aadsts7000215", status: 401, header: map[string]string{"Retry-After": "30"},
			want: TokenError{HTTPStatus: 401, Code: CodeInvalidClient, AADSTS: AADSTSInvalidSecret,
				Description:   "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '3f1b8a52-6c0e-4f7a-9d51-2e8c4b7a1d09'.",
				CorrelationID: "1e7f4a23-8b5c-4d19-a6e0-c2b9d3f85a71", TraceID: "5b6d2e90-1c3a-4f87-9e02-d4a7b8c61f00"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.fixture+"_"+http.StatusText(tt.status), func(t *testing.T) {
			f := newFakeEntra(t, func(w http.ResponseWriter, r *http.Request, form url.Values) {
				for k, v := range tt.header {
					w.Header().Set(k, v)
				}
				writeFixture(t, w, tt.status, tt.fixture)
			})
			clock := newFakeClock()
			c := secretCredential(t, f, writeFile(t, t.TempDir(), "secret", secretV1), func(o *CredentialOptions) {
				o.Now = clock.Now
			})
			_, err := c.Token(t.Context())
			var te *TokenError
			if !errors.As(err, &te) {
				t.Fatalf("err = %T %v, want *TokenError", err, err)
			}
			// The error names the material the request used.
			want := tt.want
			want.Fingerprint = c.Fingerprint()
			if len(want.Fingerprint) != 16 {
				t.Errorf("Fingerprint() = %q, want 16 hex digits", want.Fingerprint)
			}
			// And when its file was written.
			fi, err := os.Stat(c.opts.ClientSecretFile)
			if err != nil {
				t.Fatal(err)
			}
			want.Written = fi.ModTime()
			if !te.Written.Equal(want.Written) {
				t.Errorf("Written = %v, want the secret file's modification time %v", te.Written, want.Written)
			}
			want.Written = te.Written // same instant; compare the rest as values
			if *te != want {
				t.Errorf("got  %#v\nwant %#v", *te, want)
			}
			if te.SecretExpired() != (tt.want.AADSTS == AADSTSSecretExpired) {
				t.Errorf("SecretExpired() = %v", te.SecretExpired())
			}
			if strings.Contains(te.Description, "Trace ID") || strings.Contains(te.Description, "\n") {
				t.Errorf("description keeps the trace suffix: %q", te.Description)
			}
		})
	}
}

func TestTokenErrorString(t *testing.T) {
	e := &TokenError{HTTPStatus: 401, Code: CodeInvalidClient, AADSTS: AADSTSSecretExpired,
		Description: "The provided client secret keys for app 'x' are expired."}
	want := "token endpoint: 401 invalid_client AADSTS7000222: The provided client secret keys for app 'x' are expired."
	if e.Error() != want {
		t.Errorf("Error() = %q\nwant      %q", e.Error(), want)
	}
	e = &TokenError{HTTPStatus: 400, Code: CodeInvalidGrant, SubError: SubErrorConsentRequired, AADSTS: AADSTSConsentMissing, Description: "No consent."}
	want = "token endpoint: 400 invalid_grant (consent_required) AADSTS65001: No consent."
	if e.Error() != want {
		t.Errorf("Error() = %q\nwant      %q", e.Error(), want)
	}
	e = &TokenError{HTTPStatus: 429, RetryAfter: 30 * time.Second}
	if want = "token endpoint: 429 (retry after 30s)"; e.Error() != want {
		t.Errorf("Error() = %q, want %q", e.Error(), want)
	}
}

func TestNewTokenErrorWithoutJSON(t *testing.T) {
	// An HTML page from a proxy, or an empty body.
	for _, body := range []string{"<html><body>Service Unavailable</body></html>", ""} {
		re := &oauth2.RetrieveError{
			Response: &http.Response{StatusCode: 503, Header: http.Header{"Retry-After": {"7"}}},
			Body:     []byte(body),
		}
		te := NewTokenError(re, time.Now())
		if te.HTTPStatus != 503 || te.Code != "" || te.AADSTS != "" || te.RetryAfter != 7*time.Second {
			t.Errorf("body %q: %#v", body, te)
		}
	}
	// The AADSTS code is taken from the description when error_codes is
	// missing, and the description is bounded.
	re := &oauth2.RetrieveError{
		Response:         &http.Response{StatusCode: 400, Header: http.Header{}},
		ErrorCode:        "invalid_request",
		ErrorDescription: "AADSTS900144: The request body must contain the following parameter: 'grant_type'. " + strings.Repeat("x", 600),
	}
	te := NewTokenError(re, time.Now())
	if te.AADSTS != "AADSTS900144" || !strings.HasPrefix(te.Description, "The request body must") || len(te.Description) > maxDescriptionLen+len("…") {
		t.Errorf("%#v", te)
	}
}

func TestTokenErrScrubsSecrets(t *testing.T) {
	re := &oauth2.RetrieveError{
		Response:         &http.Response{StatusCode: 401, Header: http.Header{}},
		ErrorCode:        "invalid_client",
		ErrorDescription: "AADSTS7000215: Invalid client secret provided: " + secretV1,
	}
	err := tokenErr(re, time.Now(), secretV1)
	if strings.Contains(err.Error(), secretV1) {
		t.Fatalf("secret in %v", err)
	}
	// A secret straddling the cut at maxDescriptionLen leaves no part.
	long := strings.Repeat("k", 600)
	re.ErrorDescription = "AADSTS7000215: " + strings.Repeat("x", maxDescriptionLen-10) + long
	err = tokenErr(re, time.Now(), long)
	if strings.Contains(err.Error(), "kkkk") || !strings.Contains(err.Error(), "[redacted]") {
		t.Fatalf("part of a long secret in %v", err)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 2, 14, 11, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"":                              0,
		"0":                             0,
		"-5":                            0,
		"120":                           2 * time.Minute,
		"soon":                          0,
		"Fri, 14 Feb 2025 11:00:45 GMT": 45 * time.Second,
		"Fri, 14 Feb 2025 10:59:00 GMT": 0,
	} {
		if got := parseRetryAfter(v, now); got != want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", v, got, want)
		}
	}
}
