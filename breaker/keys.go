package breaker

// Redis keys of the breakers. Each breaker's record is one hash whose key
// carries a hash tag, so that every script touches one slot:
//
//	hf:{brk:NAME}          hash  the breaker record (fields below)
//	hf:{brk:NAME}:spread   set   members (delegated mailboxes) that failed
//	                             in a row under a credential's breaker
//	hf:{brk:NAME}:places   zset  attempts in doubt: place token -> expiry
//	                             (unix ms); see Attempts
//	hf:{brk:NAME}:attempt  hash  gen (the record's generation it counts
//	                             for), refused (attempts refused in a row),
//	                             stale ("1" when the last was of a cached
//	                             token), reply (the last refusal), cured
//	                             (unix ms a new token last cured a refusal),
//	                             lone (the member every refusal was at)
//	hf:{brk:NAME}:works    zset  members an attempt succeeded at ->
//	                             when (unix ms), for a day; see Attempts
//	hf:{brk:NAME}:unproven set   members refused since the last success
//	                             that are not in works
//	hf:{brk:NAME}:notified string "GENERATION SINCE" (unix ms) of the
//	                             latest transition whose notice a replica
//	                             claimed (OnMade)
//	hf:{brk:NAME}:claims   hash  the claims of notices not yet posted:
//	                             "GENERATION SINCE" -> "UNTIL CLAIMANT
//	                             REPLICA TRANSITION" (the lease in unix
//	                             ms, the claimant's id, its replica name,
//	                             the transition as JSON); see ledger.go
//	hf:brk:names           set   every breaker name that has had a record
//	hf:brk:notices         zset  "GENERATION SINCE\nNAME" of every claim
//	                             in a claims hash, scored by its lease
//	hf:brk:log             zset  the latest transitions, fleet-wide: one
//	                             JSON Transition (From left out) per member,
//	                             scored by its time (unix ms), one per
//	                             breaker, state and time (logScript)
//	hf:brk:replica:NAME    string the id of the process that last
//	                             announced replica name NAME (see
//	                             Set.ReplicaShared), with a TTL
//	hf:brk:events          pub/sub channel: "NAME GENERATION" after each
//	                             transition, published by the replica whose
//	                             script made it
//
// Record fields:
//
//	state        "closed" or "open"; a missing record is closed
//	reason       upstream code and text of the failure that opened it
//	since        unix ms of the last transition
//	generation   incremented on every transition
//	failures     consecutive counted failures, fleet-wide, failed probes
//	             included (not their retries while a secret propagates)
//	interval     current open interval, ms
//	next_probe   unix ms after which a probe may run
//	probe_now    "1" while an immediate probe is requested
//	probe_asks   how many immediate probes were ever requested (AskProbe)
//	lease_token  the prober's token; lease_until its expiry (unix ms)
//	lease_asks   probe_asks when the lease was granted (or taken over)
//	last_probe   unix ms of the last probe result
//	answered     "N:T": the lease_asks N of the probe whose result came at
//	             T (unix ms), the requests it answers; it counts while T
//	             is last_probe (a relay of an earlier version writes
//	             last_probe alone)
//	spread       how many members the spread set holds
//	good_fp      fingerprint of the secret or certificate that last got a token
//	probe_by     replica the next probe is kept for (an immediate one or a retry); probe_by_until until when (unix ms)
//	stale:NAME   unix ms since replica NAME's material was found stale
const (
	namesKey      = "hf:brk:names"
	logKey        = "hf:brk:log"
	noticesKey    = "hf:brk:notices"
	eventsChannel = "hf:brk:events"
)

func recordKey(name string) string { return "hf:{brk:" + name + "}" }

func spreadKey(name string) string { return recordKey(name) + ":spread" }

func placesKey(name string) string { return recordKey(name) + ":places" }

func attemptKey(name string) string { return recordKey(name) + ":attempt" }

func worksKey(name string) string { return recordKey(name) + ":works" }

func unprovenKey(name string) string { return recordKey(name) + ":unproven" }

func notifiedKey(name string) string { return recordKey(name) + ":notified" }

func claimsKey(name string) string { return recordKey(name) + ":claims" }

func replicaKey(replica string) string { return "hf:brk:replica:" + replica }

// noticeKey marks a recurring notice (kind, name, level) as sent until it
// expires; see Notices.Claim:
//
//	hf:{ntc:KIND:NAME}:LEVEL   string  "1", with the notice's period as TTL
func noticeKey(kind, name, level string) string {
	return "hf:{ntc:" + kind + ":" + name + "}:" + level
}
