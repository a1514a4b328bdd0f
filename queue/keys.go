package queue

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// Key layout. T is the route's hash tag (see routeTag); every key of one
// route, and every message of that route, shares it, so one script only
// ever touches one Redis Cluster slot.
//
//	hf:{T}:m:ID              hash    one message (see the field names below)
//	hf:{T}:w:ID              string  a withdrawn message id: an Enqueue of it that runs later stores nothing (see Withdraw)
//	hf:{T}:r:ROUTE:due       zset    id -> due time (unix ms): ready and scheduled
//	hf:{T}:r:ROUTE:leased    zset    id -> lease deadline (unix ms)
//	hf:{T}:r:ROUTE:dead      zset    id -> dead-letter time (unix ms)
//	hf:{T}:r:ROUTE:live      zset    id -> submit time (unix ms), every message not yet delivered or dead
//	hf:{T}:r:ROUTE:hold      string  the hold reason; present while the route is held
//	hf:{T}:r:ROUTE:held      string  when the current hold started (unix ms); present while held
//	hf:{T}:r:ROUTE:fence     hash    breaker name -> the newest generation a hold or release of the route applied
//	hf:{T}:r:ROUTE:seq       string  counts the route's leases; orders index updates
//	hf:{T}:r:ROUTE:l:TOKEN   set     ids leased by one lease token, while it lasts
//	hf:{T}:r:ROUTE:moving    set     ids taken out of the route by a move to another route not finished yet (see Move)
//	hf:{T}:r:ROUTE:movelock  string  the token of the move running off the route, expiring unless renewed (see lockMoves)
//	hf:{T}:i:ROUTE:KEY       string  idempotency key -> message id
//	hf:{T}:f:ROUTE:KEY       string  idempotency key -> the fingerprint of its submission, when it had one
//	hf:routes                set     every route that has had a message, until pruned
//	hf:routes:idle           zset    route -> when it was first seen with no message (unix ms)
//	hf:dead:sweep            string  present while a process's pass over the dead letters counts for the fleet (see ExpireDead)
//	hf:min:MINUTE            hash    fleet-wide counts of one minute (unix minutes); see minutes.go
//	hf:fallback:graph        zset    route -> until when its mail goes by Graph, not SMTP (unix ms); see fallback.go
//	hf:rot:CREDENTIAL        hash    a credential's secret rotation waiting to remove the old secret; see rotation.go
//	hf:exp:CREDENTIAL        hash    relay -> "EXPIRES SOURCE CHECKED UNTIL" (unix ms, source, unix ms, unix ms): when the
//	                                 credential's secret or certificate in use expires, as each relay's expiry monitor last
//	                                 found, counting until UNTIL; see credexpiry.go
//	hf:expfor:CREDENTIAL     hash    "SOURCE DATE" -> fingerprint: the secret or certificate a configured end date was first seen
//	                                 with; see credexpiry.go
//	hf:rcpt:MAILBOX          zset    "id:n" -> send time (unix ms): recipients a mailbox sent to, for Exchange's rolling quota;
//	                                 "#total" -> minus their sum (see quota.go)
//	hf:auth:ip:IP            string  failed authentications from a client IP in the current window
//	hf:auth:user:HASH        string  failed authentications for an SMTP user name (hex of 16 bytes of its SHA-256) in the current window
//	hf:{lim:MAILBOX}:conns   zset    connection token -> expiry (unix ms): a mailbox's connection slots
//	hf:{lim:MAILBOX}:sends   zset    send token -> send time (unix ms): a mailbox's sends in the rate window
//	hf:{lim:MAILBOX}:waits   hash    wait kind -> until when the upstream asked the fleet to leave the mailbox alone (unix ms); see HoldMailbox,
//	                                 and EndMailboxWaits, which removes it
//
// The due-route index (see due.go) lives on its own hash tag:
//
//	hf:{due}:routes          zset    route -> when it next needs a lease (unix ms)
//	hf:{due}:dirty           set     routes changed since their last lease
//	hf:{due}:seq             hash    route -> lease sequence of its index entry
//	hf:{due}:changes         zset    route -> change sequence of its last change (see changeLua); "#" -> the newest
//	                                 sequence, "@" -> when the log was started (unix ms); single server only
const keyPrefix = "hf:"

// Keys of the due-route index.
const (
	dueIndexKey = keyPrefix + "{due}:routes"
	dueDirtyKey = keyPrefix + "{due}:dirty"
	dueSeqKey   = keyPrefix + "{due}:seq"
	changesKey  = keyPrefix + "{due}:changes"
)

// Message hash fields.
const (
	fRoute    = "route"
	fApp      = "app"
	fFrom     = "from"
	fTo       = "to"
	fBody     = "body"
	fSize     = "size"
	fSubmit   = "sub"   // submit time, unix ms
	fExpire   = "exp"   // end of the queue lifetime, unix ms
	fAttempts = "att"   // delivery attempts spent
	fLastErr  = "err"   // last upstream reply or error
	fState    = "st"    // stQueued, stLeased, stDelivered, stDead, stMoving
	fLease    = "lease" // token of the current lease
	fLeaseEnd = "lu"    // lease deadline, unix ms
	fUpdated  = "upd"   // last change, unix ms
	fDoneAt   = "done"  // delivered or dead-lettered at, unix ms
	fReason   = "why"   // dead-letter reason
	fIdemKey  = "idem"
	// fAmbiguous is "1" once an attempt ended without knowing whether the
	// upstream sent the message (see MarkAmbiguous), or its lease ran out
	// (the lease script sets it).
	fAmbiguous = "amb"
	// fMoveKey and fMovePrint are the application's idempotency key and
	// its fingerprint that a message taken out for a move carries to its
	// new route (see Move), set when it is taken out.
	fMoveKey   = "mvkey"
	fMovePrint = "mvprint"
	// fMoveTo is the route a move takes the message to, set when it is
	// taken out, and changed by a move run again elsewhere that finds no
	// copy stored by the first.
	fMoveTo = "mvto"
	// "settled" holds "TOKEN:OUTCOME" of the last settled lease; only
	// the scripts read it.
)

// Stored states. Ready, scheduled and held are all stQueued; which one a
// message is in follows from its due time and the route's hold flag.
const (
	stQueued    = "queued"
	stLeased    = "leased"
	stDelivered = "delivered"
	stDead      = "dead"
	// stMoving is a message taken out of its route by a move not
	// finished yet: in the route's moving set, in none of its others.
	stMoving = "moving"
)

const (
	routesKey        = keyPrefix + "routes"
	idleRoutesKey    = routesKey + ":idle"
	deadSweepKey     = keyPrefix + "dead:sweep"
	graphFallbackKey = keyPrefix + "fallback:graph"
)

// rotationKey holds a credential's pending secret rotation.
func rotationKey(credential string) string { return keyPrefix + "rot:" + credential }

func credExpiryKey(credential string) string { return keyPrefix + "exp:" + credential }

func credDateKey(credential string) string { return keyPrefix + "expfor:" + credential }

// minuteKey is the hash of the fleet-wide counts of the minute starting at
// unix minute m.
func minuteKey(m int64) string {
	return keyPrefix + "min:" + strconv.FormatInt(m, 10)
}

// routeTag returns the hash tag shared by a route's keys and messages: eight
// hex digits of the FNV-1a hash of the route name. Two routes may share a
// tag; their keys still differ because they contain the route name.
func routeTag(route string) string {
	// FNV-1a, 32 bits, inline: a scrape computes the tag of every route.
	h := uint32(2166136261)
	for i := 0; i < len(route); i++ {
		h ^= uint32(route[i])
		h *= 16777619
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], h)
	return hex.EncodeToString(b[:])
}

// Kinds of route key: the last part of hf:{T}:r:ROUTE:KIND. Scripts that
// find a route's keys from its routeBase append them with luaRouteKey.
const (
	kindDue      = "due"
	kindLeased   = "leased"
	kindDead     = "dead"
	kindLive     = "live"
	kindHold     = "hold"
	kindHeld     = "held"
	kindSeq      = "seq"
	kindFence    = "fence"
	kindMoving   = "moving"
	kindMoveLock = "movelock"
)

// luaRouteKey is the Lua expression of the key of kind of the route whose
// routeBase is the Lua expression base.
func luaRouteKey(base, kind string) string {
	return "(" + base + " .. '" + kind + "')"
}

// luaRouteBase is the Lua expression of a route's routeBase, from the Lua
// expressions of its routeKeyPrefix and of its name.
func luaRouteBase(prefix, route string) string {
	return "(" + prefix + " .. " + route + " .. ':')"
}

// luaTagKeys is the Lua expressions of the message key of the id whose
// Lua expression is id, and of the routeKeyPrefix of that id's tag: for
// scripts that read the messages a route's set names.
func luaTagKeys(id string) (msg, routePrefix string) {
	tag := fmt.Sprintf("string.sub(%s, 1, %d)", id, tagLen)
	return "('" + keyPrefix + "{' .. " + tag + " .. '}:m:' .. " + id + ")",
		"('" + keyPrefix + "{' .. " + tag + " .. '}:r:')"
}

// routeKeys are the keys of one route.
type routeKeys struct {
	tag    string
	due    string
	leased string
	dead   string
	live   string
	hold   string
	held   string
	seq    string
	base   string
	fence  string
	moving string
	// moveLock is held by the move running off the route.
	moveLock string
}

// leaseSet is the key that records the ids leased with one token.
func (rk routeKeys) leaseSet(token string) string {
	return rk.base + "l:" + token
}

func keysFor(route string) routeKeys {
	tag := routeTag(route)
	base := routeKeyPrefix(tag) + route + ":"
	return routeKeys{
		tag:      tag,
		due:      base + kindDue,
		leased:   base + kindLeased,
		dead:     base + kindDead,
		live:     base + kindLive,
		hold:     base + kindHold,
		held:     base + kindHeld,
		seq:      base + kindSeq,
		base:     base,
		fence:    base + kindFence,
		moving:   base + kindMoving,
		moveLock: base + kindMoveLock,
	}
}

// routeBase is the prefix of every key of a route: the route's key
// prefix, the route and ":"; the key's kind follows it. The batched
// stats and summary scripts build a route's keys from it.
func routeBase(route string) string {
	return routeKeyPrefix(routeTag(route)) + route + ":"
}

// routeKeyPrefix is the prefix of the route keys of a tag; the route name
// and the key's kind follow it.
func routeKeyPrefix(tag string) string {
	return keyPrefix + "{" + tag + "}:r:"
}

// msgKeyPrefix is the prefix of the message keys of a tag; scripts append
// the id to it.
func msgKeyPrefix(tag string) string {
	return keyPrefix + "{" + tag + "}:m:"
}

func msgKey(id string) string {
	return msgKeyPrefix(id[:tagLen]) + id
}

// onRoute reports whether id is the id of a message stored on route:
// whether it carries the route's tag.
func onRoute(id, route string) bool {
	return len(id) >= tagLen && id[:tagLen] == routeTag(route)
}

// withdrawnKey marks the id of a message whose Enqueue failed as
// withdrawn (see Withdraw).
func withdrawnKey(id string) string {
	return keyPrefix + "{" + id[:tagLen] + "}:w:" + id
}

func idemKey(route, key string) string { return idemBase(route) + key }

// idemBase is the prefix of a route's idempotency keys, for scripts that
// find a message's key from its "idem" field.
func idemBase(route string) string {
	return keyPrefix + "{" + routeTag(route) + "}:i:" + route + ":"
}

// idemPrintKey holds the fingerprint of the submission that first used
// an idempotency key; apart from idemKey, so that the id stays a plain
// value for relays that do not know fingerprints.
func idemPrintKey(route, key string) string { return idemPrintBase(route) + key }

// idemPrintBase is the prefix of a route's idemPrintKeys.
func idemPrintBase(route string) string {
	return keyPrefix + "{" + routeTag(route) + "}:f:" + route + ":"
}

// tagLen is the length of a route tag, which is also the length of the
// prefix of a message id that names its tag.
const tagLen = 8

// ValidRoute reports whether name can be used as a route: 1 to 200 bytes
// of printable ASCII without spaces.
func ValidRoute(name string) bool {
	if name == "" || len(name) > 200 {
		return false
	}
	for i := 0; i < len(name); i++ {
		if name[i] <= ' ' || name[i] > '~' {
			return false
		}
	}
	return true
}

// ValidID reports whether id has the shape of a message id. It does not
// say whether the message exists.
func ValidID(id string) bool {
	if len(id) != tagLen+idRandLen {
		return false
	}
	for i := 0; i < tagLen; i++ {
		if !strings.ContainsRune("0123456789abcdef", rune(id[i])) {
			return false
		}
	}
	for i := tagLen; i < len(id); i++ {
		if !strings.ContainsRune(idAlphabet, rune(id[i])) {
			return false
		}
	}
	return true
}

// recipientsKey is the fleet-wide log of the recipients mailbox sent to
// (see Limiter.CountRecipients). Each mailbox is its own slot.
func recipientsKey(mailbox string) string {
	return keyPrefix + "rcpt:" + strings.ToLower(mailbox)
}

// authFailKey is the failure counter of one client IP ("ip") or SMTP user
// name ("user"). Each is its own slot on Redis Cluster. A user name is
// hashed: clients sometimes send the password in it, and Redis keys show
// in SCAN, MONITOR, the slow log and the append-only file.
func authFailKey(kind, name string) string {
	if kind == "user" {
		sum := sha256.Sum256([]byte(name))
		name = hex.EncodeToString(sum[:16])
	}
	return keyPrefix + "auth:" + kind + ":" + name
}

// authKnownKey is the set of client IPs that authenticated as an SMTP user
// lately, scored by the last time (see AuthThrottle). The user name is
// hashed as in authFailKey.
func authKnownKey(user string) string {
	sum := sha256.Sum256([]byte(user))
	return keyPrefix + "auth:known:" + hex.EncodeToString(sum[:16])
}

// limitKeys are the connection-slot and send-rate keys of a mailbox (see
// Limiter). Both share the mailbox's hash tag.
func limitKeys(mailbox string) (conns, sends string) {
	base := limitBase(mailbox)
	return base + "conns", base + "sends"
}

// mailboxWaitsKey holds the upstream's waits of a mailbox (see
// HoldMailbox), on the hash tag of its limitKeys: the send-rate script
// reads it.
func mailboxWaitsKey(mailbox string) string { return limitBase(mailbox) + "waits" }

func limitBase(mailbox string) string { return keyPrefix + "{lim:" + mailbox + "}:" }
