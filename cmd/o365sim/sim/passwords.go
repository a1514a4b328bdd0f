package sim

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"
)

// mayWriteApp reports whether a token with claims may change the app
// registration target (nil when unknown): Application.ReadWrite.All, or
// Application.ReadWrite.OwnedBy for an app that owns itself changing
// itself. s.mu is held.
func (s *Sim) mayWriteApp(claims *accessClaims, target *app) bool {
	if hasRole(claims.Roles, roleApplicationRWAll) {
		return true
	}
	if !hasRole(claims.Roles, roleApplicationOwnedBy) || target == nil {
		return false
	}
	self := s.findApp(claims.Tid, claims.AppID)
	return self == target && self.ownsItself
}

// SetPasswordPropagation changes Config.PasswordPropagation and
// Config.PasswordRefusedAsExpired.
func (s *Sim) SetPasswordPropagation(d time.Duration, refusedAsExpired bool) {
	s.mu.Lock()
	s.propagate, s.propagateExpired = d, refusedAsExpired
	s.mu.Unlock()
}

// writableApp authenticates a Graph request on applications(appId='…')
// and returns the app it may change, or writes Graph's error and returns
// nil. On success s.mu is held; the caller unlocks it.
func (s *Sim) writableApp(w http.ResponseWriter, r *http.Request) *app {
	seg := r.PathValue("resource")
	sub := appPathRE.FindStringSubmatch(seg)
	if sub == nil {
		s.writeGraphError(w, r, http.StatusBadRequest, "BadRequest", fmt.Sprintf("Resource not found for the segment '%s'.", strings.SplitN(seg, "(", 2)[0]))
		return nil
	}
	claims := s.graphAuth(w, r)
	if claims == nil {
		return nil
	}
	s.mu.Lock()
	a := s.findApp(claims.Tid, sub[1])
	if a == nil {
		s.mu.Unlock()
		s.writeGraphError(w, r, http.StatusNotFound, "Request_ResourceNotFound", fmt.Sprintf("Resource '%s' does not exist or one of its queried reference-property objects are not present.", sub[1]))
		return nil
	}
	if !s.mayWriteApp(claims, a) {
		s.mu.Unlock()
		s.writeGraphError(w, r, http.StatusForbidden, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
		return nil
	}
	return a
}

// secretAlphabet is what the simulator's generated secrets are made of.
const secretAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789~._-"

// newSecretValue returns a 40-character secret, as long as Entra's.
func newSecretValue() string {
	b := make([]byte, 40)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = secretAlphabet[int(b[i])%len(secretAlphabet)]
	}
	return string(b)
}

// handleAddPassword serves POST applications(appId='…')/addPassword: a new
// client secret, whose value is shown in this answer only. It is refused
// AADSTS7000215 for PasswordPropagation after its creation.
func (s *Sim) handleAddPassword(w http.ResponseWriter, r *http.Request) {
	var body struct {
		PasswordCredential struct {
			DisplayName string `json:"displayName"`
			EndDateTime string `json:"endDateTime"`
		} `json:"passwordCredential"`
	}
	raw, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if len(raw) > 0 && json.Unmarshal(raw, &body) != nil {
		s.writeGraphError(w, r, http.StatusBadRequest, "BadRequest", "Unable to read JSON request payload.")
		return
	}
	var end time.Time
	if e := body.PasswordCredential.EndDateTime; e != "" {
		var err error
		if end, err = time.Parse(time.RFC3339, e); err != nil {
			s.writeGraphError(w, r, http.StatusBadRequest, "BadRequest", "Invalid value specified for property 'endDateTime'.")
			return
		}
	}
	a := s.writableApp(w, r)
	if a == nil {
		return
	}
	now := s.now()
	if end.IsZero() {
		// Graph's default: two years.
		end = now.AddDate(2, 0, 0)
	}
	sec := Secret{Value: newSecretValue(), ExpiresAt: end, KeyID: newGUID(),
		DisplayName: body.PasswordCredential.DisplayName, ValidFrom: now.Add(s.propagate), RefusedAsExpired: s.propagateExpired}
	a.secrets = append(a.secrets, secret{Secret: sec, start: now})
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{
		"@odata.context":      "https://graph.microsoft.com/v1.0/$metadata#microsoft.graph.passwordCredential",
		"customKeyIdentifier": nil,
		"displayName":         sec.DisplayName,
		"endDateTime":         end.UTC().Format(time.RFC3339),
		"hint":                sec.Value[:3],
		"keyId":               sec.KeyID,
		"secretText":          sec.Value,
		"startDateTime":       now.UTC().Format(time.RFC3339),
	})
}

// handleRemovePassword serves POST applications(appId='…')/removePassword.
func (s *Sim) handleRemovePassword(w http.ResponseWriter, r *http.Request) {
	var body struct {
		KeyID string `json:"keyId"`
	}
	raw, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if json.Unmarshal(raw, &body) != nil || body.KeyID == "" {
		s.writeGraphError(w, r, http.StatusBadRequest, "BadRequest", "Unable to read JSON request payload.")
		return
	}
	a := s.writableApp(w, r)
	if a == nil {
		return
	}
	i := slices.IndexFunc(a.secrets, func(k secret) bool { return strings.EqualFold(k.KeyID, body.KeyID) })
	if i < 0 {
		s.mu.Unlock()
		s.writeGraphError(w, r, http.StatusBadRequest, "Request_BadRequest", fmt.Sprintf("No password credential found with keyId %s.", body.KeyID))
		return
	}
	a.secrets = slices.Delete(a.secrets, i, i+1)
	s.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}
