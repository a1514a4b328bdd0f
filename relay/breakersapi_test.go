package relay

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

const adminToken = "admin-token-0123456789"

// breakerCall makes one request to the relay's breaker API and decodes the
// JSON reply into out (when not nil).
func breakerCall(t *testing.T, r *Server, method, path, token, body string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+r.HTTPAddr()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s %s: Content-Type %q, body %s", method, path, ct, data)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, data)
		}
	}
	return resp.StatusCode
}

func withAdminToken(o *Options) {
	sum := sha256.Sum256([]byte(adminToken))
	o.HTTP.AdminTokenSHA256 = hex.EncodeToString(sum[:])
	o.Credentials[0].ExpiresAt = "2027-01-15"
}

// TestBreakersAPI: operators list, read, trip, probe and reset breakers
// with the admin token; the report counts the mail a breaker holds and
// shows the credential's expiry; nothing else gets in.
func TestBreakersAPI(t *testing.T) {
	e := newExchangeEnv(t, 1, withAdminToken)
	r := e.relays[0]

	// Authentication: none, an application's token, a wrong one.
	var apiErr apiError
	for _, tok := range []string{"", crmToken, "wrong"} {
		if code := breakerCall(t, r, "GET", "/v1/breakers", tok, "", &apiErr); code != http.StatusUnauthorized || apiErr.Error != "invalid_token" {
			t.Fatalf("token %q: %d %+v", tok, code, apiErr)
		}
	}

	var list breakerList
	if code := breakerCall(t, r, "GET", "/v1/breakers", adminToken, "", &list); code != http.StatusOK {
		t.Fatalf("list: %d", code)
	}
	if len(list.Breakers) != 1 || list.Breakers[0].Name != "cred:contoso" || list.Breakers[0].State != "closed" ||
		list.Breakers[0].Kind != "credential" || !list.Breakers[0].CredentialExpires.Equal(time.Date(2027, 1, 15, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("list before any failure: %+v", list)
	}

	// Trip with a reason: mail submitted now is held and counted.
	var st BreakerStatus
	if code := breakerCall(t, r, "POST", "/v1/breakers/cred:contoso/trip", adminToken, `{"reason":"rotating the secret"}`, &st); code != http.StatusOK ||
		st.State != "open" || st.Reason != "tripped by an operator: rotating the secret" || st.NextProbe.IsZero() || st.ProbeInterval != "30s" {
		t.Fatalf("trip: %d %+v", code, st)
	}
	for i := range 3 {
		e.submit(t, 0, "noreply@contoso.com", "x@example.org", exchangeMessage(i, "noreply@contoso.com"))
	}
	waitFor(t, 5*time.Second, "three held messages", func() bool {
		breakerCall(t, r, "GET", "/v1/breakers/cred:contoso", adminToken, "", &st)
		return st.HeldMessages == 3
	})
	if st.OldestHeld.IsZero() || len(st.Routes) != 1 || st.Routes[0] != "app:contoso:noreply@contoso.com" {
		t.Fatalf("held report: %+v", st)
	}
	if n := e.sim.ReceivedCount(); n != 0 {
		t.Fatalf("%d messages reached Exchange through an open breaker", n)
	}

	// Probe: accepted; the probe succeeds (the secret is good) and the
	// breaker closes; the held mail goes out.
	if code := breakerCall(t, r, "POST", "/v1/breakers/cred:contoso/probe", adminToken, "", &st); code != http.StatusAccepted {
		t.Fatalf("probe: %d %+v", code, st)
	}
	waitFor(t, 5*time.Second, "the probe to close the breaker and release the mail", func() bool {
		breakerCall(t, r, "GET", "/v1/breakers/cred:contoso", adminToken, "", &st)
		return st.State == "closed" && e.sim.ReceivedCount() == 3
	})
	if st.HeldMessages != 0 || st.LastProbe.IsZero() {
		t.Fatalf("after probe: %+v", st)
	}
	if code := breakerCall(t, r, "POST", "/v1/breakers/cred:contoso/probe", adminToken, "", &apiErr); code != http.StatusConflict || apiErr.Error != "breaker_closed" {
		t.Fatalf("probe of a closed breaker: %d %+v", code, apiErr)
	}

	// Hold: open until reset, with no probe and no next probe shown.
	st = BreakerStatus{}
	if code := breakerCall(t, r, "POST", "/v1/breakers/cred:contoso/hold", adminToken, `{"reason":"tenant migration"}`, &st); code != http.StatusOK ||
		st.State != "open" || !st.HeldByOperator || !st.NextProbe.IsZero() || st.Reason != "held by an operator: tenant migration" {
		t.Fatalf("hold: %d %+v", code, st)
	}
	if code := breakerCall(t, r, "POST", "/v1/breakers/cred:contoso/probe", adminToken, "", &apiErr); code != http.StatusConflict || apiErr.Error != "breaker_held" {
		t.Fatalf("probe of a held breaker: %d %+v", code, apiErr)
	}
	st = BreakerStatus{}
	if code := breakerCall(t, r, "POST", "/v1/breakers/cred:contoso/reset", adminToken, "", &st); code != http.StatusOK || st.State != "closed" || st.HeldByOperator {
		t.Fatalf("reset of the hold: %d %+v", code, st)
	}

	// A mailbox breaker, named in any case: trip, seen in the list, reset.
	if code := breakerCall(t, r, "POST", "/v1/breakers/mbx:Billing@Contoso.com/trip", adminToken, "", &st); code != http.StatusOK ||
		st.Kind != "mailbox" || st.State != "open" || st.Name != "mbx:billing@contoso.com" {
		t.Fatalf("trip mailbox: %d %+v", code, st)
	}
	breakerCall(t, r, "GET", "/v1/breakers", adminToken, "", &list)
	found := false
	for _, b := range list.Breakers {
		found = found || (b.Name == "mbx:billing@contoso.com" && b.State == "open" && b.Reason == "tripped by an operator")
	}
	if !found {
		t.Fatalf("the tripped mailbox breaker is not listed: %+v", list)
	}
	if code := breakerCall(t, r, "POST", "/v1/breakers/mbx:billing@contoso.com/reset", adminToken, "", &st); code != http.StatusOK || st.State != "closed" {
		t.Fatalf("reset: %d %+v", code, st)
	}

	// A mailbox that never failed has a closed breaker.
	if code := breakerCall(t, r, "GET", "/v1/breakers/mbx:carol@contoso.com", adminToken, "", &st); code != http.StatusOK ||
		st.State != "closed" || st.Kind != "mailbox" || st.Generation != 0 {
		t.Fatalf("an unrecorded mailbox breaker: %d %+v", code, st)
	}
	// The look left no trace: the list does not name it.
	breakerCall(t, r, "GET", "/v1/breakers", adminToken, "", &list)
	for _, b := range list.Breakers {
		if b.Name == "mbx:carol@contoso.com" {
			t.Fatalf("a GET of a mailbox no route uses added it to the list: %+v", list)
		}
	}

	// Unknown breakers, unknown verbs and bad bodies get clear errors.
	for _, tc := range []struct {
		method, path, body string
		code               int
		err                string
	}{
		{"GET", "/v1/breakers/cred:nope", "", http.StatusNotFound, "no_such_breaker"},
		{"GET", "/v1/breakers/mbx:nope", "", http.StatusNotFound, "no_such_breaker"},
		{"POST", "/v1/breakers/cred:nope/trip", "", http.StatusNotFound, "no_such_breaker"},
		{"POST", "/v1/breakers/mbx:not-an-address/trip", "", http.StatusNotFound, "no_such_breaker"},
		{"POST", "/v1/breakers/cred:contoso/open", "", http.StatusNotFound, "not_found"},
		{"POST", "/v1/breakers/cred:contoso/trip", "{", http.StatusBadRequest, "bad_body"},
		{"POST", "/v1/breakers/cred:contoso/trip", strings.Repeat(" ", 5000), http.StatusBadRequest, "bad_body"},
		{"DELETE", "/v1/breakers/cred:contoso", "", http.StatusMethodNotAllowed, "method_not_allowed"},
	} {
		apiErr = apiError{}
		if code := breakerCall(t, r, tc.method, tc.path, adminToken, tc.body, &apiErr); code != tc.code || apiErr.Error != tc.err {
			t.Errorf("%s %s: %d %+v, want %d %s", tc.method, tc.path, code, apiErr, tc.code, tc.err)
		}
	}
	breakerCall(t, r, "GET", "/v1/breakers/cred:contoso", adminToken, "", &st)
	if st.State != "closed" {
		t.Fatalf("a refused request changed the breaker: %+v", st)
	}
}

// TestBreakersAPIWithoutAdminToken: with no admin token configured the
// endpoints answer 403 and say what to set.
func TestBreakersAPIWithoutAdminToken(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	var apiErr apiError
	if code := breakerCall(t, e.relays[0], "POST", "/v1/breakers/cred:contoso/trip", crmToken, "", &apiErr); code != http.StatusForbidden ||
		apiErr.Error != "admin_disabled" || !strings.Contains(apiErr.Message, "http.admin_token_sha256") {
		t.Fatalf("%d %+v", code, apiErr)
	}
	st, err := e.relays[0].gate.set.Status(context.Background(), "cred:contoso")
	if err != nil || st.State.String() != "closed" {
		t.Fatalf("breaker changed: %+v %v", st, err)
	}
}
