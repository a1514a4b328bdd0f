package auth

import "time"

// MinRefreshBefore is the least time before its expiry at which a cached
// access token is replaced. Exchange Online's high volume endpoint refuses
// tokens that close to expiry with "501 5.5.127 Invalid XOAUTH2 auth data -
// Token will expire soon", and Entra issues app-only tokens living 60 to 90
// minutes, so a token is used for at most 50 to 80 of them.
//
// The token cache decides this itself: x/oauth2's own early expiry (its
// Token.Valid treats a token as expired 10 s early) never applies, because
// Credential calls the token endpoint directly and serves tokens from
// tokenCache, which never consults Token.Valid.
const MinRefreshBefore = 10 * time.Minute
