package auth

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	testTenant   = "contoso.onmicrosoft.com"
	testClientID = "3f1b8a52-6c0e-4f7a-9d51-2e8c4b7a1d09"
	testPath     = "/" + testTenant + "/oauth2/v2.0/token"
)

// fakeEntra is an in-process token endpoint. handle answers each request;
// the form of every request is recorded.
type fakeEntra struct {
	t      testing.TB
	srv    *httptest.Server
	handle func(w http.ResponseWriter, r *http.Request, form url.Values)
	count  atomic.Int64

	mu    sync.Mutex
	forms []url.Values
	auth  []string // Authorization headers
}

func newFakeEntra(t testing.TB, handle func(w http.ResponseWriter, r *http.Request, form url.Values)) *fakeEntra {
	t.Helper()
	f := &fakeEntra{t: t, handle: handle}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != testPath {
			http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusNotFound)
			return
		}
		if err := r.ParseForm(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		f.forms = append(f.forms, r.PostForm)
		f.auth = append(f.auth, r.Header.Get("Authorization"))
		f.mu.Unlock()
		f.count.Add(1)
		f.handle(w, r, r.PostForm)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeEntra) requests() int { return int(f.count.Load()) }

func (f *fakeEntra) lastForm() url.Values {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.forms[len(f.forms)-1]
}

func (f *fakeEntra) tokenURL() string { return f.srv.URL + testPath }

// writeToken answers with a token response as Entra sends it.
func writeToken(w http.ResponseWriter, access string, expiresIn int, refresh string) {
	body := map[string]any{
		"token_type":     "Bearer",
		"expires_in":     expiresIn,
		"ext_expires_in": expiresIn,
		"access_token":   access,
	}
	if refresh != "" {
		body["refresh_token"] = refresh
		body["scope"] = "https://outlook.office.com/SMTP.Send"
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store, no-cache")
	_ = json.NewEncoder(w).Encode(body)
}

// writeFixture answers with testdata/name.json and the given status.
func writeFixture(t testing.TB, w http.ResponseWriter, status int, name string) {
	body, err := os.ReadFile(filepath.Join("testdata", name+".json"))
	if err != nil {
		t.Errorf("fixture: %v", err)
		status = http.StatusInternalServerError
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("x-ms-request-id", "0f8a3c71-2d4e-4b59-a1c6-7e93d2b84f00")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2025, 2, 14, 11, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// writeFile writes content to dir/name and returns the path.
func writeFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// replaceFile replaces dir/name atomically, as a secret rotation tool does.
func replaceFile(t testing.TB, path, content string) {
	t.Helper()
	tmp := fmt.Sprintf("%s.tmp%d", path, time.Now().UnixNano())
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// secretCredential returns a client secret credential against f.
func secretCredential(t testing.TB, f *fakeEntra, secretFile string, mod func(*CredentialOptions)) *Credential {
	t.Helper()
	o := CredentialOptions{
		Name:             "crm",
		Tenant:           testTenant,
		ClientID:         testClientID,
		Authority:        f.srv.URL,
		ClientSecretFile: secretFile,
		HTTPClient:       f.srv.Client(),
	}
	if mod != nil {
		mod(&o)
	}
	c, err := NewCredential(o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
