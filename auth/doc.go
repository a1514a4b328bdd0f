// Package auth owns Holdfast's credentials towards Microsoft: Entra ID
// token sources (client secret, certificate, delegated refresh tokens),
// hot reload of rotated secrets, discovery of credential expiry, and the
// XOAUTH2 SASL client used for SMTP submission.
//
// It does not decide what a failure means for a message or a breaker; it
// returns typed errors carrying the token endpoint's codes, and the relay
// classifies them.
package auth
