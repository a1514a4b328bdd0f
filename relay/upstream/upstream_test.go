package upstream

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestClassOf(t *testing.T) {
	throttled := &Error{Class: Throttled, Code: 432, Enhanced: "4.3.2", Text: "Concurrent connections limit exceeded", RetryAfter: time.Minute}
	wrapped := fmt.Errorf("send to alice@contoso.com: %w", throttled)
	for _, tc := range []struct {
		err   error
		class Class
		after time.Duration
	}{
		{wrapped, Throttled, time.Minute},
		{&Error{Class: Permanent, Code: 550, Enhanced: "5.1.1"}, Permanent, 0},
		{&Error{Class: Credential, Text: "invalid_client AADSTS7000222"}, Credential, 0},
		{errors.New("connection refused"), Transient, 0},
	} {
		if got := ClassOf(tc.err); got != tc.class {
			t.Errorf("ClassOf(%v) = %v, want %v", tc.err, got, tc.class)
		}
		if got := RetryAfterOf(tc.err); got != tc.after {
			t.Errorf("RetryAfterOf(%v) = %v, want %v", tc.err, got, tc.after)
		}
	}
	if s := wrapped.Error(); !strings.Contains(s, "throttled: 432 4.3.2 Concurrent connections limit exceeded") {
		t.Errorf("message %q", s)
	}
	if Class(99).String() != "class(99)" || Mailbox.String() != "mailbox" {
		t.Error("class names")
	}
}

// TestErrorSaysItOnce: an error whose underlying error carries the same
// text, as a token endpoint's refusal does, says it once; another
// underlying error is kept.
func TestErrorSaysItOnce(t *testing.T) {
	const text = "AADSTS7000222: The provided client secret keys for app 'x' are expired."
	refused := &Error{Class: Credential, Code: 401, Enhanced: "invalid_client", Text: text,
		Err: fmt.Errorf("token endpoint: 401 invalid_client %s", text)}
	if got, want := refused.Error(), "credential: 401 invalid_client "+text; got != want {
		t.Errorf("message %q, want %q", got, want)
	}
	timeout := &Error{Class: Transient, Text: "BDAT LAST", Err: errors.New("read tcp: i/o timeout")}
	if got, want := timeout.Error(), "transient: BDAT LAST: read tcp: i/o timeout"; got != want {
		t.Errorf("message %q, want %q", got, want)
	}
}

// TestClassInJSONLogs: a class reads as its name in JSON logs, as in text
// ones, not as its number.
func TestClassInJSONLogs(t *testing.T) {
	var b bytes.Buffer
	slog.New(slog.NewJSONHandler(&b, nil)).Warn("delivery failed", "class", Mailbox)
	if !strings.Contains(b.String(), `"class":"mailbox"`) {
		t.Errorf("JSON log line %s, want \"class\":\"mailbox\"", b.String())
	}
}
