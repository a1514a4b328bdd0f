package auth

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestExpiresAtFile: the date beside the secret is read with it and
// follows its changes; a change of the date alone calls OnExpiresAtFile,
// not OnChange; a file that is not a date gives none and an error, and
// does not stop the secret from being reloaded; a missing file is no
// date.
func TestExpiresAtFile(t *testing.T) {
	f := newFakeEntra(t, secretHandler(t, 3599))
	dir := t.TempDir()
	path := writeFile(t, dir, "secret", secretV1)
	dated := filepath.Join(dir, "expires_at")
	var changed, datedCalls int
	c := secretCredential(t, f, path, func(o *CredentialOptions) {
		o.ExpiresAtFile = dated
		o.OnChange = func(string) { changed++ }
		o.OnExpiresAtFile = func(string) { datedCalls++ }
	})
	fp1, at, err := c.FileExpiry()
	if err != nil || !at.IsZero() || fp1 == "" {
		t.Fatalf("no file: %s %s %v", fp1, at, err)
	}

	replaceFile(t, dated, "2027-08-14\n")
	if ch, err := c.Reload(); err != nil || ch {
		t.Fatalf("Reload after the date changed = %v, %v; want false (the secret did not change), nil", ch, err)
	}
	if _, at, err = c.FileExpiry(); err != nil || !at.Equal(time.Date(2027, 8, 14, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("date %s %v", at, err)
	}
	if changed != 0 || datedCalls != 1 {
		t.Fatalf("OnChange %d, OnExpiresAtFile %d; want 0 and 1", changed, datedCalls)
	}
	if _, err := c.Reload(); err != nil || datedCalls != 1 {
		t.Fatalf("an unchanged date is told again: %d calls, %v", datedCalls, err)
	}

	replaceFile(t, dated, "next summer\n")
	replaceFile(t, path, secretV2+"\n")
	if ch, err := c.Reload(); err != nil || !ch {
		t.Fatalf("Reload with a bad date file = %v, %v; want the secret reloaded", ch, err)
	}
	fp2, at, err := c.FileExpiry()
	if err == nil || !strings.Contains(err.Error(), "neither RFC 3339 nor YYYY-MM-DD") || !at.IsZero() || fp2 == "" || fp2 == fp1 {
		t.Fatalf("bad date: %s %s %v", fp2, at, err)
	}
	if changed != 1 || datedCalls != 1 {
		t.Fatalf("OnChange %d, OnExpiresAtFile %d; want 1 and 1: a change of both is told as the secret's", changed, datedCalls)
	}

	replaceFile(t, dated, "2027-08-14T11:30:00+02:00")
	if _, err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, at, err = c.FileExpiry(); err != nil || !at.Equal(time.Date(2027, 8, 14, 9, 30, 0, 0, time.UTC)) {
		t.Fatalf("RFC 3339 date %s %v", at, err)
	}
}

// TestFileExpiryFingerprintOfWhatIsUsed: the fingerprint a date is bound
// to is that of the secret or certificate as the credential uses it, so
// the same secret written again with other whitespace around it (a
// trailing newline added or dropped), or the same certificate and key
// in PEM laid out otherwise, keeps it; another secret does not.
func TestFileExpiryFingerprintOfWhatIsUsed(t *testing.T) {
	f := newFakeEntra(t, secretHandler(t, 3599))
	path := writeFile(t, t.TempDir(), "secret", secretV1)
	c := secretCredential(t, f, path, nil)
	fp, _, _ := c.FileExpiry()
	for _, content := range []string{secretV1 + "\n", secretV1 + "\r\n", "  " + secretV1 + "\n\n"} {
		replaceFile(t, path, content)
		if _, err := c.Reload(); err != nil {
			t.Fatal(err)
		}
		if got, _, _ := c.FileExpiry(); got != fp {
			t.Errorf("the same secret written as %q: fingerprint %s, was %s", content, got, fp)
		}
	}
	replaceFile(t, path, secretV2+"\n")
	if _, err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := c.FileExpiry(); got == fp {
		t.Fatalf("another secret has the first one's fingerprint %s", got)
	}

	dir := t.TempDir()
	key := testKey(t, 0)
	cert := testCert(t, key, time.Date(2027, 3, 1, 0, 0, 0, 0, time.UTC))
	certFile := writeFile(t, dir, "cert.pem", certPEM(cert))
	keyFile := writeFile(t, dir, "key.pem", pkcs8PEM(t, key))
	cc, err := NewCredential(CredentialOptions{Name: "cert", Tenant: testTenant, ClientID: testClientID, CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	cfp, _, _ := cc.FileExpiry()
	replaceFile(t, certFile, "\n"+certPEM(cert)+"\n")
	if _, err := cc.Reload(); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := cc.FileExpiry(); got != cfp {
		t.Fatalf("the same certificate written again with blank lines: fingerprint %s, was %s", got, cfp)
	}
}

// TestExpiresAtFileStatedFor: the date file is written for the secret
// loaded by the reload that finds its content changed, alone or with the
// secret; not at start, not when the secret changes without it, nor
// when it is written again with the same content.
func TestExpiresAtFileStatedFor(t *testing.T) {
	f := newFakeEntra(t, secretHandler(t, 3599))
	dir := t.TempDir()
	path := writeFile(t, dir, "secret", secretV1)
	dated := writeFile(t, dir, "expires_at", "2027-08-14\n")
	c := secretCredential(t, f, path, func(o *CredentialOptions) { o.ExpiresAtFile = dated })
	stated := func() (string, bool) {
		fp, _, err := c.FileExpiry()
		if err != nil {
			t.Fatal(err)
		}
		return fp, c.DateStatedFor(fp)
	}
	reload := func() {
		t.Helper()
		if _, err := c.Reload(); err != nil {
			t.Fatal(err)
		}
	}
	if fp, ok := stated(); ok {
		t.Fatalf("at start: stated for %s", fp)
	}
	replaceFile(t, dated, "2027-08-14T00:00:00Z\n")
	reload()
	fp1, ok := stated()
	if !ok {
		t.Fatal("the date rewritten in another form is not stated for the secret loaded")
	}
	replaceFile(t, path, secretV2+"\n")
	reload()
	if fp, ok := stated(); ok || fp == fp1 {
		t.Fatalf("the secret changed, the date file not: stated %v for %s", ok, fp)
	}
	replaceFile(t, dated, "2027-08-14T00:00:00Z\n")
	reload()
	if _, ok := stated(); ok {
		t.Fatal("the same content written again is taken for a statement")
	}
	replaceFile(t, dated, "2027-09-01\n")
	replaceFile(t, path, secretV1)
	reload()
	if fp, ok := stated(); !ok || fp != fp1 {
		t.Fatalf("both changed together: stated %v for %s, want for %s", ok, fp, fp1)
	}
	if c.DateStatedFor("") {
		t.Fatal("stated for no fingerprint")
	}
}

// TestExpiresAtFileNotEchoed: an expires_at_file that holds no date, such
// as the secret itself (the option pointed at the secret's file), is
// refused without its content: the error goes to the log.
func TestExpiresAtFileNotEchoed(t *testing.T) {
	f := newFakeEntra(t, secretHandler(t, 3599))
	path := writeFile(t, t.TempDir(), "secret", secretV1+"\n")
	c := secretCredential(t, f, path, func(o *CredentialOptions) { o.ExpiresAtFile = path })
	_, at, err := c.FileExpiry()
	if err == nil || !at.IsZero() {
		t.Fatalf("the secret's file as the date file: %s, %v; want no date and an error", at, err)
	}
	if !strings.Contains(err.Error(), "neither RFC 3339 nor YYYY-MM-DD") {
		t.Errorf("error %q does not say what the file should hold", err)
	}
	if strings.Contains(err.Error(), secretV1[:8]) {
		t.Errorf("error %q holds the file's content, here the secret", err)
	}
}
