package relay

import (
	"strings"
	"time"

	"holdfast/relay/o365"
)

// Entra takes a while to propagate a new client secret: for seconds,
// sometimes minutes, after it is created a token request with it is
// refused with AADSTS7000215, as for a secret it does not know, or at
// times AADSTS7000222, as for an expired one. A probe
// that a rotation asked for must not take that for a verdict: the open
// interval would double, and the mail would wait minutes after the
// secret began to work. So within the propagation window after this
// replica's secret file changed, a probe refused so is retried by this
// replica on a short schedule of its own, and the open interval stays
// as it was.

// propagationRetry bounds the delay of a retried probe.
const (
	propagationRetryMin = time.Second
	propagationRetryMax = 30 * time.Second
)

// fileChanged records that this replica's files of credential cred
// changed now.
func (g *gate) fileChanged(cred string) { g.fileChangedAt(cred, time.Now()) }

// fileChangedAt records that this replica's files of credential cred
// changed at t, unless a later change is recorded.
func (g *gate) fileChangedAt(cred string, t time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.changed == nil {
		g.changed = map[string]time.Time{}
	}
	if t.After(g.changed[cred]) {
		g.changed[cred] = t
	}
}

// propagating reports whether the failed probe of breaker name is to be
// retried as a secret still propagating, and after how long: a tenth
// of the time since the file changed, from 1 s to 30 s. The wait after
// the secret begins to work is so at most about a tenth of the time
// Entra took, plus a second.
func (g *gate) propagating(name string, perr error) (time.Duration, bool) {
	cred, ok := strings.CutPrefix(name, "cred:")
	if !ok || g.propagationWindow <= 0 || !o365.SecretMayBePropagating(perr) {
		return 0, false
	}
	g.mu.Lock()
	at, ok := g.changed[cred]
	g.mu.Unlock()
	since := time.Since(at)
	if !ok || since > g.propagationWindow {
		return 0, false
	}
	return min(max(since/10, propagationRetryMin), propagationRetryMax), true
}
