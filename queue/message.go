package queue

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"strings"
	"time"
)

// State is where a message is in its lifecycle, as shown to users.
type State string

// The states of a message.
const (
	Ready     State = "queued"    // due now, waiting for a worker
	Scheduled State = "scheduled" // waiting for its next attempt
	Leased    State = "sending"   // leased by a worker
	Held      State = "held"      // its route is held
	Delivered State = "delivered" // accepted upstream
	Dead      State = "dead"      // dead-lettered
	// Moving is a message taken out of its route by a move to another
	// route that has not finished (see Move).
	Moving State = "moving"
)

// States lists the states a message can be listed by.
var States = []State{Ready, Scheduled, Leased, Held, Dead, Moving}

// ParseState parses a state name; "ready" and "leased" are accepted as
// aliases of "queued" and "sending".
func ParseState(s string) (State, bool) {
	switch strings.ToLower(s) {
	case "queued", "ready":
		return Ready, true
	case "scheduled":
		return Scheduled, true
	case "sending", "leased":
		return Leased, true
	case "held":
		return Held, true
	case "delivered":
		return Delivered, true
	case "dead":
		return Dead, true
	case "moving":
		return Moving, true
	}
	return "", false
}

// Submission is a message to enqueue.
type Submission struct {
	Route string   // the route that will deliver it
	App   string   // the application that submitted it
	From  string   // envelope sender; empty for the null sender
	To    []string // envelope recipients, at least one
	Body  []byte   // the raw RFC 5322 message
	// IdempotencyKey, when set, makes a repeated enqueue with the same key
	// on the same route return the first message's id instead of storing a
	// second copy, for as long as Options.IdempotencyTTL.
	IdempotencyKey string
	// Fingerprint, when set with IdempotencyKey, identifies what the
	// submitter sent under the key (any string without a line break,
	// such as a hash of the envelope). A later enqueue
	// with the same key and another fingerprint stores nothing and
	// fails with ErrKeyReused.
	Fingerprint string
}

// Message is a stored message. Body is only filled in by Lease.
type Message struct {
	ID             string
	Route          string
	App            string
	From           string
	To             []string
	Body           []byte
	Size           int
	State          State
	Submitted      time.Time
	Expires        time.Time // end of its queue lifetime
	Due            time.Time // next attempt; zero unless ready, scheduled or held
	Attempts       int       // delivery attempts spent
	LastError      string    // last upstream reply or error
	Updated        time.Time
	Done           time.Time // when delivered or dead-lettered
	Reason         string    // why it was dead-lettered
	HoldReason     string    // why its route is held
	LeaseEnd       time.Time // lease deadline while leased
	IdempotencyKey string
	// KeptUntil is when the record goes (a delivered message's, after
	// DeliveredRetention); zero while it is kept until settled or
	// deleted. Set by Get.
	KeptUntil time.Time
}

// Lease is a worker's claim on a message. Only the holder of the lease can
// settle the message, and only until the lease expires.
type Lease struct {
	*Message
	token     string
	ambiguous bool
}

// SetAmbiguous records that the attempt under this lease may have
// delivered the message though it failed (see MarkAmbiguous). Retry,
// Defer and Fail then set the message's ambiguity flag in the same
// script that ends the lease, so that the flag is not lost when a
// separate MarkAmbiguous could not reach Redis: a settle is tried again
// until it is recorded.
func (l *Lease) SetAmbiguous() { l.ambiguous = true }

// idAlphabet is Crockford's base32 in lower case: no i, l, o or u.
const idAlphabet = "0123456789abcdefghjkmnpqrstvwxyz"

// idRandLen is the length of the part of an id after the route tag: 48 bits
// of milliseconds and 48 random bits, 20 base32 digits, so ids of one
// route sort by creation time.
const idRandLen = 20

func newID(tag string, now time.Time) string {
	var b [12]byte
	binary.BigEndian.PutUint64(b[0:8], uint64(now.UnixMilli())<<16)
	if _, err := rand.Read(b[6:]); err != nil {
		panic("queue: crypto/rand failed: " + err.Error())
	}
	var out [tagLen + idRandLen]byte
	copy(out[:], tag)
	// 96 bits as 20 five-bit digits, most significant first (the last
	// digit carries 1 bit of padding).
	var acc uint64
	bits := 0
	j := tagLen
	for _, c := range b {
		acc = acc<<8 | uint64(c)
		bits += 8
		for bits >= 5 {
			bits -= 5
			out[j] = idAlphabet[(acc>>uint(bits))&31]
			j++
		}
	}
	if bits > 0 {
		out[j] = idAlphabet[(acc<<uint(5-bits))&31]
	}
	return string(out[:])
}

func newToken() string {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("queue: crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b[:])
}

// followToken is the token of the lease that AckNext takes with the ack
// of l: the same for every call for l, so that a call repeated after a
// lost reply finds what the first one leased. A token can lease several
// messages, so the acked message's id is part of it.
func followToken(l *Lease) string {
	sum := sha256.Sum256([]byte("next:" + l.token + ":" + l.ID))
	return hex.EncodeToString(sum[:12])
}

func fromMillis(ms int64) time.Time {
	if ms <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}
