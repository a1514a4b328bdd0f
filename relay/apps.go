package relay

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/crypto/bcrypt"

	"holdfast/queue"
)

// apps authenticates applications and applies their sender rules. It is
// safe for concurrent use.
type apps struct {
	byUser  map[string]*App
	byToken map[string]*App // by the token's SHA-256, hex

	// verified caches successful password checks, keyed by the SHA-256 of
	// user and password, so that bcrypt's cost is paid once per password,
	// not once per SMTP session. Only successes are cached.
	mu       sync.Mutex
	verified map[[32]byte]*App
	checking map[[32]byte]*passwordCheck // bcrypt checks in progress

	// pool runs the bcrypt checks; nil runs them at once.
	pool *bcryptPool
	// bcryptRuns counts the bcrypt checks run.
	bcryptRuns atomic.Int64
}

func newApps(list []App) *apps {
	a := &apps{byUser: map[string]*App{}, byToken: map[string]*App{}, verified: map[[32]byte]*App{}, checking: map[[32]byte]*passwordCheck{}}
	for i := range list {
		app := &list[i]
		app.rules = parseSenderRules(app.Senders)
		if app.PasswordHash != "" {
			a.byUser[app.Username] = app
		}
		if app.TokenSHA256 != "" {
			a.byToken[app.TokenSHA256] = app
		}
	}
	return a
}

// checkPassword returns the application whose SMTP user name and password
// these are, or nil. A pair that passed before is answered from the cache.
// Otherwise, gate, when not nil, runs first and may refuse the check with
// its error, or say the client is known; then bcrypt runs on the pool
// (see bcryptPool), failing with errBcryptBusy when no worker came free
// in time. Checks of the same pair at the same time
// share one gate and one bcrypt run, so that a client opening many
// sessions at once is counted and charged once. uncount, when not nil, is
// called once gate has passed and the password matched, or no worker came
// free to check it: the attempt gate counted was no failure.
func (a *apps) checkPassword(user, password string, gate func() (known bool, err error), uncount func()) (*App, error) {
	key := sha256.Sum256([]byte(user + "\x00" + password))
	a.mu.Lock()
	if app := a.verified[key]; app != nil {
		a.mu.Unlock()
		return app, nil
	}
	if c := a.checking[key]; c != nil {
		a.mu.Unlock()
		<-c.done
		return c.app, c.err
	}
	c := &passwordCheck{done: make(chan struct{})}
	a.checking[key] = c
	a.mu.Unlock()

	c.app, c.err = a.bcryptCheck(user, password, gate)
	if uncount != nil && (c.app != nil || errors.Is(c.err, errBcryptBusy)) {
		uncount()
	}
	a.mu.Lock()
	delete(a.checking, key)
	if c.app != nil {
		a.verified[key] = c.app
	}
	a.mu.Unlock()
	close(c.done)
	return c.app, c.err
}

// passwordCheck is a bcrypt check in progress, which others of the same
// pair wait for.
type passwordCheck struct {
	done chan struct{}
	app  *App
	err  error
}

// bcryptCheck runs gate, then bcrypt on the pool.
func (a *apps) bcryptCheck(user, password string, gate func() (bool, error)) (*App, error) {
	known := false
	if gate != nil {
		var err error
		if known, err = gate(); err != nil {
			return nil, err
		}
	}
	app := a.byUser[user]
	hash := dummyHash()
	if app != nil {
		hash = []byte(app.PasswordHash)
	}
	// An unknown user costs the same time as a wrong password, so that
	// user names cannot be probed by timing.
	var match bool
	if err := a.pool.run(known, func() {
		a.bcryptRuns.Add(1)
		match = bcrypt.CompareHashAndPassword(hash, []byte(password)) == nil
	}); err != nil {
		return nil, err
	}
	if app == nil || !match {
		return nil, nil
	}
	return app, nil
}

// dummyHash is a bcrypt hash, at the default cost, that no password
// matches in practice.
var dummyHash = sync.OnceValue(func() []byte {
	h, err := bcrypt.GenerateFromPassword([]byte("no application has this password"), bcrypt.DefaultCost)
	if err != nil {
		panic("relay: bcrypt: " + err.Error())
	}
	return h
})

// checkToken returns the application whose HTTP bearer token this is, or
// nil. Tokens are looked up by their SHA-256: timing can tell how much of
// a guess's hash matches, which says nothing about any token.
func (a *apps) checkToken(token string) *App {
	if token == "" {
		return nil
	}
	sum := sha256.Sum256([]byte(token))
	return a.byToken[hex.EncodeToString(sum[:])]
}

// maySend reports whether the application may use from as its envelope
// sender. The null sender is refused: applications submit new mail, not
// bounces.
func (app *App) maySend(from string) bool {
	// Only ASCII letters are folded: Unicode case mapping would make
	// U+212A KELVIN SIGN a "k" and U+0130 a plain "i", so that an address
	// Exchange treats as another one would pass for an allowed sender.
	from = lowerASCII(from)
	at := strings.LastIndexByte(from, '@')
	if at < 0 {
		return false
	}
	rules := app.rules
	if rules == nil {
		rules = parseSenderRules(app.Senders)
	}
	for _, rule := range rules {
		if rule.domain != "" && from[at+1:] == rule.domain || rule.address != "" && from == rule.address {
			return true
		}
	}
	return false
}

// lowerASCII maps A-Z to a-z and leaves every other byte as it is.
func lowerASCII(s string) string {
	return strings.Map(func(r rune) rune {
		if 'A' <= r && r <= 'Z' {
			return r + ('a' - 'A')
		}
		return r
	}, s)
}

// senderRule is one entry of App.Senders: an address or a whole domain.
type senderRule struct {
	address string // lower case
	domain  string // lower case, without "@"
}

// parseSenderRules parses the valid entries of senders; Validate has
// refused the others.
func parseSenderRules(senders []string) []senderRule {
	rules := make([]senderRule, 0, len(senders))
	for _, s := range senders {
		if r, err := parseSenderRule(s); err == nil {
			rules = append(rules, r)
		}
	}
	return rules
}

func parseSenderRule(s string) (senderRule, error) {
	s = lowerASCII(strings.TrimSpace(s))
	if d, ok := strings.CutPrefix(s, "@"); ok {
		if _, err := parseAddress("x@" + d); err != nil {
			return senderRule{}, fmt.Errorf("%q is not an @domain", s)
		}
		return senderRule{domain: d}, nil
	}
	if _, err := parseAddress(s); err != nil {
		return senderRule{}, fmt.Errorf("%q is neither an address nor an @domain", s)
	}
	return senderRule{address: s}, nil
}

func validRoute(s string) bool { return queue.ValidRoute(s) }
