package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"holdfast/breaker"
	"holdfast/queue"
	"holdfast/queue/redistest"
)

// fakeWorkers stands in for a running relay: it delivers route's mail,
// dead-lettering messages to "unknown@…", until ctx ends.
func fakeWorkers(ctx context.Context, q *queue.Queue, route string) {
	for ctx.Err() == nil {
		res, err := q.Lease(ctx, route, 10, time.Minute)
		if err != nil {
			return
		}
		for _, l := range res.Leases {
			if strings.HasPrefix(l.To[0], "unknown@") {
				q.Fail(ctx, l, "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found")
			} else {
				q.Ack(ctx, l, "250 2.0.0 OK")
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// enqueueEach stores one small message on each route given, in order.
func enqueueEach(t *testing.T, q *queue.Queue, routes ...string) {
	t.Helper()
	for _, route := range routes {
		if _, _, err := q.Enqueue(t.Context(), queue.Submission{Route: route, App: "crm", From: "billing@contoso.com",
			To: []string{"ann@example.org"}, Body: []byte("Subject: x\r\n\r\nx\r\n")}); err != nil {
			t.Fatal(err)
		}
	}
}

// fakeWorkersAfter runs fakeWorkers on route from after the delay (once
// the command under test has counted the queue) until the test ends.
func fakeWorkersAfter(t *testing.T, q *queue.Queue, route string, after time.Duration) {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(after)
		fakeWorkers(ctx, q, route)
	}()
	t.Cleanup(func() { cancel(); <-done })
}

func TestQueueDrain(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfig(t, srv.Addr())
	q := queue.New(srv.Client(t), queue.Options{})
	ctx := t.Context()
	enqueue := func(route, rcpt string) {
		t.Helper()
		if _, _, err := q.Enqueue(ctx, queue.Submission{Route: route, App: route, From: "a@contoso.com", To: []string{rcpt}, Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	enqueue("crm", "a@example.org")
	enqueue("crm", "b@example.org")
	enqueue("crm", "unknown@example.org")
	// One of crm's messages already failed once and waits for its backoff:
	// drain must not wait for it.
	l, err := q.Lease(ctx, "crm", 1, time.Minute)
	if err != nil || len(l.Leases) != 1 {
		t.Fatal(err)
	}
	if _, err := q.Retry(ctx, l.Leases[0], "421 4.3.2 Service not active"); err != nil {
		t.Fatal(err)
	}
	enqueue("web", "c@example.org")
	enqueue("web", "d@example.org")
	if err := q.HoldRoute(ctx, "web", "breaker app:web open (invalid_client AADSTS7000222)"); err != nil {
		t.Fatal(err)
	}

	// The workers start once drain has counted the queue.
	startWorkers := func(routes ...string) (stop func()) {
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			time.Sleep(300 * time.Millisecond)
			for _, r := range routes[1:] {
				go fakeWorkers(wctx, q, r)
			}
			fakeWorkers(wctx, q, routes[0])
		}()
		return func() { cancel(); <-done }
	}
	stop := startWorkers("crm", "web")

	r := runCmd(t, "queue", "drain", "--config", cfg, "--timeout", "10s")
	if r.code != exitError {
		t.Fatalf("drain with held mail: exit %d, want %d\n%s%s", r.code, exitError, r.stdout, r.stderr)
	}
	for _, want := range []string{
		"2 delivered, 2 held, 1 failed",
		"2 messages held: route web held (breaker app:web open (invalid_client AADSTS7000222))",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("drain output lacks %q:\n%s", want, r.stdout)
		}
	}

	stop()

	// Only crm: everything there is done.
	enqueue("crm", "e@example.org")
	defer startWorkers("crm")()
	r = runCmd(t, "queue", "drain", "--config", cfg, "--route", "crm", "--timeout", "10s")
	if r.code != exitOK || !strings.Contains(r.stdout, "1 delivered, 0 held, 0 failed") {
		t.Fatalf("drain of crm: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

func TestQueueDrainWithoutRelay(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfig(t, srv.Addr())
	q := queue.New(srv.Client(t), queue.Options{})
	if _, _, err := q.Enqueue(t.Context(), queue.Submission{Route: "crm", App: "crm", From: "a@contoso.com", To: []string{"b@example.org"}, Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	r := runCmd(t, "queue", "drain", "--config", cfg, "--timeout", "1s")
	if r.code != exitError || !strings.Contains(r.stdout, "1 messages still waiting after 1s: is a relay running") {
		t.Fatalf("drain with no relay: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestQueueDrainNamesLastReply: mail that still waits when drain gives up
// is named with the upstream's last reply to it, and the error on stderr
// sums up what stdout said instead of repeating it.
func TestQueueDrainNamesLastReply(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfig(t, srv.Addr())
	ctx := t.Context()
	q := queue.New(srv.Client(t), queue.Options{})
	if _, _, err := q.Enqueue(ctx, queue.Submission{Route: "crm", App: "crm", From: "a@contoso.com", To: []string{"b@example.org"}, Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	res, err := q.Lease(ctx, "crm", 1, time.Minute)
	if err != nil || len(res.Leases) != 1 {
		t.Fatalf("lease: %v %+v", err, res)
	}
	const reply = "451 4.3.0 Temporary server error. Please try again later"
	if _, err := q.Retry(ctx, res.Leases[0], reply); err != nil {
		t.Fatal(err)
	}
	r := runCmd(t, "queue", "drain", "--config", cfg, "--timeout", "1s")
	if want := "1 messages still waiting after 1s (last reply: " + reply + "): is a relay running"; r.code != exitError || !strings.Contains(r.stdout, want) {
		t.Fatalf("drain: exit %d, stdout lacks %q:\n%s%s", r.code, want, r.stdout, r.stderr)
	}
	if want := "holdfast: queue drain: the queue is not empty: 1 still waiting\n"; r.stderr != want {
		t.Errorf("drain's stderr %q, want %q", r.stderr, want)
	}
}

// TestQueueDrainProbesOpenBreakers: drain asks for a probe of an open
// breaker at once, instead of waiting out its open interval; when the
// probe fails the summary names the breaker, since when and why; when it
// succeeds the held mail is delivered.
func TestQueueDrainProbesOpenBreakers(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfig(t, srv.Addr())
	ctx := t.Context()
	q := queue.New(srv.Client(t), queue.Options{})
	set := breaker.New(srv.Client(t), breaker.Options{})
	const route, name = "app:contoso:noreply@contoso.com", "cred:contoso"
	for i := range 3 {
		if _, _, err := q.Enqueue(ctx, queue.Submission{Route: route, App: "crm", From: "noreply@contoso.com",
			To: []string{fmt.Sprintf("r%d@example.org", i)}, Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	if err := set.Trip(ctx, name, "invalid_client AADSTS7000222: The provided client secret keys are expired."); err != nil {
		t.Fatal(err)
	}
	if err := q.HoldRoute(ctx, route, "credential: breaker cred:contoso open"); err != nil {
		t.Fatal(err)
	}
	// A relay's prober: it can only acquire the probe when one was asked
	// for, as the breaker's next probe is 30 s away.
	prober := func(result error) (stop func() bool) {
		pctx, cancel := context.WithCancel(ctx)
		probed := make(chan bool, 1)
		go func() {
			defer close(probed)
			for pctx.Err() == nil {
				if ok, _ := set.AcquireProbe(pctx, name); ok {
					_ = set.ProbeResult(pctx, name, result)
					if result == nil {
						// A relay releases the route when it sees the
						// breaker closed, up to a poll later.
						time.Sleep(700 * time.Millisecond)
						_ = q.ReleaseRoute(pctx, route)
						go fakeWorkers(pctx, q, route)
					}
					probed <- true
					<-pctx.Done()
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
		return func() bool { cancel(); return <-probed }
	}

	stop := prober(errors.New("invalid_client AADSTS7000222: The provided client secret keys are expired."))
	r := runCmd(t, "queue", "drain", "--config", cfg, "--timeout", "5s")
	if !stop() {
		t.Fatal("drain did not ask for a probe")
	}
	if r.code != exitError || !strings.Contains(r.stdout, "breaker cred:contoso open since ") ||
		!regexp.MustCompile(`3 messages held: breaker cred:contoso open since \d\d:\d\d:\d\dZ \(invalid_client AADSTS7000222`).MatchString(r.stdout) {
		t.Fatalf("drain with a failing probe: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	stop = prober(nil)
	r = runCmd(t, "queue", "drain", "--config", cfg, "--timeout", "10s")
	if !stop() {
		t.Fatal("drain did not ask for a probe")
	}
	if r.code != exitOK || !strings.Contains(r.stdout, "3 delivered, 0 held, 0 failed") {
		t.Fatalf("drain with a successful probe: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestQueueDrainWaitsForRedis: Redis hung for longer than its read
// timeout during a drain, as in a failover: drain says so once, keeps
// following the queue, and ends as usual when the mail is delivered after
// Redis answers again. Redis that does not answer again by the timeout
// ends the drain with an error that says what happened and what to do.
func TestQueueDrainWaitsForRedis(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfig(t, srv.Addr())
	edited, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	edited = []byte(strings.Replace(string(edited), "redis:\n", "redis:\n  read_timeout: 200ms\n  write_timeout: 200ms\n", 1))
	if err := os.WriteFile(cfg, edited, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	q := queue.New(srv.Client(t), queue.Options{})
	for i := range 3 {
		if _, _, err := q.Enqueue(ctx, queue.Submission{Route: "crm", App: "crm", From: "a@contoso.com", To: []string{fmt.Sprintf("r%d@example.org", i)}, Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	// Redis hangs while drain follows the queue; the workers deliver once
	// it is back.
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(700 * time.Millisecond)
		srv.Pause(t)
		time.Sleep(1500 * time.Millisecond)
		srv.Resume(t)
		fakeWorkers(wctx, q, "crm")
	}()
	r := runCmd(t, "queue", "drain", "--config", cfg, "--timeout", "20s")
	cancel()
	<-done
	if r.code != exitOK || !strings.Contains(r.stdout, "3 delivered, 0 held, 0 failed") {
		t.Fatalf("drain across a hung Redis: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	addr := fmt.Sprintf("[%s]", srv.Addr())
	for _, want := range []string{"redis " + addr + " does not answer (", "); trying again until the timeout\n", "redis " + addr + " answers again\n"} {
		if strings.Count(r.stderr, want) != 1 {
			t.Errorf("stderr has %q %d times, want once:\n%s", want, strings.Count(r.stderr, want), r.stderr)
		}
	}

	// Hung past the timeout.
	if _, _, err := q.Enqueue(ctx, queue.Submission{Route: "crm", App: "crm", From: "a@contoso.com", To: []string{"late@example.org"}, Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(700 * time.Millisecond)
		srv.Pause(t)
	}()
	r = runCmd(t, "queue", "drain", "--config", cfg, "--timeout", "2s")
	srv.Resume(t)
	want := "had not answered again at the timeout (2s); the queued mail stays queued: run the drain again once Redis answers\n"
	if r.code != exitError || !strings.HasPrefix(r.stderr[strings.LastIndex(r.stderr[:len(r.stderr)-1], "\n")+1:], "holdfast: queue drain: redis "+addr+" stopped answering (") || !strings.HasSuffix(r.stderr, want) {
		t.Fatalf("drain with Redis hung past the timeout: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if ms, err := q.List(ctx, "crm", queue.Ready, 0, 10); err != nil || len(ms) != 1 {
		t.Errorf("the waiting message: %d ready (%v)", len(ms), err)
	}
}

// TestQueueDrainRedisRestartedEmpty: Redis restarts without its files
// during a drain, and no relay delivers anything. drain waits for it,
// and then says the mail it no longer finds was lost, and exits 1: it
// does not count it delivered.
func TestQueueDrainRedisRestartedEmpty(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfig(t, srv.Addr())
	ctx := t.Context()
	q := queue.New(srv.Client(t), queue.Options{})
	for i := range 3 {
		if _, _, err := q.Enqueue(ctx, queue.Submission{Route: "crm", App: "crm", From: "a@contoso.com", To: []string{fmt.Sprintf("r%d@example.org", i)}, Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(700 * time.Millisecond)
		srv.Stop(t)
		ents, _ := os.ReadDir(srv.Dir())
		for _, e := range ents {
			if !strings.HasSuffix(e.Name(), ".log") {
				os.RemoveAll(filepath.Join(srv.Dir(), e.Name()))
			}
		}
		time.Sleep(4 * time.Second)
		srv.Restart(t)
	}()
	r := runCmd(t, "queue", "drain", "--config", cfg, "--timeout", "15s")
	<-done
	if r.code != exitError || strings.Contains(r.stdout, "3/3 delivered") || strings.Contains(r.stdout, "\n3 delivered,") ||
		!strings.Contains(r.stderr, "no longer holds the queue it held when the drain began") {
		t.Errorf("drain across a Redis that restarted empty: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
}

// TestQueueDrainMailboxWaits: mail of a mailbox Exchange asked the fleet
// to leave alone past the drain's timeout (a daily quota, a block) does
// not keep the drain waiting, nor is it blamed on the relays: drain ends
// once the rest is delivered, and names the wait and its end.
func TestQueueDrainMailboxWaits(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfig(t, srv.Addr())
	rdb := srv.Client(t)
	ctx := t.Context()
	q := queue.New(rdb, queue.Options{})
	const waiting, flowing = "app:contoso:billing@contoso.com", "app:contoso:noreply@contoso.com"
	enqueueEach(t, q, waiting, waiting, flowing)
	if _, err := queue.NewLimiter(rdb, nil).HoldMailbox(ctx, "billing@contoso.com", "blocked", 6*time.Hour); err != nil {
		t.Fatal(err)
	}
	fakeWorkersAfter(t, q, flowing, 300*time.Millisecond)

	start := time.Now()
	r := runCmd(t, "queue", "drain", "--config", cfg, "--timeout", "30s")
	took := time.Since(start)
	if r.code != exitError {
		t.Fatalf("drain with a mailbox waiting: exit %d, want %d\n%s%s", r.code, exitError, r.stdout, r.stderr)
	}
	if took > 20*time.Second {
		t.Errorf("drain took %v: it waited for the timeout (30s) for mail its mailbox keeps past it", took)
	}
	for _, want := range []string{
		"1 delivered, 0 held, 0 failed",
		"2 messages wait for their mailbox past the timeout:",
		"mailbox billing@contoso.com waits until ",
		": Exchange holds its sending (550 5.2.25x, or its daily recipient quota)",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("drain output lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "is a relay running") {
		t.Errorf("drain blames the relays for mail its mailbox keeps:\n%s", r.stdout)
	}
	if want := "holdfast: queue drain: the queue is not empty: 2 waiting for their mailbox\n"; r.stderr != want {
		t.Errorf("drain's stderr %q, want %q", r.stderr, want)
	}
}

// TestQueueDrainGraphWaitKeepsSMTPMail: Graph's 429 of a mailbox holds
// only its mail that goes by Graph: a delegated route of the same mailbox
// (always SMTP) keeps flowing, and drain waits for it and sees it
// delivered rather than counting it as waiting for its mailbox.
func TestQueueDrainGraphWaitKeepsSMTPMail(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfig(t, srv.Addr())
	rdb := srv.Client(t)
	ctx := t.Context()
	q := queue.New(rdb, queue.Options{})
	const route = "mbx:contoso:billing@contoso.com" // delegated: SMTP
	enqueueEach(t, q, route, route)
	if _, err := queue.NewLimiter(rdb, nil).HoldMailbox(ctx, "billing@contoso.com", "graph", 6*time.Hour); err != nil {
		t.Fatal(err)
	}
	fakeWorkersAfter(t, q, route, time.Second) // the relays deliver this SMTP mail, a moment later
	r := runCmd(t, "queue", "drain", "--config", cfg, "--timeout", "30s")
	if r.code != 0 || strings.Contains(r.stdout, "wait for their mailbox") {
		t.Errorf("drain: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
