package sim

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

const graphScope = "https://graph.microsoft.com/.default"

// graphDo sends a Graph request and decodes a JSON answer, if any.
func (f *fixture) graphDo(t *testing.T, method, path, token, contentType string, body []byte) (*http.Response, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, f.GraphURL()+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := f.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("answer %d is not JSON: %s", resp.StatusCode, raw)
		}
	}
	return resp, m
}

func graphCode(m map[string]any) (string, string) {
	e, _ := m["error"].(map[string]any)
	code, _ := e["code"].(string)
	msg, _ := e["message"].(string)
	return code, msg
}

func TestGraphSendMail(t *testing.T) {
	f := newFixture(t)
	tok := f.appToken(t, appID, appSecret, graphScope)
	msg := testMessage(alice, "dave@fabrikam.com", "<g1@holdfast.test>")
	body := []byte(base64.StdEncoding.EncodeToString([]byte(msg)))

	resp, m := f.graphDo(t, "POST", "/v1.0/users/"+alice+"/sendMail", tok, "text/plain", body)
	if resp.StatusCode != 202 || m != nil {
		t.Fatalf("sendMail: %d %v", resp.StatusCode, m)
	}
	got := f.Received()
	if len(got) != 1 || got[0].Via != "graph" || got[0].MessageID != "<g1@holdfast.test>" || got[0].Mailbox != alice ||
		got[0].TokenClientID != appID || string(got[0].Data) != msg || strings.Join(got[0].To, ",") != "dave@fabrikam.com" {
		t.Fatalf("received %+v", got)
	}

	outlookTok := f.appToken(t, appID, appSecret, outlookScope)
	big := bytes.Repeat([]byte("QUFB"), (4<<20)/4+1)
	tests := []struct {
		name   string
		user   string
		token  string
		body   []byte
		status int
		code   string
		msg    string
	}{
		{"bad base64", alice, tok, []byte("not base64!"), 400, "ErrorMimeContentInvalidBase64String", ""},
		{"no token", alice, "", body, 401, "InvalidAuthenticationToken", "Access token is empty."},
		{"outlook audience", alice, outlookTok, body, 401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience."},
		{"mailbox not granted", bob, tok, body, 403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."},
		{"unknown user", "nobody@contoso.com", tok, body, 404, "ErrorInvalidUser", "The requested user 'nobody@contoso.com' is invalid."},
		{"too large", alice, tok, big, 413, "RequestEntityTooLarge", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, m := f.graphDo(t, "POST", "/v1.0/users/"+tc.user+"/sendMail", tc.token, "text/plain", tc.body)
			code, msg := graphCode(m)
			if resp.StatusCode != tc.status || code != tc.code || (tc.msg != "" && msg != tc.msg) {
				t.Fatalf("got %d %s %q", resp.StatusCode, code, msg)
			}
		})
	}

	f.SetFault(Fault{GraphThrottle: 30 * time.Second})
	resp, m = f.graphDo(t, "POST", "/v1.0/users/"+alice+"/sendMail", tok, "text/plain", body)
	if code, _ := graphCode(m); resp.StatusCode != 429 || code != "ApplicationThrottled" || resp.Header.Get("Retry-After") != "30" {
		t.Fatalf("throttled: %d %s Retry-After %q", resp.StatusCode, code, resp.Header.Get("Retry-After"))
	}
	if n := f.ReceivedCount(); n != 1 {
		t.Fatalf("%d messages recorded", n)
	}

	// One mailbox throttled, the others sending.
	f.SetFault(Fault{GraphThrottle: 30 * time.Second, GraphThrottleMailbox: strings.ToUpper(carol)})
	resp, m = f.graphDo(t, "POST", "/v1.0/users/"+carol+"/sendMail", tok, "text/plain", body)
	if code, _ := graphCode(m); resp.StatusCode != 429 || code != "ApplicationThrottled" {
		t.Fatalf("the throttled mailbox: %d %s", resp.StatusCode, code)
	}
	if resp, _ = f.graphDo(t, "POST", "/v1.0/users/"+alice+"/sendMail", tok, "text/plain", body); resp.StatusCode != 202 {
		t.Fatalf("another mailbox: %d, want 202", resp.StatusCode)
	}
	if n := f.ReceivedCount(); n != 2 {
		t.Fatalf("%d messages recorded, want 2", n)
	}
	if n := f.Counters().Clients[appID].GraphThrottledByFault; n != 2 {
		t.Errorf("%d sends counted as throttled, want the 2 answered 429", n)
	}
}

func TestGraphApplication(t *testing.T) {
	cert := newTestCert(t)
	expires := time.Now().Add(100 * 24 * time.Hour).UTC().Truncate(time.Second)
	f := newFixture(t, func(c *Config) {
		a := &c.Tenants[0].Apps[0]
		a.Secrets[0].ExpiresAt = expires
		a.Secrets[0].KeyID = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
		a.CertificatesPEM = [][]byte{cert.pem}
	})
	tok := f.appToken(t, appID, appSecret, graphScope)
	path := "/v1.0/applications(appId='" + appID + "')?$select=passwordCredentials,keyCredentials"
	resp, m := f.graphDo(t, "GET", path, tok, "", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %v", resp.StatusCode, m)
	}
	if _, ok := m["appId"]; ok {
		t.Fatal("$select not honoured")
	}
	pcs := m["passwordCredentials"].([]any)
	pc := pcs[0].(map[string]any)
	if len(pcs) != 1 || pc["endDateTime"] != expires.Format(time.RFC3339) || pc["hint"] != "Abc" || pc["keyId"] != "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee" || pc["displayName"] != "holdfast" || pc["startDateTime"] == "" {
		t.Fatalf("passwordCredentials %v", pcs)
	}
	kc := m["keyCredentials"].([]any)[0].(map[string]any)
	if kc["endDateTime"] != cert.cert.NotAfter.UTC().Format(time.RFC3339) || kc["type"] != "AsymmetricX509Cert" || kc["usage"] != "Verify" || kc["displayName"] != "CN=holdfast-test" || kc["keyId"] == "" || kc["customKeyIdentifier"] == "" {
		t.Fatalf("keyCredentials %v", kc)
	}

	// Rotation shows at once.
	f.RotateSecret(tenantID, appID, "Xyz-new")
	_, m = f.graphDo(t, "GET", path, tok, "", nil)
	if pc := m["passwordCredentials"].([]any)[0].(map[string]any); pc["hint"] != "Xyz" {
		t.Fatalf("after rotation %v", pc)
	}

	outlookTok := f.appToken(t, appID, "Xyz-new", outlookScope)
	if resp, _ := f.graphDo(t, "GET", path, outlookTok, "", nil); resp.StatusCode != 401 {
		t.Fatalf("outlook token: %d", resp.StatusCode)
	}
	resp, m = f.graphDo(t, "GET", "/v1.0/applications(appId='00000000-0000-4000-8000-000000000000')", tok, "", nil)
	if code, _ := graphCode(m); resp.StatusCode != 404 || code != "Request_ResourceNotFound" {
		t.Fatalf("unknown app: %d %s", resp.StatusCode, code)
	}
}
