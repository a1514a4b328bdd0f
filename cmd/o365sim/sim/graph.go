package sim

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/mail"
	"regexp"
	"strings"
	"time"
)

// maxGraphRequest is Graph's request size limit for sendMail.
const maxGraphRequest = 4 << 20

func (s *Sim) httpsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/token", s.handleToken)
	mux.HandleFunc("POST /v1.0/users/{user}/sendMail", s.handleSendMail)
	mux.HandleFunc("GET /v1.0/users/{user}/mailFolders/{folder}/messages", s.handleFolderMessages)
	mux.HandleFunc("GET /v1.0/{resource}", s.handleApplication)
	mux.HandleFunc("POST /v1.0/{resource}/addPassword", s.handleAddPassword)
	mux.HandleFunc("POST /v1.0/{resource}/removePassword", s.handleRemovePassword)
	return mux
}

type graphErrorBody struct {
	Error graphErrorDetail `json:"error"`
}

type graphErrorDetail struct {
	Code       string            `json:"code"`
	Message    string            `json:"message"`
	InnerError map[string]string `json:"innerError"`
}

func (s *Sim) writeGraphError(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	reqID := newGUID()
	clientReqID := r.Header.Get("client-request-id")
	if !guidRE.MatchString(clientReqID) {
		clientReqID = reqID
	}
	w.Header().Set("request-id", reqID)
	w.Header().Set("client-request-id", clientReqID)
	writeJSON(w, status, graphErrorBody{Error: graphErrorDetail{
		Code:    code,
		Message: msg,
		InnerError: map[string]string{
			"date":              s.now().UTC().Format("2006-01-02T15:04:05"),
			"request-id":        reqID,
			"client-request-id": clientReqID,
		},
	}})
}

// graphAuth checks the bearer token of a Graph request and counts the
// request. On failure it writes the 401 and returns nil.
func (s *Sim) graphAuth(w http.ResponseWriter, r *http.Request) *accessClaims {
	scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	tok = strings.TrimSpace(tok)
	var claims *accessClaims
	msg := ""
	switch {
	case !strings.EqualFold(scheme, "Bearer") || tok == "":
		msg = "Access token is empty."
	case !strings.Contains(tok, "."):
		msg = "IDX14100: JWT is not well formed, there are no dots (.).\nThe token needs to be in JWS or JWE Compact Serialization Format. (JWS): 'EncodedHeader.EndcodedPayload.EncodedSignature'. (JWE): 'EncodedProtectedHeader.EncodedEncryptedKey.EncodedInitializationVector.EncodedCiphertext.EncodedAuthenticationTag'."
	default:
		var reason string
		claims, reason = s.parseAccessToken(tok)
		switch {
		case claims == nil:
			msg = "Access token validation failure."
		case reason == "expired":
			msg = "Lifetime validation failed, the token is expired."
		case claims.Aud != audGraph:
			msg = "Access token validation failure. Invalid audience."
		}
	}
	s.mu.Lock()
	key := ""
	if claims != nil {
		key = claims.AppID
		if a := s.findApp(claims.Tid, claims.AppID); a != nil {
			key = a.clientID
		}
	}
	s.client(key).GraphRequests++
	s.mu.Unlock()
	if msg != "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"`)
		s.writeGraphError(w, r, http.StatusUnauthorized, "InvalidAuthenticationToken", msg)
		return nil
	}
	return claims
}

// handleSendMail serves the MIME form of sendMail: a base64 body sent as
// text/plain. A request over 4 MB gets 413 RequestEntityTooLarge.
func (s *Sim) handleSendMail(w http.ResponseWriter, r *http.Request) {
	started := time.Now()
	claims := s.graphAuth(w, r)
	if claims == nil {
		return
	}
	if f := s.faults(); f.GraphThrottle > 0 && (f.GraphThrottleMailbox == "" || strings.EqualFold(f.GraphThrottleMailbox, r.PathValue("user"))) {
		s.countFault(claims, func(c *ClientCounters) { c.GraphThrottledByFault++ })
		w.Header().Set("Retry-After", retryAfter(f.GraphThrottle))
		s.writeGraphError(w, r, http.StatusTooManyRequests, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.")
		return
	}
	if code := s.faults().GraphFail; code != "" {
		s.writeGraphFault(w, r, code)
		return
	}
	user := r.PathValue("user")
	s.mu.Lock()
	m := s.findMailbox(user)
	allowed := false
	if m != nil && strings.EqualFold(m.tenant.id, claims.Tid) {
		if claims.delegated() {
			allowed = strings.EqualFold(claims.UPN, m.address) && hasScope(claims.Scp, "Mail.Send")
		} else if a := s.findApp(claims.Tid, claims.AppID); a != nil {
			// App-only sendMail needs the Mail.Send application permission.
			allowed = a.maySendAs(m) && hasRole(claims.Roles, roleMailSend)
		}
	} else {
		m = nil
	}
	s.mu.Unlock()
	if m == nil {
		s.writeGraphError(w, r, http.StatusNotFound, "ErrorInvalidUser", fmt.Sprintf("The requested user '%s' is invalid.", user))
		return
	}
	if !allowed {
		s.writeGraphError(w, r, http.StatusForbidden, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
		return
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "text/plain" {
		s.writeGraphError(w, r, http.StatusBadRequest, "ErrorInvalidRequest", "o365sim supports only the MIME form of sendMail (Content-Type: text/plain).")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxGraphRequest))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		s.writeGraphError(w, r, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", "The maximum request length supported is 4MB.")
		return
	}
	if err != nil {
		s.writeGraphError(w, r, http.StatusBadRequest, "RequestBodyRead", "Cannot read the request body.")
		return
	}
	data, err := base64.StdEncoding.DecodeString(strings.Map(dropSpace, string(body)))
	if err != nil || len(data) == 0 {
		s.writeGraphError(w, r, http.StatusBadRequest, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.")
		return
	}
	msg, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		s.writeGraphError(w, r, http.StatusBadRequest, "ErrorMimeContentInvalid", "The MIME content is invalid.")
		return
	}
	if hf := msg.Header.Get("From"); hf != "" {
		addrs, err := mail.ParseAddressList(hf)
		if err != nil || len(addrs) != 1 || !strings.EqualFold(addrs[0].Address, m.address) {
			s.writeGraphError(w, r, http.StatusForbidden, "ErrorSendAsDenied", "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account., Cannot submit message.")
			return
		}
	}
	var to []string
	for _, h := range []string{"To", "Cc", "Bcc"} {
		addrs, err := msg.Header.AddressList(h)
		if err != nil && !errors.Is(err, mail.ErrHeaderNotPresent) {
			s.writeGraphError(w, r, http.StatusBadRequest, "ErrorInvalidRecipients", "At least one recipient isn't valid.")
			return
		}
		for _, a := range addrs {
			to = append(to, a.Address)
		}
	}
	if len(to) == 0 {
		s.writeGraphError(w, r, http.StatusBadRequest, "ErrorInvalidRecipients", "At least one recipient isn't valid., A message can't be sent because it contains no recipients.")
		return
	}
	msgID := strings.TrimSpace(msg.Header.Get("Message-Id"))
	if msgID == "" {
		msgID = "<" + newGUID() + "@" + smtpHost + ">"
	}
	s.record(Received{
		Mailbox:       m.address,
		From:          m.address,
		To:            to,
		Data:          data,
		MessageID:     msgID,
		Via:           "graph",
		TokenClientID: claims.AppID,
		Delegated:     claims.delegated(),
		Started:       started,
	})
	f := s.faults()
	switch f.GraphAfterSend {
	case "hang":
		select {
		case <-r.Context().Done():
		case <-time.After(stallTimeout):
		}
		// Returning would answer 200 with no body, which a client
		// that gave up at that moment could still read. Drop the
		// connection unanswered instead.
		panic(http.ErrAbortHandler)
	case "":
	default:
		s.writeGraphFault(w, r, f.GraphAfterSend)
		return
	}
	if f.GraphAcceptedRetryAfter > 0 {
		w.Header().Set("Retry-After", retryAfter(f.GraphAcceptedRetryAfter))
	}
	w.Header().Set("request-id", newGUID())
	w.WriteHeader(http.StatusAccepted)
}

func dropSpace(r rune) rune {
	switch r {
	case '\r', '\n', ' ', '\t':
		return -1
	}
	return r
}

// findMailbox finds a mailbox by address or object id; s.mu is held.
func (s *Sim) findMailbox(user string) *mailbox {
	if m := s.mailboxes[strings.ToLower(user)]; m != nil {
		return m
	}
	for _, m := range s.mailboxes {
		if strings.EqualFold(m.id, user) {
			return m
		}
	}
	return nil
}

var appPathRE = regexp.MustCompile(`^applications\(appId='([^']*)'\)$`)

type passwordCredential struct {
	CustomKeyIdentifier *string `json:"customKeyIdentifier"`
	DisplayName         string  `json:"displayName"`
	EndDateTime         string  `json:"endDateTime"`
	Hint                string  `json:"hint"`
	KeyID               string  `json:"keyId"`
	SecretText          *string `json:"secretText"`
	StartDateTime       string  `json:"startDateTime"`
}

type keyCredential struct {
	CustomKeyIdentifier string  `json:"customKeyIdentifier"`
	DisplayName         string  `json:"displayName"`
	EndDateTime         string  `json:"endDateTime"`
	Key                 *string `json:"key"`
	KeyID               string  `json:"keyId"`
	StartDateTime       string  `json:"startDateTime"`
	Type                string  `json:"type"`
	Usage               string  `json:"usage"`
}

// neverExpires is how a secret without an expiry is shown.
var neverExpires = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)

// mayReadApp reports whether a token with claims may read the app
// registration target (nil when unknown): Application.Read.All or
// Application.ReadWrite.All, or Application.ReadWrite.OwnedBy for an app
// that owns itself reading itself. s.mu is held.
func (s *Sim) mayReadApp(claims *accessClaims, target *app) bool {
	if hasRole(claims.Roles, roleApplicationReadAll) || hasRole(claims.Roles, roleApplicationRWAll) {
		return true
	}
	if !hasRole(claims.Roles, roleApplicationOwnedBy) || target == nil {
		return false
	}
	self := s.findApp(claims.Tid, claims.AppID)
	return self == target && self.ownsItself
}

func hasRole(roles []string, role string) bool {
	for _, r := range roles {
		if strings.EqualFold(r, role) {
			return true
		}
	}
	return false
}

// handleApplication serves GET /v1.0/applications(appId='…') for the apps
// of the token's tenant, honouring $select.
func (s *Sim) handleApplication(w http.ResponseWriter, r *http.Request) {
	seg := r.PathValue("resource")
	sub := appPathRE.FindStringSubmatch(seg)
	if sub == nil {
		s.writeGraphError(w, r, http.StatusBadRequest, "BadRequest", fmt.Sprintf("Resource not found for the segment '%s'.", strings.SplitN(seg, "(", 2)[0]))
		return
	}
	claims := s.graphAuth(w, r)
	if claims == nil {
		return
	}
	s.mu.Lock()
	a := s.findApp(claims.Tid, sub[1])
	if !s.mayReadApp(claims, a) {
		s.mu.Unlock()
		s.writeGraphError(w, r, http.StatusForbidden, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
		return
	}
	out := map[string]any{}
	if a != nil {
		pcs := []passwordCredential{}
		for _, k := range a.secrets {
			end := k.ExpiresAt
			if end.IsZero() {
				end = neverExpires
			}
			pcs = append(pcs, passwordCredential{
				DisplayName:   k.DisplayName,
				EndDateTime:   end.UTC().Format(time.RFC3339),
				Hint:          k.hint(),
				KeyID:         k.KeyID,
				StartDateTime: k.start.UTC().Format(time.RFC3339),
			})
		}
		kcs := []keyCredential{}
		for _, c := range a.certs {
			kcs = append(kcs, keyCredential{
				CustomKeyIdentifier: c.sha1Hx,
				DisplayName:         "CN=" + c.cert.Subject.CommonName,
				EndDateTime:         c.cert.NotAfter.UTC().Format(time.RFC3339),
				KeyID:               c.keyID,
				StartDateTime:       c.cert.NotBefore.UTC().Format(time.RFC3339),
				Type:                "AsymmetricX509Cert",
				Usage:               "Verify",
			})
		}
		out["id"] = guidFrom("app:" + strings.ToLower(a.clientID))
		out["appId"] = a.clientID
		out["displayName"] = a.clientID
		out["passwordCredentials"] = pcs
		out["keyCredentials"] = kcs
	}
	s.mu.Unlock()
	if a == nil {
		s.writeGraphError(w, r, http.StatusNotFound, "Request_ResourceNotFound", fmt.Sprintf("Resource '%s' does not exist or one of its queried reference-property objects are not present.", sub[1]))
		return
	}
	ctx := "applications/$entity"
	if sel := r.URL.Query().Get("$select"); sel != "" {
		picked := map[string]any{}
		var names []string
		for f := range strings.SplitSeq(sel, ",") {
			f = strings.TrimSpace(f)
			if v, ok := out[f]; ok {
				picked[f] = v
				names = append(names, f)
			}
		}
		out = picked
		ctx = "applications(" + strings.Join(names, ",") + ")/$entity"
	}
	out["@odata.context"] = "https://graph.microsoft.com/v1.0/$metadata#" + ctx
	writeJSON(w, http.StatusOK, out)
}
