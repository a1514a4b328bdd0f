package auth

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"
)

// GraphScope is the scope of the app-only token that reads the app
// registration from Microsoft Graph.
const GraphScope = "https://graph.microsoft.com/.default"

// Graph permissions that let an app read its own registration.
const (
	PermissionApplicationReadAll = "Application.Read.All"
	PermissionOwnedBy            = "Application.ReadWrite.OwnedBy"
)

// maxGraphBody bounds the application object read from Graph.
const maxGraphBody = 1 << 20

// AppCredential is one client secret or certificate listed on the app
// registration in Microsoft Graph. It holds no secret: Graph shows only a
// secret's first three characters.
type AppCredential struct {
	// Kind is "secret" (passwordCredentials) or "certificate"
	// (keyCredentials).
	Kind        string
	KeyID       string
	DisplayName string
	// Hint is a secret's first three characters.
	Hint string
	// Thumbprint is a certificate's customKeyIdentifier: the SHA-1
	// thumbprint, upper-case hex.
	Thumbprint string
	Start, End time.Time
	// InUse is true for the secret or certificate this Credential holds:
	// a secret whose hint is the first three characters of ours, or a
	// certificate whose thumbprint is our leaf's. Two secrets that start
	// alike are both marked: the hint cannot tell them apart.
	InUse bool
}

// GraphError is an error answer of Microsoft Graph.
type GraphError struct {
	HTTPStatus int
	Code       string // e.g. "Authorization_RequestDenied"
	Message    string
}

func (e *GraphError) Error() string {
	return fmt.Sprintf("graph: %d %s: %s", e.HTTPStatus, e.Code, e.Message)
}

// Forbidden reports whether Graph refused to show the application: the
// app lacks Application.Read.All (or Application.ReadWrite.OwnedBy while
// being an owner of itself).
func (e *GraphError) Forbidden() bool { return e.HTTPStatus == http.StatusForbidden }

// MissingPermission says what to grant after a Forbidden answer.
func (e *GraphError) MissingPermission() string {
	return PermissionApplicationReadAll + " (or " + PermissionOwnedBy + " with the app as an owner of itself)"
}

// InUse returns what identifies the loaded secret or certificate in Graph:
// the secret's first three characters (Graph's hint), or the
// certificate's SHA-1 thumbprint in upper-case hex. The other is empty.
func (c *Credential) InUse() (hint, thumbprint string) {
	m, i := c.secretInUse()
	if m.leaf != nil {
		sum := sha1.Sum(m.leaf.Raw)
		return "", strings.ToUpper(hex.EncodeToString(sum[:]))
	}
	if len(m.secrets) == 0 {
		return "", ""
	}
	return m.secrets[i].hint(), ""
}

// graphApplication is the part of a Graph application object read here.
type graphApplication struct {
	PasswordCredentials []struct {
		DisplayName   string `json:"displayName"`
		EndDateTime   string `json:"endDateTime"`
		Hint          string `json:"hint"`
		KeyID         string `json:"keyId"`
		StartDateTime string `json:"startDateTime"`
	} `json:"passwordCredentials"`
	KeyCredentials []struct {
		CustomKeyIdentifier string `json:"customKeyIdentifier"`
		DisplayName         string `json:"displayName"`
		EndDateTime         string `json:"endDateTime"`
		KeyID               string `json:"keyId"`
		StartDateTime       string `json:"startDateTime"`
	} `json:"keyCredentials"`
}

// AppCredentials reads the app registration's secrets and certificates
// from Microsoft Graph (graphURL, e.g. https://graph.microsoft.com) with
// a fresh app-only token of this credential for GraphScope:
// GET /v1.0/applications(appId='…')?$select=passwordCredentials,keyCredentials.
// A token failure is a *TokenError; an error answer of Graph is a
// *GraphError (Forbidden when the app may not read itself).
func (c *Credential) AppCredentials(ctx context.Context, graphURL string) ([]AppCredential, error) {
	body, err := c.graphApp(ctx, graphURL, http.MethodGet, "?$select=passwordCredentials,keyCredentials", nil)
	if err != nil {
		return nil, err
	}
	var app graphApplication
	if err := json.Unmarshal(body, &app); err != nil {
		return nil, fmt.Errorf("graph: application: %w", err)
	}
	var out []AppCredential
	for _, p := range app.PasswordCredentials {
		ac := AppCredential{Kind: "secret", KeyID: p.KeyID, DisplayName: p.DisplayName, Hint: p.Hint}
		if ac.End, err = graphTime("endDateTime", p.EndDateTime); err != nil {
			return nil, err
		}
		ac.Start, _ = graphTime("startDateTime", p.StartDateTime)
		out = append(out, ac)
	}
	for _, k := range app.KeyCredentials {
		ac := AppCredential{Kind: "certificate", KeyID: k.KeyID, DisplayName: k.DisplayName,
			Thumbprint: thumbprintHex(k.CustomKeyIdentifier)}
		if ac.End, err = graphTime("endDateTime", k.EndDateTime); err != nil {
			return nil, err
		}
		ac.Start, _ = graphTime("startDateTime", k.StartDateTime)
		out = append(out, ac)
	}
	c.MarkInUse(out)
	return out, nil
}

// MarkInUse sets InUse on the entries of list, as AppCredentials returns
// it, that are the secret or certificate this credential uses now: again
// after SetSecretDates changed which secret is tried first.
func (c *Credential) MarkInUse(list []AppCredential) {
	hint, thumb := c.InUse()
	for i, a := range list {
		switch a.Kind {
		case "secret":
			list[i].InUse = hint != "" && a.Hint == hint
		case "certificate":
			list[i].InUse = thumb != "" && a.Thumbprint == thumb
		}
	}
	preferValid(list, c.opts.Now())
}

// SecretDates are the end dates of list's secrets by hint, for
// SetSecretDates. Of several secrets that share a hint, the latest date
// counts: the secret of this credential with that hint is taken to be
// the newest, as preferValid does.
func SecretDates(list []AppCredential) map[string]time.Time {
	dates := map[string]time.Time{}
	for _, a := range list {
		if a.Kind == "secret" && a.Hint != "" && a.End.After(dates[a.Hint]) {
			dates[a.Hint] = a.End
		}
	}
	return dates
}

// preferValid settles a hint that several secrets share: a hint is only
// the first three characters of a secret. The token this read was made
// with proves the secret in use valid now, so a matching secret that has
// expired or not yet started is not the one, unless none is valid.
func preferValid(list []AppCredential, now time.Time) {
	valid := func(a AppCredential) bool { return now.Before(a.End) && !now.Before(a.Start) }
	var matched, anyValid int
	for _, a := range list {
		if a.Kind == "secret" && a.InUse {
			matched++
			if valid(a) {
				anyValid++
			}
		}
	}
	if matched < 2 || anyValid == 0 {
		return
	}
	for i, a := range list {
		if a.Kind == "secret" && a.InUse && !valid(a) {
			list[i].InUse = false
		}
	}
}

// graphErr reads Graph's error body {"error": {"code", "message"}}.
func graphErr(status int, body []byte) *GraphError {
	var b struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	e := &GraphError{HTTPStatus: status}
	if json.Unmarshal(body, &b) == nil {
		e.Code, e.Message = b.Error.Code, truncate(b.Error.Message, maxDescriptionLen)
	}
	if e.Code == "" {
		e.Code = http.StatusText(status)
	}
	return e
}

func graphTime(field, v string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("graph: %s %q: %w", field, v, err)
	}
	return t.UTC(), nil
}

// thumbprintHex normalises a customKeyIdentifier to upper-case hex. The
// portal stores a certificate's SHA-1 thumbprint there; depending on the
// tool that uploaded it, it reads as hex, as base64 of the 20 bytes, or as
// base64 of the hex text.
func thumbprintHex(v string) string {
	v = strings.TrimSpace(v)
	if b, err := hex.DecodeString(v); err == nil && len(b) == sha1.Size {
		return strings.ToUpper(v)
	}
	if b, err := base64.StdEncoding.DecodeString(v); err == nil {
		if len(b) == sha1.Size {
			return strings.ToUpper(hex.EncodeToString(b))
		}
		if h, err := hex.DecodeString(string(bytes.TrimSpace(b))); err == nil && len(h) == sha1.Size {
			return strings.ToUpper(string(bytes.TrimSpace(b)))
		}
	}
	return strings.ToUpper(v)
}

// Expiry levels: how close a secret or certificate is to its end. The
// expiry monitor, the command line, the webhook and the status page
// judge by these alone.
const (
	LevelUnknown  = "unknown"  // no source gave a date
	LevelOK       = "ok"       // more than 30 days left
	LevelWarning  = "warning"  // 30 days or less
	LevelCritical = "critical" // 7 days or less
	LevelExpired  = "expired"  // past the date
)

// Thresholds of the levels: the alert rules' 30 and 7 days.
const (
	WarnWithin     = 30 * 24 * time.Hour
	CriticalWithin = 7 * 24 * time.Hour
)

// ExpiryLevel says how close end is, seen at now: LevelUnknown for a
// zero end, else LevelOK, LevelWarning, LevelCritical or LevelExpired.
func ExpiryLevel(end, now time.Time) string {
	switch left := end.Sub(now); {
	case end.IsZero():
		return LevelUnknown
	case left <= 0:
		return LevelExpired
	case left <= CriticalWithin:
		return LevelCritical
	case left <= WarnWithin:
		return LevelWarning
	}
	return LevelOK
}

// DaysLeft is the number of days to end from now, rounded up (2 hours
// left is 1 day); 0 or less once past. It counts in milliseconds, not in
// a time.Duration, which ends 292 years out: Graph shows a secret
// without an end as 9999-12-31.
func DaysLeft(end, now time.Time) int {
	days := float64(end.UnixMilli()-now.UnixMilli()) / float64(24*time.Hour/time.Millisecond)
	if days > 0 {
		return int(math.Ceil(days))
	}
	return int(math.Floor(days))
}
