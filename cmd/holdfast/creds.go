package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"

	"holdfast/queue"
)

// credsHash reads a password from stdin and prints its bcrypt hash.
func credsHash(_ context.Context, e *env, fs *flag.FlagSet, args []string) error {
	if err := noArgs(fs, args); err != nil {
		return err
	}
	if e.stdinTTY {
		fmt.Fprint(e.stderr, "Password (shown as you type): ")
	}
	line, err := bufio.NewReader(e.stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read password: %w", err)
	}
	password := strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
	if password == "" {
		return errors.New("refusing an empty password")
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
	if err != nil {
		return fmt.Errorf("hash password: %w", err)
	}
	fmt.Fprintln(e.stdout, string(hash))
	return nil
}

// tokenBytes is the length of a bearer token before encoding.
const tokenBytes = 32

// credsToken prints a new bearer token and its SHA-256.
func credsToken(_ context.Context, e *env, fs *flag.FlagSet, args []string) error {
	if err := noArgs(fs, args); err != nil {
		return err
	}
	b := make([]byte, tokenBytes)
	if _, err := rand.Read(b); err != nil {
		return fmt.Errorf("random token: %w", err)
	}
	token := base64.RawURLEncoding.EncodeToString(b)
	sum := sha256.Sum256([]byte(token))
	fmt.Fprintf(e.stdout, "token:        %s\ntoken_sha256: %s\n", token, hex.EncodeToString(sum[:]))
	fmt.Fprintln(e.stderr, "Give the token to the application; put only token_sha256 in the configuration.")
	return nil
}

// Development certificate files and lifetimes.
const (
	devCertFile     = "cert.pem"
	devKeyFile      = "key.pem"
	devCertLifetime = 365 * 24 * time.Hour
	devCertRenew    = 7 * 24 * time.Hour // renew when expiring within this
)

// credsDevcert writes a self-signed ECDSA P-256 certificate and key for
// development, unless a usable one is already there.
func credsDevcert(_ context.Context, e *env, fs *flag.FlagSet, args []string) error {
	out := fs.String("out", "", "write cert.pem and key.pem into `DIR` (required)")
	hostList := fs.String("host", "localhost,127.0.0.1", "the certificate's host names and IP addresses, comma-separated `HOSTS`")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return usagef("--out is required")
	}
	var hosts []string
	for h := range strings.SplitSeq(*hostList, ",") {
		if h = strings.TrimSpace(h); h != "" {
			hosts = append(hosts, h)
		}
	}
	if len(hosts) == 0 {
		return usagef("--host needs at least one host name or IP address")
	}
	certPath, keyPath := filepath.Join(*out, devCertFile), filepath.Join(*out, devKeyFile)
	now := e.now()
	if notAfter, ok := usableCert(certPath, keyPath, now); ok {
		fmt.Fprintf(e.stdout, "%s is valid until %s; kept\n", certPath, notAfter.UTC().Format(time.RFC3339))
		return nil
	}
	certPEM, keyPEM, err := selfSigned(hosts, now)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	if err := writeFile(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	if err := writeFile(certPath, certPEM, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "wrote %s and %s for %s, valid until %s\n", certPath, keyPath,
		strings.Join(hosts, ", "), now.Add(devCertLifetime).UTC().Format(time.RFC3339))
	return nil
}

// usableCert reports whether both files exist and the certificate does
// not expire within devCertRenew, and returns its expiry.
func usableCert(certPath, keyPath string, now time.Time) (time.Time, bool) {
	if _, err := os.Stat(keyPath); err != nil {
		return time.Time{}, false
	}
	data, err := os.ReadFile(certPath)
	if err != nil {
		return time.Time{}, false
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return time.Time{}, false
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil || cert.NotAfter.Before(now.Add(devCertRenew)) {
		return time.Time{}, false
	}
	return cert.NotAfter, true
}

// selfSigned returns a PEM certificate and PKCS #8 key for hosts, valid
// for devCertLifetime from now. The certificate is its own CA, so clients
// can trust it directly (curl --cacert, swaks --tls-ca-path).
func selfSigned(hosts []string, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, nil, fmt.Errorf("serial number: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: hosts[0], Organization: []string{"Holdfast development"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(devCertLifetime),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// writeFile writes data to path with perm through a temporary file, so a
// reader never sees half a file and an old file's mode is not kept.
func writeFile(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // fails harmlessly once renamed
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// credsUnblock clears the failed-authentication count of a client IP or an
// SMTP user name, lifting its block at once on every relay.
func credsUnblock(ctx context.Context, e *env, fs *flag.FlagSet, args []string) error {
	config := configFlag(fs, e)
	ip := fs.String("ip", "", "the client IP address to unblock")
	user := fs.String("user", "", "the SMTP user name to unblock")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	kind, name := "ip", *ip
	switch {
	case *ip != "" && *user != "":
		return usagef("give --ip or --user, not both")
	case *user != "":
		kind, name = "user", *user
	case *ip == "":
		return usagef("give --ip ADDRESS or --user NAME")
	case net.ParseIP(*ip) == nil:
		return usagef("--ip %q is not an IP address", *ip)
	}
	if kind == "ip" {
		name = net.ParseIP(name).String()
	}
	o, rdb, err := openRedis(*config)
	if err != nil {
		return err
	}
	defer func() { _ = rdb.Close() }()
	th := queue.NewAuthThrottle(rdb, o.AuthThrottle.MaxFailures, o.AuthThrottle.Window.D())
	had, err := th.Unblock(ctx, kind, name)
	if err != nil {
		return err
	}
	if had {
		fmt.Fprintf(e.stdout, "%s %s: failures cleared; it may authenticate again\n", kind, name)
	} else {
		fmt.Fprintf(e.stdout, "%s %s: had no failures counted; nothing to clear\n", kind, name)
	}
	return nil
}
