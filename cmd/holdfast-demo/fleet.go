package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/bcrypt"

	"holdfast/cmd/o365sim/sim"
)

// The identities of the demo: one tenant, one app registration with a
// client secret, and an application that submits as "crm".
const (
	tenant     = "contoso.onmicrosoft.com"
	clientID   = "0c4d1e52-7a3b-4f1e-9d2c-5b6a7e8f9012"
	secret     = "demo-first-secret~0123456789abcdef"
	rotated    = "demo-rotated-secret~fedcba9876543210"
	appUser    = "crm"
	appPass    = "crm-demo-password"
	adminToken = "demo-admin-token-0123456789abcdef"
	credName   = "contoso"
)

// fleet is what the demo starts: a Redis of its own, the simulator (in
// this process, so that the demo can expire and rotate the secret and
// count what Exchange received) and relay processes.
type fleet struct {
	dir        string
	secretFile string
	mailboxes  []string
	redis      *proc
	rdb        *redis.Client
	sim        *sim.Sim
	relays     []*relayProc
	http       *http.Client
	// expiresAt is when the secret expires: the credential's expires_at,
	// which the relays warn about, and when the demo expires it.
	expiresAt time.Time
}

// proc is a child process, stopped by its PID.
type proc struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
	log    string // path of its output
}

func startProc(name, logPath string, bin string, args ...string) (*proc, error) {
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer out.Close() // the child has its own copy
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group: a Ctrl-C on the terminal reaches the demo
	// only, which then stops its children in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, exited: make(chan struct{}), log: logPath}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// stop sends SIGTERM to the process's PID, and SIGKILL after grace.
func (p *proc) stop(grace time.Duration) {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// freeAddr returns a loopback address with a port free at the time.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startRedis starts redis-server on a free loopback port with its data
// in dir, durable (appendonly) as holdfast requires.
func startRedis(ctx context.Context, dir string) (*proc, *redis.Client, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, nil, errors.New("redis-server is not installed: run deploy/local/ensure-redis.sh (or apt-get install -y redis-server)")
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, nil, err
	}
	_, port, _ := net.SplitHostPort(addr)
	data := filepath.Join(dir, "redis")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, nil, err
	}
	p, err := startProc("redis-server", filepath.Join(dir, "redis.log"), bin,
		"--bind", "127.0.0.1", "--port", port, "--dir", data, "--appendonly", "yes",
		"--appendfsync", "everysec", "--save", "", "--protected-mode", "yes",
		"--maxmemory-policy", "noeviction")
	if err != nil {
		return nil, nil, err
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 250 * time.Millisecond})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := rdb.Ping(ctx).Err(); err == nil {
			return p, rdb, nil
		}
		if !p.running() || time.Now().After(deadline) || ctx.Err() != nil {
			_ = rdb.Close()
			p.stop(time.Second)
			return nil, nil, fmt.Errorf("redis-server on %s did not answer: see %s", addr, p.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startSim starts the simulator with the mailboxes and the app, whose
// secret is valid for a year until the demo expires it.
func startSim(p plan, mailboxes []string) (*sim.Sim, error) {
	var boxes []sim.Mailbox
	for _, m := range mailboxes {
		boxes = append(boxes, sim.Mailbox{Address: m})
	}
	s, err := sim.New(sim.Config{TokenLifetime: p.tokenLifetime, Tenants: []sim.Tenant{{
		ID: tenant,
		Apps: []sim.App{{ClientID: clientID, SendAsMailboxes: []string{"*"},
			Secrets: []sim.Secret{{Value: secret, ExpiresAt: time.Now().Add(365 * 24 * time.Hour)}}}},
		Mailboxes: boxes,
	}}})
	if err != nil {
		return nil, err
	}
	return s, s.Start()
}

// relayProc is one "holdfast serve" process.
type relayProc struct {
	*proc
	config   string
	smtpAddr string
	httpAddr string
	opsAddr  string // empty when this holdfast has no ops listener
}

// writeFile writes a file atomically (a rename), as a secret volume or a
// careful operator does.
func writeFile(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// relayConfig is the configuration of replica n. ops, when not empty, is
// the operators' listener address.
func (f *fleet) relayConfig(p plan, n int, redisAddr, passwordHash, caFile, ops string) string {
	quoted := make([]string, len(f.mailboxes))
	for i, m := range f.mailboxes {
		quoted[i] = strconv.Quote(m)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `hostname: relay-%d.demo
replica: relay-%d
redis:
  addrs: [%q]
smtp:
  listeners:
    - addr: 127.0.0.1:0
      insecure: true
http:
  addr: 127.0.0.1:0
  admin_token_sha256: %s
queue:
  backoff_base: 1s
delivery:
  sender: exchange
  poll: 100ms
log:
  format: json
apps:
  - name: crm
    username: %s
    password_hash: %q
    senders: [%s]
    credential: %s
    mailbox: %s
    sender_mailboxes:
`, n, n, redisAddr, sha256Hex(adminToken), appUser, passwordHash, strings.Join(quoted, ", "), credName, f.mailboxes[0])
	for _, m := range f.mailboxes {
		fmt.Fprintf(&b, "      %q: %q\n", m, m)
	}
	fmt.Fprintf(&b, `credentials:
  - name: %s
    tenant: %s
    client_id: %s
    authority: %q
    client_secret_file: %q
    expires_at: %q
exchange:
  smtp_addr: %q
  graph_url: %q
  ca_file: %q
  messages_per_minute: %d
breakers:
  open_interval: 2s
  max_interval: 4s
`, credName, tenant, clientID, f.sim.AuthorityURL(), f.secretFile, f.expiresAt.UTC().Format(time.RFC3339),
		f.sim.SMTPAddr(), f.sim.GraphURL(), caFile, p.perMinute)
	if ops != "" {
		fmt.Fprintf(&b, "ops:\n  addr: %q\n", ops)
	}
	return b.String()
}

// startFleet starts Redis, the simulator and two relays. On error it
// stops what it started.
func startFleet(ctx context.Context, p plan, holdfast string) (f *fleet, err error) {
	dir, err := os.MkdirTemp("", "holdfast-demo-")
	if err != nil {
		return nil, err
	}
	f = &fleet{dir: dir, http: &http.Client{Timeout: 5 * time.Second}, expiresAt: time.Now().Add(p.before + 5*time.Second)}
	defer func() {
		if err != nil {
			f.stop()
		}
	}()
	for i := 1; i <= p.mailboxes; i++ {
		f.mailboxes = append(f.mailboxes, fmt.Sprintf("box%d@contoso.com", i))
	}
	if f.redis, f.rdb, err = startRedis(ctx, dir); err != nil {
		return f, err
	}
	if f.sim, err = startSim(p, f.mailboxes); err != nil {
		return f, err
	}
	f.secretFile = filepath.Join(dir, "contoso.secret")
	caFile := filepath.Join(dir, "sim-ca.pem")
	if err := writeFile(f.secretFile, secret+"\n"); err != nil {
		return f, err
	}
	if err := writeFile(caFile, string(f.sim.CACertPEM())); err != nil {
		return f, err
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(appPass), bcrypt.MinCost)
	if err != nil {
		return f, err
	}
	withOps := true
	for n := 1; n <= 2; n++ {
		ops := ""
		if withOps {
			if ops, err = freeAddr(); err != nil {
				return f, err
			}
		}
		path := filepath.Join(dir, fmt.Sprintf("relay-%d.yaml", n))
		if err := writeFile(path, f.relayConfig(p, n, f.rdb.Options().Addr, string(hash), caFile, ops)); err != nil {
			return f, err
		}
		r, err := startRelay(ctx, holdfast, n, path, dir)
		if err != nil && withOps && errors.Is(err, errNoOps) {
			// A holdfast without the ops listener: run without it.
			withOps, ops = false, ""
			if err := writeFile(path, f.relayConfig(p, n, f.rdb.Options().Addr, string(hash), caFile, "")); err != nil {
				return f, err
			}
			r, err = startRelay(ctx, holdfast, n, path, dir)
		}
		if err != nil {
			return f, err
		}
		r.opsAddr = ops
		f.relays = append(f.relays, r)
	}
	return f, nil
}

// errNoOps is a relay that refused its configuration's ops section.
var errNoOps = errors.New("this holdfast has no ops listener")

// startRelay starts "holdfast serve" and waits until it logs its
// listeners.
func startRelay(ctx context.Context, holdfast string, n int, config, dir string) (*relayProc, error) {
	name := fmt.Sprintf("relay-%d", n)
	logPath := filepath.Join(dir, name+".log")
	_ = os.Remove(logPath)
	p, err := startProc(name, logPath, holdfast, "serve", "--config", config)
	if err != nil {
		return nil, err
	}
	r := &relayProc{proc: p, config: config}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if line, ok := logLine(logPath, "holdfast started"); ok {
			var l struct {
				SMTP []string `json:"smtp"`
				HTTP string   `json:"http"`
			}
			if err := json.Unmarshal([]byte(line), &l); err != nil || len(l.SMTP) == 0 || l.HTTP == "" {
				p.stop(10 * time.Second)
				return nil, fmt.Errorf("%s: cannot read its listeners from %s", name, line)
			}
			r.smtpAddr, r.httpAddr = l.SMTP[0], l.HTTP
			return r, nil
		}
		select {
		case <-p.exited:
			out, _ := os.ReadFile(logPath)
			if bytes.Contains(out, []byte("field ops not found")) {
				return nil, errNoOps
			}
			return nil, fmt.Errorf("%s exited before it started:\n%s", name, out)
		case <-ctx.Done():
			p.stop(10 * time.Second)
			return nil, ctx.Err()
		case <-time.After(25 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stop(10 * time.Second)
			return nil, fmt.Errorf("%s did not start within 15s: see %s", name, logPath)
		}
	}
}

// logLine returns the first JSON log line of the file whose message is
// msg.
func logLine(path, msg string) (string, bool) {
	f, err := os.Open(path)
	if err != nil {
		return "", false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	want := `"msg":` + strconv.Quote(msg)
	for sc.Scan() {
		if strings.Contains(sc.Text(), want) {
			return sc.Text(), true
		}
	}
	return "", false
}

// stop stops the relays first (in parallel, each by its PID, waiting for
// a graceful exit so that nothing in flight is cut), then the simulator,
// then Redis. It keeps the directory of a failed run.
func (f *fleet) stop() {
	var wg sync.WaitGroup
	for _, r := range f.relays {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.stop(30 * time.Second)
		}()
	}
	wg.Wait()
	if f.sim != nil {
		f.sim.Close()
	}
	if f.rdb != nil {
		_ = f.rdb.Close()
	}
	if f.redis != nil {
		f.redis.stop(10 * time.Second)
	}
}

// get fetches url with the admin token and returns the status and body.
func (f *fleet) get(ctx context.Context, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := f.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}
