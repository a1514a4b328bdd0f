package relay

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"holdfast/breaker"
	"holdfast/queue"
	"holdfast/queue/redistest"
)

// startRelayOn runs a whole relay over f's redis-server, with the dir
// sender, after change has adjusted its options.
func startRelayOn(t testing.TB, f *fixture, change func(*Options)) *Server {
	t.Helper()
	return startRelayLogged(t, f, change, discardLogger())
}

// startRelayLogged is startRelayOn logging to log.
func startRelayLogged(t testing.TB, f *fixture, change func(*Options), log *slog.Logger) *Server {
	t.Helper()
	o := f.opts
	o.Redis.Addrs = []string{f.redis.Addr()}
	o.HTTP.Addr = "127.0.0.1:0"
	o.Delivery.Dir = t.TempDir()
	o.Delivery.Poll = Duration(50 * time.Millisecond)
	if change != nil {
		change(&o)
	}
	if err := o.Validate(); err != nil {
		t.Fatalf("options: %v", err)
	}
	return runRelay(t, o, log)
}

// runRelay starts a relay with options o, which must be valid, and stops
// it when the test ends.
func runRelay(t testing.TB, o Options, log *slog.Logger) *Server {
	t.Helper()
	s, err := New(context.Background(), o, nil, log)
	if err != nil {
		t.Fatalf("new relay: %v", err)
	}
	s.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return s
}

// getReadyz returns /readyz's status and body, and how long it took.
func getReadyz(t *testing.T, s *Server) (int, string, time.Duration) {
	t.Helper()
	start := time.Now()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + s.HTTPAddr() + "/readyz")
	if err != nil {
		t.Fatalf("GET /readyz: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), time.Since(start)
}

// postMessage submits a small message over HTTP and returns the status and
// how long it took.
func postMessage(t *testing.T, s *Server) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	req, _ := http.NewRequest(http.MethodPost, "http://"+s.HTTPAddr()+"/v1/messages?from=billing@contoso.com&to=a@example.org",
		strings.NewReader("Subject: t\r\n\r\nhi\r\n"))
	req.Header.Set("Authorization", "Bearer "+crmToken)
	resp, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode, time.Since(start)
}

// smtpSubmit sends one small message over SMTP and returns the reply to
// the end of DATA and how long that reply took.
func smtpSubmit(t *testing.T, s *Server) (string, time.Duration) {
	t.Helper()
	c := dialSMTP(t, s.SMTPAddrs()[0])
	c.login()
	c.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
	c.cmd("RCPT TO:<a@example.org>", "250 ")
	c.cmd("DATA", "354 ")
	start := time.Now()
	c.write("Subject: t\r\n\r\nhi\r\n.\r\n")
	reply, err := c.readReply()
	if err != nil {
		t.Fatalf("reply to DATA: %v", err)
	}
	return reply, time.Since(start)
}

// TestHungRedisFailsFast stops redis-server with SIGSTOP: SMTP answers 451
// 4.3.0 and HTTP 503 at the ingress deadline, /readyz says what is wrong
// within a second; once Redis continues, mail is taken again.
func TestHungRedisFailsFast(t *testing.T) {
	f := newFixture(t)
	s := startRelayOn(t, f, func(o *Options) { o.Redis.IngressTimeout = Duration(time.Second) })
	if code, body, _ := getReadyz(t, s); code != 200 {
		t.Fatalf("/readyz before: %d %s", code, body)
	}

	f.redis.Pause(t)
	code, body, took := getReadyz(t, s)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "did not answer") {
		t.Errorf("/readyz with Redis stopped: %d %s; want 503 saying Redis did not answer", code, body)
	}
	if took > 1500*time.Millisecond {
		t.Errorf("/readyz took %v with Redis stopped; want about 1s", took)
	}
	reply, took := smtpSubmit(t, s)
	if !strings.HasPrefix(reply, "451 4.3.0 ") || took > 2500*time.Millisecond {
		t.Errorf("SMTP with Redis stopped: %q after %v; want 451 4.3.0 within the 1s deadline", reply, took)
	}
	status, took := postMessage(t, s)
	if status != http.StatusServiceUnavailable || took > 2500*time.Millisecond {
		t.Errorf("HTTP with Redis stopped: %d after %v; want 503 within the 1s deadline", status, took)
	}

	f.redis.Resume(t)
	if reply, _ := smtpSubmit(t, s); !strings.HasPrefix(reply, "250 ") {
		t.Errorf("SMTP after Redis continued: %q", reply)
	}
	if code, body, _ := getReadyz(t, s); code != 200 {
		t.Errorf("/readyz after: %d %s", code, body)
	}
}

// TestHungRedisRefusalsNotStored: the stores that a hung Redis holds
// when SMTP answers 451 and HTTP 503 run when Redis continues; the
// refused messages are withdrawn, so that a client sending them again
// does not have them delivered twice.
func TestHungRedisRefusalsNotStored(t *testing.T) {
	f := newFixture(t)
	s := startRelayOn(t, f, func(o *Options) {
		o.Redis.IngressTimeout = Duration(time.Second)
		o.Delivery.Sender = "off"
	})
	if reply, _ := smtpSubmit(t, s); !strings.HasPrefix(reply, "250 ") {
		t.Fatalf("SMTP before: %q", reply)
	}
	f.redis.Pause(t)
	if reply, _ := smtpSubmit(t, s); !strings.HasPrefix(reply, "451 4.3.0 ") {
		t.Errorf("SMTP with Redis stopped: %q, want 451 4.3.0", reply)
	}
	if status, _ := postMessage(t, s); status != http.StatusServiceUnavailable {
		t.Errorf("HTTP with Redis stopped: %d, want 503", status)
	}
	w := s.smtp.in.withdraw
	if n := w.pending(); n != 2 {
		t.Errorf("%d withdrawals waiting while Redis is stopped, want 2", n)
	}
	f.redis.Resume(t)
	waitFor(t, 10*time.Second, "the refused messages withdrawn", func() bool { return w.pending() == 0 })
	ms, err := s.Queue().List(context.Background(), "crm", queue.Ready, 0, 10)
	if err != nil || len(ms) != 1 {
		t.Fatalf("queued messages %d (%v), want only the 1 taken before Redis stopped", len(ms), err)
	}
	for result, want := range map[string]float64{withdrawn: 2, withdrawTooLate: 0, withdrawDropped: 0, withdrawShut: 0} {
		if n := testutil.ToFloat64(w.ended.WithLabelValues(result)); n != want {
			t.Errorf("holdfast_ingress_withdrawals_total{result=%q} = %v, want %v", result, n, want)
		}
	}
	fams := scrape(t, s)
	if f := fams["holdfast_ingress_withdrawals_pending"]; f == nil || f.GetMetric()[0].GetGauge().GetValue() != 0 {
		t.Errorf("holdfast_ingress_withdrawals_pending after the withdrawals: %v, want 0", f)
	}
	if fams["holdfast_ingress_withdrawals_total"] == nil {
		t.Error("holdfast_ingress_withdrawals_total is not exported")
	}
}

// TestLongHungRedisRefusalsNotDelivered: Redis hangs for 8 s while 10
// messages are submitted, each refused with 451 after the 1 s ingress
// timeout. When it resumes, the stores it held run, and so do the
// withdrawals the relay kept sending meanwhile, all of them: none of the
// refused messages is delivered. Sent one at a time, after a pause that
// had grown to 5 s, the withdrawals came seconds after the resumption,
// when workers had delivered most of them (too_late).
func TestLongHungRedisRefusalsNotDelivered(t *testing.T) {
	f := newFixture(t)
	var outbox string
	s := startRelayOn(t, f, func(o *Options) {
		o.Redis.IngressTimeout = Duration(time.Second)
		o.Delivery.Dir = t.TempDir()
		outbox = o.Delivery.Dir
	})
	// A first message: the route is known to this relay, whose refused
	// stores then go to Redis whole.
	if reply, _ := smtpSubmit(t, s); !strings.HasPrefix(reply, "250 ") {
		t.Fatalf("SMTP before: %q", reply)
	}
	waitFor(t, 5*time.Second, "the first message delivered", func() bool {
		got, _ := filepath.Glob(filepath.Join(outbox, "*.eml"))
		return len(got) == 1
	})
	f.redis.Pause(t)
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			if reply, _ := smtpSubmit(t, s); !strings.HasPrefix(reply, "451 4.3.0 ") {
				t.Errorf("SMTP with Redis stopped: %q, want 451 4.3.0", reply)
			}
		})
	}
	wg.Wait()
	w := s.smtp.in.withdraw
	time.Sleep(7 * time.Second)
	f.redis.Resume(t)
	waitFor(t, 10*time.Second, "the withdrawals settled", func() bool { return w.pending() == 0 })
	time.Sleep(500 * time.Millisecond)
	got, _ := filepath.Glob(filepath.Join(outbox, "*.eml"))
	too := testutil.ToFloat64(w.ended.WithLabelValues(withdrawTooLate))
	if len(got) != 1 || too != 0 || testutil.ToFloat64(w.ended.WithLabelValues(withdrawn)) != 10 {
		t.Errorf("%d refused messages delivered, %v withdrawn too late, %v withdrawn; want 0, 0, 10",
			len(got)-1, too, testutil.ToFloat64(w.ended.WithLabelValues(withdrawn)))
	}
}

// TestDurabilityCheckedWhileRunning turns AOF off, then eviction on, on a
// running Redis: under strict, /readyz fails and new mail is refused with
// 451 (HTTP 503) while queued mail stays; fixed, mail is taken again.
func TestDurabilityCheckedWhileRunning(t *testing.T) {
	f := newFixture(t)
	s := startRelayOn(t, f, func(o *Options) {
		o.Redis.Strict = true
		o.Redis.CheckInterval = Duration(50 * time.Millisecond)
		o.Delivery.Sender = "off"
	})
	if reply, _ := smtpSubmit(t, s); !strings.HasPrefix(reply, "250 ") {
		t.Fatalf("SMTP while durable: %q", reply)
	}
	rdb := f.redis.Client(t)
	ctx := context.Background()
	for _, tc := range []struct{ name, value, want string }{
		{"appendonly", "no", "appendonly"},
		{"maxmemory-policy", "allkeys-lru", "maxmemory-policy"},
		{"appendfsync", "no", "appendfsync"},
	} {
		old, err := rdb.ConfigGet(ctx, tc.name).Result()
		if err != nil {
			t.Fatal(err)
		}
		if err := rdb.ConfigSet(ctx, tc.name, tc.value).Err(); err != nil {
			t.Fatal(err)
		}
		waitReady(t, s, false, tc.want)
		if reply, _ := smtpSubmit(t, s); !strings.HasPrefix(reply, "451 ") {
			t.Errorf("%s %s: SMTP reply %q, want 451", tc.name, tc.value, reply)
		}
		if status, _ := postMessage(t, s); status != http.StatusServiceUnavailable {
			t.Errorf("%s %s: HTTP status %d, want 503", tc.name, tc.value, status)
		}
		if err := rdb.ConfigSet(ctx, tc.name, old[tc.name]).Err(); err != nil {
			t.Fatal(err)
		}
		waitReady(t, s, true, "")
	}
	// The message taken before is still queued, and only it.
	ms, err := s.Queue().List(ctx, "crm", queue.Ready, 0, 10)
	if err != nil || len(ms) != 1 {
		t.Fatalf("queued messages %d (%v), want the 1 taken while durable", len(ms), err)
	}
}

// waitReady waits up to 5 s for /readyz to answer 200 (ready) or 503 with
// a body containing want.
func waitReady(t *testing.T, s *Server, ready bool, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, body, _ := getReadyz(t, s)
		if ready && code == 200 || !ready && code == 503 && strings.Contains(body, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz is %d %s; want ready=%v (%s)", code, body, ready, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMinReplicasAcked: with redis.min_replicas_acked, SMTP and HTTP
// acknowledge only once a real replica has the message, and answer with a
// temporary failure when no replica does.
func TestMinReplicasAcked(t *testing.T) {
	f := newFixture(t)
	port := strings.TrimPrefix(f.redis.Addr(), "127.0.0.1:")
	replica := redistest.Start(t, redistest.WithArgs("--replicaof", "127.0.0.1", port))
	rc := replica.Client(t)
	waitFor(t, 10*time.Second, "the replica to connect", func() bool {
		info, _ := rc.Info(context.Background(), "replication").Result()
		return strings.Contains(info, "master_link_status:up")
	})
	s := startRelayOn(t, f, func(o *Options) {
		o.Redis.MinReplicasAcked = 1
		o.Redis.ReplicasTimeout = Duration(300 * time.Millisecond)
		o.Delivery.Sender = "off"
	})
	reply, _ := smtpSubmit(t, s)
	if !strings.HasPrefix(reply, "250 ") {
		t.Fatalf("SMTP with a replica: %q", reply)
	}
	id := reply[strings.LastIndexByte(reply, ' ')+1:]
	if n, _ := rc.Keys(context.Background(), "*"+id).Result(); len(n) != 1 {
		t.Errorf("the replica lacks %s when it is acknowledged", id)
	}
	if status, _ := postMessage(t, s); status != http.StatusAccepted {
		t.Errorf("HTTP with a replica: %d", status)
	}

	replica.Kill(t)
	if reply, _ := smtpSubmit(t, s); !strings.HasPrefix(reply, "451 4.3.0 ") {
		t.Errorf("SMTP without a replica: %q, want 451 4.3.0", reply)
	}
	if status, _ := postMessage(t, s); status != http.StatusServiceUnavailable {
		t.Errorf("HTTP without a replica: %d, want 503", status)
	}
}

// TestFileChangeWhileRedisHung: a secret file that changes while Redis is
// hung cannot ask the fleet for a probe at that moment. The request is
// asked again once Redis answers, so held mail flows within seconds of
// Redis coming back, not at the end of the breaker's open interval.
func TestFileChangeWhileRedisHung(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	ctx := context.Background()
	r := e.relays[0]
	name := credentialBreaker("contoso")
	e.sim.ExpireSecret(simTenant, simClientID)
	r.exchange.creds["contoso"].Invalidate()
	var ids []string
	for n := range 5 {
		ids = append(ids, e.submit(t, 0, "billing@contoso.com", fmt.Sprintf("r%d@example.org", n), exchangeMessage(n, "billing@contoso.com")))
	}
	waitFor(t, 10*time.Second, "the breaker open and the mail held", func() bool {
		st, err := r.gate.set.Status(ctx, name)
		qs, _ := e.f.queue.Stats(ctx)
		return err == nil && st.State == breaker.Open && qs.Total.Held == 5
	})

	const rotated = "rotated-secret~43"
	e.sim.RotateSecret(simTenant, simClientID, rotated)
	e.f.redis.Pause(t)
	writeFile(t, e.secretFile, rotated+"\n")
	waitFor(t, 15*time.Second, "the relay failing to ask for a probe", func() bool {
		return strings.Contains(e.logs.String(), "cannot request a probe")
	})
	e.f.redis.Resume(t)
	resumed := time.Now()
	// The breaker's next scheduled probe is 30 s after it opened.
	waitFor(t, 10*time.Second, "the held mail delivered after Redis came back", func() bool { return e.allDelivered(t, ids) })
	t.Logf("Redis back to all delivered: %v", time.Since(resumed).Round(time.Millisecond))
}

// TestStartWhileBreakerUnreadable: a relay started with a rotated secret
// probes an open breaker at once; when Redis does not give the breaker's
// record at start, the relay reads it again until it does, rather than
// leaving the held mail to the end of the open interval.
func TestStartWhileBreakerUnreadable(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	ctx := context.Background()
	name := credentialBreaker("contoso")
	if err := e.relays[0].gate.set.Trip(ctx, name, "operator test"); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for n := range 3 {
		ids = append(ids, e.submit(t, 0, "billing@contoso.com", fmt.Sprintf("r%d@example.org", n), exchangeMessage(n, "billing@contoso.com")))
	}
	waitFor(t, 10*time.Second, "the mail held", func() bool {
		qs, _ := e.f.queue.Stats(ctx)
		return qs.Total.Held == 3
	})
	stop, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	e.relays[0].Shutdown(stop)

	// The redeploy: a new secret in Entra and in the file, and a relay
	// started with it while the breaker's record cannot be read.
	const rotated = "rotated-secret~44"
	e.sim.RotateSecret(simTenant, simClientID, rotated)
	writeFile(t, e.secretFile, rotated+"\n")
	rdb := e.f.redis.Client(t)
	record := "hf:{brk:" + name + "}"
	if err := rdb.Rename(ctx, record, record+".saved").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, record, "not a record", 0).Err(); err != nil {
		t.Fatal(err)
	}
	runRelay(t, e.opts, e.log)
	time.Sleep(2 * time.Second)
	if e.sim.ReceivedCount() != 0 {
		t.Fatalf("%d delivered while the breaker's record was unreadable", e.sim.ReceivedCount())
	}
	if err := rdb.Rename(ctx, record+".saved", record).Err(); err != nil {
		t.Fatal(err)
	}
	readable := time.Now()
	// The breaker's next scheduled probe is 30 s after the trip.
	waitFor(t, 10*time.Second, "the held mail delivered once the record was readable", func() bool { return e.allDelivered(t, ids) })
	t.Logf("record readable to all delivered: %v", time.Since(readable).Round(time.Millisecond))
}

// TestStrictStartWithoutRedis: a relay under redis.strict starts while
// Redis is stopped, refusing mail with 451 and not ready; Redis then
// comes back without AOF, and the relay stays not ready, now saying
// why; once AOF is on, it takes mail.
func TestStrictStartWithoutRedis(t *testing.T) {
	f := newFixture(t, redistest.WithArgs("--appendonly", "no"))
	f.redis.Stop(t)
	s := startRelayOn(t, f, func(o *Options) {
		o.Redis.Strict = true
		o.Redis.CheckInterval = Duration(100 * time.Millisecond)
		o.Delivery.Sender = "off"
	})
	waitReady(t, s, false, "no check of redis has passed since the relay started")
	if reply, _ := smtpSubmit(t, s); !strings.HasPrefix(reply, "451 4.3.0 ") {
		t.Errorf("SMTP before Redis answered: %q, want 451 4.3.0", reply)
	}
	if status, _ := postMessage(t, s); status != http.StatusServiceUnavailable {
		t.Errorf("HTTP before Redis answered: status %d, want 503", status)
	}
	f.redis.Restart(t)
	waitReady(t, s, false, "appendonly")
	if reply, _ := smtpSubmit(t, s); !strings.HasPrefix(reply, "451 4.3.0 ") {
		t.Errorf("SMTP with Redis back without AOF: %q, want 451 4.3.0", reply)
	}
	if err := f.redis.Client(t).ConfigSet(context.Background(), "appendonly", "yes").Err(); err != nil {
		t.Fatal(err)
	}
	waitReady(t, s, true, "")
	if reply, _ := smtpSubmit(t, s); !strings.HasPrefix(reply, "250 ") {
		t.Errorf("SMTP with Redis durable: %q, want 250", reply)
	}
}

// TestStartWithRedisRefusingUs: a Redis that refuses the configured
// password, or wants one that is not configured, stops the start with
// Redis's refusal: it does not mend itself, unlike a Redis that cannot be
// reached (TestStrictStartWithoutRedis).
func TestStartWithRedisRefusingUs(t *testing.T) {
	f := newFixture(t)
	if err := f.redis.Client(t).ConfigSet(context.Background(), "requirepass", "right-password").Err(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ password, want string }{
		{"wrong-password", "WRONGPASS"},
		{"", "NOAUTH"},
	} {
		o := f.opts
		o.Redis.Addrs = []string{f.redis.Addr()}
		o.Redis.Password = tc.password
		o.HTTP.Addr = "127.0.0.1:0"
		o.Delivery.Sender = "off"
		if err := o.Validate(); err != nil {
			t.Fatal(err)
		}
		s, err := New(context.Background(), o, nil, discardLogger())
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			s.Shutdown(ctx)
			cancel()
			t.Errorf("password %q: the relay started", tc.password)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "set redis.username and redis.password") {
			t.Errorf("password %q: %v, want Redis's %s and what to set", tc.password, err, tc.want)
		}
	}
}

// TestScrapesWhileRedisHung: with Redis stopped, scrapes that Prometheus
// abandons at a short scrape_timeout share one read of the queue instead
// of each starting its own, and each abandoned scrape is one log line,
// not one per metric family. The scrape after Redis continues is whole.
func TestScrapesWhileRedisHung(t *testing.T) {
	f := newFixture(t)
	logs := &syncBuffer{}
	s := startRelayLogged(t, f, nil, slog.New(slog.NewTextHandler(logs, nil)))
	scrape := func(timeout time.Duration) (int, string, error) {
		c := &http.Client{Timeout: timeout}
		resp, err := c.Get("http://" + s.OpsAddr() + "/metrics")
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	if code, _, err := scrape(5 * time.Second); code != http.StatusOK {
		t.Fatalf("scrape before: %d %v", code, err)
	}
	before := len(logs.String())

	f.redis.Pause(t)
	const abandoned = 6
	for range abandoned {
		if _, _, err := scrape(300 * time.Millisecond); err == nil {
			t.Fatal("a scrape with Redis stopped answered within 300 ms")
		}
	}
	// Every abandoned scrape's handler finishes within the scrape's bound
	// of its Redis reads (scrapeTimeout) after Redis stopped.
	time.Sleep(scrapeTimeout + time.Second)
	f.redis.Resume(t)
	code, body, err := scrape(5 * time.Second)
	// The queue's figures are read from Redis.
	const fromRedis = "holdfast_queue_oldest_held_age_seconds 0"
	if code != http.StatusOK || !strings.Contains(body, fromRedis) {
		t.Fatalf("scrape after Redis continued: %d %v, figures read from Redis present %v", code, err, strings.Contains(body, fromRedis))
	}

	during := logs.String()[before:]
	if n := strings.Count(during, "metrics: cannot read the queue"); n != 1 {
		t.Errorf("%d reads of the queue failed for %d scrapes, want 1 shared by all", n, abandoned)
	}
	var lines []string
	for l := range strings.Lines(during) {
		if !strings.Contains(l, "component=delivery") {
			lines = append(lines, l)
		}
	}
	// One line for the failed read of the queue, one for the scrape
	// that read, one for each abandoned scrape.
	if n := len(lines); n > abandoned+2 {
		t.Errorf("%d log lines for %d abandoned scrapes, want at most %d:\n%s", n, abandoned, abandoned+2, during)
	}
	if n := strings.Count(during, "a scrape's client gave up"); n != abandoned {
		t.Errorf("%d lines say a scrape's client gave up, want %d:\n%s", n, abandoned, during)
	}
}
