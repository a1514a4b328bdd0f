package upstream

import (
	"errors"
	"fmt"
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
