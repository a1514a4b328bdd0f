package sim

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

const (
	scopeOutlookDefault = audOutlook365 + "/.default"
	scopeSMTPSend       = audOutlook + "/SMTP.Send"
	assertionType       = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	aadTimeLayout       = "2006-01-02 15:04:05Z"
	aadDateLayout       = "2006-01-02T15:04:05.0000000Z"
)

// defaultScopes maps each accepted client-credentials scope to the
// audience of its tokens.
var defaultScopes = map[string]string{
	audOutlook365 + "/.default": audOutlook365,
	audOutlook + "/.default":    audOutlook,
	audGraph + "/.default":      audGraph,
}

// aadError is an error of the token endpoint: the HTTP status, the
// "error" field, and the AADSTS code with its text.
type aadError struct {
	status   int
	code     string
	aadsts   int
	text     string
	suberror string
}

type aadErrorBody struct {
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
	ErrorCodes       []int  `json:"error_codes"`
	Timestamp        string `json:"timestamp"`
	TraceID          string `json:"trace_id"`
	CorrelationID    string `json:"correlation_id"`
	ErrorURI         string `json:"error_uri"`
	Suberror         string `json:"suberror,omitempty"`
}

type tokenResponse struct {
	TokenType    string `json:"token_type"`
	Scope        string `json:"scope,omitempty"`
	ExpiresIn    int64  `json:"expires_in"`
	ExtExpiresIn int64  `json:"ext_expires_in"`
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token,omitempty"`
}

func errMissingParam(name string) *aadError {
	return &aadError{400, "invalid_request", 900144, fmt.Sprintf("The request body must contain the following parameter: '%s'.", name), ""}
}

func errBadScope(scope string) *aadError {
	return &aadError{400, "invalid_scope", 70011, fmt.Sprintf("The provided value for the input parameter 'scope' is not valid. The scope %s is not valid.", scope), ""}
}

var errNoScope = &aadError{400, "invalid_scope", 70011, "The provided request must include a 'scope' input parameter.", ""}

func errBadSecret(clientID string) *aadError {
	return &aadError{401, "invalid_client", 7000215, fmt.Sprintf("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '%s'.", clientID), ""}
}

func errExpiredSecret(clientID string) *aadError {
	return &aadError{401, "invalid_client", 7000222, fmt.Sprintf("The provided client secret keys for app '%s' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.", clientID), ""}
}

var errNoCredential = &aadError{401, "invalid_client", 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.", ""}

var errBadGrant = &aadError{400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.", ""}

var guidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// handleToken serves POST /{tenant}/oauth2/v2.0/token.
func (s *Sim) handleToken(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
	_ = r.ParseForm()
	form := r.PostForm
	tenantID := r.PathValue("tenant")

	s.mu.Lock()
	key := form.Get("client_id")
	if a := s.findApp(tenantID, key); a != nil {
		key = a.clientID
	}
	c := s.client(key)
	c.TokenRequests++
	if strings.EqualFold(strings.TrimSpace(form.Get("scope")), audGraph+"/.default") {
		c.GraphTokenRequests++
	}
	f := s.fault
	var resp *tokenResponse
	var aerr *aadError
	switch {
	case f.TokenThrottle > 0:
		c.TokenErrors++
	case f.TokenUnavailable:
		aerr = &aadError{503, "temporarily_unavailable", 90033, "A transient error has occurred. Please try again.", ""}
	default:
		resp, aerr = s.token(tenantID, form)
	}
	if aerr != nil {
		c.TokenErrors++
	}
	s.mu.Unlock()

	w.Header().Set("Cache-Control", "no-store, no-cache")
	w.Header().Set("Pragma", "no-cache")
	switch {
	case f.TokenThrottle > 0:
		// Entra sends no error body with a 429.
		w.Header().Set("Retry-After", retryAfter(f.TokenThrottle))
		w.WriteHeader(http.StatusTooManyRequests)
	case aerr != nil:
		s.writeAADError(w, r, aerr)
	default:
		writeJSON(w, http.StatusOK, resp)
	}
}

// token runs one token request; s.mu is held.
func (s *Sim) token(tenantID string, form url.Values) (*tokenResponse, *aadError) {
	t := s.tenants[strings.ToLower(tenantID)]
	if t == nil {
		return nil, &aadError{400, "invalid_tenant", 90002, fmt.Sprintf("Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant.", tenantID), ""}
	}
	grantType := form.Get("grant_type")
	switch grantType {
	case "":
		return nil, errMissingParam("grant_type")
	case "client_credentials", "refresh_token":
	default:
		return nil, &aadError{400, "unsupported_grant_type", 70003, fmt.Sprintf("The app requested an unsupported grant type '%s'.", grantType), ""}
	}
	clientID := form.Get("client_id")
	if clientID == "" {
		return nil, errMissingParam("client_id")
	}
	a := t.apps[strings.ToLower(clientID)]
	if a == nil {
		return nil, &aadError{400, "unauthorized_client", 700016, fmt.Sprintf("Application with identifier '%s' was not found in the directory '%s'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", clientID, tenantID), ""}
	}
	if a.disabled {
		return nil, &aadError{400, "unauthorized_client", 7000112, fmt.Sprintf("Application '%s'(%s) is disabled.", a.clientID, a.clientID), ""}
	}
	if aerr := s.authenticateClient(a, tenantID, form, grantType); aerr != nil {
		return nil, aerr
	}
	if grantType == "client_credentials" {
		return s.clientCredentials(a, form.Get("scope"))
	}
	return s.refresh(a, form)
}

// authenticateClient checks the client secret or client assertion in the
// form. A secret in an Authorization header is ignored: Holdfast must send
// it in the form (AuthStyleInParams).
func (s *Sim) authenticateClient(a *app, tenantID string, form url.Values, grantType string) *aadError {
	if form.Has("client_assertion") || form.Has("client_assertion_type") {
		return s.checkAssertion(a, tenantID, form)
	}
	if sec := form.Get("client_secret"); sec != "" {
		now := s.now()
		for _, k := range a.secrets {
			if subtle.ConstantTimeCompare([]byte(k.Value), []byte(sec)) == 1 {
				if !k.ExpiresAt.IsZero() && !now.Before(k.ExpiresAt) {
					return errExpiredSecret(a.clientID)
				}
				if now.Before(k.ValidFrom) {
					// Not propagated yet: Entra does not know it, or
					// takes it for expired.
					if k.RefusedAsExpired {
						return errExpiredSecret(a.clientID)
					}
					return errBadSecret(a.clientID)
				}
				return nil
			}
		}
		return errBadSecret(a.clientID)
	}
	if grantType == "refresh_token" && len(a.secrets) == 0 && len(a.certs) == 0 {
		// A public client redeems refresh tokens without a credential.
		return nil
	}
	return errNoCredential
}

func (s *Sim) clientCredentials(a *app, scope string) (*tokenResponse, *aadError) {
	scope = strings.TrimSpace(scope)
	if scope == "" {
		return nil, errNoScope
	}
	if strings.ContainsAny(scope, " \t") {
		return nil, errBadScope(scope)
	}
	aud, ok := defaultScopes[strings.ToLower(scope)]
	if !ok {
		if !strings.HasSuffix(scope, "/.default") {
			return nil, &aadError{400, "invalid_scope", 1002012, fmt.Sprintf("The provided value for scope %s is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).", scope), ""}
		}
		return nil, &aadError{400, "invalid_resource", 500011, fmt.Sprintf("The resource principal named %s was not found in the tenant named %s. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.", strings.TrimSuffix(scope, "/.default"), a.tenant.id), ""}
	}
	tok, life, err := s.accessToken(a, aud, nil, "")
	if err != nil {
		return nil, &aadError{500, "server_error", 50000, "There was an error issuing a token.", ""}
	}
	secs := int64(life / time.Second)
	return &tokenResponse{TokenType: "Bearer", ExpiresIn: secs, ExtExpiresIn: secs, AccessToken: tok}, nil
}

// delegatedIgnored are OpenID scopes a refresh request may add freely.
var delegatedIgnored = []string{"offline_access", "openid", "profile", "email"}

func (s *Sim) refresh(a *app, form url.Values) (*tokenResponse, *aadError) {
	rt := form.Get("refresh_token")
	if rt == "" {
		return nil, errMissingParam("refresh_token")
	}
	g := s.grants[rt]
	if g == nil || !strings.EqualFold(g.tenant, a.tenant.id) {
		return nil, errBadGrant
	}
	if g.clientID != a.clientID {
		return nil, &aadError{400, "invalid_grant", 70000, "Provided grant is invalid or malformed.", ""}
	}
	now := s.now()
	if g.revoked {
		return nil, &aadError{400, "invalid_grant", 50173, fmt.Sprintf("The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password. The grant was issued on '%s' and the TokensValidFrom date (before which tokens are not valid) for this user is '%s'.", g.issued.UTC().Format(aadDateLayout), g.revokedAt.UTC().Format(aadDateLayout)), ""}
	}
	if now.Sub(g.lastUsed) >= refreshInactivity {
		return nil, &aadError{400, "invalid_grant", 700082, fmt.Sprintf("The refresh token has expired due to inactivity. The token was issued on %s and was inactive for 90.00:00:00.", g.issued.UTC().Format(aadDateLayout)), ""}
	}
	scope := strings.TrimSpace(form.Get("scope"))
	if scope == "" {
		return nil, errNoScope
	}
	var resource []string
	for _, sc := range strings.Fields(scope) {
		if slices.Contains(delegatedIgnored, strings.ToLower(sc)) {
			continue
		}
		norm := sc
		if l := strings.ToLower(sc); strings.HasPrefix(l, audOutlook365+"/") {
			norm = audOutlook + sc[len(audOutlook365):]
		}
		if !slices.ContainsFunc(g.scopes, func(x string) bool { return strings.EqualFold(x, norm) }) {
			return nil, &aadError{400, "invalid_grant", 65001, fmt.Sprintf("The user or administrator has not consented to use the application with ID '%s' named '%s'. Send an interactive authorization request for this user and resource.", a.clientID, a.clientID), "consent_required"}
		}
		resource = append(resource, norm)
	}
	if len(resource) == 0 {
		return nil, errBadScope(scope)
	}
	m := s.mailboxes[strings.ToLower(g.mailbox)]
	if m == nil {
		return nil, errBadGrant
	}
	tok, life, err := s.accessToken(a, audOutlook, m, "SMTP.Send")
	if err != nil {
		return nil, &aadError{500, "server_error", 50000, "There was an error issuing a token.", ""}
	}
	g.lastUsed = now
	s.mailboxCounters(m.address).RefreshTokenRedemptions++
	next := newRefreshToken()
	s.grants[next] = g
	secs := int64(life / time.Second)
	return &tokenResponse{
		TokenType:    "Bearer",
		Scope:        strings.Join(resource, " "),
		ExpiresIn:    secs,
		ExtExpiresIn: secs,
		AccessToken:  tok,
		RefreshToken: next,
	}, nil
}

// accessToken signs an access token for aud: app-only when m is nil,
// else delegated for m with the scopes scp. It returns the token and its
// lifetime; s.mu is held.
func (s *Sim) accessToken(a *app, aud string, m *mailbox, scp string) (string, time.Duration, error) {
	now := s.now()
	life := s.tokenLifetime()
	c := accessClaims{
		Aud:   aud,
		Iss:   "https://sts.windows.net/" + a.tenant.id + "/",
		Iat:   now.Unix(),
		Nbf:   now.Unix(),
		Exp:   now.Add(life).Unix(),
		AppID: a.clientID,
		Tid:   a.tenant.id,
		Ver:   "1.0",
	}
	if m == nil {
		c.Idtyp = "app"
		c.Rh = strconv.Itoa(a.epoch)
		c.Oid = guidFrom("sp:" + strings.ToLower(a.clientID))
		if aud == audGraph {
			c.Roles = append([]string{}, a.graphRoles...)
		} else {
			c.Roles = []string{"SMTP.SendAsApp"}
		}
	} else {
		c.Idtyp = "user"
		c.Oid = m.id
		c.Scp = scp
		c.UPN = m.address
	}
	tok, err := signHS256(s.key, c)
	return tok, life, err
}

// parseAccessToken verifies a token issued by this simulator. It returns
// the claims, or nil and a reason. A token whose signature verifies but
// which is expired returns its claims and the reason "expired".
func (s *Sim) parseAccessToken(tok string) (*accessClaims, string) {
	var c accessClaims
	if err := verifyHS256(s.key, tok, &c); err != nil {
		return nil, "malformed"
	}
	now := s.now().Unix()
	if now >= c.Exp || now < c.Nbf {
		return &c, "expired"
	}
	return &c, ""
}

func (s *Sim) writeAADError(w http.ResponseWriter, r *http.Request, e *aadError) {
	trace := newGUID()
	corr := r.Header.Get("client-request-id")
	if !guidRE.MatchString(corr) {
		corr = newGUID()
	}
	ts := s.now().UTC().Format(aadTimeLayout)
	writeJSON(w, e.status, aadErrorBody{
		Error:            e.code,
		ErrorDescription: fmt.Sprintf("AADSTS%d: %s Trace ID: %s Correlation ID: %s Timestamp: %s", e.aadsts, e.text, trace, corr, ts),
		ErrorCodes:       []int{e.aadsts},
		Timestamp:        ts,
		TraceID:          trace,
		CorrelationID:    corr,
		ErrorURI:         "https://login.microsoftonline.com/error?code=" + strconv.Itoa(e.aadsts),
		Suberror:         e.suberror,
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// retryAfter formats d as a Retry-After value: whole seconds, at least 1.
func retryAfter(d time.Duration) string {
	return strconv.Itoa(max(1, int(math.Ceil(d.Seconds()))))
}
