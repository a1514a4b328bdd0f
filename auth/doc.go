// Package auth owns Holdfast's credentials towards Microsoft: Entra ID
// token sources (client secret, certificate, delegated refresh tokens),
// hot reload of rotated secrets, discovery of credential expiry, and the
// XOAUTH2 SASL client used for SMTP submission.
//
// It does not decide what a failure means for a message or a breaker; it
// returns typed errors carrying the token endpoint's codes, and the relay
// classifies them.
//
// A Credential is one app registration. Its Token method returns a cached
// app-only token, refreshed RefreshBefore ahead of expiry, with concurrent
// callers sharing one request; errors are returned as *TokenError and are
// never cached, so a breaker must gate calls while a credential is broken.
// Reload and Watch pick up a rotated secret or certificate file without a
// restart. AppCredentials reads the app registration's secrets and
// certificates, with their end dates, from Microsoft Graph, marking the one
// the Credential holds. A GrantStore keeps mailboxes' delegated refresh tokens in Redis,
// sealed with AES-256-GCM, and its DelegatedSource redeems them, writing
// rotated refresh tokens back with a compare-and-set. NewXOAUTH2Client
// authenticates an SMTP session with a token.
//
// Nothing in this package logs a secret, a client assertion or a token.
package auth
