package relay

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"holdfast/auth"
)

// FuzzMailboxRegistration sends arbitrary addresses and bodies to
// PUT /v1/mailboxes/{address} on a real grant store, then reads the
// mailbox back with GET and removes it with DELETE. No handler may
// panic; every answer is one of the documented statuses with a JSON error
// that explains a refusal; no answer ever shows a refresh token; and a
// registered grant reads back under the lower-cased address with the
// application's credential.
func FuzzMailboxRegistration(f *testing.F) {
	fx := newFixture(f)
	key := bytes.Repeat([]byte{0x5a}, auth.GrantKeySize)
	grants, err := auth.NewGrantStore(fx.redis.Client(f), key)
	if err != nil {
		f.Fatal(err)
	}
	apps := newApps([]App{{Name: "crm", PasswordHash: testHash(f, crmPassword), TokenSHA256: sha256Hex(crmToken),
		Senders: []string{"@contoso.com", "billing@crm.example"}, Credential: "contoso"}})
	h := newAPI(fx.ingest, apps, fx.queue, nil, 4096, discardLogger())
	h.handleMailboxes(grants, func(string, bool) {})

	f.Add("alice@contoso.com", []byte(`{"refresh_token":"0.AXEA-rt-1","credential":"contoso"}`))
	f.Add("Alice@Contoso.COM", []byte(`{"refresh_token":"0.AXEA-rt-2"}`))
	f.Add("billing@crm.example", []byte(`{"refresh_token":"rt","credential":"fabrikam"}`))
	f.Add("eve@evil.example", []byte(`{"refresh_token":"rt"}`))
	f.Add("alice@contoso.com", []byte(`{"refresh_token":"has space"}`))
	f.Add("alice@contoso.com", []byte(`{"refresh_token":""}`))
	f.Add("alice@contoso.com", []byte(`{"refresh_token":"rt","extra":1}`))
	f.Add("alice@contoso.com", []byte(`{"refresh_token":"rt"} trailing`))
	f.Add("alice@contoso.com", []byte(`[]`))
	f.Add("alice@contoso.com", []byte(``))
	f.Add("not-an-address", []byte(`{"refresh_token":"rt"}`))
	f.Add("a%40contoso.com", []byte(`{"refresh_token":"rt"}`))
	f.Add("\"a b\"@contoso.com", []byte(`{"refresh_token":"rt"}`))
	f.Add("alice@contoso.com/../x", []byte(`{"refresh_token":"rt"}`))
	f.Add("alice@contoso.com", []byte(`{"refresh_token":"`+strings.Repeat("A", 70000)+`"}`))

	documented := map[string]map[int]bool{
		http.MethodPut:    {200: true, 400: true, 403: true, 404: true, 405: true},
		http.MethodGet:    {200: true, 400: true, 403: true, 404: true, 405: true},
		http.MethodDelete: {204: true, 400: true, 403: true, 404: true, 405: true},
	}
	f.Fuzz(func(t *testing.T, address string, body []byte) {
		path := "/v1/mailboxes/" + url.PathEscape(address)
		do := func(method string, body []byte) *httptest.ResponseRecorder {
			req, err := http.NewRequest(method, path, bytes.NewReader(body))
			if err != nil {
				t.Skip() // not a request a client could send
			}
			req.Header.Set("Authorization", "Bearer "+crmToken)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if !documented[method][rec.Code] {
				t.Fatalf("%s %s: status %d is not documented; body %s", method, path, rec.Code, rec.Body)
			}
			var token struct {
				RefreshToken string `json:"refresh_token"`
			}
			// A grant's status is the only answer that could carry it.
			if rec.Code == http.StatusOK && json.Unmarshal(body, &token) == nil && len(token.RefreshToken) >= 8 &&
				strings.Contains(rec.Body.String(), token.RefreshToken) && !strings.Contains(rec.Body.String(), strings.ToLower(address)) {
				t.Fatalf("%s %s: the answer shows the refresh token: %s", method, path, rec.Body)
			}
			if rec.Code >= 400 && rec.Code != 405 {
				var e apiError
				if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error == "" || e.Message == "" {
					t.Fatalf("%s %s: status %d with body %q: want a JSON error and message", method, path, rec.Code, rec.Body)
				}
			}
			return rec
		}
		put := do(http.MethodPut, body)
		get := do(http.MethodGet, nil)
		if put.Code == http.StatusOK {
			var st grantStatus
			if err := json.Unmarshal(get.Body.Bytes(), &st); err != nil || get.Code != http.StatusOK {
				t.Fatalf("GET after a registration: %d %s", get.Code, get.Body)
			}
			if st.Mailbox != strings.ToLower(address) || st.Credential != "contoso" {
				t.Fatalf("registered %q, read back %+v", address, st)
			}
		}
		del := do(http.MethodDelete, nil)
		if put.Code == http.StatusOK && del.Code != http.StatusNoContent {
			t.Fatalf("DELETE after a registration: %d %s", del.Code, del.Body)
		}
		if del.Code == http.StatusNoContent {
			if again := do(http.MethodGet, nil); again.Code != http.StatusNotFound {
				t.Fatalf("GET after DELETE: %d %s, want 404", again.Code, again.Body)
			}
		}
	})
}
