// Package breaker owns Holdfast's auth circuit breakers: one per Entra app
// registration and one per delegated mailbox grant, with their state shared
// by every replica through Redis. An open breaker holds its routes in the
// queue (queue.HoldRoute) so that no mail is bounced and no attempt is spent
// while Microsoft rejects the credentials; a single replica probes, and a
// successful probe releases the routes.
//
// It does not deliver mail or fetch tokens; the relay reports each
// credential or mailbox failure to it (relay.AuthFailureFunc).
package breaker
