package auth

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// FederatedAudience is the audience Entra requires of an assertion from
// another identity provider (workload identity federation).
const FederatedAudience = "api://AzureADTokenExchange"

// EnvFederatedTokenFile names the environment variable in which AKS
// workload identity gives the path of the projected service-account token.
const EnvFederatedTokenFile = "AZURE_FEDERATED_TOKEN_FILE"

// AADSTS codes Entra answers to a federated assertion it does not accept.
const (
	AADSTSFederatedIssuer   = "AADSTS700211" // no federated credential for the issuer
	AADSTSFederatedAudience = "AADSTS700212" // no federated credential for the audience
	AADSTSFederatedSubject  = "AADSTS700213" // no federated credential for the subject
	AADSTSAssertionExpired  = "AADSTS700024" // the assertion is outside its validity
)

// federated is a JWT issued by another identity provider, read from
// ClientAssertionFile and sent as the client assertion. Holdfast does not
// verify its signature (Entra does); it reads exp to refuse sending an
// assertion that has already expired.
type federated struct {
	jwt  string
	file string
	exp  time.Time // zero when the token carries no exp
	iss  string
	sub  string
}

// loadFederated reads and parses the assertion file.
func loadFederated(path string) (*material, error) {
	raw, err := readCredentialFile(path, "client assertion")
	if err != nil {
		return nil, err
	}
	jwt := string(bytes.TrimSpace(raw))
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("client assertion file %s does not hold a JWT", path)
	}
	payload, err := b64url.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return nil, fmt.Errorf("client assertion file %s: JWT claims are not base64url", path)
	}
	var c struct {
		Iss string   `json:"iss"`
		Sub string   `json:"sub"`
		Exp *float64 `json:"exp"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		return nil, fmt.Errorf("client assertion file %s: JWT claims are not JSON", path)
	}
	f := &federated{jwt: jwt, file: path, iss: c.Iss, sub: c.Sub}
	if c.Exp != nil {
		f.exp = time.Unix(int64(*c.Exp), 0).UTC()
	}
	return &material{fed: f, sum: sha256.Sum256(raw)}, nil
}

// check refuses an assertion that expired by now, with a credential-class
// token error whose text names the file and the time, as if Entra had
// answered AADSTS700024, without sending it.
func (f *federated) check(now time.Time) error {
	if f.exp.IsZero() || now.Before(f.exp) {
		return nil
	}
	return &TokenError{
		HTTPStatus:  http.StatusUnauthorized,
		Code:        CodeInvalidClient,
		Description: fmt.Sprintf("the assertion in %s expired at %s; it was not sent (the file is re-read when its issuer rotates it)", f.file, f.exp.Format(time.RFC3339)),
	}
}

// AssertionExpiry returns the exp of a federated credential's current
// assertion.
func (c *Credential) AssertionExpiry() (time.Time, bool) {
	m := c.material()
	if m.fed == nil || m.fed.exp.IsZero() {
		return time.Time{}, false
	}
	return m.fed.exp, true
}

// countSet returns how many of files are set.
func countSet(files ...string) int {
	n := 0
	for _, f := range files {
		if f != "" {
			n++
		}
	}
	return n
}
