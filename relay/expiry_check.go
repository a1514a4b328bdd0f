package relay

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"holdfast/auth"
)

// checkTokenTimeout bounds the live token request of CheckCredentials.
const checkTokenTimeout = 30 * time.Second

// CredentialCheck is what CheckCredentials found for one credential.
type CredentialCheck struct {
	CredentialExpiry
	// TokenOK is true when the live token request got a token;
	// TokenError is why it failed, or why the credential's files could
	// not be read.
	TokenOK    bool   `json:"token_ok"`
	TokenError string `json:"token_error,omitempty"`
}

// CheckCredentials reads every configured credential's expiry now, as
// the relay's expiry monitor does (expires_at, the certificate's NotAfter
// and Microsoft Graph), and makes one live app-only token request with
// each, in configuration order. It sends nothing and notifies no one;
// log receives what the credentials log (never a secret).
func CheckCredentials(ctx context.Context, o Options, log *slog.Logger) ([]CredentialCheck, error) {
	if len(o.Credentials) == 0 {
		return nil, errors.New("no credentials are configured (credentials:)")
	}
	tlsConfig, err := exchangeTLS(o.Exchange)
	if err != nil {
		return nil, err
	}
	client := auth.NewHTTPClient(tlsConfig)
	live := map[string]*auth.Credential{}
	loadErr := map[string]string{}
	for _, c := range o.Credentials {
		ac, err := auth.NewCredential(c.authOptions(outlookScope, client, log))
		if err != nil {
			loadErr[c.Name] = err.Error()
			continue
		}
		live[c.Name] = ac
	}
	// The live token requests first: with several secrets, they find
	// the one in use, which the dates below are marked by.
	for name, c := range live {
		tctx, cancel := context.WithTimeout(ctx, checkTokenTimeout)
		if _, err := c.Token(tctx); err != nil {
			loadErr[name] = err.Error()
		}
		cancel()
	}
	m := newExpiryMonitor(expiryConfig{credentials: o.Credentials, live: live, graphURL: o.Exchange.GraphURL, log: log})
	m.CheckAll(ctx)
	var out []CredentialCheck
	for _, ce := range m.Expiries() {
		_, failed := loadErr[ce.Credential]
		out = append(out, CredentialCheck{CredentialExpiry: ce, TokenOK: !failed, TokenError: loadErr[ce.Credential]})
	}
	return out, ctx.Err()
}
