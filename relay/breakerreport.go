package relay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"holdfast/auth"
	"holdfast/breaker"
	"holdfast/queue"
)

// BreakerStatus is one auth circuit breaker as operators see it, in
// GET /v1/breakers and "holdfast breaker status". It never holds a secret
// or a token.
type BreakerStatus struct {
	Name string `json:"name"`
	// Kind is "credential" or "mailbox".
	Kind  string `json:"kind"`
	State string `json:"state"`
	// Reason is the upstream's code and text that opened or last kept it
	// open, e.g. "invalid_client AADSTS7000222: The provided client
	// secret keys ... are expired".
	Reason   string    `json:"reason,omitempty"`
	Since    time.Time `json:"since,omitzero"`
	Failures int64     `json:"consecutive_failures"`
	// Generation grows by one on every transition, fleet-wide.
	Generation int64     `json:"generation"`
	LastProbe  time.Time `json:"last_probe,omitzero"`
	// NextProbe and ProbeInterval are set while the breaker is open.
	NextProbe     time.Time `json:"next_probe,omitzero"`
	ProbeInterval string    `json:"probe_interval,omitempty"`
	// HeldMessages wait on this breaker: the queued mail of its routes
	// while it is open. OldestHeld is the submit time of the oldest.
	HeldMessages      int64     `json:"held_messages"`
	OldestHeld        time.Time `json:"oldest_held,omitzero"`
	OldestHeldSeconds int64     `json:"oldest_held_seconds"`
	// Routes are the queue routes that depend on the breaker.
	Routes []string `json:"routes"`
	// Credential names a credential breaker's app registration, and
	// CredentialExpires is when its secret or certificate expires, when
	// known: from a relay, the soonest date its expiry monitor knows
	// (expires_at, the certificate's NotAfter, Graph, Entra); from the
	// command line, the soonest that the relays' monitors recorded and
	// that still counts (queue.CredentialExpiry), or else expires_at or
	// else the certificate's NotAfter.
	Credential        string    `json:"credential,omitempty"`
	CredentialExpires time.Time `json:"credential_expires_at,omitzero"`
	// StaleReplicas are the relays (by Options.Replica) whose secret or
	// certificate file is older than the one that works: they leave the
	// credential's mail to the others until their file changes.
	StaleReplicas []string `json:"stale_replicas,omitempty"`
	// HeldByOperator: an operator holds the breaker open (holdfast
	// breaker hold); no relay probes it, and only a reset closes it.
	HeldByOperator bool `json:"held_by_operator,omitempty"`
}

// BreakerReporter describes the fleet's breakers with the mail they hold.
type BreakerReporter struct {
	set    *breaker.Set
	q      *queue.Queue
	creds  map[string]bool
	expiry func(ctx context.Context, cred string) time.Time
	now    func() time.Time
}

// NewBreakerReporter returns a reporter over the breakers and queue of the
// configuration o, for the command line. A credential's expiry is the
// relays' record of it (queue.SoonestCredentialExpiry); without one, it
// is the configured date, or the certificate's, read from the files
// once, here.
func NewBreakerReporter(set *breaker.Set, q *queue.Queue, o Options) *BreakerReporter {
	exp := map[string]time.Time{}
	for _, c := range o.Credentials {
		exp[c.Name] = configuredExpiry(c, func() (time.Time, bool) {
			ac, err := auth.NewCredential(c.authOptions(outlookScope, nil, nil))
			if err != nil {
				return time.Time{}, false
			}
			return ac.Expiry()
		})
	}
	r := newBreakerReporter(set, q, o, nil)
	r.expiry = func(ctx context.Context, cred string) time.Time {
		if e, ok, err := q.SoonestCredentialExpiry(ctx, cred, r.now()); err == nil && ok {
			return e.ExpiresAt
		}
		return exp[cred]
	}
	return r
}

func newBreakerReporter(set *breaker.Set, q *queue.Queue, o Options, expiry func(context.Context, string) time.Time) *BreakerReporter {
	r := &BreakerReporter{set: set, q: q, creds: map[string]bool{}, expiry: expiry, now: time.Now}
	for _, c := range o.Credentials {
		r.creds[c.Name] = true
	}
	return r
}

// configuredExpiry is the credential's expires_at when set, otherwise
// what cert reports (a certificate's NotAfter).
func configuredExpiry(c Credential, cert func() (time.Time, bool)) time.Time {
	if t, err := c.Expiry(); err == nil && !t.IsZero() {
		return t
	}
	if c.CertFile == "" {
		return time.Time{}
	}
	if t, ok := cert(); ok {
		return t.UTC()
	}
	return time.Time{}
}

// ErrNoBreaker is returned for a name that is neither a configured
// credential's breaker nor one the fleet has recorded.
var ErrNoBreaker = errors.New("no such breaker")

// Known returns the breaker name as the relays use it (a mailbox's in
// lower case) and whether it may be tripped, reset or probed: the breaker
// of a configured credential, or of a mailbox address.
func (r *BreakerReporter) Known(name string) (string, bool) {
	if c, ok := strings.CutPrefix(name, "cred:"); ok {
		return name, r.creds[c]
	}
	if m, ok := strings.CutPrefix(name, "mbx:"); ok && validAddress(m) {
		return mailboxBreaker(m), true
	}
	return name, false
}

// List describes every breaker: those the fleet has recorded and one per
// configured credential, sorted by name.
func (r *BreakerReporter) List(ctx context.Context) ([]BreakerStatus, error) {
	list, err := r.set.List(ctx)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, st := range list {
		seen[st.Name] = true
	}
	for c := range r.creds {
		if name := credentialBreaker(c); !seen[name] {
			// No failure recorded yet: closed.
			list = append(list, breaker.Status{Name: name})
		}
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	stats, err := r.q.Stats(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]BreakerStatus, len(list))
	for i, st := range list {
		out[i] = r.describe(ctx, st, stats)
	}
	return out, nil
}

// Get describes one breaker, or returns ErrNoBreaker: a name that is
// neither Known nor recorded by the fleet. A known breaker with no record
// yet is closed.
func (r *BreakerReporter) Get(ctx context.Context, name string) (BreakerStatus, error) {
	name, known := r.Known(name)
	if !known {
		// Rare: a name an operator tripped by hand, say. Only the fleet's
		// records can tell.
		list, err := r.set.List(ctx)
		if err != nil {
			return BreakerStatus{}, err
		}
		if !slices.ContainsFunc(list, func(st breaker.Status) bool { return st.Name == name }) {
			return BreakerStatus{}, fmt.Errorf("breaker %q: %w", name, ErrNoBreaker)
		}
	}
	st, err := r.set.Status(ctx, name)
	if err != nil {
		return BreakerStatus{}, err
	}
	stats, err := r.q.Stats(ctx)
	if err != nil {
		return BreakerStatus{}, err
	}
	return r.describe(ctx, st, stats), nil
}

func (r *BreakerReporter) describe(ctx context.Context, st breaker.Status, stats queue.Stats) BreakerStatus {
	b := BreakerStatus{
		Name:          st.Name,
		Kind:          "mailbox",
		State:         st.State.String(),
		Reason:        st.Reason,
		Since:         st.Since,
		Failures:      st.Failures,
		Generation:    st.Generation,
		LastProbe:     st.LastProbe,
		StaleReplicas: st.StaleReplicas,
		Routes:        []string{},
	}
	if c, ok := strings.CutPrefix(st.Name, "cred:"); ok {
		b.Kind, b.Credential = "credential", c
		b.CredentialExpires = r.expiry(ctx, c)
	}
	switch {
	case st.State == breaker.Open && st.Held:
		b.HeldByOperator = true
	case st.State == breaker.Open:
		b.NextProbe = st.NextProbe
		if st.Interval > 0 {
			b.ProbeInterval = st.Interval.String()
		}
	}
	for _, rs := range stats.Routes {
		cred, mbx, ok := routeBreakers(rs.Route)
		if !ok || (cred != st.Name && mbx != st.Name) {
			continue
		}
		b.Routes = append(b.Routes, rs.Route)
		if st.State != breaker.Open || rs.HoldReason == "" {
			continue
		}
		b.HeldMessages += rs.Held
		if !rs.Oldest.IsZero() && (b.OldestHeld.IsZero() || rs.Oldest.Before(b.OldestHeld)) {
			b.OldestHeld = rs.Oldest
		}
	}
	if !b.OldestHeld.IsZero() {
		b.OldestHeldSeconds = int64(r.now().Sub(b.OldestHeld) / time.Second)
	}
	return b
}
