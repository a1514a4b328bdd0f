package auth

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"time"
)

// A secret's end date may be kept beside it, in ExpiresAtFile: a second
// key of the Kubernetes Secret that holds the secret, rewritten with it
// at each rotation. The date file is read before the secret at each
// reload: the kubelet swaps a Secret volume's files at once, so a read
// may pair the old date with the new secret for a moment (the next
// reload sees the new date), never a new date with the old secret.

// datedFile is one reading of ExpiresAtFile.
type datedFile struct {
	raw string    // the file's content, trimmed; "" when the file is missing
	at  time.Time // the date read; zero when none
	err error     // why the content is not a date
}

// same reports whether o read the same as d.
func (d datedFile) same(o datedFile) bool { return d.raw == o.raw && errText(d.err) == errText(o.err) }

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// readDatedFile reads ExpiresAtFile: an RFC 3339 time or a YYYY-MM-DD
// date (midnight UTC). A missing file is no date, not an error.
func readDatedFile(path string) datedFile {
	if path == "" {
		return datedFile{}
	}
	raw, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return datedFile{}
	case err != nil:
		return datedFile{err: fmt.Errorf("read expires_at_file: %w", err)}
	}
	v := string(bytes.TrimSpace(raw))
	d := datedFile{raw: v}
	if v == "" {
		return d
	}
	for _, layout := range []string{time.RFC3339, time.DateOnly} {
		if t, err := time.Parse(layout, v); err == nil {
			d.at = t.UTC()
			return d
		}
	}
	// The content is not printed: the option may name the secret's file.
	d.err = fmt.Errorf("expires_at_file %s: its content (%d bytes, not printed) is neither RFC 3339 nor YYYY-MM-DD: write the end date alone, e.g. 2027-08-14", path, len(v))
	return d
}

// FileExpiry returns the fingerprint of the secret or certificate loaded
// now, as it is used (see usedFingerprint), and the date ExpiresAtFile
// held when it was read with it: zero when the option is not set, the
// file is missing or empty; err when its content is not a date.
func (c *Credential) FileExpiry() (fingerprint string, at time.Time, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mat.usedFingerprint(c.inUse), c.dated.at, c.dated.err
}

// DateStatedFor reports whether ExpiresAtFile was written for the secret
// or certificate of fingerprint (as FileExpiry returns it): its content
// changed at a reload that loaded that one, alone or with it. A date
// file left as it was while the secret changed was not; nor is one
// read at start, whose secret may have changed since it was written.
// A file written again with the same content is no change.
func (c *Credential) DateStatedFor(fingerprint string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fingerprint != "" && c.datedFor == fingerprint
}

// usedFingerprint identifies the secret or certificate as the credential
// uses it: 16 hex digits of the SHA-256 of the secret in use without the
// whitespace around it in its file, or of the certificate (DER), never
// the secret itself; other material by its files. The same secret or
// certificate written again with other whitespace keeps it, where the
// fingerprint of the files (Fingerprint) changes.
func (m *material) usedFingerprint(inUse int) string {
	var sum [32]byte
	switch {
	case len(m.secrets) > 0:
		sum = sha256.Sum256([]byte(m.secrets[inUse].value))
	case m.leaf != nil:
		sum = sha256.Sum256(m.leaf.Raw)
	default:
		return m.fingerprint()
	}
	return hex.EncodeToString(sum[:8])
}
