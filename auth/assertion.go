package auth

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

const (
	clientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	// assertionLifetime is how long a client assertion is valid; Entra
	// accepts 5 to 10 minutes.
	assertionLifetime = 10 * time.Minute
)

// jwtHeader is the JOSE header of a client assertion.
type jwtHeader struct {
	Alg     string `json:"alg"`
	Typ     string `json:"typ"`
	X5tS256 string `json:"x5t#S256"`
}

// jwtClaims are the claims of a client assertion.
type jwtClaims struct {
	Aud string `json:"aud"`
	Iss string `json:"iss"`
	Sub string `json:"sub"`
	Jti string `json:"jti"`
	Nbf int64  `json:"nbf"`
	Iat int64  `json:"iat"`
	Exp int64  `json:"exp"`
}

var b64url = base64.RawURLEncoding

// assertion returns a fresh PS256 client assertion for the token URL.
func (m *material) assertion(tokenURL, clientID string, now time.Time) (string, error) {
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return "", fmt.Errorf("client assertion: %w", err)
	}
	header, err := json.Marshal(jwtHeader{Alg: "PS256", Typ: "JWT", X5tS256: m.x5t})
	if err != nil {
		return "", fmt.Errorf("client assertion: %w", err)
	}
	claims, err := json.Marshal(jwtClaims{
		Aud: tokenURL,
		Iss: clientID,
		Sub: clientID,
		Jti: hex.EncodeToString(jti),
		Nbf: now.Unix(),
		Iat: now.Unix(),
		Exp: now.Add(assertionLifetime).Unix(),
	})
	if err != nil {
		return "", fmt.Errorf("client assertion: %w", err)
	}
	signing := b64url.EncodeToString(header) + "." + b64url.EncodeToString(claims)
	digest := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPSS(rand.Reader, m.key, crypto.SHA256, digest[:],
		&rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	if err != nil {
		return "", fmt.Errorf("client assertion: sign: %w", err)
	}
	return signing + "." + b64url.EncodeToString(sig), nil
}

// parseCertKey reads a PEM certificate chain and an RSA private key (PKCS#8
// or PKCS#1) and checks that the key belongs to one of the certificates,
// which becomes the leaf. Non-certificate blocks in the certificate file
// and non-key blocks in the key file are skipped, so one file may hold both.
func parseCertKey(certPEM, keyPEM []byte, certFile, keyFile string) (*material, error) {
	var chain []*x509.Certificate
	for rest := certPEM; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate file %s: %w", certFile, err)
		}
		chain = append(chain, cert)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("certificate file %s holds no PEM CERTIFICATE block", certFile)
	}
	key, err := parseRSAKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("private key file %s: %w", keyFile, err)
	}
	for i, cert := range chain {
		pub, ok := cert.PublicKey.(*rsa.PublicKey)
		if !ok || !pub.Equal(&key.PublicKey) {
			continue
		}
		if i > 0 {
			chain[0], chain[i] = chain[i], chain[0]
		}
		sum := sha256.Sum256(chain[0].Raw)
		return &material{key: key, chain: chain, leaf: chain[0], x5t: b64url.EncodeToString(sum[:])}, nil
	}
	return nil, fmt.Errorf("private key file %s does not match any certificate in %s", keyFile, certFile)
}

func parseRSAKey(keyPEM []byte) (*rsa.PrivateKey, error) {
	for rest := keyPEM; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, errors.New("no PEM private key block")
		}
		if _, ok := b.Headers["Proc-Type"]; ok {
			return nil, errors.New("the key is encrypted; store it unencrypted with restricted file permissions")
		}
		switch b.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, err
			}
			rk, ok := k.(*rsa.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("the key is a %T; PS256 needs an RSA key", k)
			}
			return rk, nil
		case "RSA PRIVATE KEY":
			return x509.ParsePKCS1PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			return nil, errors.New("the key is an EC key; PS256 needs an RSA key")
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("the key is encrypted; store it unencrypted with restricted file permissions")
		}
	}
}
