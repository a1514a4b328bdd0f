package deploy

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// secretFileContent is a stand-in for each kind of secret file, valid
// enough for the configuration to load.
func secretFileContent(t *testing.T, key string, certDir string) []byte {
	t.Helper()
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(certDir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	switch field := key[strings.LastIndex(key, ".")+1:]; field {
	case "password_file", "client_secret_file":
		return []byte("not-a-real-secret\n")
	case "expires_at_file":
		return []byte("2027-02-14\n")
	case "password_hash_file":
		return []byte("$2a$10$2OvstUfjsrs0hQXNF4kdLe.imTGW.MDdlaN0Uut9ezKjRICZnVK.6\n")
	case "token_sha256_file", "admin_token_sha256_file":
		return []byte(strings.Repeat("ab", 32) + "\n")
	case "cert_file", "key_file":
		if strings.HasPrefix(key, "credentials[") {
			// An Entra certificate credential signs with RS256/PS256.
			cert, key := rsaCert(t)
			if field == "cert_file" {
				return cert
			}
			return key
		}
		if field == "cert_file" {
			return read("cert.pem")
		}
		return read("key.pem")
	default:
		t.Fatalf("%s: no stand-in for this kind of file", key)
		return nil
	}
}

// rsaCert returns one RSA certificate and key for the test binary's
// whole run, in PEM, for the certificate credential's files.
var rsaCert = func() func(t *testing.T) (certPEM, keyPEM []byte) {
	var (
		once      sync.Once
		cert, key []byte
		onceErr   error
	)
	return func(t *testing.T) ([]byte, []byte) {
		t.Helper()
		once.Do(func() {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				onceErr = err
				return
			}
			tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "holdfast"},
				NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
			if err != nil {
				onceErr = err
				return
			}
			cert = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
			key = pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
		})
		if onceErr != nil {
			t.Fatal(onceErr)
		}
		return cert, key
	}
}()

// TestConfigMapConfigLoads runs "holdfast serve --check-config" on the
// holdfast.yaml of the base's and the overlay's ConfigMap, with each
// mounted secret file replaced by a stand-in under a temporary root. The
// check must pass, and must fail (exit 2, naming the field) once a secret
// file is missing.
//
// The ConfigMaps use the agreed ops.addr and shutdown_timeout options.
func TestConfigMapConfigLoads(t *testing.T) {
	bin := holdfast(t)
	certDir := t.TempDir()
	if out, err := exec.Command(bin, "creds", "devcert", "--out", certDir).CombinedOutput(); err != nil {
		t.Fatalf("creds devcert: %v\n%s", err, out)
	}
	for _, dir := range kustomizations {
		t.Run(path.Base(dir), func(t *testing.T) {
			r := relayOf(t, kustomizeBuild(t, dir))
			root := t.TempDir()
			config := r.config
			files := configFiles(t, config)
			var someSecret string
			for key, p := range files {
				if !strings.HasPrefix(p, "/etc/holdfast/") {
					t.Fatalf("%s: %s is outside /etc/holdfast", key, p)
				}
				local := filepath.Join(root, p)
				if err := os.MkdirAll(filepath.Dir(local), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(local, secretFileContent(t, key, certDir), 0o600); err != nil {
					t.Fatal(err)
				}
				if strings.HasSuffix(key, "password_file") {
					someSecret = local
				}
			}
			config = strings.ReplaceAll(config, "/etc/holdfast/", root+"/etc/holdfast/")
			cfgPath := filepath.Join(root, "holdfast.yaml")
			if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
				t.Fatal(err)
			}

			code, stdout, stderr := runHoldfast(t, bin, "serve", "--check-config", "--config", cfgPath)
			if code != 0 || stdout != "config ok\n" {
				t.Fatalf("holdfast serve --check-config on the ConfigMap of %s: exit %d\nstdout: %s\nstderr: %s", dir, code, stdout, stderr)
			}

			if someSecret == "" {
				t.Fatal("the configuration reads no password_file")
			}
			if err := os.Remove(someSecret); err != nil {
				t.Fatal(err)
			}
			code, _, stderr = runHoldfast(t, bin, "serve", "--check-config", "--config", cfgPath)
			if code != 2 || !strings.Contains(stderr, "password_file") {
				t.Fatalf("with a secret file missing: exit %d, stderr %q; want 2 naming the field", code, stderr)
			}
		})
	}
}

// runHoldfast runs the holdfast binary and returns its exit status and
// output.
func runHoldfast(t *testing.T, bin string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, stdout.String(), stderr.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), stdout.String(), stderr.String()
	}
	t.Fatalf("holdfast %v: %v", args, err)
	return 0, "", ""
}
