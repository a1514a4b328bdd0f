package auth

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzTokenResponse answers a real token request with arbitrary status
// codes, Content-Types, Retry-After headers and bodies. Token must not
// panic; a token it returns has an access token and an expiry that is not
// in the past; an error from an answering endpoint is a *TokenError whose
// description is one bounded line, and no error ever shows the secret.
func FuzzTokenResponse(f *testing.F) {
	for _, name := range []string{"aadsts7000222", "aadsts7000215", "aadsts700016", "aadsts90002",
		"aadsts50173", "aadsts65001", "aadsts700082", "throttled429", "unavailable503"} {
		body, err := os.ReadFile(filepath.Join("testdata", name+".json"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(400, "application/json; charset=utf-8", "", body)
	}
	ok := `{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0eXAi"}`
	f.Add(200, "application/json; charset=utf-8", "", []byte(ok))
	f.Add(200, "application/json", "", []byte(`{"token_type":"Bearer","expires_in":"3599","access_token":"x"}`))
	f.Add(200, "application/json", "", []byte(`{"token_type":"Bearer","expires_in":1e300,"access_token":"x"}`))
	f.Add(200, "application/json", "", []byte(`{"token_type":"Bearer","expires_in":-5,"access_token":"x"}`))
	f.Add(200, "application/json", "", []byte(`{"access_token":""}`))
	f.Add(200, "application/x-www-form-urlencoded", "", []byte("access_token=x&token_type=bearer&expires_in=60"))
	f.Add(200, "text/html", "", []byte("<html>sign in</html>"))
	f.Add(429, "application/json", "10", []byte(`{"error":"temporarily_unavailable"}`))
	f.Add(503, "application/json", "Wed, 21 Oct 2015 07:28:00 GMT", []byte(`{}`))
	f.Add(503, "text/plain", "-1", []byte("Service Unavailable"))
	f.Add(401, "application/json", "", []byte(`{"error":"invalid_client","error_description":"AADSTS7000215: bad\r\nTrace ID: x","error_codes":[99999999999999999999]}`))
	f.Add(500, "application/json", "", []byte(`{"error_codes":[],"error_description":"`+strings.Repeat("é", 2000)+`"}`))

	var mu sync.Mutex
	var answer struct {
		status    int
		ctype, ra string
		body      []byte
	}
	entra := newFakeEntra(f, func(w http.ResponseWriter, _ *http.Request, _ url.Values) {
		mu.Lock()
		a := answer
		mu.Unlock()
		if a.ctype != "" {
			w.Header().Set("Content-Type", a.ctype)
		}
		if a.ra != "" {
			w.Header().Set("Retry-After", a.ra)
		}
		w.WriteHeader(a.status)
		_, _ = w.Write(a.body)
	})
	secretFile := writeFile(f, f.TempDir(), "secret", secretV1+"\n")

	f.Fuzz(func(t *testing.T, status int, ctype, retryAfter string, body []byte) {
		if status < 200 || status > 599 || !validHeader(ctype) || !validHeader(retryAfter) {
			return
		}
		mu.Lock()
		answer.status, answer.ctype, answer.ra, answer.body = status, ctype, retryAfter, body
		mu.Unlock()
		c := secretCredential(t, entra, secretFile, nil)
		start := time.Now()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		tok, err := c.Token(ctx)
		if ctx.Err() != nil {
			t.Fatalf("no answer within 5 s from %d %q %q %q: %v", status, ctype, retryAfter, body, err)
		}
		if err == nil {
			if tok.AccessToken == "" {
				t.Fatalf("token without an access token from %d %q", status, body)
			}
			if !tok.Expiry.IsZero() && tok.Expiry.Before(start) {
				t.Fatalf("token expiring %v, before it was fetched (%v), from %q", tok.Expiry, start, body)
			}
			return
		}
		if strings.Contains(err.Error(), secretV1) {
			t.Fatalf("error shows the secret: %v", err)
		}
		var te *TokenError
		if !errors.As(err, &te) {
			// Bad JSON or a 200 without a token: not an answer with an
			// error code, still an error.
			return
		}
		if te.HTTPStatus != status {
			t.Fatalf("TokenError.HTTPStatus = %d, want %d", te.HTTPStatus, status)
		}
		if strings.ContainsAny(te.Description, "\r\n") || len(te.Description) > maxDescriptionLen+len("…") {
			t.Fatalf("description is not one bounded line: %q", te.Description)
		}
		if te.RetryAfter < 0 {
			t.Fatalf("negative Retry-After %v from %q", te.RetryAfter, retryAfter)
		}
	})
}

// validHeader reports whether v can be sent as a header value.
func validHeader(v string) bool {
	return utf8.ValidString(v) && !strings.ContainsAny(v, "\r\n\x00") && len(v) < 1000
}
