package sim

import (
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"math"
	"net/url"
	"strings"
	"time"
)

// checkAssertion verifies a private_key_jwt client assertion: a PS256 or
// RS256 JWT whose x5t#S256 (or x5t) header names a certificate registered
// for the app, with aud = the token URL, iss = sub = the client id, exp in
// the future and nbf, iat not in the future. s.mu is held.
func (s *Sim) checkAssertion(a *app, tenantID string, form url.Values) *aadError {
	if form.Get("client_assertion_type") != assertionType {
		return &aadError{400, "invalid_request", 90014, "The required field 'client_assertion_type' is missing from the credential. Ensure that you have all the necessary parameters for the login request.", ""}
	}
	j, err := parseJWS(form.Get("client_assertion"))
	if err != nil {
		return &aadError{400, "invalid_request", 50027, "JWT token is invalid or malformed.", ""}
	}
	if fed := j.federatedClaims(a); fed != nil {
		return s.checkFederated(a, fed)
	}
	var cert *appCert
	var thumb string
	if t := j.headerString("x5t#S256"); t != "" {
		thumb = t
		for i := range a.certs {
			if a.certs[i].s256 == t {
				cert = &a.certs[i]
			}
		}
	} else if t := j.headerString("x5t"); t != "" {
		thumb = t
		if raw, err := b64.DecodeString(t); err == nil {
			thumb = strings.ToUpper(fmt.Sprintf("%x", raw))
		}
		for i := range a.certs {
			if a.certs[i].s1 == t {
				cert = &a.certs[i]
			}
		}
	}
	if cert == nil {
		return &aadError{401, "invalid_client", 700027, fmt.Sprintf("The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '%s', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '%s'. Review the documentation at https://docs.microsoft.com/en-us/graph/deployments to determine the corresponding service endpoint and https://docs.microsoft.com/en-us/graph/api/application-get?view=graph-rest-1.0&tabs=http to build a query request URL, such as 'https://graph.microsoft.com/beta/applications/%s']", thumb, a.clientID, a.clientID), ""}
	}
	pub, ok := cert.cert.PublicKey.(*rsa.PublicKey)
	if !ok || j.verifyRSA(pub) != nil {
		return &aadError{401, "invalid_client", 700027, "Client assertion failed signature validation.", ""}
	}
	now := s.now()
	if now.After(cert.cert.NotAfter) || now.Before(cert.cert.NotBefore) {
		return &aadError{401, "invalid_client", 700027, fmt.Sprintf("Client assertion contains an invalid signature. [Reason - The key used is expired., Thumbprint of key used by client: '%s', Found key 'Start=%s, End=%s']", cert.sha1Hx, cert.cert.NotBefore.UTC().Format("01/02/2006 15:04:05"), cert.cert.NotAfter.UTC().Format("01/02/2006 15:04:05")), ""}
	}
	var c assertionClaims
	if err := json.Unmarshal(j.claims, &c); err != nil {
		return &aadError{400, "invalid_request", 50027, "JWT token is invalid or malformed.", ""}
	}
	if !strings.EqualFold(c.Iss, a.clientID) || !strings.EqualFold(c.Sub, a.clientID) {
		return &aadError{401, "invalid_client", 700021, "Client assertion application identifier doesn't match 'client_id' parameter. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .", ""}
	}
	want := strings.ToLower(s.TokenURL(tenantID))
	audOK := false
	for _, aud := range c.Aud {
		audOK = audOK || strings.ToLower(aud) == want
	}
	if !audOK {
		return &aadError{401, "invalid_client", 700027, fmt.Sprintf("Client assertion audience claim does not match Realm issuer. Expected audience '%s'.", s.TokenURL(tenantID)), ""}
	}
	return s.checkValidity(&c)
}

// checkValidity answers AADSTS700024 for an assertion outside its
// validity: no exp, exp past, nbf or iat in the future. s.mu is held.
func (s *Sim) checkValidity(c *assertionClaims) *aadError {
	now := s.now()
	n := float64(now.Unix())
	if c.Exp == nil || *c.Exp <= n || (c.Nbf != nil && *c.Nbf > n) || (c.Iat != nil && *c.Iat > n) {
		from := "unknown"
		if c.Nbf != nil {
			from = numericDate(*c.Nbf)
		}
		until := "unknown"
		if c.Exp != nil {
			until = numericDate(*c.Exp)
		}
		return &aadError{401, "invalid_client", 700024, fmt.Sprintf("Client assertion is not within its valid time range. Current time: %s, assertion valid from %s, expiry time of assertion %s. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .", now.UTC().Format(aadDateLayout), from, until), ""}
	}
	return nil
}

func numericDate(f float64) string {
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)).UTC().Format(aadDateLayout)
}
