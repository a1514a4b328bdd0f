package sim

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// federatedAudience is the audience Entra expects of an assertion issued
// by another identity provider.
const federatedAudience = "api://AzureADTokenExchange"

// FederatedCredential is a federated identity credential on an app
// registration: Entra exchanges a JWT from Issuer about Subject, meant for
// one of Audiences (default api://AzureADTokenExchange), for the app's
// tokens. Issuer and subject match exactly, as Entra's now do.
type FederatedCredential struct {
	Issuer    string
	Subject   string
	Audiences []string
}

const fedDocs = " Check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation"

// federatedClaims returns the claims of an assertion issued by someone
// other than the app itself and naming no certificate of the app, which
// Entra treats as a federated one, or nil for a certificate assertion.
func (j *jws) federatedClaims(a *app) *assertionClaims {
	if j.headerString("x5t#S256") != "" || j.headerString("x5t") != "" {
		return nil
	}
	var c assertionClaims
	if json.Unmarshal(j.claims, &c) != nil || strings.EqualFold(c.Iss, a.clientID) {
		return nil
	}
	return &c
}

// checkFederated matches an assertion against the app's federated
// credentials, then checks its validity period. The issuer's signature is
// not verified: the simulator holds no keys of other providers. s.mu is
// held.
func (s *Sim) checkFederated(a *app, c *assertionClaims) *aadError {
	var byIssuer []FederatedCredential
	for _, fc := range a.federated {
		if fc.Issuer == c.Iss {
			byIssuer = append(byIssuer, fc)
		}
	}
	if len(byIssuer) == 0 {
		return &aadError{400, "invalid_client", 700211, fmt.Sprintf("No matching federated identity record found for presented assertion issuer '%s'.%s", c.Iss, fedDocs), ""}
	}
	var bySubject []FederatedCredential
	for _, fc := range byIssuer {
		if fc.Subject == c.Sub {
			bySubject = append(bySubject, fc)
		}
	}
	if len(bySubject) == 0 {
		return &aadError{400, "invalid_client", 700213, fmt.Sprintf("No matching federated identity record found for presented assertion subject '%s'.%s", c.Sub, fedDocs), ""}
	}
	audOK := false
	for _, fc := range bySubject {
		for _, aud := range c.Aud {
			audOK = audOK || slices.Contains(fc.Audiences, aud)
		}
	}
	if !audOK {
		return &aadError{400, "invalid_client", 700212, fmt.Sprintf("No matching federated identity record found for presented assertion audience '%s'.%s", strings.Join(c.Aud, ","), fedDocs), ""}
	}
	return s.checkValidity(c)
}
