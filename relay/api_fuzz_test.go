package relay

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"holdfast/queue"
)

// FuzzPostMessage sends arbitrary envelopes, idempotency keys and bodies
// to POST /v1/messages on a real queue. The handler must not panic, must
// answer with one of the statuses it documents (an authenticated client
// on a healthy queue never sees 401 or 503), must explain every refusal
// in a JSON error, and every id it accepts must be readable with GET.
func FuzzPostMessage(f *testing.F) {
	fx := newFixture(f)
	h := newAPI(fx.ingest, fx.apps, fx.queue, nil, 4096, discardLogger())

	ok := "from=billing@contoso.com&to=a@x.example"
	f.Add(ok, "", []byte(testMessage))
	f.Add(ok+"&to=b@y.example,c@z.example", "key-1", []byte("Subject: crlf\r\n\r\nbody\r\n"))
	f.Add(ok, "key-1", []byte("Subject: same key\n\n"))
	f.Add("from=x@crm.example&to=%E7%94%A8%E6%88%B7@%E4%BE%8B%E5.example", "", []byte("Subject: utf-8\n\n\xe2\x82\xac\n"))
	f.Add("from=ceo@contoso.com&to=a@x.example", "", []byte(testMessage))
	f.Add("to=a@x.example", "", []byte(testMessage))
	f.Add("from=billing@contoso.com&to=a@b%0D%0ABcc:%20x@y", "", []byte(testMessage))
	f.Add(ok+"&to=%zz", "", []byte(testMessage))
	f.Add(ok+";to=b@y.example", "", []byte(testMessage))
	f.Add(ok, "k\x00ey", []byte(testMessage))
	f.Add(ok, "", []byte(""))
	f.Add(ok, "", []byte("Subject: x\n\n\x00"))
	f.Add(ok, "", []byte(" folded\nSubject: x\n\n"))
	f.Add(ok, "", []byte("Subject x\n\n"))
	f.Add(ok, "", []byte("Subject: only a header"))
	f.Add(ok, "", []byte("\r\n\r\n"))
	f.Add(ok, "", bytes.Repeat([]byte("\n"), 3000))
	f.Add(ok, "", append([]byte("Subject: big\n\n"), bytes.Repeat([]byte("x"), 5000)...))

	documented := map[int]bool{
		http.StatusAccepted:              true,
		http.StatusBadRequest:            true,
		http.StatusForbidden:             true,
		http.StatusRequestEntityTooLarge: true,
		http.StatusUnprocessableEntity:   true,
	}
	f.Fuzz(func(t *testing.T, query, key string, body []byte) {
		req := httptest.NewRequest(http.MethodPost, "/v1/messages", bytes.NewReader(body))
		req.URL.RawQuery = query
		req.Header.Set("Authorization", "Bearer "+crmToken)
		if key != "" {
			req.Header["Idempotency-Key"] = []string{key}
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)

		if !documented[rec.Code] {
			t.Fatalf("status %d is not documented; body %s", rec.Code, rec.Body)
		}
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Fatalf("Content-Type %q, want application/json", ct)
		}
		if rec.Code != http.StatusAccepted {
			var e apiError
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error == "" || e.Message == "" {
				t.Fatalf("status %d with body %q: want a JSON error and message (%v)", rec.Code, rec.Body, err)
			}
			return
		}

		var got submitReply
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil || !queue.ValidID(got.ID) {
			t.Fatalf("202 with body %q: want an id (%v)", rec.Body, err)
		}
		get := httptest.NewRequest(http.MethodGet, "/v1/messages/"+got.ID, nil)
		get.Header.Set("Authorization", "Bearer "+crmToken)
		rec = httptest.NewRecorder()
		h.ServeHTTP(rec, get)
		if rec.Code != http.StatusOK {
			t.Fatalf("GET of accepted %s: status %d, body %s", got.ID, rec.Code, rec.Body)
		}
		var st messageStatus
		if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
			t.Fatalf("GET of accepted %s: %q: %v", got.ID, rec.Body, err)
		}
		if st.ID != got.ID || len(st.To) == 0 {
			t.Fatalf("status %+v of accepted %s", st, got.ID)
		}
		// A duplicate is the earlier message with the same key and
		// envelope, whose body may differ.
		q, _ := url.ParseQuery(query)
		if st.From != q.Get("from") || !got.Duplicate && st.Size <= len(body) {
			t.Fatalf("status %+v does not match the submission %q (%d bytes)", st, query, len(body))
		}
	})
}
