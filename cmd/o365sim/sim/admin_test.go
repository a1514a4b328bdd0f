package sim

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

func (f *fixture) admin(t *testing.T, method, path string, body any, out any) int {
	t.Helper()
	var rd *bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, _ := http.NewRequest(method, f.AdminURL()+path, rd)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
	}
	return resp.StatusCode
}

func TestAdminAPI(t *testing.T) {
	f := newFixture(t)
	must := func(status, want int) {
		t.Helper()
		if status != want {
			t.Fatalf("status %d, want %d", status, want)
		}
	}

	// Faults round trip.
	must(f.admin(t, "POST", "/admin/fault", map[string]any{"token_throttle": "5s", "smtp_transient": "451", "graph_throttle": "1m", "graph_throttle_mailbox": alice, "smtp_stall": "data"}, nil), 204)
	var fault map[string]any
	must(f.admin(t, "GET", "/admin/fault", nil, &fault), 200)
	if fault["token_throttle"] != "5s" || fault["smtp_transient"] != "451" || fault["graph_throttle"] != "1m0s" || fault["graph_throttle_mailbox"] != alice || fault["smtp_stall"] != "data" {
		t.Fatalf("fault %v", fault)
	}
	if got := f.faults(); got.TokenThrottle != 5*time.Second || got.GraphThrottle != time.Minute || got.GraphThrottleMailbox != alice || got.SMTPStall != "data" {
		t.Fatalf("Fault %+v", got)
	}
	must(f.admin(t, "POST", "/admin/fault", map[string]any{"graph_after_send": "hang", "graph_fail": "503", "graph_accepted_retry_after": "30s"}, nil), 204)
	must(f.admin(t, "GET", "/admin/fault", nil, &fault), 200)
	if fault["graph_after_send"] != "hang" || fault["graph_fail"] != "503" || fault["graph_accepted_retry_after"] != "30s" {
		t.Fatalf("graph faults %v", fault)
	}
	if got := f.faults(); got.GraphAfterSend != "hang" || got.GraphFail != "503" || got.GraphAcceptedRetryAfter != 30*time.Second {
		t.Fatalf("graph Fault %+v", got)
	}
	must(f.admin(t, "POST", "/admin/fault", map[string]any{"smtp_data_refusal": "sender_throttled", "smtp_data_refusal_mailbox": bob}, nil), 204)
	must(f.admin(t, "GET", "/admin/fault", nil, &fault), 200)
	if fault["smtp_data_refusal"] != "sender_throttled" || fault["smtp_data_refusal_mailbox"] != bob {
		t.Fatalf("data refusal faults %v", fault)
	}
	if got := f.faults(); got.SMTPDataRefusal != "sender_throttled" || got.SMTPDataRefusalMailbox != bob {
		t.Fatalf("data refusal faults set %+v", got)
	}
	must(f.admin(t, "POST", "/admin/fault", map[string]any{"graph_after_send": "502"}, nil), 400)
	must(f.admin(t, "POST", "/admin/fault", map[string]any{"graph_fail": "429"}, nil), 400)
	must(f.admin(t, "POST", "/admin/fault", map[string]any{"smtp_transient": "500"}, nil), 400)
	must(f.admin(t, "POST", "/admin/fault", map[string]any{"smtp_stall": "forever"}, nil), 400)
	must(f.admin(t, "POST", "/admin/fault", map[string]any{"no_such_field": true}, nil), 400)
	must(f.admin(t, "POST", "/admin/reset", nil, nil), 204)
	if f.faults() != (Fault{}) {
		t.Fatal("reset kept the faults")
	}

	// Secrets.
	cfg := f.ccConfig(appID, appSecret, outlookScope)
	var secrets struct {
		Secrets []struct {
			Hint        string    `json:"hint"`
			EndDateTime time.Time `json:"end_date_time"`
		} `json:"secrets"`
	}
	must(f.admin(t, "POST", "/admin/secrets/expire", map[string]string{"tenant": tenantID, "client_id": appID}, &secrets), 200)
	if _, err := cfg.Token(f.ctx()); err == nil || !strings.Contains(err.Error(), "AADSTS7000222") {
		t.Fatalf("after expire: %v", err)
	}
	if len(secrets.Secrets) != 1 || secrets.Secrets[0].Hint != appSecret[:3] || time.Since(secrets.Secrets[0].EndDateTime) > time.Minute {
		t.Fatalf("expire answered %+v; want the secret's hint and an end date of about now", secrets)
	}
	must(f.admin(t, "POST", "/admin/secrets/rotate", map[string]string{"tenant": tenantID, "client_id": appID, "secret": "rotated"}, &secrets), 200)
	if len(secrets.Secrets) != 1 || secrets.Secrets[0].Hint != "rot" || !secrets.Secrets[0].EndDateTime.After(time.Now().Add(170*24*time.Hour)) {
		t.Fatalf("rotate answered %+v; want the new secret's hint and an end date 180 days out", secrets)
	}
	tok, err := f.ccConfig(appID, "rotated", outlookScope).Token(f.ctx())
	if err != nil {
		t.Fatalf("after rotate: %v", err)
	}
	must(f.admin(t, "POST", "/admin/secrets/expire", map[string]string{"tenant": tenantID, "client_id": "nope"}, nil), 404)

	// GET /admin lists the endpoints.
	resp, err := http.Get(f.AdminURL() + "/admin")
	if err != nil {
		t.Fatal(err)
	}
	index, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(index), "POST /admin/secrets/expire") {
		t.Fatalf("GET /admin: %d %s", resp.StatusCode, index)
	}

	// SMTP AUTH switch.
	must(f.admin(t, "POST", "/admin/mailboxes/smtp-auth", map[string]any{"mailbox": alice, "disabled": true}, nil), 204)
	c := f.dialTLS(t)
	wantSMTPError(t, c.Auth(&xoauth2{user: alice, token: tok.AccessToken}), 535, smtp.EnhancedCode{5, 7, 139}, errAuthDisabled.Message)
	must(f.admin(t, "POST", "/admin/mailboxes/smtp-auth", map[string]any{"mailbox": alice, "disabled": false}, nil), 204)

	// The app's access to one mailbox.
	access := func(allowed bool) map[string]any {
		return map[string]any{"tenant": tenantID, "client_id": appID, "mailbox": alice, "allowed": allowed}
	}
	must(f.admin(t, "POST", "/admin/apps/send-as", access(false), nil), 204)
	wantSMTPError(t, c.Auth(&xoauth2{user: alice, token: tok.AccessToken}), 535, smtp.EnhancedCode{5, 7, 3}, errAuthFailed.Message)
	must(f.admin(t, "POST", "/admin/apps/send-as", access(true), nil), 204)
	must(f.admin(t, "POST", "/admin/apps/send-as", map[string]any{"tenant": tenantID, "client_id": "nope", "mailbox": alice}, nil), 404)
	must(f.admin(t, "POST", "/admin/apps/send-as", map[string]any{"tenant": tenantID, "client_id": appID}, nil), 400)
	if err := c.Auth(&xoauth2{user: alice, token: tok.AccessToken}); err != nil {
		t.Fatal(err)
	}
	if err := c.SendMail(alice, []string{"dave@fabrikam.com"}, strings.NewReader(testMessage(alice, "dave@fabrikam.com", "<a1@x>"))); err != nil {
		t.Fatal(err)
	}

	// Grants.
	var issued map[string]string
	must(f.admin(t, "POST", "/admin/grants/issue", map[string]string{"tenant": tenantID, "client_id": appID, "mailbox": bob}, &issued), 200)
	rt := issued["refresh_token"]
	must(f.admin(t, "POST", "/admin/grants/revoke", map[string]string{"mailbox": bob}, nil), 204)
	rc := f.ccConfig(appID, "rotated", "https://outlook.office.com/SMTP.Send")
	rc.EndpointParams = map[string][]string{"grant_type": {"refresh_token"}, "refresh_token": {rt}}
	if _, err := rc.Token(f.ctx()); err == nil || !strings.Contains(err.Error(), "AADSTS50173") {
		t.Fatalf("after revoke: %v", err)
	}

	// Received and counters.
	var received []Received
	must(f.admin(t, "GET", "/admin/received", nil, &received), 200)
	if len(received) != 1 || received[0].MessageID != "<a1@x>" || !strings.Contains(string(received[0].Data), "Subject: hi") {
		t.Fatalf("received %+v", received)
	}
	var counters Counters
	must(f.admin(t, "GET", "/admin/counters", nil, &counters), 200)
	if cc := counters.Clients[appID]; cc.SMTPAuthAttempts != 3 || cc.SMTPAuthFailures != 2 || cc.TokenErrors != 2 {
		t.Fatalf("counters %+v", counters)
	}
	must(f.admin(t, "POST", "/admin/reset", nil, nil), 204)
	received, counters = nil, Counters{}
	must(f.admin(t, "GET", "/admin/received", nil, &received), 200)
	must(f.admin(t, "GET", "/admin/counters", nil, &counters), 200)
	if len(received) != 0 || counters.Clients[appID].SMTPAuthAttempts != 0 {
		t.Fatalf("after reset: %d received, counters %+v", len(received), counters)
	}
}
