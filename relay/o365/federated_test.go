package o365

import (
	"testing"

	"holdfast/auth"
	"holdfast/relay/upstream"
)

// Entra's answers to a federated assertion it refuses are the credential's
// failures: they hold mail, never bounce it.
func TestClassifyFederatedAssertionErrors(t *testing.T) {
	for _, f := range []TokenFailure{
		{HTTPStatus: 400, Code: auth.CodeInvalidClient, AADSTS: auth.AADSTSFederatedIssuer, Text: "No matching federated identity record found for presented assertion issuer 'https://oidc.example'."},
		{HTTPStatus: 400, Code: auth.CodeInvalidClient, AADSTS: auth.AADSTSFederatedSubject, Text: "No matching federated identity record found for presented assertion subject 'system:serviceaccount:a:b'."},
		{HTTPStatus: 400, Code: auth.CodeInvalidClient, AADSTS: auth.AADSTSFederatedAudience, Text: "No matching federated identity record found for presented assertion audience 'api://x'."},
		{HTTPStatus: 401, Code: auth.CodeInvalidClient, AADSTS: auth.AADSTSAssertionExpired, Text: "Client assertion is not within its valid time range."},
		{HTTPStatus: 401, Code: auth.CodeInvalidClient, AADSTS: auth.AADSTSInvalidSecret, Text: "Invalid client secret provided."},
		{HTTPStatus: 400, Code: auth.CodeInvalidRequest, AADSTS: "AADSTS70021", Text: "No matching federated identity record found for presented assertion."},
		{HTTPStatus: 401, Code: auth.CodeInvalidClient, Text: "the assertion in /var/run/secrets/azure/tokens/azure-identity-token expired at 2026-12-01T19:00:00Z"},
	} {
		if c := ClassifyToken(f, AppOnly).Class; c != upstream.Credential {
			t.Errorf("%s %s: class %v, want credential", f.AADSTS, f.Text, c)
		}
	}
}
