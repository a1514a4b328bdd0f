package o365

import (
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"

	"holdfast/relay/upstream"
)

// FuzzGraphError reads arbitrary Graph error answers. ParseGraphError must
// not panic; the code and message it keeps are one valid UTF-8 line of at
// most 512 bytes; the Retry-After is never negative nor over a day; and
// ClassifyGraph gives every answer a class, throttled for every 429.
func FuzzGraphError(f *testing.F) {
	f.Add(429, "30", []byte(`{"error":{"code":"ApplicationThrottled","message":"Application is over its MailboxConcurrency limit."}}`))
	f.Add(401, "", []byte(`{"error":{"code":"InvalidAuthenticationToken","message":"Access token has expired or is not yet valid."}}`))
	f.Add(403, "", []byte(`{"error":{"code":"ErrorAccessDenied","message":"Access is denied. Check credentials and try again."}}`))
	f.Add(400, "", []byte(`{"error":{"code":"ErrorInvalidRecipients","message":"At least one recipient is not valid.","innerError":{"date":"2025-02-11T09:00:00","request-id":"x"}}}`))
	f.Add(404, "", []byte(`{"error":{"code":"ErrorInvalidUser","message":"The requested user 'x@contoso.com' is invalid."}}`))
	f.Add(503, "Wed, 21 Oct 2015 07:28:00 GMT", []byte(`<html>Service Unavailable</html>`))
	f.Add(500, "99999999999999999999", []byte(`{"error":{"code":"","message":"line one\r\nX-Injected: yes"}}`))
	f.Add(429, "-1", []byte(`{"error":"not an object"}`))
	f.Add(413, "", []byte(`{"error":{"code":"ErrorMessageSizeExceeded","message":"`+strings.Repeat("\xff", 700)+`"}}`))
	f.Add(202, "", []byte(``))
	f.Fuzz(func(t *testing.T, status int, ra string, body []byte) {
		h := http.Header{}
		h.Set("Retry-After", ra)
		g := ParseGraphError(status, h, body)
		for _, s := range []string{g.Code, g.Message} {
			if !utf8.ValidString(s) || strings.ContainsAny(s, "\r\n\x00") || len(s) > maxGraphText {
				t.Fatalf("kept %q: want one valid UTF-8 line of at most %d bytes", s, maxGraphText)
			}
		}
		if g.RetryAfter < 0 || g.RetryAfter > maxRetryAfter {
			t.Fatalf("Retry-After %q read as %v", ra, g.RetryAfter)
		}
		for _, kind := range []AuthKind{AppOnly, Delegated} {
			e := ClassifyGraph(g, kind)
			if e == nil || e.Code != status {
				t.Fatalf("ClassifyGraph(%+v) = %+v", g, e)
			}
			if status == 429 && e.Class != upstream.Throttled {
				t.Fatalf("429 classified %v, want throttled", e.Class)
			}
			if strings.ContainsAny(e.Text, "\r\n") {
				t.Fatalf("error text %q is not one line", e.Text)
			}
		}
	})
}
