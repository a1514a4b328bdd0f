package o365

import (
	"encoding/base64"
	"encoding/json"
	"slices"
	"strings"
)

// MailSendRole is the Graph application permission that sendMail with an
// app-only token needs.
const MailSendRole = "Mail.Send"

// TokenHasRole reports whether an access token's "roles" claim (the
// application permissions Entra put in an app-only token) lists role.
// The token is only read, not verified: it came from the token endpoint.
func TokenHasRole(accessToken, role string) bool {
	parts := strings.Split(accessToken, ".")
	if len(parts) != 3 {
		return false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return false
	}
	var claims struct {
		Roles []string `json:"roles"`
	}
	if json.Unmarshal(payload, &claims) != nil {
		return false
	}
	return slices.Contains(claims.Roles, role)
}
