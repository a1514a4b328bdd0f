package relay

import (
	"strings"
	"testing"
)

// TestValidatorSameVerdictBothIngresses runs every case through SMTP and
// through the HTTP API: each gets the same verdict, and a refusal the same
// reason text (the SMTP reply's text starts the HTTP message).
func TestValidatorSameVerdictBothIngresses(t *testing.T) {
	long := strings.Repeat("x", 2100)
	cases := []struct {
		name string
		body string
		code string // HTTP error code; "" when accepted
	}{
		{"fine", "Subject: t\r\n\r\nhello\r\n", ""},
		{"bare CR in header", "Subject: t\rBcc: victim@example.org\r\n\r\nhello\r\n", "bare_cr"},
		{"bare CR in body", "Subject: t\r\n\r\nline one\rline two\r\n", "bare_cr"},
		{"bare LF with CRLF", "Subject: t\r\n\r\nline one\nline two\r\n", "bare_lf"},
		{"NUL", "Subject: t\r\n\r\nnul \x00 here\r\n", "nul_in_body"},
		{"over-long line", "Subject: t\r\n\r\n" + long + "\r\n", "line_too_long"},
		{"over-long header", "Subject: " + long + "\r\n\r\nhello\r\n", "line_too_long"},
		{"header injection", "Subject: t\r\nBcc victim@example.org\r\n\r\nhello\r\n", "not_a_message"},
		{"no header", "hello\r\n", "not_a_message"},
		// JSON sent by mistake reads as one header field named {"a":
		// accepted, it would go out as an empty message.
		{"JSON object", "{\"a\":1}\r\n", "not_a_message"},
		{"JSON object on lines", "{\r\n  \"subject\": \"hello\",\r\n  \"body\": \"hi\"\r\n}\r\n", "not_a_message"},
		{"JSON array", "[{\"to\":\"x@example.org\"}]\r\n", "not_a_message"},
	}
	smtpEnv := newSMTPEnv(t)
	api := newAPIEnv(t, apiConfig{})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dialSMTP(t, smtpEnv.insecure)
			c.login()
			c.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
			c.cmd("RCPT TO:<x@example.org>", "250 ")
			c.cmd("DATA", "354 ")
			c.write(tc.body + ".\r\n")
			smtpReply, err := c.readReply()
			if err != nil {
				t.Fatalf("SMTP: %v", err)
			}
			r := api.post(t, crmToken, "from=billing@contoso.com&to=x@example.org", tc.body, nil)
			if tc.code == "" {
				if !strings.HasPrefix(smtpReply, "250 ") {
					t.Errorf("SMTP reply %q, want 250", smtpReply)
				}
				accepted(t, r)
				return
			}
			if !strings.HasPrefix(smtpReply, "5") {
				t.Errorf("SMTP reply %q, want a refusal", smtpReply)
			}
			e := wantError(t, r, 400, tc.code)
			// "550 5.6.11 Bare CR is not allowed; use CRLF" -> the text
			// after the two codes.
			parts := strings.SplitN(smtpReply, " ", 3)
			if len(parts) < 3 || !strings.HasPrefix(e.Message, parts[2]+".") {
				t.Errorf("HTTP message %q does not start with the SMTP reason of %q", e.Message, smtpReply)
			}
		})
	}
}
