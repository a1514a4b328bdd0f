package auth

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"
)

// material is one loaded version of a credential's secret or certificate.
// It is immutable once loaded.
type material struct {
	secrets []secretFile        // client secret credential (see secrets.go)
	key     *rsa.PrivateKey     // certificate credential
	chain   []*x509.Certificate // leaf first
	leaf    *x509.Certificate
	x5t     string     // base64url SHA-256 of the leaf's DER
	fed     *federated // federated credential (see federated.go)
	sum     [32]byte   // SHA-256 over the files' contents; decides whether a reload changed anything
	// written is when the newest of its files was written (their
	// modification time, links followed): zero when not known.
	written time.Time
}

// loadMaterial reads the secret file, the certificate and key files, or
// the assertion file, and notes when they were written.
func loadMaterial(o *CredentialOptions) (*material, error) {
	m, err := readMaterial(o)
	if err != nil {
		return nil, err
	}
	for _, s := range m.secrets {
		if s.written.After(m.written) {
			m.written = s.written
		}
	}
	for _, f := range []string{o.ClientAssertionFile, o.CertFile, o.KeyFile} {
		if f == "" {
			continue
		}
		if fi, err := os.Stat(f); err == nil && fi.ModTime().After(m.written) {
			m.written = fi.ModTime()
		}
	}
	return m, nil
}

// readMaterial reads the files of loadMaterial.
func readMaterial(o *CredentialOptions) (*material, error) {
	if o.ClientAssertionFile != "" {
		return loadFederated(o.ClientAssertionFile)
	}
	if o.ClientSecretFile != "" || len(o.ClientSecretFiles) > 0 {
		return loadSecrets(o)
	}
	certPEM, err := readCredentialFile(o.CertFile, "certificate")
	if err != nil {
		return nil, err
	}
	keyPEM := certPEM
	if o.KeyFile != o.CertFile {
		if keyPEM, err = readCredentialFile(o.KeyFile, "private key"); err != nil {
			return nil, err
		}
	}
	m, err := parseCertKey(certPEM, keyPEM, o.CertFile, o.KeyFile)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	h.Write(certPEM)
	h.Write([]byte{0})
	h.Write(keyPEM)
	copy(m.sum[:], h.Sum(nil))
	return m, nil
}

func readCredentialFile(path, what string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s file %s does not exist", what, path)
		}
		return nil, fmt.Errorf("read %s file: %w", what, err)
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, fmt.Errorf("%s file %s is empty", what, path)
	}
	return raw, nil
}

// Reload re-reads the secret or certificate files now, e.g. on SIGHUP.
// When their content changed it drops the cached token (a fetch in flight
// is not stored), logs the change and calls OnChange. When the files are
// missing or bad it returns the error and keeps the loaded credential.
//
// ExpiresAtFile is read first, then the other files; when only it
// changed, OnExpiresAtFile is called instead of OnChange.
func (c *Credential) Reload() (changed bool, err error) {
	d := readDatedFile(c.opts.ExpiresAtFile)
	m, err := loadMaterial(&c.opts)
	if err != nil {
		return false, fmt.Errorf("credential %s: reload: %w", c.opts.Name, err)
	}
	c.mu.Lock()
	changed = m.sum != c.mat.sum
	dateChanged := !d.same(c.dated)
	c.dated = d
	if changed {
		c.mat, c.inUse, c.refusedAt = m, 0, nil
		_ = c.preferLatestLocked()
		c.keepPreviousLocked()
	}
	if dateChanged {
		c.datedFor = c.mat.usedFingerprint(c.inUse)
	}
	c.mu.Unlock()
	if !changed {
		if dateChanged {
			c.log.Info("expires_at_file changed", "file", c.opts.ExpiresAtFile, "expires_at", d.at)
			if c.opts.OnExpiresAtFile != nil {
				c.opts.OnExpiresAtFile(c.opts.Name)
			}
		}
		return false, nil
	}
	c.cache.reset()
	switch {
	case m.fed != nil:
		c.log.Info("client assertion reloaded", "file", m.fed.file, "exp", m.fed.exp)
	case m.leaf != nil:
		c.log.Info("certificate reloaded", "not_after", m.leaf.NotAfter, "x5t", m.x5t)
	default:
		c.log.Info("client secret reloaded")
	}
	if c.opts.OnChange != nil {
		c.opts.OnChange(c.opts.Name)
	}
	return true, nil
}

// Watch calls Reload every ReloadInterval until ctx ends. The files are read
// and hashed on every poll, so a change is seen even when it keeps the size
// and modification time, and a symlink swap (Kubernetes secret volumes) is
// followed. A failing reload is logged once per distinct error and the
// loaded credential stays in use.
func (c *Credential) Watch(ctx context.Context) {
	t := time.NewTicker(c.opts.ReloadInterval)
	defer t.Stop()
	var lastErr string
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		_, err := c.Reload()
		switch {
		case err != nil && err.Error() != lastErr:
			lastErr = err.Error()
			c.log.Warn("credential reload failed, keeping the loaded one", "err", err)
		case err == nil && lastErr != "":
			lastErr = ""
			c.log.Info("credential files readable again")
		}
	}
}
