package relay

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"holdfast/auth"
)

// grantRegistry is what the mailbox endpoints need of the grant store.
type grantRegistry interface {
	Put(ctx context.Context, mailbox, credential, refreshToken string) error
	Get(ctx context.Context, mailbox string) (auth.Grant, error)
	Delete(ctx context.Context, mailbox string) error
}

var _ grantRegistry = (*auth.GrantStore)(nil)

// maxGrantBody bounds a PUT /v1/mailboxes/{address} request body.
const maxGrantBody = 64 << 10

// handleMailboxes adds the delegated-mailbox endpoints. changed is called
// with each mailbox registered or removed, so that routing sees it at once.
func (h *api) handleMailboxes(g grantRegistry, changed func(mailbox string, registered bool)) {
	m := &mailboxAPI{api: h, grants: g, changed: changed}
	h.mux.HandleFunc("PUT /v1/mailboxes/{address}", m.put)
	h.mux.HandleFunc("GET /v1/mailboxes/{address}", m.get)
	h.mux.HandleFunc("DELETE /v1/mailboxes/{address}", m.delete)
}

type mailboxAPI struct {
	*api
	grants  grantRegistry
	changed func(mailbox string, registered bool)
}

// grantStatus is a grant as the API shows it: never the token.
type grantStatus struct {
	Mailbox    string `json:"mailbox"`
	Credential string `json:"credential"`
	CreatedAt  string `json:"created_at"`
	UpdatedAt  string `json:"updated_at"`
	// LastUsedAt is when the refresh token was last issued or redeemed;
	// LapsesAt when Entra lets it lapse unless it is redeemed before.
	LastUsedAt string `json:"last_used_at"`
	LapsesAt   string `json:"lapses_at"`
	Generation int64  `json:"generation"`
	LastError  string `json:"last_error,omitempty"`
}

func newGrantStatus(g auth.Grant) grantStatus {
	return grantStatus{
		Mailbox: g.Mailbox, Credential: g.Credential, Generation: g.Generation, LastError: g.LastError,
		CreatedAt: g.Created.UTC().Format(time.RFC3339), UpdatedAt: g.Updated.UTC().Format(time.RFC3339),
		LastUsedAt: g.LastUsed().UTC().Format(time.RFC3339), LapsesAt: g.LapsesAt().UTC().Format(time.RFC3339),
	}
}

// mailbox authenticates the request and checks that the application may
// send as the mailbox in the path. It writes the error reply otherwise.
func (m *mailboxAPI) mailbox(w http.ResponseWriter, r *http.Request) (*App, string, bool) {
	app := m.authenticate(w, r)
	if app == nil {
		return nil, "", false
	}
	addr := strings.ToLower(r.PathValue("address"))
	if _, err := parseAddress(addr); err != nil {
		m.fail(w, r, app, http.StatusBadRequest, "bad_mailbox", "The path must name a mailbox address: /v1/mailboxes/user@example.com.")
		return nil, "", false
	}
	if !app.maySend(addr) {
		m.fail(w, r, app, http.StatusForbidden, "sender_not_allowed", "5.7.60 Client does not have permissions to send as this sender: add the address or its @domain to the application's senders.")
		return nil, "", false
	}
	return app, addr, true
}

// put handles PUT /v1/mailboxes/{address}: register or replace a
// mailbox's delegated grant. The body is JSON:
//
//	{"refresh_token": "...", "credential": "contoso"}
//
// credential is optional and defaults to the application's; an
// application may only register grants of its own credential. The refresh
// token is stored encrypted and never shown again. Mail from this address
// is then sent as the mailbox with its grant. Replies 200 with the grant's
// status.
func (m *mailboxAPI) put(w http.ResponseWriter, r *http.Request) {
	app, addr, ok := m.mailbox(w, r)
	if !ok {
		return
	}
	var req struct {
		RefreshToken string `json:"refresh_token"`
		Credential   string `json:"credential"`
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, maxGrantBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		m.fail(w, r, app, http.StatusBadRequest, "bad_json", `The body must be JSON: {"refresh_token": "...", "credential": "name"}.`)
		return
	}
	if req.RefreshToken == "" || strings.ContainsAny(req.RefreshToken, " \t\r\n\x00") {
		m.fail(w, r, app, http.StatusBadRequest, "bad_refresh_token", "refresh_token must be the refresh token Entra ID issued for this mailbox, without spaces.")
		return
	}
	if req.Credential == "" {
		req.Credential = app.Credential
	}
	if req.Credential != app.Credential {
		m.fail(w, r, app, http.StatusForbidden, "credential_not_allowed", "An application may only register grants of its own credential, "+app.Credential+".")
		return
	}
	if err := m.grants.Put(r.Context(), addr, req.Credential, req.RefreshToken); err != nil {
		m.storeFailed(w, r, app, err)
		return
	}
	m.changed(addr, true)
	g, err := m.grants.Get(r.Context(), addr)
	if err != nil {
		m.storeFailed(w, r, app, err)
		return
	}
	m.log.Info("mailbox grant registered", "app", app.Name, "mailbox", addr, "credential", req.Credential)
	writeJSON(w, http.StatusOK, newGrantStatus(g))
}

// get handles GET /v1/mailboxes/{address}: the grant's status.
func (m *mailboxAPI) get(w http.ResponseWriter, r *http.Request) {
	app, addr, ok := m.mailbox(w, r)
	if !ok {
		return
	}
	g, err := m.grants.Get(r.Context(), addr)
	if errors.Is(err, auth.ErrNoGrant) {
		m.fail(w, r, app, http.StatusNotFound, "no_grant", "No delegated grant is registered for this mailbox; register one with PUT.")
		return
	}
	if err != nil {
		m.storeFailed(w, r, app, err)
		return
	}
	writeJSON(w, http.StatusOK, newGrantStatus(g))
}

// delete handles DELETE /v1/mailboxes/{address}: remove the grant, if
// any, and reply 204. Mail from the address then goes through the
// application's own mailbox.
func (m *mailboxAPI) delete(w http.ResponseWriter, r *http.Request) {
	app, addr, ok := m.mailbox(w, r)
	if !ok {
		return
	}
	if err := m.grants.Delete(r.Context(), addr); err != nil {
		m.storeFailed(w, r, app, err)
		return
	}
	m.changed(addr, false)
	m.log.Info("mailbox grant removed", "app", app.Name, "mailbox", addr)
	w.WriteHeader(http.StatusNoContent)
}

func (m *mailboxAPI) storeFailed(w http.ResponseWriter, r *http.Request, app *App, err error) {
	m.log.Error("grant store failed", "err", err)
	w.Header().Set("Retry-After", storeRetryAfter)
	m.fail(w, r, app, http.StatusServiceUnavailable, "store_unavailable", "The grant store is unavailable; try again later.")
}
