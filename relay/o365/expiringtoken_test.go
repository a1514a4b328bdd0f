package o365

import (
	"testing"

	"holdfast/relay/upstream"
)

// expiringSoon is the high volume endpoint's reply to a token close to its
// expiry.
var expiringSoon = SMTPReply{501, "5.5.127", "Invalid XOAUTH2 auth data - Token will expire soon"}

func TestClassifyTokenExpiringSoon(t *testing.T) {
	for _, kind := range []AuthKind{AppOnly, Delegated} {
		for _, fresh := range []bool{false, true} {
			if c := ClassifySMTP(expiringSoon, AtAuth, kind, fresh).Class; c != upstream.Transient {
				t.Errorf("kind %d fresh %v: class %v, want transient (never credential or mailbox)", kind, fresh, c)
			}
		}
	}
	if !RetryWithNewToken(expiringSoon, false) {
		t.Error("501 5.5.127 on a cached token is not retried with a new token")
	}
	if RetryWithNewToken(expiringSoon, true) {
		t.Error("501 5.5.127 on a new token is retried again")
	}
	if !RetryWithNewToken(SMTPReply{535, "5.7.3", "Authentication unsuccessful"}, false) {
		t.Error("535 5.7.3 on a cached token is no longer retried with a new token")
	}
	if RetryWithNewToken(SMTPReply{501, "5.5.124", "Invalid XOAUTH2 auth data - User address provided is not valid"}, false) {
		t.Error("501 5.5.124 is retried with a new token")
	}
}
