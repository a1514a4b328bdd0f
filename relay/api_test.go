package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"holdfast/queue"
)

// apiEnv is an API server on a fixture, with its log captured.
type apiEnv struct {
	f   *fixture
	srv *httptest.Server
	log *syncBuffer
}

type apiConfig struct {
	maxBytes int64
	ready    func(context.Context) error
}

func newAPIEnv(t *testing.T, cfg apiConfig) *apiEnv {
	t.Helper()
	f := newFixture(t)
	if cfg.maxBytes == 0 {
		cfg.maxBytes = f.opts.SMTP.MaxMessageBytes
	}
	buf := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv := httptest.NewServer(newAPI(f.ingest, f.apps, f.queue, cfg.ready, cfg.maxBytes, log))
	t.Cleanup(srv.Close)
	return &apiEnv{f: f, srv: srv, log: buf}
}

// reply is a response with its body read.
type reply struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request. token "" sends no Authorization header.
func (e *apiEnv) do(t *testing.T, method, path, token string, body io.Reader, hdr map[string]string) reply {
	t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read reply: %v", method, path, err)
	}
	return reply{status: resp.StatusCode, header: resp.Header, body: b}
}

func (e *apiEnv) post(t *testing.T, token, query, body string, hdr map[string]string) reply {
	t.Helper()
	return e.do(t, http.MethodPost, "/v1/messages?"+query, token, strings.NewReader(body), hdr)
}

// accepted checks a 202 reply and returns its id and duplicate flag.
func accepted(t *testing.T, r reply) (string, bool) {
	t.Helper()
	if r.status != http.StatusAccepted {
		t.Fatalf("status %d, want 202; body %s", r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var got struct {
		ID        string `json:"id"`
		Duplicate *bool  `json:"duplicate"`
	}
	if err := json.Unmarshal(r.body, &got); err != nil {
		t.Fatalf("202 body %s: %v", r.body, err)
	}
	if !queue.ValidID(got.ID) || got.Duplicate == nil {
		t.Fatalf("202 body %s: want a message id and a duplicate flag", r.body)
	}
	if loc := r.header.Get("Location"); loc != "/v1/messages/"+got.ID {
		t.Errorf("Location %q, want /v1/messages/%s", loc, got.ID)
	}
	return got.ID, *got.Duplicate
}

// wantError checks an error reply: status, JSON content type, and a body
// with the machine code and a human message.
func wantError(t *testing.T, r reply, status int, code string) apiError {
	t.Helper()
	if r.status != status {
		t.Errorf("status %d, want %d; body %s", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var e apiError
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("error body %q: %v", r.body, err)
	}
	if e.Error != code {
		t.Errorf("error %q, want %q (message %q)", e.Error, code, e.Message)
	}
	if len(e.Message) < 10 || !strings.HasSuffix(e.Message, ".") {
		t.Errorf("message %q: want a sentence saying what to do", e.Message)
	}
	return e
}

// getStatus fetches a message's status as the given application.
func (e *apiEnv) getStatus(t *testing.T, token, id string) map[string]any {
	t.Helper()
	r := e.do(t, http.MethodGet, "/v1/messages/"+id, token, nil, nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET %s: status %d, body %s", id, r.status, r.body)
	}
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("GET %s: %s: %v", id, r.body, err)
	}
	return m
}

func wantTime(t *testing.T, m map[string]any, field string) time.Time {
	t.Helper()
	s, _ := m[field].(string)
	ts, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatalf("%s = %q: not RFC 3339: %v", field, s, err)
	}
	if !strings.HasSuffix(s, "Z") {
		t.Errorf("%s = %q: want UTC", field, s)
	}
	return ts
}

func stats(t *testing.T, f *fixture) queue.RouteStats {
	t.Helper()
	st, err := f.queue.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st.Total
}

const testMessage = "From: billing@contoso.com\nTo: a@x.example\nSubject: invoice\n\nYour invoice is attached.\n.\n"

func TestAPIPostMessage(t *testing.T) {
	e := newAPIEnv(t, apiConfig{})
	query := "from=billing@contoso.com&to=a@x.example,%20b@y.example&to=c@z.example&to=a@x.example"
	before := time.Now().Add(-time.Second)
	id, dup := accepted(t, e.post(t, crmToken, query, testMessage, nil))
	if dup {
		t.Error("first submission reported as duplicate")
	}

	m := e.getStatus(t, crmToken, id)
	if m["id"] != id || m["state"] != "queued" || m["from"] != "billing@contoso.com" || m["attempts"] != 0.0 {
		t.Errorf("status %v: want queued from billing@contoso.com, no attempts", m)
	}
	to, _ := json.Marshal(m["to"])
	if string(to) != `["a@x.example","b@y.example","c@z.example"]` {
		t.Errorf("to = %s, want the three distinct recipients in order", to)
	}
	if sub := wantTime(t, m, "submitted_at"); sub.Before(before) || sub.After(time.Now().Add(time.Second)) {
		t.Errorf("submitted_at %v is not now", sub)
	}
	wantTime(t, m, "updated_at")
	wantTime(t, m, "next_attempt_at")
	for _, absent := range []string{"delivered_at", "dead_at", "dead_reason", "hold_reason"} {
		if _, ok := m[absent]; ok {
			t.Errorf("%s present in the status of a queued message: %v", absent, m)
		}
	}

	res, err := e.f.queue.Lease(context.Background(), "crm", 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Leases) != 1 || res.Leases[0].ID != id {
		t.Fatalf("leased %v, want only %s", res.Leases, id)
	}
	body := string(res.Leases[0].Body)
	want := strings.ReplaceAll(testMessage, "\n", "\r\n")
	if !strings.HasPrefix(body, "Received: from unknown ([127.0.0.1])\r\n\tby relay.test (Holdfast) with HTTP (app crm)\r\n") {
		t.Errorf("stored body does not start with our Received: header:\n%q", body)
	}
	if !strings.HasSuffix(body, "\r\n"+want) {
		t.Errorf("stored body does not end with the message, LF turned into CRLF:\n%q", body)
	}
	if m["size"] != float64(len(body)) {
		t.Errorf("size %v, want %d", m["size"], len(body))
	}
}

func TestAPIPostKeepsCRLF(t *testing.T) {
	e := newAPIEnv(t, apiConfig{})
	// CRLF throughout, kept as it is.
	msg := "Subject: crlf\r\n\r\nline one\r\nline two\r\n"
	accepted(t, e.post(t, crmToken, "from=x@crm.example&to=a@x.example", msg, nil))
	res, err := e.f.queue.Lease(context.Background(), "crm", 1, time.Minute)
	if err != nil || len(res.Leases) != 1 {
		t.Fatalf("lease: %v %v", res, err)
	}
	if !strings.HasSuffix(string(res.Leases[0].Body), "\r\n"+msg) {
		t.Errorf("stored body %q does not end with the unchanged message", res.Leases[0].Body)
	}
}

func TestAPIPostIdempotency(t *testing.T) {
	e := newAPIEnv(t, apiConfig{})
	query := "from=billing@contoso.com&to=a@x.example"
	key := map[string]string{"Idempotency-Key": "order-17 attempt"}

	id1, dup := accepted(t, e.post(t, crmToken, query, testMessage, key))
	if dup {
		t.Error("first submission reported as duplicate")
	}
	id2, dup := accepted(t, e.post(t, crmToken, query, testMessage, key))
	if id2 != id1 || !dup {
		t.Errorf("repeat: id %s duplicate %v, want %s and true", id2, dup, id1)
	}
	if n := stats(t, e.f).Ready; n != 1 {
		t.Errorf("%d messages queued after a repeated key, want 1", n)
	}

	id3, dup := accepted(t, e.post(t, crmToken, query, testMessage, map[string]string{"Idempotency-Key": "order-18"}))
	if id3 == id1 || dup {
		t.Errorf("another key: id %s duplicate %v, want a new message", id3, dup)
	}
	// Another application's key space is its own.
	id4, dup := accepted(t, e.post(t, webToken, "from=web@fabrikam.example&to=a@x.example", testMessage, key))
	if id4 == id1 || dup {
		t.Errorf("same key, other app: id %s duplicate %v, want a new message", id4, dup)
	}
	if n := stats(t, e.f).Ready; n != 3 {
		t.Errorf("%d messages queued, want 3", n)
	}
}

// A key used again for another message must not pass for a repeat: the
// client would take the second message for stored while nothing was.
func TestAPIPostIdempotencyKeyReused(t *testing.T) {
	e := newAPIEnv(t, apiConfig{})
	query := "from=billing@contoso.com&to=a@x.example"
	key := map[string]string{"Idempotency-Key": "invoice-9"}
	id, _ := accepted(t, e.post(t, crmToken, query, testMessage, key))

	for _, tc := range []struct{ name, query, body string }{
		{"other recipient", "from=billing@contoso.com&to=b@x.example", testMessage},
		{"another recipient added", query + "&to=b@x.example", testMessage},
	} {
		r := e.post(t, crmToken, tc.query, tc.body, key)
		if msg := wantError(t, r, http.StatusUnprocessableEntity, "idempotency_key_reused").Message; !strings.Contains(msg, id) {
			t.Errorf("%s: message %q does not name the first message %s", tc.name, msg, id)
		}
	}
	// The same envelope again is a repeat, even with the message built
	// anew (a new Date: or Message-ID:).
	rebuilt := "Message-ID: <retry@crm.example>\n" + testMessage
	for _, body := range []string{testMessage, rebuilt} {
		got, dup := accepted(t, e.post(t, crmToken, query, body, key))
		if got != id || !dup {
			t.Errorf("repeat: id %s duplicate %v, want %s and true", got, dup, id)
		}
	}
	two := map[string]string{"Idempotency-Key": "invoice-10"}
	first, _ := accepted(t, e.post(t, crmToken, "from=billing@contoso.com&to=a@x.example&to=b@x.example", testMessage, two))
	if got, dup := accepted(t, e.post(t, crmToken, "from=billing@contoso.com&to=b@x.example,a@x.example", testMessage, two)); got != first || !dup {
		t.Errorf("recipients in another order: id %s duplicate %v, want %s and true", got, dup, first)
	}
	if n := stats(t, e.f).Ready; n != 2 {
		t.Errorf("%d messages queued, want 2", n)
	}
}

func TestAPIPostErrors(t *testing.T) {
	const maxBytes = 512
	e := newAPIEnv(t, apiConfig{maxBytes: maxBytes})
	ok := "from=billing@contoso.com&to=a@x.example"
	var many []string
	for i := range maxHTTPRecipients + 1 {
		many = append(many, fmt.Sprintf("to=r%d@x.example", i))
	}
	manyQuery := "from=billing@contoso.com&" + strings.Join(many, "&")
	// Past net/url's 10,000 parameters, ParseQuery fails without parsing:
	// the answer still names the recipients, not a malformed query.
	floodQuery := "from=billing@contoso.com" + strings.Repeat("&to=r@x.example", 10_000)

	tests := []struct {
		name   string
		token  string
		auth   string // raw Authorization header, instead of token
		query  string
		body   string
		hdr    map[string]string
		status int
		code   string
	}{
		{name: "no token", query: ok, body: testMessage, status: 401, code: "missing_token"},
		{name: "wrong token", token: "not-the-token", query: ok, body: testMessage, status: 401, code: "invalid_token"},
		{name: "basic scheme", auth: "Basic " + crmToken, query: ok, body: testMessage, status: 401, code: "invalid_token"},
		{name: "sender not allowed", token: crmToken, query: "from=ceo@contoso.com&to=a@x.example", body: testMessage, status: 403, code: "sender_not_permitted"},
		{name: "other app's sender", token: crmToken, query: "from=web@fabrikam.example&to=a@x.example", body: testMessage, status: 403, code: "sender_not_permitted"},
		{name: "missing from", token: crmToken, query: "to=a@x.example", body: testMessage, status: 400, code: "missing_from"},
		{name: "empty from", token: crmToken, query: "from=&to=a@x.example", body: testMessage, status: 400, code: "missing_from"},
		{name: "two froms", token: crmToken, query: "from=billing@contoso.com&from=x@crm.example&to=a@x.example", body: testMessage, status: 400, code: "invalid_from"},
		{name: "from with display name", token: crmToken, query: "from=" + url.QueryEscape("Billing <billing@contoso.com>") + "&to=a@x.example", body: testMessage, status: 400, code: "invalid_from"},
		{name: "missing to", token: crmToken, query: "from=billing@contoso.com", body: testMessage, status: 400, code: "missing_to"},
		{name: "empty to", token: crmToken, query: "from=billing@contoso.com&to=,,", body: testMessage, status: 400, code: "missing_to"},
		{name: "to header injection", token: crmToken, query: "from=billing@contoso.com&to=" + url.QueryEscape("a@b\r\nBcc: x@y"), body: testMessage, status: 400, code: "invalid_to"},
		{name: "to not an address", token: crmToken, query: "from=billing@contoso.com&to=a@x.example,nobody", body: testMessage, status: 400, code: "invalid_to"},
		{name: "too many recipients", token: crmToken, query: manyQuery, body: testMessage, status: 400, code: "too_many_recipients"},
		{name: "ten thousand recipients", token: crmToken, query: floodQuery, body: testMessage, status: 400, code: "too_many_recipients"},
		{name: "unknown parameter", token: crmToken, query: ok + "&cc=b@x.example", body: testMessage, status: 400, code: "unknown_parameter"},
		{name: "malformed query", token: crmToken, query: ok + "&to=%zz", body: testMessage, status: 400, code: "invalid_query"},
		{name: "key too long", token: crmToken, query: ok, body: testMessage, hdr: map[string]string{"Idempotency-Key": strings.Repeat("k", 256)}, status: 400, code: "invalid_idempotency_key"},
		{name: "key not ASCII", token: crmToken, query: ok, body: testMessage, hdr: map[string]string{"Idempotency-Key": "clé"}, status: 400, code: "invalid_idempotency_key"},
		{name: "empty body", token: crmToken, query: ok, body: "", status: 400, code: "empty_body"},
		{name: "NUL", token: crmToken, query: ok, body: "Subject: x\n\nnul \x00 here\n", status: 400, code: "nul_in_body"},
		{name: "gzip", token: crmToken, query: ok, body: "\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\x0b\x2e\x4d\xca\x4a\x4d\x2e\xb1\x52\xa8\xe0\x02\x00",
			hdr: map[string]string{"Content-Encoding": "gzip"}, status: 415, code: "unsupported_content_encoding"},
		{name: "two encodings", token: crmToken, query: ok, body: testMessage,
			hdr: map[string]string{"Content-Encoding": "identity, br"}, status: 415, code: "unsupported_content_encoding"},
		{name: "no header section", token: crmToken, query: ok, body: "just some text\n", status: 400, code: "not_a_message"},
		{name: "body only", token: crmToken, query: ok, body: "\nno headers at all\n", status: 400, code: "not_a_message"},
		{name: "continuation first", token: crmToken, query: ok, body: " folded: x\n\nbody\n", status: 400, code: "not_a_message"},
		{name: "mbox From line", token: crmToken, query: ok, body: "From billing@contoso.com Mon Jan  1 00:00:00 2024\nSubject: x\n\nbody\n", status: 400, code: "not_a_message"},
		{name: "oversize", token: crmToken, query: ok, body: "Subject: big\n\n" + strings.Repeat("x", maxBytes), status: 413, code: "too_large"},
		{name: "oversize once CRLF", token: crmToken, query: ok, body: "Subject: lines\n\n" + strings.Repeat("\n", maxBytes-100), status: 413, code: "too_large"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hdr := map[string]string{}
			for k, v := range tc.hdr {
				hdr[k] = v
			}
			if tc.auth != "" {
				hdr["Authorization"] = tc.auth
			}
			r := e.post(t, tc.token, tc.query, tc.body, hdr)
			wantError(t, r, tc.status, tc.code)
			if tc.status == 401 && !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("WWW-Authenticate %q, want Bearer", r.header.Get("WWW-Authenticate"))
			}
		})
	}

	t.Run("oversize without length", func(t *testing.T) {
		// A chunked body, whose size the server only learns by reading it.
		body := io.MultiReader(strings.NewReader("Subject: big\n\n"), strings.NewReader(strings.Repeat("x", 4*maxBytes)))
		r := e.do(t, http.MethodPost, "/v1/messages?"+ok, crmToken, body, nil)
		wantError(t, r, 413, "too_large")
	})
	t.Run("sender message mirrors SMTP", func(t *testing.T) {
		r := e.post(t, crmToken, "from=ceo@contoso.com&to=a@x.example", testMessage, nil)
		if msg := wantError(t, r, 403, "sender_not_permitted").Message; !strings.Contains(msg, "5.7.60") || !strings.Contains(msg, "ceo@contoso.com") {
			t.Errorf("message %q: want the 5.7.60 wording and the sender", msg)
		}
	})

	if st := stats(t, e.f); st.Ready+st.Scheduled+st.Leased+st.Held+st.Dead != 0 {
		t.Errorf("refused submissions left messages in the queue: %+v", st)
	}
}

func TestAPIPostStoreDown(t *testing.T) {
	e := newAPIEnv(t, apiConfig{})
	query := "from=billing@contoso.com&to=a@x.example"
	kept, _ := accepted(t, e.post(t, crmToken, query, testMessage, nil))
	// appendfsync everysec: let the AOF reach the disk before the crash,
	// or the restart may rightly lose the last second.
	time.Sleep(1500 * time.Millisecond)

	e.f.redis.Kill(t)
	r := e.post(t, crmToken, query, testMessage, map[string]string{"Idempotency-Key": "down-1"})
	wantError(t, r, http.StatusServiceUnavailable, "queue_unavailable")
	if ra := r.header.Get("Retry-After"); ra != "30" {
		t.Errorf("Retry-After %q, want 30", ra)
	}
	r = e.do(t, http.MethodGet, "/v1/messages/"+kept, crmToken, nil, nil)
	wantError(t, r, http.StatusServiceUnavailable, "queue_unavailable")

	e.f.redis.Restart(t)
	if n := stats(t, e.f).Ready; n != 1 {
		t.Errorf("%d messages queued after the failed submission, want only the one before", n)
	}
	// The same key now stores the message: the failed attempt left no key.
	id, dup := accepted(t, e.post(t, crmToken, query, testMessage, map[string]string{"Idempotency-Key": "down-1"}))
	if dup || id == kept {
		t.Errorf("after restart: id %s duplicate %v, want a new message", id, dup)
	}
}

func TestAPIGetMessage(t *testing.T) {
	e := newAPIEnv(t, apiConfig{})
	ctx := context.Background()
	query := "from=billing@contoso.com&to=a@x.example"
	submit := func() string {
		id, _ := accepted(t, e.post(t, crmToken, query, testMessage, nil))
		return id
	}
	lease := func(id string) *queue.Lease {
		res, err := e.f.queue.Lease(ctx, "crm", 10, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range res.Leases {
			if l.ID == id {
				return l
			}
		}
		t.Fatalf("%s not leased", id)
		return nil
	}

	t.Run("sending", func(t *testing.T) {
		id := submit()
		l := lease(id)
		defer func() { _ = e.f.queue.Ack(ctx, l, "250 ok") }()
		if m := e.getStatus(t, crmToken, id); m["state"] != "sending" {
			t.Errorf("state %v, want sending", m["state"])
		}
	})
	t.Run("delivered", func(t *testing.T) {
		id := submit()
		if err := e.f.queue.Ack(ctx, lease(id), "250 2.0.0 OK <x@y> [Hostname=z]"); err != nil {
			t.Fatal(err)
		}
		m := e.getStatus(t, crmToken, id)
		if m["state"] != "delivered" || m["attempts"] != 1.0 || m["last_reply"] != "250 2.0.0 OK <x@y> [Hostname=z]" {
			t.Errorf("status %v: want delivered after 1 attempt with the upstream reply", m)
		}
		wantTime(t, m, "delivered_at")
		if _, ok := m["next_attempt_at"]; ok {
			t.Errorf("next_attempt_at on a delivered message: %v", m)
		}
	})
	t.Run("scheduled", func(t *testing.T) {
		id := submit()
		if _, err := e.f.queue.Retry(ctx, lease(id), "421 4.3.2 try later"); err != nil {
			t.Fatal(err)
		}
		m := e.getStatus(t, crmToken, id)
		if m["state"] != "scheduled" || m["last_reply"] != "421 4.3.2 try later" {
			t.Errorf("status %v: want scheduled with the last reply", m)
		}
		if next := wantTime(t, m, "next_attempt_at"); !next.After(time.Now()) {
			t.Errorf("next_attempt_at %v is not in the future", next)
		}
	})
	t.Run("dead", func(t *testing.T) {
		id := submit()
		if err := e.f.queue.Fail(ctx, lease(id), "550 5.1.1 unknown recipient"); err != nil {
			t.Fatal(err)
		}
		m := e.getStatus(t, crmToken, id)
		if m["state"] != "dead" || m["dead_reason"] != "550 5.1.1 unknown recipient" {
			t.Errorf("status %v: want dead with the reason", m)
		}
		wantTime(t, m, "dead_at")
	})
	t.Run("held", func(t *testing.T) {
		id := submit()
		if err := e.f.queue.HoldRoute(ctx, "crm", "breaker open: AADSTS7000222"); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = e.f.queue.ReleaseRoute(ctx, "crm") }()
		m := e.getStatus(t, crmToken, id)
		if m["state"] != "held" || m["hold_reason"] != "breaker open: AADSTS7000222" {
			t.Errorf("status %v: want held with the reason", m)
		}
	})

	id := submit()
	t.Run("other app", func(t *testing.T) {
		r := e.do(t, http.MethodGet, "/v1/messages/"+id, webToken, nil, nil)
		wantError(t, r, http.StatusNotFound, "not_found")
	})
	t.Run("unknown id", func(t *testing.T) {
		last := id[len(id)-1]
		other := byte('0')
		if last == '0' {
			other = '1'
		}
		r := e.do(t, http.MethodGet, "/v1/messages/"+id[:len(id)-1]+string(other), crmToken, nil, nil)
		wantError(t, r, http.StatusNotFound, "not_found")
	})
	t.Run("invalid id", func(t *testing.T) {
		r := e.do(t, http.MethodGet, "/v1/messages/..%2f..%2fetc", crmToken, nil, nil)
		wantError(t, r, http.StatusNotFound, "not_found")
	})
	t.Run("no token", func(t *testing.T) {
		r := e.do(t, http.MethodGet, "/v1/messages/"+id, "", nil, nil)
		wantError(t, r, http.StatusUnauthorized, "missing_token")
	})
}

func TestAPINoRoute(t *testing.T) {
	e := newAPIEnv(t, apiConfig{})
	wantError(t, e.do(t, http.MethodGet, "/nope", crmToken, nil, nil), http.StatusNotFound, "not_found")
	wantError(t, e.do(t, http.MethodGet, "/v1/messages/", crmToken, nil, nil), http.StatusNotFound, "not_found")
	r := e.do(t, http.MethodPut, "/v1/messages", crmToken, strings.NewReader(testMessage), nil)
	wantError(t, r, http.StatusMethodNotAllowed, "method_not_allowed")
	if allow := r.header.Get("Allow"); allow != "POST" {
		t.Errorf("Allow %q, want POST", allow)
	}
	r = e.do(t, http.MethodDelete, "/v1/messages/x", crmToken, nil, nil)
	wantError(t, r, http.StatusMethodNotAllowed, "method_not_allowed")
	if allow := r.header.Get("Allow"); !strings.Contains(allow, "GET") {
		t.Errorf("Allow %q, want GET", allow)
	}
}

func TestAPIHealthzReadyz(t *testing.T) {
	var mu sync.Mutex
	var notReady error
	e := newAPIEnv(t, apiConfig{ready: func(ctx context.Context) error {
		if _, ok := ctx.Deadline(); !ok {
			return errors.New("readiness check without a deadline")
		}
		mu.Lock()
		defer mu.Unlock()
		return notReady
	}})

	for _, path := range []string{"/healthz", "/readyz"} {
		r := e.do(t, http.MethodGet, path, "", nil, nil)
		if r.status != http.StatusOK || string(r.body) != "ok\n" {
			t.Errorf("GET %s: %d %q, want 200 ok", path, r.status, r.body)
		}
	}

	mu.Lock()
	notReady = errors.New("redis: connection refused")
	mu.Unlock()
	r := e.do(t, http.MethodGet, "/readyz", "", nil, nil)
	if msg := wantError(t, r, http.StatusServiceUnavailable, "not_ready").Message; !strings.Contains(msg, "connection refused") {
		t.Errorf("readyz message %q: want the reason", msg)
	}
	if r := e.do(t, http.MethodGet, "/healthz", "", nil, nil); r.status != http.StatusOK {
		t.Errorf("healthz %d while not ready, want 200", r.status)
	}
}

func TestAPILogsNoToken(t *testing.T) {
	e := newAPIEnv(t, apiConfig{})
	const wrong = "wrong-token-must-not-be-logged"
	e.post(t, wrong, "from=billing@contoso.com&to=a@x.example", testMessage, nil)
	e.post(t, crmToken, "from=ceo@contoso.com&to=a@x.example", testMessage, nil)
	e.post(t, crmToken, "to=a@x.example", testMessage, nil)
	e.do(t, http.MethodGet, "/v1/messages/nope", crmToken, nil, nil)

	logs := e.log.String()
	if !strings.Contains(logs, "component=http") || !strings.Contains(logs, "sender_not_permitted") {
		t.Fatalf("the refusals were not logged:\n%s", logs)
	}
	for _, secret := range []string{crmToken, wrong, "Bearer"} {
		if strings.Contains(logs, secret) {
			t.Errorf("log contains %q:\n%s", secret, logs)
		}
	}
}
