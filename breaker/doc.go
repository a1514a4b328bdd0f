// Package breaker owns Holdfast's auth circuit breakers: one per Entra app
// registration and one per delegated mailbox grant, with their state shared
// by every replica through Redis.
//
// Each breaker has a small Redis record (see keys.go) changed only by Lua
// scripts (scripts.go). A failure tells the breaker what it means through
// the Failure interface, which the relay's classification implements:
// breaker imports no classification of its own. Failures that count are
// counted fleet-wide; the breaker opens when the count of consecutive
// failures reaches the threshold (default 3), or at once on a failure
// that says so (an expired client secret). While a breaker is open, Allow
// is false on every replica, and a single replica at a time gets the probe
// lease from AcquireProbe: after the open interval (30 s, doubling on each
// failed probe up to 5 min), or at once after ProbeNow (any replica) or
// ProbeNowHere (the replica whose secret file just changed). ProbeResult
// closes or keeps open. AskProbe numbers each request, and the record
// says which requests the last result answers (Status.Answered): those
// made before its probe's lease was granted, not those made while it ran.
//
// The record keeps the fingerprint of the secret or certificate that last
// got a token (Succeeded). A failure of another fingerprint does not
// count (RecordAs returns ErrStale): a replica whose file has not been
// rotated yet must not reopen a breaker that a rotated replica closed.
//
// Propagation. The script that makes a transition reports it to its
// caller, which claims its notice, publishes it on a pub/sub channel and
// calls Options.OnMade (so a webhook goes out once per transition,
// fleet-wide, with an event id); a replica that sees a transition whose
// notice no replica claimed (its maker lost the script's reply) calls
// OnMade instead. A claim is a lease (NoticeLease) that the replica's
// Webhook renews until the notice is posted; Watch takes over, and calls
// OnMade for, a claim whose replica stopped renewing it (see ledger.go).
// Watch re-reads a record at once when its transition
// is published, and every record each Poll as a fallback; OnTransition
// fires on each replica for each transition it sees. Fresh reads records
// with no cache, for a check that must follow an operator's trip at once.
//
// What gobreaker decides. Each replica also keeps a sony/gobreaker
// TwoStepCircuitBreaker per breaker, fed the same counted failures and
// successes. It makes exactly one decision: Allow's answer while Redis
// cannot be read (the record is the fleet's truth, and a replica cut off
// from it must still stop hammering a credential it sees failing). It
// never overrides a record that could be read, and it is reset when the
// record closes. Breakers of upstream endpoints that are down (dead
// destinations) are a different matter, decided per replica in the relay.
//
// Attempts (EnterAttempt, ExitAttempt) bound the upstream attempts of a
// credential in doubt at once, fleet-wide, so that no more refusals than
// Threshold reach the upstream before the breaker opens; see Attempts.
//
// It does not deliver mail, fetch tokens, run probes or hold queue routes:
// the relay reports each credential or mailbox failure to it
// (relay.AuthFailureFunc), runs the probe, and makes the queue's held
// routes follow the records (queue.HoldRouteAt, queue.ReleaseRouteAt).
package breaker
