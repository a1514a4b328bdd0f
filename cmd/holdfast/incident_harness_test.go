package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
	"holdfast/queue/redistest"
	"holdfast/relay"
)

// This file is the harness of the incident tests (incident_test.go):
// two relay processes ("holdfast serve", re-executions of this test binary,
// see TestMain) sharing one Redis and delivering to the Exchange Online
// simulator, which runs in the test process so that the test can expire
// the client secret, revoke grants and read its counters; SMTP
// submission; and samplers of the simulator's counters and of the
// breaker endpoints.

const (
	incTenant     = "contoso.onmicrosoft.com"
	incClientID   = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
	incSecret     = "incident-first-secret~0123456789"
	incRotated    = "incident-rotated-secret~9876543210"
	incUser       = "crm"
	incPassword   = "crm-incident-password"
	incAppToken   = "crm-incident-bearer-token-0123456789"
	incAdminToken = "incident-admin-token-0123456789"
	incCred       = "cred:contoso"

	// incTokenLifetime is the simulator's access token lifetime. A relay
	// replaces a token living less than twice auth.DefaultRefreshBefore
	// half-way through its life: here 2 s after fetching it, so a relay
	// needs a new token soon after the secret expires.
	incTokenLifetime = 4 * time.Second
	// The breakers' first probe interval and its cap (the probe interval
	// doubles from open_interval to max_interval while probes fail).
	incOpenInterval = 2 * time.Second
	incMaxInterval  = 4 * time.Second
	// incPerMinute is exchange.messages_per_minute: high, so that the 60 s
	// sliding window of the limiter does not make the test take minutes.
	incPerMinute = 6000
	// incQuiet is a pause in a mailbox's mail long enough for the relays'
	// SMTP connections to it to close (they close after 2 s idle, checked
	// every second) and for their cached tokens to be due for renewal (2 s
	// old, see incTokenLifetime). A connection authenticated before a
	// secret expires or a grant is revoked keeps working, as in Exchange
	// Online; the relays only notice at their next token request.
	incQuiet = 3 * time.Second
	// incPropagation is how soon every replica stops after one opens a
	// breaker (DESIGN.md: "every replica stops within a second"): each
	// re-reads the breaker records every 500 ms.
	incPropagation = time.Second
	// incReload is how often a relay re-reads its secret file, and
	// incProbeTick how often it looks for a probe to run (relay.Server.Start).
	incReload    = time.Second
	incProbeTick = time.Second
	// incBackoff is queue.backoff_base: the delay after a failed attempt,
	// and after a credential failure that found its breaker closed. The
	// default of 1 min would leave a message that failed that way waiting
	// past the test's bounds; see runIncident.
	incBackoff = time.Second
	// incPoll is how often the test samples the simulator's counters and
	// the breaker endpoints.
	incPoll = 50 * time.Millisecond
)

// incSHA256 is the hex SHA-256 of a token, as "holdfast creds token"
// prints it.
func incSHA256(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func incMessageID(n int) string { return fmt.Sprintf("<incident-%d@holdfast.test>", n) }

func incMessage(n int, from string) string {
	return fmt.Sprintf("From: <%s>\r\nTo: <rcpt%d@example.org>\r\nSubject: incident %d\r\nMessage-ID: %s\r\n\r\nbody %d\r\n",
		from, n, n, incMessageID(n), n)
}

// incWait polls cond every 25 ms for up to d.
func incWait(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func incSleepUntil(t time.Time) { time.Sleep(time.Until(t)) }

// incWriteFile writes a file atomically (a rename), as a secret volume
// or a careful operator does.
func incWriteFile(tb testing.TB, path, content string) {
	tb.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		tb.Fatal(err)
	}
}

// incFleet is the simulator, one Redis and two relay processes.
type incFleet struct {
	tb         testing.TB
	sim        *sim.Sim
	q          *queue.Queue
	dir        string
	secretFile string
	// secretFiles are each relay's secret file: all secretFile, unless
	// incFleetOptions.ownSecrets.
	secretFiles []string
	configs     []string // each relay's configuration file
	mailboxes   []string // box1@contoso.com … boxN@contoso.com
	relays      []*incRelay
	http        *http.Client
	closeOnce   sync.Once
	redis       *redistest.Server
	lease       time.Duration // delivery.lease when set
}

type incFleetOptions struct {
	mailboxes int
	// relays is how many relay processes run; default 2.
	relays int
	// ownSecrets gives each relay its own secret file, as pods each
	// mounting a Secret are.
	ownSecrets bool
	// mailboxSetup changes the simulator's mailboxes before it starts.
	mailboxSetup func(boxes []sim.Mailbox)
	// sendAs are the mailboxes the app may send as (SMTP.SendAsApp and
	// FullAccess); default every one. SMTP AUTH as another mailbox gets
	// 535 5.7.3, as it does with a bad token.
	sendAs []string
	// grants configures exchange.grant_key_file, for delegated mailboxes.
	grants bool
	// redis are options of the Redis server (the fault tests set its
	// appendfsync).
	redis []redistest.Option
	// edit, when set, rewrites the configuration of replica n (the fault
	// tests set delivery and exchange timeouts this way).
	edit func(n int, config string) string
	// lease sets delivery.lease.
	lease time.Duration
}

func startIncFleet(tb testing.TB, o incFleetOptions) *incFleet {
	tb.Helper()
	srv := redistest.Start(tb, o.redis...)
	f := &incFleet{tb: tb, dir: tb.TempDir(), redis: srv, http: &http.Client{Timeout: 5 * time.Second}, lease: o.lease}
	f.q = queue.New(srv.Client(tb), queue.Options{})
	var boxes []sim.Mailbox
	for i := 1; i <= o.mailboxes; i++ {
		addr := fmt.Sprintf("box%d@contoso.com", i)
		f.mailboxes = append(f.mailboxes, addr)
		boxes = append(boxes, sim.Mailbox{Address: addr})
	}
	if o.mailboxSetup != nil {
		o.mailboxSetup(boxes)
	}
	if o.relays == 0 {
		o.relays = 2
	}
	sendAs := o.sendAs
	if sendAs == nil {
		sendAs = []string{"*"}
	}
	s, err := sim.New(sim.Config{TokenLifetime: incTokenLifetime, Tenants: []sim.Tenant{{
		ID: incTenant,
		Apps: []sim.App{{ClientID: incClientID, SendAsMailboxes: sendAs,
			Secrets: []sim.Secret{{Value: incSecret, ExpiresAt: time.Now().Add(365 * 24 * time.Hour)}}}},
		Mailboxes: boxes,
	}}})
	if err != nil {
		tb.Fatal(err)
	}
	if err := s.Start(); err != nil {
		tb.Fatal(err)
	}
	f.sim = s
	tb.Cleanup(f.close)

	f.secretFile = filepath.Join(f.dir, "contoso.secret")
	incWriteFile(tb, f.secretFile, incSecret+"\n")
	caFile := filepath.Join(f.dir, "sim-ca.pem")
	incWriteFile(tb, caFile, string(s.CACertPEM()))
	grantKey := ""
	if o.grants {
		grantKey = filepath.Join(f.dir, "grants.key")
		incWriteFile(tb, grantKey, strings.Repeat("5a", 32)+"\n")
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(incPassword), bcrypt.MinCost)
	if err != nil {
		tb.Fatal(err)
	}
	for i := 1; i <= o.relays; i++ {
		secret := f.secretFile
		if o.ownSecrets {
			secret = filepath.Join(f.dir, fmt.Sprintf("relay-%d.secret", i))
			incWriteFile(tb, secret, incSecret+"\n")
		}
		f.secretFiles = append(f.secretFiles, secret)
		path := filepath.Join(f.dir, fmt.Sprintf("relay-%d.yaml", i))
		config := f.config(i, srv.Addr(), string(hash), caFile, grantKey, secret)
		if o.edit != nil {
			config = o.edit(i, config)
		}
		incWriteFile(tb, path, config)
		f.configs = append(f.configs, path)
		f.relays = append(f.relays, startIncRelay(tb, fmt.Sprintf("relay-%d", i), path))
	}
	return f
}

// restart starts relay i again after it was stopped.
func (f *incFleet) restart(i int) {
	f.tb.Helper()
	f.relays[i] = startIncRelay(f.tb, f.relays[i].name, f.configs[i])
}

// cli runs a holdfast command with relay i's configuration, as an
// operator would, and returns its output.
func (f *incFleet) cli(i int, args ...string) string {
	f.tb.Helper()
	cmd := exec.Command(os.Args[0], append([]string{args[0], args[1], "--config", f.configs[i]}, args[2:]...)...)
	// Under -race the runtime waits a second before exiting, which would
	// put a second between a command's effect and its return.
	cmd.Env = append(os.Environ(), incidentExecEnv+"=1", "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		f.tb.Fatalf("holdfast %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// config is the configuration of replica n.
func (f *incFleet) config(n int, redisAddr, passwordHash, caFile, grantKey, secretFile string) string {
	quoted := make([]string, len(f.mailboxes))
	for i, m := range f.mailboxes {
		quoted[i] = fmt.Sprintf("%q", m)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `hostname: relay-%d.test
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
ops:
  addr: 127.0.0.1:0
queue:
  backoff_base: %s
delivery:
  sender: exchange
  poll: 100ms
log:
  format: json
apps:
  - name: crm
    username: %s
    password_hash: %q
    token_sha256: %s
    senders: [%s]
    credential: contoso
    mailbox: %s
    sender_mailboxes:
`, n, n, redisAddr, incSHA256(incAdminToken), incBackoff, incUser, passwordHash, incSHA256(incAppToken),
		strings.Join(quoted, ", "), f.mailboxes[0])
	for _, m := range f.mailboxes {
		fmt.Fprintf(&b, "      %q: %q\n", m, m)
	}
	if f.lease > 0 {
		// Into the delivery section above.
		s := strings.Replace(b.String(), "delivery:\n", fmt.Sprintf("delivery:\n  lease: %s\n", f.lease), 1)
		b.Reset()
		b.WriteString(s)
	}
	fmt.Fprintf(&b, `credentials:
  - name: contoso
    tenant: %s
    client_id: %s
    authority: %q
    client_secret_file: %q
exchange:
  smtp_addr: %q
  graph_url: %q
  ca_file: %q
  messages_per_minute: %d
  grant_key_file: %q
breakers:
  open_interval: %s
  max_interval: %s
`, incTenant, incClientID, f.sim.AuthorityURL(), secretFile, f.sim.SMTPAddr(), f.sim.GraphURL(), caFile,
		incPerMinute, grantKey, incOpenInterval, incMaxInterval)
	return b.String()
}

// close stops the relays, then the simulator. Redis stops when the test
// ends.
func (f *incFleet) close() {
	f.closeOnce.Do(func() {
		var wg sync.WaitGroup
		for _, r := range f.relays {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r.stop(f.tb)
			}()
		}
		wg.Wait()
		f.sim.Close()
	})
}

// delivered is how many messages Exchange accepted.
func (f *incFleet) delivered() int { return f.sim.ReceivedCount() }

// waitDelivered waits up to d for Exchange to have accepted n messages,
// and says what the queue holds if it does not.
func (f *incFleet) waitDelivered(n int, d time.Duration) {
	f.tb.Helper()
	deadline := time.Now().Add(d)
	for f.delivered() < n {
		if time.Now().After(deadline) {
			st, err := f.q.Stats(context.Background())
			f.tb.Fatalf("%d of %d messages delivered after %v; the queue holds %+v (%v)", f.delivered(), n, d, st.Total, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func (f *incFleet) counters() sim.ClientCounters { return f.sim.Counters().Clients[incClientID] }

// checkRunning fails the test if a relay exited: nothing restarts them.
func (f *incFleet) checkRunning() {
	f.tb.Helper()
	for _, r := range f.relays {
		select {
		case <-r.exited:
			f.tb.Errorf("%s exited during the test", r.name)
		default:
		}
		if n := strings.Count(r.out.String(), `"msg":"holdfast started"`); n != 1 {
			f.tb.Errorf("%s started %d times, want once: no restart", r.name, n)
		}
	}
}

// do sends an HTTP request to replica i with a bearer token and decodes a
// JSON answer into v (when not nil). It returns the status code.
func (f *incFleet) do(i int, method, path, token, body string, v any) (int, error) {
	req, err := http.NewRequest(method, "http://"+f.relays[i].httpAddr+path, strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := f.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if v != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(data, v); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: %w: %s", method, path, err, data)
		}
	}
	return resp.StatusCode, nil
}

// incRelay is one "holdfast serve" process.
type incRelay struct {
	name     string
	cmd      *exec.Cmd
	out      syncBuffer // its stdout and stderr: JSON logs
	exited   chan struct{}
	stopOnce sync.Once
	smtpAddr string
	httpAddr string
	opsAddr  string
}

// startIncRelay starts "holdfast serve --config config" and waits until
// it logs its listeners.
func startIncRelay(tb testing.TB, name, config string) *incRelay {
	tb.Helper()
	r := &incRelay{name: name, exited: make(chan struct{})}
	r.cmd = exec.Command(os.Args[0], "serve", "--config", config)
	r.cmd.Env = append(os.Environ(), incidentExecEnv+"=1")
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.out
	if err := r.cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", name, err)
	}
	go func() {
		_ = r.cmd.Wait()
		close(r.exited)
	}()
	tb.Cleanup(func() { r.stop(tb) })
	deadline := time.Now().Add(15 * time.Second)
	for {
		if line, ok := r.logLine("holdfast started"); ok {
			var l struct {
				SMTP []string `json:"smtp"`
				HTTP string   `json:"http"`
				Ops  string   `json:"ops"`
			}
			if err := json.Unmarshal([]byte(line), &l); err != nil || len(l.SMTP) != 1 || l.HTTP == "" {
				tb.Fatalf("%s: cannot read the listeners from %s (%v)", name, line, err)
			}
			r.smtpAddr, r.httpAddr, r.opsAddr = l.SMTP[0], l.HTTP, l.Ops
			return r
		}
		select {
		case <-r.exited:
			tb.Fatalf("%s exited before it started:\n%s", name, r.out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s did not start within 15s:\n%s", name, r.out.String())
		}
	}
}

// logLine returns the first log line whose message is msg.
func (r *incRelay) logLine(msg string) (string, bool) {
	lines := r.logLines(msg)
	if len(lines) == 0 {
		return "", false
	}
	return lines[0], true
}

// logLines returns the log lines whose message is msg.
func (r *incRelay) logLines(msg string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(r.out.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), `"msg":`+fmt.Sprintf("%q", msg)) {
			out = append(out, sc.Text())
		}
	}
	return out
}

// incLogEntry is the part of a relay's JSON log line the tests read.
type incLogEntry struct {
	Time    time.Time `json:"time"`
	Breaker string    `json:"breaker"`
	To      string    `json:"to"`
}

// logEntries returns the log lines whose message is msg.
func (r *incRelay) logEntries(msg string) []incLogEntry {
	var out []incLogEntry
	for _, line := range r.logLines(msg) {
		var l incLogEntry
		if json.Unmarshal([]byte(line), &l) == nil {
			out = append(out, l)
		}
	}
	return out
}

// loggedAfter counts the log lines whose message is msg logged after
// since.
func (r *incRelay) loggedAfter(msg string, since time.Time) int {
	n := 0
	for _, e := range r.logEntries(msg) {
		if e.Time.After(since) {
			n++
		}
	}
	return n
}

// stop sends SIGTERM and waits for a graceful exit with status 0; it
// prints the logs of a failed test.
func (r *incRelay) stop(tb testing.TB) {
	r.stopOnce.Do(func() {
		select {
		case <-r.exited:
		default:
			_ = r.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-r.exited:
				if code := r.cmd.ProcessState.ExitCode(); code != exitOK {
					tb.Errorf("%s exited with %d after SIGTERM, want 0", r.name, code)
				}
			case <-time.After(15 * time.Second):
				tb.Errorf("%s did not stop within 15s of SIGTERM; killed", r.name)
				_ = r.cmd.Process.Kill()
				<-r.exited
			}
		}
		if tb.Failed() {
			tb.Logf("%s logs (warnings, errors and the last lines):\n%s", r.name, incLogExcerpt(r.out.String()))
		}
	})
}

// incLogExcerpt keeps the lines that are not at level INFO or come from
// the breakers or the credentials (up to 400), and the last 60 lines.
func incLogExcerpt(logs string) string {
	lines := strings.Split(strings.TrimRight(logs, "\n"), "\n")
	var b strings.Builder
	n := 0
	for _, l := range lines[:max(0, len(lines)-60)] {
		keep := !strings.Contains(l, `"level":"INFO"`) ||
			strings.Contains(l, `"component":"breaker"`) || strings.Contains(l, `"component":"auth"`)
		if keep && n < 400 {
			b.WriteString(l + "\n")
			n++
		}
	}
	b.WriteString("…\n")
	for _, l := range lines[max(0, len(lines)-60):] {
		b.WriteString(l + "\n")
	}
	return b.String()
}

// logTokenTrail logs, in one block, every relay's log lines about token
// requests Entra refused, breakers opening and probed, and the grant
// keeper, each timed from since (the opening of the breaker under test).
func (f *incFleet) logTokenTrail(since time.Time) {
	f.tb.Helper()
	var b strings.Builder
	for _, r := range f.relays {
		sc := bufio.NewScanner(strings.NewReader(r.out.String()))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var l struct {
				Time      time.Time `json:"time"`
				Msg       string    `json:"msg"`
				Component string    `json:"component"`
				Breaker   string    `json:"breaker"`
				Mailbox   string    `json:"mailbox"`
				AADSTS    string    `json:"aadsts"`
			}
			if json.Unmarshal(sc.Bytes(), &l) != nil {
				continue
			}
			switch {
			case l.Msg == "token request rejected", l.Component == "grants",
				l.Component == "breaker" && (l.Msg == "breaker open" || strings.Contains(l.Msg, "probe")),
				strings.Contains(l.Msg, "breaker probe by an operator"):
			default:
				continue
			}
			msg, _, _ := strings.Cut(l.Msg, ":")
			fmt.Fprintf(&b, "%s %+.3fs %s: %s %s%s %s\n", r.name, l.Time.Sub(since).Seconds(), l.Component, msg,
				l.Breaker, l.Mailbox, l.AADSTS)
		}
	}
	f.tb.Logf("token requests refused, breakers and grants, timed from %v:\n%s", since.Format("15:04:05.000"), b.String())
}

// incSubmission is one message accepted by a relay.
type incSubmission struct {
	queueID string
	from    string
	relay   int
	at      time.Time // when the 250 came
}

// incSubmitter submits numbered messages over SMTP through a few sessions
// to each relay, several messages per session.
type incSubmitter struct {
	f    *incFleet
	from func(n int) string
	work chan int
	wg   sync.WaitGroup

	mu    sync.Mutex
	subs  map[int]incSubmission
	fails []string
}

// perSession is how many messages a submission session sends before it
// quits and connects again.
const perSession = 10

func (f *incFleet) startSubmitter(sessions int, from func(n int) string) *incSubmitter {
	s := &incSubmitter{f: f, from: from, work: make(chan int), subs: map[int]incSubmission{}}
	for k := range sessions {
		s.wg.Add(1)
		go s.session(k%len(f.relays), s.work)
	}
	f.tb.Cleanup(s.close)
	return s
}

// submit hands message n to the next free session.
func (s *incSubmitter) submit(n int) { s.work <- n }

// close waits for the sessions to finish their messages and quit.
func (s *incSubmitter) close() {
	s.mu.Lock()
	w := s.work
	s.work = nil
	s.mu.Unlock()
	if w != nil {
		close(w)
	}
	s.wg.Wait()
}

func (s *incSubmitter) session(relay int, work <-chan int) {
	defer s.wg.Done()
	var c *smtp.Client
	sent := 0
	defer func() {
		if c != nil {
			c.Quit()
		}
	}()
	for n := range work {
		if c != nil && sent >= perSession {
			c.Quit()
			c = nil
		}
		if c == nil {
			var err error
			if c, err = s.dial(relay); err != nil {
				s.fail(n, relay, err)
				c = nil
				continue
			}
			sent = 0
		}
		from := s.from(n)
		id, err := s.send(c, n, from)
		sent++
		if err != nil {
			s.fail(n, relay, err)
			c.Close()
			c = nil
			continue
		}
		s.mu.Lock()
		s.subs[n] = incSubmission{queueID: id, from: from, relay: relay, at: time.Now()}
		s.mu.Unlock()
	}
}

func (s *incSubmitter) dial(relay int) (*smtp.Client, error) {
	c, err := smtp.Dial(s.f.relays[relay].smtpAddr)
	if err != nil {
		return nil, err
	}
	c.CommandTimeout, c.SubmissionTimeout = 10*time.Second, 10*time.Second
	if err := c.Auth(sasl.NewPlainClient("", incUser, incPassword)); err != nil {
		c.Close()
		return nil, fmt.Errorf("AUTH: %w", err)
	}
	return c, nil
}

// send submits message n and returns its queue id from the 250 reply.
func (s *incSubmitter) send(c *smtp.Client, n int, from string) (string, error) {
	if err := c.Mail(from, nil); err != nil {
		return "", fmt.Errorf("MAIL: %w", err)
	}
	if err := c.Rcpt(fmt.Sprintf("rcpt%d@example.org", n), nil); err != nil {
		return "", fmt.Errorf("RCPT: %w", err)
	}
	w, err := c.Data()
	if err != nil {
		return "", fmt.Errorf("DATA: %w", err)
	}
	if _, err := io.WriteString(w, incMessage(n, from)); err != nil {
		return "", fmt.Errorf("DATA: %w", err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", fmt.Errorf("end of DATA: %w", err)
	}
	_, id, ok := strings.Cut(resp.StatusText, "Queued as ")
	if !ok {
		return "", fmt.Errorf("end of DATA: 250 without a queue id: %q", resp.StatusText)
	}
	return strings.TrimSpace(id), nil
}

func (s *incSubmitter) fail(n, relay int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fails = append(s.fails, fmt.Sprintf("message %d to relay-%d: %v", n, relay+1, err))
}

// results returns what was accepted; every submission must have been.
func (s *incSubmitter) results(tb testing.TB, want int) map[int]incSubmission {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.fails {
		tb.Errorf("submission not accepted with 250: %s", f)
	}
	if len(s.subs) != want {
		tb.Errorf("%d messages accepted, want %d", len(s.subs), want)
	}
	return s.subs
}

// incSample is the simulator's counters for the app at one time.
type incSample struct {
	at time.Time
	c  sim.ClientCounters
}

// incSampler samples the counters every incPoll.
type incSampler struct {
	mu      sync.Mutex
	samples []incSample
	stop    func()
}

func (f *incFleet) startSampler() *incSampler {
	s := &incSampler{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(incPoll)
		defer t.Stop()
		for {
			c := f.counters()
			s.mu.Lock()
			s.samples = append(s.samples, incSample{at: time.Now(), c: c})
			s.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	var once sync.Once
	s.stop = func() { once.Do(func() { cancel(); <-done }) }
	f.tb.Cleanup(s.stop)
	return s
}

// between returns the samples taken in [from, to].
func (s *incSampler) between(from, to time.Time) []incSample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return within(s.samples, func(x incSample) time.Time { return x.at }, from, to)
}

// within returns the elements of xs whose time is in [from, to].
func within[T any](xs []T, at func(T) time.Time, from, to time.Time) []T {
	var out []T
	for _, x := range xs {
		if t := at(x); !t.Before(from) && !t.After(to) {
			out = append(out, x)
		}
	}
	return out
}

// incObs is one answer of GET /v1/breakers/{name}.
type incObs struct {
	at time.Time // when the answer came
	st relay.BreakerStatus
}

// incPoller polls one breaker on one relay every incPoll.
type incPoller struct {
	relay int
	name  string
	mu    sync.Mutex
	obs   []incObs
	errs  []string
}

// pollBreaker starts polling breaker name on every relay.
func (f *incFleet) pollBreaker(name string) []*incPoller {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var ps []*incPoller
	for i := range f.relays {
		p := &incPoller{relay: i, name: name}
		ps = append(ps, p)
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(incPoll)
			defer t.Stop()
			for {
				var st relay.BreakerStatus
				code, err := f.do(i, "GET", "/v1/breakers/"+name, incAdminToken, "", &st)
				at := time.Now()
				p.mu.Lock()
				switch {
				case err != nil:
					p.errs = append(p.errs, err.Error())
				case code == http.StatusNotFound && strings.HasPrefix(name, "mbx:"):
					// A mailbox breaker exists once a failure is recorded.
					p.obs = append(p.obs, incObs{at: at, st: relay.BreakerStatus{Name: name, State: "none"}})
				case code != http.StatusOK:
					p.errs = append(p.errs, fmt.Sprintf("status %d", code))
				default:
					p.obs = append(p.obs, incObs{at: at, st: st})
				}
				p.mu.Unlock()
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	var once sync.Once
	f.tb.Cleanup(func() { once.Do(func() { cancel(); wg.Wait() }) })
	return ps
}

// first returns the first answer at or after t that satisfies ok.
func (p *incPoller) first(t time.Time, ok func(relay.BreakerStatus) bool) (incObs, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, o := range p.obs {
		if !o.at.Before(t) && ok(o.st) {
			return o, true
		}
	}
	return incObs{}, false
}

// between returns the answers that came in [from, to].
func (p *incPoller) between(from, to time.Time) []incObs {
	p.mu.Lock()
	defer p.mu.Unlock()
	return within(p.obs, func(o incObs) time.Time { return o.at }, from, to)
}

// checkErrors fails the test for every failed request (a few are allowed
// at shutdown, after the scenario).
func (p *incPoller) checkErrors(tb testing.TB) {
	tb.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.errs {
		tb.Errorf("relay-%d GET /v1/breakers/%s: %s", p.relay+1, p.name, e)
	}
	if len(p.obs) == 0 {
		tb.Errorf("relay-%d GET /v1/breakers/%s never answered", p.relay+1, p.name)
	}
}

func isOpen(st relay.BreakerStatus) bool   { return st.State == "open" }
func isClosed(st relay.BreakerStatus) bool { return st.State == "closed" }

// last returns the last answer.
func (p *incPoller) last() (incObs, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.obs) == 0 {
		return incObs{}, false
	}
	return p.obs[len(p.obs)-1], true
}

// heldSnapshot returns the attempts of every held message by id, and
// fails the test if mail waits in any other way than held, or if anything
// is dead.
func (f *incFleet) heldSnapshot(ctx context.Context, what string) map[string]int {
	f.tb.Helper()
	st, err := f.q.Stats(ctx)
	if err != nil {
		f.tb.Fatal(err)
	}
	if st.Total.Dead != 0 {
		f.tb.Errorf("%s: %d dead letters", what, st.Total.Dead)
	}
	held := map[string]int{}
	for _, r := range st.Routes {
		if r.Held == 0 {
			continue
		}
		ms, err := f.q.List(ctx, r.Route, queue.Held, 0, 10000)
		if err != nil {
			f.tb.Fatal(err)
		}
		for _, m := range ms {
			held[m.ID] = m.Attempts
		}
	}
	return held
}
