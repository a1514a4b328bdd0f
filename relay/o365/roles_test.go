package o365

import (
	"encoding/base64"
	"testing"
)

func TestTokenHasRole(t *testing.T) {
	jwt := func(payload string) string {
		enc := base64.RawURLEncoding.EncodeToString
		return enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(payload)) + ".c2ln"
	}
	for _, tc := range []struct {
		token string
		want  bool
	}{
		{jwt(`{"roles":["Mail.Send","Application.Read.All"]}`), true},
		{jwt(`{"roles":["Application.Read.All"]}`), false},
		{jwt(`{"scp":"Mail.Send"}`), false}, // a delegated token's scopes are not roles
		{jwt(`{"roles":"Mail.Send"}`), false},
		{"not a token", false},
		{"a.!!!.c", false},
	} {
		if got := TokenHasRole(tc.token, MailSendRole); got != tc.want {
			t.Errorf("TokenHasRole(%q) = %v, want %v", tc.token, got, tc.want)
		}
	}
}
