package sim

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

func sentItemsPath(mailbox, messageID string) string {
	q := url.Values{"$filter": {"internetMessageId eq '" + strings.ReplaceAll(messageID, "'", "''") + "'"}, "$select": {"id"}}
	return "/v1.0/users/" + mailbox + "/mailFolders/SentItems/messages?" + q.Encode()
}

// TestGraphSentItemsAndAmbiguousFaults: a failed-after-sending sendMail is
// recorded and found in Sent Items by its Message-ID; a plain 5xx is not;
// a 202 may carry Retry-After.
func TestGraphSentItemsAndAmbiguousFaults(t *testing.T) {
	f := newFixture(t)
	tok := f.appToken(t, appID, appSecret, graphScope)
	send := func(id string) *http.Response {
		body := []byte(base64.StdEncoding.EncodeToString([]byte(testMessage(alice, "dave@fabrikam.com", id))))
		resp, _ := f.graphDo(t, "POST", "/v1.0/users/"+alice+"/sendMail", tok, "text/plain", body)
		return resp
	}
	lookup := func(id string) int {
		t.Helper()
		resp, m := f.graphDo(t, "GET", sentItemsPath(alice, id), tok, "", nil)
		if resp.StatusCode != 200 {
			t.Fatalf("Sent Items lookup of %s: %d %v", id, resp.StatusCode, m)
		}
		v, _ := m["value"].([]any)
		return len(v)
	}

	f.SetFault(Fault{GraphFail: "503"})
	if resp := send("<plain@test>"); resp.StatusCode != 503 {
		t.Fatalf("graph_fail 503: %d", resp.StatusCode)
	}
	if n := lookup("<plain@test>"); n != 0 || f.ReceivedCount() != 0 {
		t.Fatalf("a plain 503 recorded the message: found %d, received %d", n, f.ReceivedCount())
	}

	f.SetFault(Fault{GraphAfterSend: "504"})
	if resp := send("<amb'q@test>"); resp.StatusCode != 504 {
		t.Fatalf("graph_after_send 504: %d", resp.StatusCode)
	}
	if n := lookup("<amb'q@test>"); n != 1 || f.ReceivedCount() != 1 {
		t.Fatalf("deliver-then-fail: found %d, received %d", n, f.ReceivedCount())
	}

	f.SetFault(Fault{GraphAfterSend: "hang"})
	body := []byte(base64.StdEncoding.EncodeToString([]byte(testMessage(alice, "dave@fabrikam.com", "<hang@test>"))))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", f.GraphURL()+"/v1.0/users/"+alice+"/sendMail", strings.NewReader(string(body)))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "text/plain")
	if resp, err := f.http.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a hanging sendMail answered: %v %v", resp, err)
	}
	if n := lookup("<hang@test>"); n != 1 {
		t.Fatalf("hang: found %d in Sent Items", n)
	}

	f.SetFault(Fault{GraphAcceptedRetryAfter: 30 * time.Second})
	if resp := send("<ra@test>"); resp.StatusCode != 202 || resp.Header.Get("Retry-After") != "30" {
		t.Fatalf("202 with Retry-After: %d %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if n := lookup("<missing@test>"); n != 0 {
		t.Fatalf("an unknown Message-ID found %d", n)
	}

	// Reading Sent Items needs a Mail.Read* permission.
	f.SetFault(Fault{})
	f.SetGraphRoles(tenantID, appID, []string{"Mail.Send"}, false)
	noRead := f.appToken(t, appID, appSecret, graphScope)
	if resp, _ := f.graphDo(t, "GET", sentItemsPath(alice, "<ra@test>"), noRead, "", nil); resp.StatusCode != 403 {
		t.Fatalf("lookup without Mail.ReadBasic.All: %d, want 403", resp.StatusCode)
	}
}
