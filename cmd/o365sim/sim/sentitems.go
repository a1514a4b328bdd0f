package sim

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
)

// writeGraphFault answers with an injected 5xx of Graph: "500", "503" or
// "504".
func (s *Sim) writeGraphFault(w http.ResponseWriter, r *http.Request, code string) {
	switch code {
	case "503":
		s.writeGraphError(w, r, http.StatusServiceUnavailable, "ServiceUnavailable", "Service Unavailable.")
	case "504":
		s.writeGraphError(w, r, http.StatusGatewayTimeout, "UnknownError", "Gateway Timeout.")
	default:
		s.writeGraphError(w, r, http.StatusInternalServerError, "ErrorInternalServerError", "An internal server error occurred. The operation failed.")
	}
}

// internetMessageIDFilter is the one $filter the Sent Items listing
// understands: internetMessageId eq '<…>', with quotes doubled inside.
var internetMessageIDFilter = regexp.MustCompile(`^\s*internetMessageId\s+eq\s+'((?:[^']|'')*)'\s*$`)

// mayReadMail reports whether a token may list the messages of mailbox m:
// the mailbox itself with Mail.Read or Mail.ReadBasic, or an app with
// Mail.ReadBasic.All or Mail.Read.All that may send as it. s.mu is held.
func (s *Sim) mayReadMail(claims *accessClaims, m *mailbox) bool {
	if claims.delegated() {
		return strings.EqualFold(claims.UPN, m.address) &&
			(hasScope(claims.Scp, "Mail.Read") || hasScope(claims.Scp, "Mail.ReadBasic"))
	}
	a := s.findApp(claims.Tid, claims.AppID)
	return a != nil && a.maySendAs(m) &&
		(hasRole(claims.Roles, roleMailReadBasicAll) || hasRole(claims.Roles, "Mail.Read.All") || hasRole(claims.Roles, "Mail.Read"))
}

// handleFolderMessages serves
// GET /v1.0/users/{user}/mailFolders/{folder}/messages for the well-known
// folder SentItems, filtered by internetMessageId. A mailbox's Sent Items
// hold every message it sent, by SMTP or Graph, since the last Reset.
func (s *Sim) handleFolderMessages(w http.ResponseWriter, r *http.Request) {
	claims := s.graphAuth(w, r)
	if claims == nil {
		return
	}
	if !strings.EqualFold(r.PathValue("folder"), "sentitems") {
		s.writeGraphError(w, r, http.StatusNotFound, "ErrorInvalidIdMalformed", "Id is malformed.")
		return
	}
	sub := internetMessageIDFilter.FindStringSubmatch(r.URL.Query().Get("$filter"))
	if sub == nil {
		s.writeGraphError(w, r, http.StatusBadRequest, "ErrorInvalidUrlQueryFilter", "o365sim filters Sent Items only by internetMessageId eq '…'.")
		return
	}
	want := strings.ReplaceAll(sub[1], "''", "'")
	user := r.PathValue("user")
	s.mu.Lock()
	m := s.findMailbox(user)
	if m != nil && !strings.EqualFold(m.tenant.id, claims.Tid) {
		m = nil
	}
	allowed := m != nil && s.mayReadMail(claims, m)
	var found []map[string]any
	if allowed {
		for i, rc := range s.received {
			if strings.EqualFold(rc.Mailbox, m.address) && rc.MessageID == want {
				found = append(found, map[string]any{
					"@odata.etag": fmt.Sprintf(`W/"%d"`, i),
					"id":          guidFrom(fmt.Sprintf("sent:%s:%d", m.address, i)),
				})
			}
		}
	}
	s.mu.Unlock()
	switch {
	case m == nil:
		s.writeGraphError(w, r, http.StatusNotFound, "ErrorInvalidUser", fmt.Sprintf("The requested user '%s' is invalid.", user))
		return
	case !allowed:
		s.writeGraphError(w, r, http.StatusForbidden, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
		return
	}
	if found == nil {
		found = []map[string]any{}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users('" + user + "')/mailFolders('SentItems')/messages(id)",
		"value":          found,
	})
}
