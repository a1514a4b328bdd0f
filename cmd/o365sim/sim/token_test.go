package sim

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2/clientcredentials"
)

func TestClientCredentialsSecret(t *testing.T) {
	f := newFixture(t)
	tok, err := f.ccConfig(appID, appSecret, "https://outlook.office365.com/.default").Token(f.ctx())
	if err != nil {
		t.Fatal(err)
	}
	if tok.TokenType != "Bearer" || tok.Extra("ext_expires_in") == nil {
		t.Fatalf("token type %q, ext_expires_in %v", tok.TokenType, tok.Extra("ext_expires_in"))
	}
	if got := time.Until(tok.Expiry); got < 59*time.Minute || got > 91*time.Minute {
		t.Fatalf("token expires in %v, want 60 to 90 minutes", got)
	}
	c := claimsOf(t, tok.AccessToken)
	if c["aud"] != "https://outlook.office365.com" || c["tid"] != tenantID || c["appid"] != appID {
		t.Fatalf("claims %v", c)
	}
	g := claimsOf(t, f.appToken(t, appID, appSecret, "https://graph.microsoft.com/.default"))
	if g["aud"] != "https://graph.microsoft.com" {
		t.Fatalf("graph token aud %v", g["aud"])
	}
	if cc := f.Counters().Clients[appID]; cc.TokenRequests != 2 || cc.TokenErrors != 0 {
		t.Fatalf("counters %+v", cc)
	}
}

var descRE = regexp.MustCompile(`^AADSTS(\d+): (.*) Trace ID: ([0-9a-f-]{36}) Correlation ID: ([0-9a-f-]{36}) Timestamp: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ)$`)

// checkAADError checks every field of a token endpoint error body.
func checkAADError(t *testing.T, body map[string]any, wantError string, wantCode int, wantText string) {
	t.Helper()
	if body["error"] != wantError {
		t.Errorf("error = %v, want %s", body["error"], wantError)
	}
	desc, _ := body["error_description"].(string)
	m := descRE.FindStringSubmatch(desc)
	if m == nil {
		t.Fatalf("error_description %q has not the AADSTS shape", desc)
	}
	if m[1] != fmt.Sprint(wantCode) || (wantText != "" && m[2] != wantText) {
		t.Errorf("error_description = %q, want AADSTS%d: %s", desc, wantCode, wantText)
	}
	codes, _ := body["error_codes"].([]any)
	if len(codes) != 1 || codes[0] != float64(wantCode) {
		t.Errorf("error_codes = %v", body["error_codes"])
	}
	if body["trace_id"] != m[3] || body["correlation_id"] != m[4] || body["timestamp"] != m[5] {
		t.Errorf("trace_id %v correlation_id %v timestamp %v differ from the description", body["trace_id"], body["correlation_id"], body["timestamp"])
	}
	if body["error_uri"] != fmt.Sprintf("https://login.microsoftonline.com/error?code=%d", wantCode) {
		t.Errorf("error_uri = %v", body["error_uri"])
	}
}

func TestWrongSecret(t *testing.T) {
	f := newFixture(t)
	_, err := f.ccConfig(appID, "wrong", "https://outlook.office365.com/.default").Token(f.ctx())
	re := retrieveError(t, err)
	if re.Response.StatusCode != 401 || re.ErrorCode != "invalid_client" {
		t.Fatalf("got %d %s", re.Response.StatusCode, re.ErrorCode)
	}
	var body map[string]any
	if err := json.Unmarshal(re.Body, &body); err != nil {
		t.Fatal(err)
	}
	checkAADError(t, body, "invalid_client", 7000215, "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '"+appID+"'.")
	// AuthStyleInParams sends exactly one request.
	if cc := f.Counters().Clients[appID]; cc.TokenRequests != 1 || cc.TokenErrors != 1 {
		t.Fatalf("counters %+v", cc)
	}
}

func TestExpiredSecret(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.Tenants[0].Apps[0].Secrets[0].ExpiresAt = time.Now().Add(time.Hour)
	})
	cfg := f.ccConfig(appID, appSecret, "https://outlook.office365.com/.default")
	if _, err := cfg.Token(f.ctx()); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(2 * time.Hour)
	want := "The provided client secret keys for app '" + appID + "' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds."
	_, body := f.postToken(t, tenantID, url.Values{"grant_type": {"client_credentials"}, "client_id": {appID}, "client_secret": {appSecret}, "scope": {"https://outlook.office365.com/.default"}})
	checkAADError(t, body, "invalid_client", 7000222, want)

	f.RotateSecret(tenantID, appID, "new-secret")
	if _, err := f.ccConfig(appID, "new-secret", "https://outlook.office365.com/.default").Token(f.ctx()); err != nil {
		t.Fatalf("rotated secret: %v", err)
	}
	f.ExpireSecret(tenantID, appID)
	_, err := f.ccConfig(appID, "new-secret", "https://outlook.office365.com/.default").Token(f.ctx())
	if re := retrieveError(t, err); re.Response.StatusCode != 401 || !strings.HasPrefix(re.ErrorDescription, "AADSTS7000222: ") {
		t.Fatalf("after ExpireSecret: %d %s", re.Response.StatusCode, re.ErrorDescription)
	}
}

// TestDisabledApp: a disabled service principal gets AADSTS7000112 for
// every token request, with the right secret; enabled again, it gets
// tokens.
func TestDisabledApp(t *testing.T) {
	f := newFixture(t)
	if !f.DisableApp(tenantID, appID, true) {
		t.Fatal("the app was not found")
	}
	resp, body := f.postToken(t, tenantID, url.Values{"grant_type": {"client_credentials"}, "client_id": {appID}, "client_secret": {appSecret}, "scope": {"https://outlook.office365.com/.default"}})
	if resp.StatusCode != 400 {
		t.Errorf("status %d, want 400", resp.StatusCode)
	}
	checkAADError(t, body, "unauthorized_client", 7000112, "Application '"+appID+"'("+appID+") is disabled.")
	f.DisableApp(tenantID, appID, false)
	if _, err := f.ccConfig(appID, appSecret, "https://outlook.office365.com/.default").Token(f.ctx()); err != nil {
		t.Fatalf("enabled again: %v", err)
	}
}

func TestTokenErrors(t *testing.T) {
	f := newFixture(t)
	cc := func(v url.Values) url.Values {
		out := url.Values{"grant_type": {"client_credentials"}, "client_id": {appID}, "client_secret": {appSecret}, "scope": {"https://outlook.office365.com/.default"}}
		for k, x := range v {
			out[k] = x
		}
		return out
	}
	tests := []struct {
		name   string
		tenant string
		form   url.Values
		status int
		err    string
		code   int
		text   string
	}{
		{"unknown tenant", "no-such-tenant", cc(nil), 400, "invalid_tenant", 90002, "Tenant 'no-such-tenant' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."},
		{"unknown client", tenantID, cc(url.Values{"client_id": {"00000000-0000-4000-8000-000000000000"}}), 400, "unauthorized_client", 700016, "Application with identifier '00000000-0000-4000-8000-000000000000' was not found in the directory '" + tenantID + "'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."},
		{"no secret", tenantID, cc(url.Values{"client_secret": nil}), 401, "invalid_client", 7000218, ""},
		{"no scope", tenantID, cc(url.Values{"scope": nil}), 400, "invalid_scope", 70011, "The provided request must include a 'scope' input parameter."},
		{"two scopes", tenantID, cc(url.Values{"scope": {"https://outlook.office365.com/.default offline_access"}}), 400, "invalid_scope", 70011, ""},
		{"delegated scope", tenantID, cc(url.Values{"scope": {"https://outlook.office.com/SMTP.Send"}}), 400, "invalid_scope", 1002012, ""},
		{"unknown resource", tenantID, cc(url.Values{"scope": {"https://example.com/.default"}}), 400, "invalid_resource", 500011, ""},
		{"no grant type", tenantID, cc(url.Values{"grant_type": nil}), 400, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'."},
		{"bad grant type", tenantID, cc(url.Values{"grant_type": {"password"}}), 400, "unsupported_grant_type", 70003, ""},
		{"unknown refresh token", tenantID, cc(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"0.Anope"}, "scope": {"https://outlook.office.com/SMTP.Send offline_access"}}), 400, "invalid_grant", 9002313, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := f.postToken(t, tc.tenant, tc.form)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %v", resp.StatusCode, tc.status, body)
			}
			checkAADError(t, body, tc.err, tc.code, tc.text)
		})
	}
}

func TestTokenCorrelationID(t *testing.T) {
	f := newFixture(t)
	req := url.Values{"grant_type": {"client_credentials"}, "client_id": {appID}, "client_secret": {"x"}, "scope": {"https://outlook.office365.com/.default"}}
	const corr = "12345678-1234-4234-8234-123456789abc"
	hr, err := newFormRequest(f.TokenURL(tenantID), req)
	if err != nil {
		t.Fatal(err)
	}
	hr.Header.Set("client-request-id", corr)
	resp, err := f.http.Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	if body["correlation_id"] != corr {
		t.Fatalf("correlation_id %v, want the client-request-id", body["correlation_id"])
	}
}

func TestTokenFaults(t *testing.T) {
	f := newFixture(t)
	cfg := f.ccConfig(appID, appSecret, "https://outlook.office365.com/.default")

	f.SetFault(Fault{TokenThrottle: 1500 * time.Millisecond})
	_, err := cfg.Token(f.ctx())
	re := retrieveError(t, err)
	if re.Response.StatusCode != 429 || re.Response.Header.Get("Retry-After") != "2" {
		t.Fatalf("throttle: %d Retry-After %q", re.Response.StatusCode, re.Response.Header.Get("Retry-After"))
	}

	f.SetFault(Fault{TokenUnavailable: true})
	resp, body := f.postToken(t, tenantID, url.Values{"grant_type": {"client_credentials"}, "client_id": {appID}, "client_secret": {appSecret}, "scope": {"https://outlook.office365.com/.default"}})
	if resp.StatusCode != 503 {
		t.Fatalf("unavailable: status %d", resp.StatusCode)
	}
	checkAADError(t, body, "temporarily_unavailable", 90033, "")

	f.SetFault(Fault{})
	if _, err := cfg.Token(f.ctx()); err != nil {
		t.Fatalf("after clearing faults: %v", err)
	}
	if cc := f.Counters().Clients[appID]; cc.TokenRequests != 3 || cc.TokenErrors != 2 {
		t.Fatalf("counters %+v", cc)
	}
}

// testCert is an RSA key with a self-signed certificate.
type testCert struct {
	key  *rsa.PrivateKey
	cert *x509.Certificate
	pem  []byte
}

func newTestCert(t *testing.T) *testCert {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "holdfast-test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCert{key: key, cert: c, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// assertion builds a client assertion for cert, signed by key.
func assertion(t *testing.T, cert *x509.Certificate, key *rsa.PrivateKey, alg, aud, iss string, now time.Time) string {
	t.Helper()
	sum := sha256.Sum256(cert.Raw)
	head, _ := json.Marshal(map[string]string{"alg": alg, "typ": "JWT", "x5t#S256": base64.RawURLEncoding.EncodeToString(sum[:])})
	claims, _ := json.Marshal(map[string]any{"aud": aud, "iss": iss, "sub": iss, "jti": "j1", "nbf": now.Unix(), "iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix()})
	input := base64.RawURLEncoding.EncodeToString(head) + "." + base64.RawURLEncoding.EncodeToString(claims)
	h := sha256.Sum256([]byte(input))
	var sig []byte
	var err error
	if alg == "PS256" {
		sig, err = rsa.SignPSS(rand.Reader, key, crypto.SHA256, h[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	} else {
		sig, err = rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, h[:])
	}
	if err != nil {
		t.Fatal(err)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func TestCertificateAssertion(t *testing.T) {
	good, other := newTestCert(t), newTestCert(t)
	f := newFixture(t, func(c *Config) {
		c.Tenants[0].Apps[0].CertificatesPEM = [][]byte{good.pem}
	})
	aud := f.TokenURL(tenantID)
	now := f.clock.Now()
	form := func(a string) url.Values {
		return url.Values{
			"grant_type":            {"client_credentials"},
			"client_id":             {appID},
			"scope":                 {"https://outlook.office365.com/.default"},
			"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
			"client_assertion":      {a},
		}
	}
	for _, alg := range []string{"PS256", "RS256"} {
		// The way Holdfast sends it: clientcredentials with EndpointParams.
		cfg := &clientcredentials.Config{
			ClientID: appID, TokenURL: aud, Scopes: []string{"https://outlook.office365.com/.default"},
			EndpointParams: url.Values{"client_assertion_type": form("")["client_assertion_type"], "client_assertion": {assertion(t, good.cert, good.key, alg, aud, appID, now)}},
		}
		tok, err := cfg.Token(f.ctx())
		if err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		if claimsOf(t, tok.AccessToken)["appid"] != appID {
			t.Fatalf("%s: wrong appid", alg)
		}
	}

	tests := []struct {
		name string
		jwt  string
		code int
	}{
		{"bad signature", assertion(t, good.cert, other.key, "PS256", aud, appID, now), 700027},
		{"unregistered certificate", assertion(t, other.cert, other.key, "PS256", aud, appID, now), 700027},
		{"wrong audience", assertion(t, good.cert, good.key, "PS256", "https://login.microsoftonline.com/x/oauth2/v2.0/token", appID, now), 700027},
		{"expired", assertion(t, good.cert, good.key, "PS256", aud, appID, now.Add(-time.Hour)), 700024},
		{"not yet valid", assertion(t, good.cert, good.key, "PS256", aud, appID, now.Add(time.Hour)), 700024},
		{"wrong issuer", assertion(t, good.cert, good.key, "PS256", aud, otherApp, now), 700021},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := f.postToken(t, tenantID, form(tc.jwt))
			if resp.StatusCode != 401 {
				t.Fatalf("status %d: %v", resp.StatusCode, body)
			}
			checkAADError(t, body, "invalid_client", tc.code, "")
		})
	}
	_, body := f.postToken(t, tenantID, form(assertion(t, good.cert, other.key, "PS256", aud, appID, now)))
	if !strings.HasPrefix(body["error_description"].(string), "AADSTS700027: Client assertion failed signature validation. Trace ID: ") {
		t.Fatalf("bad signature text: %v", body["error_description"])
	}
}

func TestRefreshGrant(t *testing.T) {
	f := newFixture(t)
	rt := f.IssueRefreshToken(tenantID, appID, alice)
	if rt == "" {
		t.Fatal("no refresh token")
	}
	redeem := func(rt, scope string) (*clientcredentials.Config, error) {
		cfg := f.ccConfig(appID, appSecret, scope)
		cfg.EndpointParams = url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}
		_, err := cfg.Token(f.ctx())
		return cfg, err
	}
	cfg := f.ccConfig(appID, appSecret, "https://outlook.office.com/SMTP.Send")
	cfg.Scopes = []string{"https://outlook.office.com/SMTP.Send", "offline_access"}
	cfg.EndpointParams = url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}
	tok, err := cfg.Token(f.ctx())
	if err != nil {
		t.Fatal(err)
	}
	if tok.RefreshToken == "" || tok.RefreshToken == rt {
		t.Fatalf("refresh token not rotated: %q", tok.RefreshToken)
	}
	if tok.Extra("scope") != "https://outlook.office.com/SMTP.Send" {
		t.Fatalf("scope %v", tok.Extra("scope"))
	}
	c := claimsOf(t, tok.AccessToken)
	if c["aud"] != "https://outlook.office.com" || c["upn"] != alice || c["scp"] != "SMTP.Send" || c["appid"] != appID {
		t.Fatalf("claims %v", c)
	}
	// The rotated token works, and so does the old one.
	if _, err := redeem(tok.RefreshToken, "https://outlook.office.com/SMTP.Send offline_access"); err != nil {
		t.Fatalf("rotated token: %v", err)
	}
	if _, err := redeem(rt, "https://outlook.office.com/SMTP.Send"); err != nil {
		t.Fatalf("old token: %v", err)
	}
	if n := f.Counters().Mailboxes[alice].RefreshTokenRedemptions; n != 3 {
		t.Fatalf("redemptions %d, want 3", n)
	}

	_, err = redeem(rt, "https://graph.microsoft.com/Mail.Send")
	if re := retrieveError(t, err); re.ErrorCode != "invalid_grant" || !strings.HasPrefix(re.ErrorDescription, "AADSTS65001: ") || !strings.Contains(string(re.Body), `"suberror":"consent_required"`) {
		t.Fatalf("scope not consented: %s", re.Body)
	}

	f.RevokeGrant(tok.RefreshToken)
	for _, r := range []string{rt, tok.RefreshToken} {
		_, err := redeem(r, "https://outlook.office.com/SMTP.Send")
		re := retrieveError(t, err)
		if re.Response.StatusCode != 400 || re.ErrorCode != "invalid_grant" || !strings.HasPrefix(re.ErrorDescription, "AADSTS50173: The provided grant has expired due to it being revoked, a fresh auth token is needed.") {
			t.Fatalf("after revoke: %d %s", re.Response.StatusCode, re.Body)
		}
	}

	// A new grant works until the mailbox's grants are revoked.
	rt2 := f.IssueRefreshToken(tenantID, appID, alice)
	if _, err := redeem(rt2, "https://outlook.office.com/SMTP.Send"); err != nil {
		t.Fatal(err)
	}
	f.RevokeMailboxGrants(alice)
	if _, err := redeem(rt2, "https://outlook.office.com/SMTP.Send"); err == nil || !strings.Contains(err.Error(), "AADSTS50173") {
		t.Fatalf("after RevokeMailboxGrants: %v", err)
	}

	// A refresh token unused for 90 days expires.
	rt3 := f.IssueRefreshToken(tenantID, appID, alice)
	f.clock.Add(91 * 24 * time.Hour)
	_, err = redeem(rt3, "https://outlook.office.com/SMTP.Send")
	if re := retrieveError(t, err); re.ErrorCode != "invalid_grant" || !strings.HasPrefix(re.ErrorDescription, "AADSTS700082: The refresh token has expired due to inactivity.") {
		t.Fatalf("inactive: %s", re.Body)
	}

	// Another app cannot redeem the grant.
	rt4 := f.IssueRefreshToken(tenantID, appID, alice)
	cfg = f.ccConfig(otherApp, "other-secret", "https://outlook.office.com/SMTP.Send")
	cfg.EndpointParams = url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt4}}
	if _, err := cfg.Token(f.ctx()); err == nil || !strings.Contains(err.Error(), "invalid_grant") {
		t.Fatalf("other app: %v", err)
	}
}
