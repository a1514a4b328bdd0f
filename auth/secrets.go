package auth

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// An app registration may hold several client secrets at once, as
// Microsoft recommends for rotation: add the new secret, deploy it, delete
// the old one later. A credential given ClientSecretFiles loads them all,
// tries the one with the latest known expiry first, and when Entra says a
// secret expired (AADSTS7000222) or does not know it (AADSTS7000215), tries
// the next before reporting a failure. The one that got the last token is
// the one in use, tried first from then on.

// secretFile is one loaded client secret.
type secretFile struct {
	file    string
	value   string
	sum     [32]byte  // SHA-256 of the file's content
	written time.Time // the file's modification time; zero when unknown
	expires time.Time // from SecretExpires; zero when unknown
	// expired is when Entra first answered that this secret expired;
	// zero when it has not. Guarded by the credential's mu.
	expired time.Time
	// bridge marks the previous secret sent while the files' new one
	// may be propagating (see bridge.go).
	bridge bool
}

func (s *secretFile) fingerprint() string { return hex.EncodeToString(s.sum[:8]) }

// hint is what Graph shows of the secret: its first three characters.
func (s *secretFile) hint() string { return s.value[:min(3, len(s.value))] }

// SecretInfo describes one of a credential's client secrets, never the
// secret itself.
type SecretInfo struct {
	File      string    `json:"file"`
	Hint      string    `json:"hint"`
	ExpiresAt time.Time `json:"expires_at,omitzero"` // from the configuration; zero when unknown
	InUse     bool      `json:"in_use"`              // it got the last token
	// ExpiredAt is when Entra answered that the secret expired
	// (AADSTS7000222): zero until it does, and for the files read since.
	ExpiredAt time.Time `json:"expired_at,omitzero"`
}

// secretPaths expands ClientSecretFiles: a directory stands for the
// regular files in it whose names do not start with a dot (a Kubernetes
// Secret volume's keys), in name order.
func secretPaths(entries []string) ([]string, error) {
	var out []string
	for _, e := range entries {
		fi, err := os.Stat(e)
		if err != nil {
			if os.IsNotExist(err) {
				return nil, fmt.Errorf("client secret file %s does not exist", e)
			}
			return nil, fmt.Errorf("read client secret file: %w", err)
		}
		if !fi.IsDir() {
			out = append(out, e)
			continue
		}
		des, err := os.ReadDir(e)
		if err != nil {
			return nil, fmt.Errorf("read client secret directory: %w", err)
		}
		n := len(out)
		for _, de := range des {
			p := filepath.Join(e, de.Name())
			if strings.HasPrefix(de.Name(), ".") {
				continue
			}
			if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
				out = append(out, p)
			}
		}
		if len(out) == n {
			return nil, fmt.Errorf("client secret directory %s holds no secret file", e)
		}
	}
	return out, nil
}

// loadSecrets reads the client secrets of o, the one with the latest
// known expiry first, then those of unknown expiry in the order given.
func loadSecrets(o *CredentialOptions) (*material, error) {
	entries := o.ClientSecretFiles
	if o.ClientSecretFile != "" {
		entries = []string{o.ClientSecretFile}
	}
	paths, err := secretPaths(entries)
	if err != nil {
		return nil, err
	}
	m := &material{}
	h := sha256.New()
	for _, p := range paths {
		raw, err := readCredentialFile(p, "client secret")
		if err != nil {
			return nil, err
		}
		s := secretFile{file: p, value: string(bytes.TrimSpace(raw)), sum: sha256.Sum256(raw), expires: o.SecretExpires[filepath.Clean(p)]}
		if fi, err := os.Stat(p); err == nil {
			s.written = fi.ModTime()
		}
		m.secrets = append(m.secrets, s)
		h.Write([]byte(p))
		h.Write([]byte{0})
		h.Write(s.sum[:])
	}
	if len(m.secrets) == 1 {
		m.sum = m.secrets[0].sum // as the fingerprint of a single secret always was
	} else {
		copy(m.sum[:], h.Sum(nil))
	}
	slices.SortStableFunc(m.secrets, func(a, b secretFile) int {
		switch {
		case a.expires.IsZero() || b.expires.IsZero():
			// Known dates first.
			return boolOrder(a.expires.IsZero()) - boolOrder(b.expires.IsZero())
		default:
			return b.expires.Compare(a.expires)
		}
	})
	return m, nil
}

// boolOrder is 1 for true and 0 for false.
func boolOrder(b bool) int {
	if b {
		return 1
	}
	return 0
}

// SetSecretDates gives the end dates Graph lists for the app's secrets,
// by hint. A date from Graph comes before the configured one. When
// another secret than the one in use now has the latest date, it becomes
// the one tried first: should Entra refuse it, the next token request
// goes back to the others. Hints shared by two loaded secrets are
// ignored. It reports whether the secret tried first changed; when it
// did, the next Token call requests a token with that secret.
func (c *Credential) SetSecretDates(byHint map[string]time.Time) bool {
	c.mu.Lock()
	m := c.mat
	if len(m.secrets) < 2 {
		c.mu.Unlock()
		return false
	}
	seen := map[string]int{}
	for _, s := range m.secrets {
		seen[s.hint()]++
	}
	c.graphDates = map[string]time.Time{}
	for h, t := range byHint {
		if seen[h] == 1 {
			c.graphDates[h] = t
		}
	}
	changed := c.preferLatestLocked()
	c.mu.Unlock()
	c.preferred(changed)
	return changed
}

// preferLatestLocked makes the secret with the latest end date the one
// tried first, when its date is later than that of the one in use, and
// reports whether it did. c.mu is held.
func (c *Credential) preferLatestLocked() bool {
	m := c.mat
	if len(m.secrets) < 2 {
		return false
	}
	best := c.inUse
	for i := range m.secrets {
		if c.dateLocked(i).After(c.dateLocked(best)) && c.opts.Now().Sub(c.refusedAt[i]) > refusedMemory {
			best = i
		}
	}
	// best differs only when its date is later than the one in use.
	if best != c.inUse {
		c.inUse = best
		c.log.Info("client secret with the latest end date preferred", "file", m.secrets[best].file,
			"hint", m.secrets[best].hint(), "expires_at", c.dateLocked(best))
		return true
	}
	return false
}

// Retire says that the secret with this hint is to be removed at the
// time given (a rotation replaced it): its end date counts as that time
// at the latest, so that a secret ending later is tried first. It
// reports whether the secret tried first changed, as SetSecretDates.
func (c *Credential) Retire(hint string, at time.Time) bool {
	c.mu.Lock()
	if c.retired == nil {
		c.retired = map[string]time.Time{}
	}
	c.retired[hint] = at
	changed := c.preferLatestLocked()
	c.mu.Unlock()
	c.preferred(changed)
	return changed
}

// preferred drops the cached token and detaches a token request under
// way when changed, another secret being tried first now: the next
// Token call sends that one, rather than wait for an answer to the
// previous one.
func (c *Credential) preferred(changed bool) {
	if changed {
		c.cache.reset()
	}
}

// dateLocked is the end date of the i-th secret: Graph's, else the
// configured one, else zero; no later than a retirement (Retire). c.mu
// is held.
func (c *Credential) dateLocked(i int) time.Time {
	s := &c.mat.secrets[i]
	t, ok := c.graphDates[s.hint()]
	if !ok {
		t = s.expires
	}
	if r, ok := c.retired[s.hint()]; ok && (t.IsZero() || r.Before(t)) {
		t = r
	}
	return t
}

// Secrets describes the credential's client secrets, in the order they
// are tried; nil for a certificate or federated credential.
func (c *Credential) Secrets() []SecretInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []SecretInfo
	for i, s := range c.mat.secrets {
		out = append(out, SecretInfo{File: s.file, Hint: s.hint(), ExpiresAt: s.expires, InUse: i == c.inUse, ExpiredAt: s.expired})
	}
	return out
}

// secretInUse returns the secret tried first: the one that got the last
// token.
func (c *Credential) secretInUse() (*material, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mat, c.inUse
}

// refusedMemory is how long a secret Entra refused is not preferred for
// its later end date: long enough that the expiry monitor, told that the
// secret in use changed, does not make it first again at once; short
// enough that a new secret still propagating is tried again soon.
const refusedMemory = time.Hour

// refused records that Entra refused the i-th secret of m now. When it
// said the secret expired, the secret is stamped so, unless its file was
// written within the propagation window; refused reports whether that is
// news.
func (c *Credential) refused(m *material, i int, te *TokenError) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	// No bridge to a secret Entra refuses, also when the files changed
	// while the request was under way.
	c.forgetLocked(m.secrets[i].value)
	if c.mat != m {
		return false
	}
	now := c.opts.Now()
	if c.refusedAt == nil {
		c.refusedAt = map[int]time.Time{}
	}
	c.refusedAt[i] = now
	written := m.secrets[i].written
	propagating := c.opts.PropagationWindow > 0 && !written.IsZero() && now.Sub(written) < c.opts.PropagationWindow
	first := te.SecretExpired() && m.secrets[i].expired.IsZero() && !propagating
	if first {
		m.secrets[i].expired = now
	}
	return first
}

// MarkExpired records that Entra said, at at, that the secret whose
// fingerprint is fingerprint expired, as another replica of the fleet was
// told: when it is the secret in use here and not marked yet, it is
// marked as refused would have, and OnSecretExpired is called. It reports
// whether it marked it.
func (c *Credential) MarkExpired(fingerprint string, at time.Time) bool {
	c.mu.Lock()
	m, i := c.mat, c.inUse
	news := i < len(m.secrets) && m.secrets[i].fingerprint() == fingerprint && m.secrets[i].expired.IsZero()
	if news {
		m.secrets[i].expired = at
	}
	c.mu.Unlock()
	c.toldExpired(news)
	return news
}

// worked clears the expired mark of the i-th secret of m, which just got a
// token: Entra does not issue one for an expired secret. OnSecretInUse is
// called when there was a mark.
func (c *Credential) worked(m *material, i int) {
	c.mu.Lock()
	cleared := c.mat == m && !m.secrets[i].expired.IsZero()
	if cleared {
		m.secrets[i].expired = time.Time{}
	}
	c.mu.Unlock()
	if cleared && c.opts.OnSecretInUse != nil {
		c.opts.OnSecretInUse(c.opts.Name)
	}
}

// toldExpired calls OnSecretExpired when news is true: once no secret got
// a token, not while another may still work (that one becomes the one in
// use, and the credential has not expired).
func (c *Credential) toldExpired(news bool) {
	if news && c.opts.OnSecretExpired != nil {
		c.opts.OnSecretExpired(c.opts.Name)
	}
}

// useSecret makes the i-th secret of m the one in use in place of the
// first, which a token request tried first and Entra refused. It does
// not when the files were reloaded meanwhile, or another secret was
// preferred (SetSecretDates, Retire) while the request was under way.
func (c *Credential) useSecret(m *material, first, i int) {
	c.mu.Lock()
	changed := c.mat == m && c.inUse == first && first != i
	if changed {
		c.inUse = i
	}
	c.mu.Unlock()
	if !changed {
		return
	}
	c.log.Info("client secret in use changed", "file", m.secrets[i].file, "hint", m.secrets[i].hint())
	if c.opts.OnSecretInUse != nil {
		c.opts.OnSecretInUse(c.opts.Name)
	}
}
