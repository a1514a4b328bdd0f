package o365

import (
	"context"
	"crypto/sha256"
	"sync"
	"time"

	"holdfast/relay/upstream"
)

// Sessions opened together hold the same access token. If Exchange has
// stopped honouring it, each would AUTH with it and fail, and a burst of
// sessions would put many more refusals before Exchange than the
// breaker's threshold. So the AUTHs of one token take turns until one of
// them has a verdict: while an AUTH with a token is in flight, the other
// sessions holding it wait for it. When it is refused, its session
// retries with a new token as before, still holding the turn, and the
// waiting sessions follow the outcome: a new token that works is used by
// all; a refused one is refused once, and the others wait as throttled,
// spending no attempt and counting no failure, while that one refusal
// reaches the breaker.
//
// Exchange refuses an app-only token at a mailbox the app has no
// permission on as it refuses a bad token (535 5.7.3), so a refusal is a
// verdict on the token at its mailbox only. A session for another
// mailbox still waits for a verdict in flight, but once it is a refusal
// the session does not wait on it as throttled when its AUTHs are
// bounded otherwise: it goes ahead with a fleet-wide place taken
// (Route.Turn, AuthTurn.Placed), which the breaker gives only while the
// refusals since the last success and the AUTHs in doubt stay below its
// threshold; or it is a breaker's probe, one session of its own.

// refusedMemory is how long a refused token is remembered, so that a
// session that took it from the cache before it was dropped does not try
// it again.
const refusedMemory = time.Minute

// flightWait is when a session whose token was refused in another
// session's turn is due again: the breaker has had that refusal by then.
const flightWait = time.Second

// authFlights are the AUTH turns, by token.
type authFlights struct {
	mu sync.Mutex
	m  map[[sha256.Size]byte]*flight
}

// flight is one AUTH turn of a token.
type flight struct {
	done    chan struct{} // closed when the verdict is in
	at      time.Time     // when it ended
	mailbox string        // the mailbox the turn's AUTHs were at
	// refused: Exchange refused the token, and err is the outcome of the
	// retry with a new one (nil: the new token works). Otherwise the
	// token authenticated (err nil) or the turn ended without a verdict.
	refused bool
	err     error
}

// enter returns the token's turn for an AUTH at mailbox: lead is true
// when the caller takes it and must end it, false when the caller is to
// wait on f.done (f may have ended already: a refused token is
// remembered for refusedMemory).
func (a *authFlights) enter(token, mailbox string) (f *flight, lead bool) {
	k := sha256.Sum256([]byte(token))
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil {
		a.m = map[[sha256.Size]byte]*flight{}
	}
	if f := a.m[k]; f != nil && (f.at.IsZero() || time.Since(f.at) <= refusedMemory) {
		return f, false
	}
	for key, old := range a.m {
		if !old.at.IsZero() && time.Since(old.at) > refusedMemory {
			delete(a.m, key)
		}
	}
	f = &flight{done: make(chan struct{}), mailbox: mailbox}
	a.m[k] = f
	return f, true
}

// end gives the verdict of a turn. A refused token is remembered; any
// other is forgotten, so that later sessions AUTH without waiting unless
// another AUTH of it is in flight.
func (a *authFlights) end(token string, f *flight, refused bool, err error) {
	k := sha256.Sum256([]byte(token))
	a.mu.Lock()
	f.refused, f.err, f.at = refused, err, time.Now()
	if !refused {
		delete(a.m, k)
	}
	a.mu.Unlock()
	close(f.done)
}

// wait waits for a turn's verdict.
func (f *flight) wait(ctx context.Context) error {
	select {
	case <-f.done:
		return nil
	case <-ctx.Done():
		return &upstream.Error{Class: upstream.Transient, Text: "AUTH interrupted", Err: ctx.Err()}
	}
}

// refusedElsewhere is what a session gets when its token, and the new one
// fetched in another session's turn, were refused.
func refusedElsewhere(err error) error {
	return &upstream.Error{Class: upstream.Throttled, RetryAfter: flightWait,
		Text: "another session's AUTH with this credential's token was just refused; waiting for the breaker", Err: err}
}
