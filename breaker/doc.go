// Package breaker owns Holdfast's auth circuit breakers: one per Entra app
// registration and one per delegated mailbox grant, with their state shared
// by every replica through Redis.
//
// Each breaker has a small Redis record (see keys.go) changed only by Lua
// scripts (scripts.go). Credential and Mailbox failures, as classified by
// relay/upstream, are counted fleet-wide; the breaker opens when the count
// of consecutive failures reaches the threshold (default 3), or at once on
// a token error saying the client secret expired (AADSTS7000222).
// Throttled, Transient and Permanent outcomes never count. While a breaker
// is open, Allow is false on every replica within one Poll, and a single
// replica at a time gets the probe lease from AcquireProbe: after the open
// interval (30 s, doubling on each failed probe up to 5 min), or at once
// after ProbeNow. ProbeResult closes or keeps open. Each replica also keeps
// a gobreaker TwoStepCircuitBreaker per breaker, which decides Allow while
// Redis cannot be reached.
//
// Watch reports transitions made anywhere in the fleet through
// Options.OnTransition; Webhook posts them to an operator's URL.
//
// It does not deliver mail, fetch tokens, run probes or hold queue routes:
// the relay reports each credential or mailbox failure to it
// (relay.AuthFailureFunc), runs the probe, and holds or releases routes
// (queue.HoldRoute) on transitions.
package breaker
