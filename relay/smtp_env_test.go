package relay

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"holdfast/queue"
)

// smtpReplyTimeout bounds each wait for a server reply in these tests.
const smtpReplyTimeout = 10 * time.Second

// smtpEnv is SMTP ingress on a queue in a private redis-server, with one
// listener that needs STARTTLS before AUTH and one insecure listener.
type smtpEnv struct {
	f        *fixture
	ing      *smtpIngress
	addr     string      // needs STARTTLS before AUTH
	insecure string      // allows AUTH without TLS
	tls      *tls.Config // a client configuration that trusts the server
	logs     *syncBuffer
}

func newSMTPEnv(t testing.TB, change ...func(*Options)) *smtpEnv {
	t.Helper()
	return newSMTPEnvListening(t, nil, change...)
}

// newSMTPEnvListening is newSMTPEnv with its listeners wrapped by wrap,
// unless wrap is nil.
func newSMTPEnvListening(t testing.TB, wrap func(net.Listener) net.Listener, change ...func(*Options)) *smtpEnv {
	t.Helper()
	f := newFixture(t)
	o := f.opts
	o.SMTP.ReadTimeout = Duration(smtpReplyTimeout)
	o.SMTP.WriteTimeout = Duration(smtpReplyTimeout)
	for _, c := range change {
		c(&o)
	}
	serverTLS, clientTLS := smtpTestTLS(t)
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	f.ingest.log = log
	e := &smtpEnv{f: f, ing: newSMTPIngress(o, f.ingest, f.apps, serverTLS, log), tls: clientTLS, logs: logs}

	served := make(chan error, 2)
	for _, insecure := range []bool{false, true} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if insecure {
			e.insecure = l.Addr().String()
		} else {
			e.addr = l.Addr().String()
		}
		if wrap != nil {
			l = wrap(l)
		}
		go func() { served <- e.ing.serve(l, insecure) }()
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), smtpReplyTimeout)
		defer cancel()
		if err := e.ing.shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		for range 2 {
			select {
			case err := <-served:
				if err != nil {
					t.Errorf("serve returned %v after shutdown, want nil", err)
				}
			case <-time.After(smtpReplyTimeout):
				t.Errorf("serve did not return after shutdown")
			}
		}
	})
	return e
}

func (b *syncBuffer) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Reset()
}

var smtpTestCert = sync.OnceValues(func() (tls.Certificate, *x509.Certificate) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "relay.test"},
		DNSNames:              []string{"relay.test"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, cert
})

// smtpTestTLS returns a server configuration with a self-signed
// certificate for relay.test and a client configuration that trusts it.
func smtpTestTLS(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	pair, cert := smtpTestCert()
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
		&tls.Config{RootCAs: pool, ServerName: "relay.test", MinVersion: tls.VersionTLS12}
}

// smtpTestConn is a raw client connection for transcript tests.
type smtpTestConn struct {
	t  testing.TB
	nc net.Conn
	r  *bufio.Reader
}

// dialSMTP connects and reads the 220 greeting.
func dialSMTP(t testing.TB, addr string) *smtpTestConn {
	t.Helper()
	c := dialSMTPRaw(t, addr, nil)
	c.expect("220 ")
	return c
}

// dialSMTPRaw connects, from localIP when it is not nil, and reads
// nothing.
func dialSMTPRaw(t testing.TB, addr string, localIP net.IP) *smtpTestConn {
	t.Helper()
	d := net.Dialer{Timeout: smtpReplyTimeout}
	if localIP != nil {
		d.LocalAddr = &net.TCPAddr{IP: localIP}
	}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { nc.Close() })
	return &smtpTestConn{t: t, nc: nc, r: bufio.NewReader(nc)}
}

func (c *smtpTestConn) write(s string) {
	c.t.Helper()
	_ = c.nc.SetWriteDeadline(time.Now().Add(smtpReplyTimeout))
	if _, err := io.WriteString(c.nc, s); err != nil {
		c.t.Fatalf("write %q: %v", s, err)
	}
}

// readReply reads one reply, all its lines, and returns it with the lines
// joined by "\n".
func (c *smtpTestConn) readReply() (string, error) {
	_ = c.nc.SetReadDeadline(time.Now().Add(smtpReplyTimeout))
	var lines []string
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return strings.Join(lines, "\n"), err
		}
		line = strings.TrimSuffix(line, "\r\n")
		lines = append(lines, line)
		if len(line) < 4 || line[3] != '-' {
			return strings.Join(lines, "\n"), nil
		}
	}
}

// expect reads a reply and fails the test unless its last line starts
// with want. It returns the whole reply.
func (c *smtpTestConn) expect(want string) string {
	c.t.Helper()
	reply, err := c.readReply()
	if err != nil {
		c.t.Fatalf("reading the reply, want %q: got %q and %v", want, reply, err)
	}
	if last := reply[strings.LastIndexByte(reply, '\n')+1:]; !strings.HasPrefix(last, want) {
		c.t.Fatalf("reply %q, want %q", reply, want)
	}
	return reply
}

// cmd sends one command line and expects a reply starting with want.
func (c *smtpTestConn) cmd(line, want string) string {
	c.t.Helper()
	c.write(line + "\r\n")
	return c.expect(want)
}

// dialSMTPStartTLS connects to the secure listener, says EHLO if ehlo is
// true, starts TLS and returns the connection inside TLS, before the
// second EHLO.
func dialSMTPStartTLS(t testing.TB, e *smtpEnv, ehlo bool) *smtpTestConn {
	t.Helper()
	c := dialSMTP(t, e.addr)
	if ehlo {
		c.cmd("EHLO client.test", "250 ")
	}
	c.cmd("STARTTLS", "220 ")
	tc := tls.Client(c.nc, e.tls)
	_ = tc.SetDeadline(time.Now().Add(smtpReplyTimeout))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	c = &smtpTestConn{t: t, nc: tc, r: bufio.NewReader(tc)}
	// The reply shows that the server, too, has finished the handshake.
	c.cmd("NOOP", "250 ")
	return c
}

// expectClosed fails the test unless the server closes the connection
// without sending anything more.
func (c *smtpTestConn) expectClosed() {
	c.t.Helper()
	_ = c.nc.SetReadDeadline(time.Now().Add(smtpReplyTimeout))
	rest, err := io.ReadAll(c.r)
	if err != nil && !errors.Is(err, net.ErrClosed) && !isConnReset(err) {
		c.t.Fatalf("waiting for the server to close: %v", err)
	}
	if len(rest) > 0 {
		c.t.Fatalf("got %q, want the connection closed", rest)
	}
}

func isConnReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset by peer")
}

// bdat sends chunk in a BDAT command, the last one when last is set, and
// expects a reply starting with want.
func (c *smtpTestConn) bdat(chunk string, last bool, want string) {
	c.t.Helper()
	cmd := fmt.Sprintf("BDAT %d", len(chunk))
	if last {
		cmd += " LAST"
	}
	c.write(cmd + "\r\n" + chunk)
	c.expect(want)
}

// login says EHLO and authenticates as crm with AUTH PLAIN.
func (c *smtpTestConn) login() {
	c.t.Helper()
	c.cmd("EHLO client.test", "250 ")
	c.cmd("AUTH PLAIN "+smtpPlain("", crmUser, crmPassword), "235 2.0.0 ")
}

// send submits one message in the current session and returns its queue
// id.
func (c *smtpTestConn) send(from string, to []string, body string) string {
	c.t.Helper()
	c.cmd("MAIL FROM:<"+from+">", "250 ")
	for _, rcpt := range to {
		c.cmd("RCPT TO:<"+rcpt+">", "250 ")
	}
	c.cmd("DATA", "354 ")
	c.write(body)
	return smtpQueuedID(c.t, c.expect("250 2.0.0 Queued as "))
}

var smtpQueuedRe = regexp.MustCompile(`(?m)^250 2\.0\.0 Queued as (\S+)$`)

func smtpQueuedID(t testing.TB, reply string) string {
	t.Helper()
	m := smtpQueuedRe.FindStringSubmatch(reply)
	if m == nil {
		t.Fatalf("reply %q has no queue id", reply)
	}
	return m[1]
}

func smtpPlain(identity, user, password string) string {
	return base64.StdEncoding.EncodeToString([]byte(identity + "\x00" + user + "\x00" + password))
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// smtpReady returns the ready messages of route crm, oldest first.
func smtpReady(t testing.TB, f *fixture) []*queue.Message {
	t.Helper()
	ms, err := f.queue.List(context.Background(), "crm", queue.Ready, 0, 1000)
	if err != nil {
		t.Fatalf("list ready messages: %v", err)
	}
	return ms
}

// smtpBody leases message id of route crm and returns its stored body.
func smtpBody(t testing.TB, f *fixture, id string) []byte {
	t.Helper()
	res, err := f.queue.Lease(context.Background(), "crm", 100, time.Minute)
	if err != nil {
		t.Fatalf("lease: %v", err)
	}
	for _, l := range res.Leases {
		if l.ID == id {
			return l.Body
		}
	}
	t.Fatalf("message %s not found among %d leased", id, len(res.Leases))
	return nil
}
