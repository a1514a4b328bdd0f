package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	testKeysOnce sync.Once
	testKeys     [2]*rsa.PrivateKey
)

// testKey returns one of two RSA keys generated once per test binary.
func testKey(t testing.TB, i int) *rsa.PrivateKey {
	testKeysOnce.Do(func() {
		for j := range testKeys {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			testKeys[j] = k
		}
	})
	return testKeys[i]
}

// testCert returns a self-signed certificate for key, valid until notAfter.
func testCert(t testing.TB, key crypto.Signer, notAfter time.Time) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "holdfast-test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     notAfter,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func certPEM(cert *x509.Certificate) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}))
}

func pkcs8PEM(t testing.TB, key any) string {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

// verifyAssertion checks a client assertion as Entra would and returns its
// claims.
func verifyAssertion(jwt string, cert *x509.Certificate, aud string) (jwtClaims, error) {
	var claims jwtClaims
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return claims, errors.New("not a JWS compact serialization")
	}
	var hdr map[string]string
	raw, err := b64url.DecodeString(parts[0])
	if err != nil {
		return claims, err
	}
	if err := json.Unmarshal(raw, &hdr); err != nil {
		return claims, err
	}
	sum := sha256.Sum256(cert.Raw)
	if hdr["alg"] != "PS256" || hdr["typ"] != "JWT" || hdr["x5t#S256"] != b64url.EncodeToString(sum[:]) {
		return claims, errors.New("bad header " + string(raw))
	}
	sig, err := b64url.DecodeString(parts[2])
	if err != nil {
		return claims, err
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPSS(cert.PublicKey.(*rsa.PublicKey), crypto.SHA256, digest[:], sig,
		&rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}); err != nil {
		return claims, err
	}
	if raw, err = b64url.DecodeString(parts[1]); err != nil {
		return claims, err
	}
	if err := json.Unmarshal(raw, &claims); err != nil {
		return claims, err
	}
	if claims.Aud != aud || claims.Iss != testClientID || claims.Sub != testClientID || claims.Jti == "" {
		return claims, errors.New("bad claims " + string(raw))
	}
	if claims.Nbf != claims.Iat || claims.Exp-claims.Iat != 600 {
		return claims, errors.New("bad times " + string(raw))
	}
	return claims, nil
}

func TestCertificateAssertion(t *testing.T) {
	clock := newFakeClock()
	dir := t.TempDir()
	cert1 := testCert(t, testKey(t, 0), time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))
	cert2 := testCert(t, testKey(t, 1), time.Date(2027, 3, 1, 0, 0, 0, 0, time.UTC))

	var mu sync.Mutex
	current := cert1
	jtis := map[string]bool{}
	var f *fakeEntra
	f = newFakeEntra(t, func(w http.ResponseWriter, r *http.Request, form url.Values) {
		mu.Lock()
		defer mu.Unlock()
		if form.Get("client_secret") != "" || form.Get("client_assertion_type") != clientAssertionType ||
			form.Get("grant_type") != "client_credentials" || form.Get("client_id") != testClientID {
			t.Errorf("form %v", form)
		}
		claims, err := verifyAssertion(form.Get("client_assertion"), current, f.tokenURL())
		if err != nil {
			t.Errorf("assertion: %v", err)
			writeFixture(t, w, http.StatusUnauthorized, "aadsts7000215")
			return
		}
		if claims.Iat != clock.Now().Unix() {
			t.Errorf("iat %d, want %d", claims.Iat, clock.Now().Unix())
		}
		if jtis[claims.Jti] {
			t.Errorf("jti %s reused", claims.Jti)
		}
		jtis[claims.Jti] = true
		writeToken(w, "at-cert", 3599, "")
	})

	certFile := writeFile(t, dir, "cert.pem", certPEM(cert1))
	keyFile := writeFile(t, dir, "key.pem", pkcs8PEM(t, testKey(t, 0)))
	changed := 0
	c, err := NewCredential(CredentialOptions{
		Tenant: testTenant, ClientID: testClientID, Authority: f.srv.URL,
		CertFile: certFile, KeyFile: keyFile, HTTPClient: f.srv.Client(),
		Now: clock.Now, OnChange: func(string) { changed++ },
	})
	if err != nil {
		t.Fatal(err)
	}
	if exp, ok := c.Expiry(); !ok || !exp.Equal(cert1.NotAfter) {
		t.Fatalf("Expiry = %v, %v; want %v", exp, ok, cert1.NotAfter)
	}
	for range 2 {
		c.Invalidate() // a fresh assertion per request
		if tok, err := c.Token(t.Context()); err != nil || tok.AccessToken != "at-cert" {
			t.Fatalf("token %v, %v", tok, err)
		}
	}

	// Rotate to a new certificate and a PKCS#1 key in the same file.
	mu.Lock()
	current = cert2
	mu.Unlock()
	pkcs1 := string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(testKey(t, 1))}))
	replaceFile(t, keyFile, pkcs1)
	replaceFile(t, certFile, certPEM(cert2))
	if ch, err := c.Reload(); err != nil || !ch || changed != 1 {
		t.Fatalf("Reload = %v, %v (OnChange %d)", ch, err, changed)
	}
	if exp, _ := c.Expiry(); !exp.Equal(cert2.NotAfter) {
		t.Fatalf("Expiry after rotation = %v", exp)
	}
	if _, err := c.Token(t.Context()); err != nil {
		t.Fatal(err)
	}
	if f.requests() != 3 {
		t.Fatalf("%d requests, want 3", f.requests())
	}
}

func TestCertificateKeyInCertFileAndChainOrder(t *testing.T) {
	dir := t.TempDir()
	leaf := testCert(t, testKey(t, 0), time.Now().Add(time.Hour))
	other := testCert(t, testKey(t, 1), time.Now().Add(time.Hour))
	// The other certificate comes first; the leaf is found by its key.
	both := writeFile(t, dir, "both.pem", certPEM(other)+pkcs8PEM(t, testKey(t, 0))+certPEM(leaf))
	c, err := NewCredential(CredentialOptions{Tenant: testTenant, ClientID: testClientID, CertFile: both})
	if err != nil {
		t.Fatal(err)
	}
	m := c.material()
	if m.leaf != m.chain[0] || !m.leaf.Equal(leaf) || len(m.chain) != 2 {
		t.Fatal("leaf not matched by key")
	}
}

func TestCertificateErrors(t *testing.T) {
	dir := t.TempDir()
	cert := writeFile(t, dir, "cert.pem", certPEM(testCert(t, testKey(t, 0), time.Now().Add(time.Hour))))
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalECPrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, key, want string
	}{
		{"wrong key", pkcs8PEM(t, testKey(t, 1)), "does not match any certificate"},
		{"ec pkcs8", pkcs8PEM(t, ec), "PS256 needs an RSA key"},
		{"ec sec1", string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})), "EC key"},
		{"encrypted", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n", "encrypted"},
		{"no key", "hello\n", "no PEM private key block"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := writeFile(t, dir, strings.ReplaceAll(tt.name, " ", "_")+".pem", tt.key)
			_, err := NewCredential(CredentialOptions{Tenant: testTenant, ClientID: testClientID, CertFile: cert, KeyFile: key})
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), key) {
				t.Fatalf("err = %v, want %q naming %s", err, tt.want, key)
			}
		})
	}
}
