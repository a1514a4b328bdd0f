package sim

import (
	crand "crypto/rand"
	"encoding/binary"
	"math/rand/v2"
	"time"

	"github.com/emersion/go-smtp"
)

// Entra issues app-only and delegated access tokens with a lifetime drawn
// at random from 60 to 90 minutes, so that a fleet does not renew at once.
const (
	minTokenLifetime = 60 * time.Minute
	maxTokenLifetime = 90 * time.Minute
)

// errTokenExpiringSoon is the high volume endpoint's refusal of a token
// close to its expiry.
var errTokenExpiringSoon = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 127}, Message: "Invalid XOAUTH2 auth data - Token will expire soon"}

// lifetimeRand draws token lifetimes; it is used with Sim.mu held.
type lifetimeRand struct{ r *rand.Rand }

func newLifetimeRand(seed uint64) *lifetimeRand {
	if seed == 0 {
		var b [8]byte
		_, _ = crand.Read(b[:])
		seed = binary.LittleEndian.Uint64(b[:])
	}
	return &lifetimeRand{rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// tokenLifetime returns the lifetime of the next access token, whole
// seconds as expires_in carries it; s.mu is held.
func (s *Sim) tokenLifetime() time.Duration {
	if s.lifetime > 0 {
		return s.lifetime
	}
	span := int64((maxTokenLifetime - minTokenLifetime) / time.Second)
	return minTokenLifetime + time.Duration(s.rng.r.Int64N(span+1))*time.Second
}

// SetTokenLifetime sets Config.TokenLifetime for the tokens issued from
// now on; 0 draws Entra's lifetimes again.
func (s *Sim) SetTokenLifetime(d time.Duration) {
	s.mu.Lock()
	s.lifetime = max(d, 0)
	s.mu.Unlock()
}

// SetExpiringTokenMargin sets Config.ExpiringTokenMargin; 0 turns the
// refusal off.
func (s *Sim) SetExpiringTokenMargin(d time.Duration) {
	s.mu.Lock()
	s.margin = d
	s.mu.Unlock()
}

// expiringSoon reports whether a token expiring at exp (unix seconds) is
// within the margin; s.mu is held.
func (s *Sim) expiringSoon(exp int64) bool {
	return s.margin > 0 && time.Unix(exp, 0).Sub(s.now()) <= s.margin
}
