package relay

import (
	"fmt"
	"time"
)

// ExpiryOptions configure the expiry monitor of the "exchange" sender,
// which reads when each credential's secret or certificate expires.
type ExpiryOptions struct {
	// CheckInterval is how often every credential's expiry is read again
	// (expires_at, the certificate's NotAfter, and Microsoft Graph). It is
	// also read at start and whenever a secret or certificate file
	// changes. Default 12h; at least 1s.
	CheckInterval Duration `yaml:"check_interval"`

	// rotateEvery, for tests, replaces rotateEvery: how often a relay
	// looks for a secret to rotate or an old one to remove.
	rotateEvery time.Duration
	// rotations, for tests, wraps where the relay records its rotations
	// (the queue), to fail a write.
	rotations func(rotationStore) rotationStore
}

// defaultExpiryCheckInterval is ExpiryOptions.CheckInterval's default.
const defaultExpiryCheckInterval = 12 * time.Hour

func (o ExpiryOptions) validate() error {
	if o.CheckInterval < Duration(time.Second) {
		return fmt.Errorf("expiry.check_interval: must be at least 1s, not %s", o.CheckInterval.D())
	}
	return nil
}
