package relay

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

// Test applications: "crm" may send from billing@contoso.com and anything
// @crm.example; "web" only from web@fabrikam.example.
const (
	crmUser     = "crm"
	crmPassword = "crm-secret-password"
	crmToken    = "crm-bearer-token-0123456789"
	webUser     = "web"
	webPassword = "web-secret-password"
	webToken    = "web-bearer-token-0123456789"
)

// fixture is a queue on a private redis-server plus the ingress pieces
// built on it.
type fixture struct {
	redis  *redistest.Server
	queue  *queue.Queue
	apps   *apps
	ingest *ingress
	opts   Options
}

// relayQueue is a queue on f's Redis over a client that RedisClient
// builds from f's options, with the relay's timeouts; the client is
// closed when the test ends.
func (f *fixture) relayQueue(t testing.TB) *queue.Queue {
	o := f.opts.Redis
	o.Addrs = []string{f.redis.Addr()}
	rdb := RedisClient(o)
	t.Cleanup(func() { _ = rdb.Close() })
	return queue.New(rdb, queue.Options{})
}

func newFixture(t testing.TB, opts ...redistest.Option) *fixture {
	t.Helper()
	srv := redistest.Start(t, opts...)
	q := queue.New(srv.Client(t), queue.Options{})
	o := DefaultOptions()
	o.Hostname = "relay.test"
	o.Apps = []App{
		{Name: "crm", PasswordHash: testHash(t, crmPassword), TokenSHA256: sha256Hex(crmToken),
			Senders: []string{"billing@contoso.com", "@crm.example"}},
		{Name: "web", PasswordHash: testHash(t, webPassword), TokenSHA256: sha256Hex(webToken),
			Senders: []string{"web@fabrikam.example"}},
	}
	o.SMTP.Listeners = []Listener{{Addr: "127.0.0.1:0", Insecure: true}}
	o.Ops.Addr = "127.0.0.1:0"
	if err := o.Validate(); err != nil {
		t.Fatalf("test options: %v", err)
	}
	return &fixture{
		redis:  srv,
		queue:  q,
		apps:   newApps(o.Apps),
		ingest: &ingress{hostname: o.Hostname, store: q, log: discardLogger(), now: time.Now, fullRoutes: newFullRoutes(0)},
		opts:   o,
	}
}

func testHash(t testing.TB, password string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// syncBuffer is a bytes.Buffer that log handlers on several goroutines write to while a test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
