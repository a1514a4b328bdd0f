package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
)

const (
	simTenant   = "contoso.onmicrosoft.com"
	simClientID = "11111111-2222-3333-4444-555555555555"
	simSecret   = "first-secret-value~0123456789"
)

// exchangeEnv is a relay delivering to the Exchange Online simulator.
type exchangeEnv struct {
	f          *fixture
	sim        *sim.Sim
	relays     []*Server
	secretFile string
	logs       *syncBuffer
	log        *slog.Logger // the relays' logger, writing to logs
	opts       Options
}

// newExchangeEnv starts the simulator (mailboxes noreply@, billing@,
// alice@ and box1..box20@contoso.com) and replicas relays delivering to it
// over one Redis, with logs captured at debug level.
func newExchangeEnv(t testing.TB, replicas int, change func(*Options)) *exchangeEnv {
	t.Helper()
	return newExchangeEnvSim(t, replicas, nil, change)
}

// receivedOnce fails the test for each message Exchange received more
// than once, and returns how many distinct messages it received, and by
// which transports ("smtp", "graph").
func (e *exchangeEnv) receivedOnce(t *testing.T) (distinct int, via map[string]bool) {
	t.Helper()
	seen, via := map[string]int{}, map[string]bool{}
	for _, r := range e.sim.Received() {
		seen[r.MessageID]++
		via[r.Via] = true
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s delivered %d times", id, n)
		}
	}
	return len(seen), via
}

// allDelivered reports whether every message of ids is delivered.
func (e *exchangeEnv) allDelivered(t *testing.T, ids []string) bool {
	t.Helper()
	for _, id := range ids {
		if e.get(t, id).State != queue.Delivered {
			return false
		}
	}
	return true
}

// newExchangeEnvSim is newExchangeEnv with editSim changing the
// simulator's seed first.
func newExchangeEnvSim(t testing.TB, replicas int, editSim func(*sim.Config), change func(*Options)) *exchangeEnv {
	t.Helper()
	mailboxes := []sim.Mailbox{{Address: "noreply@contoso.com"}, {Address: "billing@contoso.com"}, {Address: "alice@contoso.com"}}
	for i := 1; i <= 20; i++ {
		mailboxes = append(mailboxes, sim.Mailbox{Address: fmt.Sprintf("box%d@contoso.com", i)})
	}
	cfg := sim.Config{Tenants: []sim.Tenant{{
		ID:        simTenant,
		Apps:      []sim.App{{ClientID: simClientID, Secrets: []sim.Secret{{Value: simSecret, ExpiresAt: time.Now().Add(365 * 24 * time.Hour)}}, SendAsMailboxes: []string{"*"}}},
		Mailboxes: mailboxes,
	}}}
	if editSim != nil {
		editSim(&cfg)
	}
	s, err := sim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })

	dir := t.TempDir()
	e := &exchangeEnv{f: newFixture(t), sim: s, secretFile: filepath.Join(dir, "secret"), logs: &syncBuffer{}}
	writeFile(t, e.secretFile, simSecret+"\n")
	writeFile(t, filepath.Join(dir, "ca.pem"), string(s.CACertPEM()))
	writeFile(t, filepath.Join(dir, "grants.key"), strings.Repeat("ab", 32))

	o := e.f.opts
	o.Redis.Addrs = []string{e.f.redis.Addr()}
	o.HTTP.Addr = "127.0.0.1:0"
	o.Delivery.Sender = "exchange"
	o.Delivery.Poll = Duration(50 * time.Millisecond)
	o.Credentials = []Credential{{Name: "contoso", Tenant: simTenant, ClientID: simClientID,
		Authority: s.AuthorityURL(), ClientSecretFile: e.secretFile}}
	o.Exchange.SMTPAddr = s.SMTPAddr()
	o.Exchange.GraphURL = s.GraphURL()
	o.Exchange.CAFile = filepath.Join(dir, "ca.pem")
	o.Exchange.GrantKeyFile = filepath.Join(dir, "grants.key")
	o.Exchange.MessagesPerMinute = 6000
	o.Queue.BackoffBase = Duration(time.Minute)
	for i := range o.Apps {
		o.Apps[i].Credential = "contoso"
		o.Apps[i].Mailbox = "noreply@contoso.com"
		o.Apps[i].SenderMailboxes = map[string]string{"billing@contoso.com": "billing@contoso.com"}
		o.Apps[i].Senders = append(o.Apps[i].Senders, "@contoso.com")
	}
	if change != nil {
		change(&o)
	}
	if err := o.Validate(); err != nil {
		t.Fatalf("options: %v", err)
	}
	e.opts = o
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("relay logs:\n%s", e.logs.String())
		}
	})
	e.log = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	for i := range replicas {
		// Each relay its own name in the fleet, as the replica option
		// requires.
		ro := o
		ro.Replica = fmt.Sprintf("relay-%d", i+1)
		e.relays = append(e.relays, runRelay(t, ro, e.log))
	}
	return e
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// submit sends one message over SMTP to a relay and returns its queue id.
func (e *exchangeEnv) submit(t *testing.T, relay int, from, to, body string) string {
	t.Helper()
	id, err := e.trySubmit(relay, from, to, body)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// trySubmit is submit returning its error, for use off the test's
// goroutine.
func (e *exchangeEnv) trySubmit(relay int, from, to, body string) (string, error) {
	c, err := smtp.Dial(e.relays[relay].SMTPAddrs()[0])
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", crmUser, crmPassword)); err != nil {
		return "", err
	}
	if err := c.Mail(from, nil); err != nil {
		return "", err
	}
	if err := c.Rcpt(to, nil); err != nil {
		return "", err
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	w.Write([]byte(body))
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", fmt.Errorf("DATA: %w", err)
	}
	_, id, ok := strings.Cut(resp.StatusText, "Queued as ")
	if !ok {
		return "", fmt.Errorf("reply %q", resp.StatusText)
	}
	return id, nil
}

func exchangeMessage(n int, from string) string {
	return fmt.Sprintf("From: <%s>\r\nTo: <x@example.org>\r\nSubject: test %d\r\nMessage-ID: <m%d@test>\r\n\r\nbody %d\r\n", from, n, n, n)
}

// sendByGraphAs makes every app send by Graph, each sender its own
// mailbox: box1@contoso.com to boxN.
func sendByGraphAs(n int) func(*Options) {
	return func(o *Options) {
		for i := range o.Apps {
			o.Apps[i].Via = "graph"
			o.Apps[i].SenderMailboxes = map[string]string{}
			for m := 1; m <= n; m++ {
				addr := fmt.Sprintf("box%d@contoso.com", m)
				o.Apps[i].SenderMailboxes[addr] = addr
			}
		}
	}
}

// waitFor polls cond for up to d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *exchangeEnv) get(t *testing.T, id string) *queue.Message {
	t.Helper()
	m, err := e.f.queue.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestExchangeDeliversThroughSimulator: messages submitted over SMTP
// arrive at Exchange with identical bytes after our Received: header, the
// right envelope and mailbox, and one token request serves them all.
func TestExchangeDeliversThroughSimulator(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	ids := map[string]string{}
	for i := range 10 {
		from := "billing@contoso.com"
		if i%2 == 1 {
			from = "noreply@contoso.com"
		}
		body := exchangeMessage(i, from)
		ids[fmt.Sprintf("<m%d@test>", i)] = e.submit(t, 0, from, fmt.Sprintf("rcpt%d@example.org", i), body)
	}
	waitFor(t, 10*time.Second, "10 messages at the simulator", func() bool { return e.sim.ReceivedCount() == 10 })
	for _, r := range e.sim.Received() {
		id := ids[r.MessageID]
		m := e.get(t, id)
		if m.State != queue.Delivered {
			t.Errorf("%s: state %s", id, m.State)
		}
		n := 0
		fmt.Sscanf(r.MessageID, "<m%d@test>", &n)
		want := exchangeMessage(n, r.From)
		if !bytes.HasPrefix(r.Data, []byte("Received: from ")) || !bytes.HasSuffix(r.Data, []byte(want)) {
			t.Errorf("%s: bytes at Exchange are not our Received: plus the original:\n%s", r.MessageID, r.Data)
		}
		if len(r.To) != 1 || r.To[0] != fmt.Sprintf("rcpt%d@example.org", n) {
			t.Errorf("%s: recipients %v", r.MessageID, r.To)
		}
		if r.Mailbox != r.From || r.TokenClientID != simClientID || r.Delegated || r.Via != "smtp" {
			t.Errorf("%s: sent as %s by %s (delegated %v, via %s)", r.MessageID, r.Mailbox, r.TokenClientID, r.Delegated, r.Via)
		}
	}
	if c := e.sim.Counters().Clients[simClientID]; c.TokenRequests-c.GraphTokenRequests != 1 {
		t.Errorf("%d token requests for 10 messages, want 1 per token lifetime", c.TokenRequests-c.GraphTokenRequests)
	}
	assertNoSecretsLogged(t, e)
}

// TestExchangeErrorPaths: each class of Exchange's answers takes its
// queue path.
func TestExchangeErrorPaths(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)

	unknown := e.submit(t, 0, "billing@contoso.com", "unknown-person@example.org", exchangeMessage(1, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the unknown recipient dead-lettered", func() bool { return e.get(t, unknown).State == queue.Dead })
	if m := e.get(t, unknown); !strings.Contains(m.Reason, "550") || m.Attempts != 1 {
		t.Errorf("unknown recipient: %+v", m)
	}

	e.sim.SetFault(sim.Fault{SMTPTransient: "451"})
	busy := e.submit(t, 0, "billing@contoso.com", "a@example.org", exchangeMessage(2, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the 451 retried", func() bool { return e.get(t, busy).State == queue.Scheduled })
	if m := e.get(t, busy); m.Attempts != 1 || !strings.Contains(m.LastError, "451") {
		t.Errorf("transient: %+v", m)
	}
	e.sim.SetFault(sim.Fault{})

	e.sim.ExpireSecret(simTenant, simClientID)
	e.relays[0].exchange.creds["contoso"].Invalidate()
	held := e.submit(t, 0, "billing@contoso.com", "b@example.org", exchangeMessage(3, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the expired secret held", func() bool { return e.get(t, held).State == queue.Held })
	if m := e.get(t, held); m.Attempts != 0 || !strings.Contains(m.LastError, "AADSTS7000222") || !strings.Contains(m.HoldReason, "AADSTS7000222") {
		t.Errorf("credential failure: %+v", m)
	}
	// The throttling case below needs the credential back.
	e.sim.RotateSecret(simTenant, simClientID, simSecret)
	if err := e.relays[0].gate.set.Reset(context.Background(), credentialBreaker("contoso")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the held message delivered after reset", func() bool { return e.get(t, held).State == queue.Delivered })

	// An authenticated connection is reused without a token: wait for
	// the idle one to be closed (2 s), and drop the cached token.
	time.Sleep(2500 * time.Millisecond)
	e.sim.SetFault(sim.Fault{TokenThrottle: 7 * time.Second})
	e.relays[0].exchange.creds["contoso"].Invalidate()
	throttled := e.submit(t, 0, "billing@contoso.com", "c@example.org", exchangeMessage(4, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the throttled token request deferred", func() bool { return e.get(t, throttled).State == queue.Scheduled })
	if m := e.get(t, throttled); m.Attempts != 0 || time.Until(m.Due) > 8*time.Second {
		t.Errorf("throttled: attempts %d, due in %v; want 0 and about 7s", m.Attempts, time.Until(m.Due))
	}
}

// TestExchangeSecretRotation: after the secret expires, rewriting the
// secret file makes mail flow again with no restart.
func TestExchangeSecretRotation(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	e.sim.ExpireSecret(simTenant, simClientID)
	id := e.submit(t, 0, "billing@contoso.com", "a@example.org", exchangeMessage(1, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the message held", func() bool { return e.get(t, id).State == queue.Held })

	const rotated = "second-secret-value~9876543210"
	e.sim.RotateSecret(simTenant, simClientID, rotated)
	writeFile(t, e.secretFile, rotated+"\n")
	start := time.Now()
	// The credential's watcher sees the file within 5 s and asks for a
	// probe at once; the probe closes the breaker and releases the mail.
	waitFor(t, 15*time.Second, "delivery with the rotated secret", func() bool { return e.get(t, id).State == queue.Delivered })
	t.Logf("delivered %v after the secret file was rewritten", time.Since(start).Round(time.Millisecond))
	if m := e.get(t, id); m.Attempts != 1 {
		t.Errorf("attempts %d, want 1: the credential failure spent none", m.Attempts)
	}
	if !strings.Contains(e.logs.String(), "credential file changed") {
		t.Error("the reload was not logged")
	}
	assertNoSecretsLogged(t, e, rotated)
}

// TestExchangeDelegatedMailbox: a mailbox registered with its refresh
// token sends its own mail with its delegated grant.
func TestExchangeDelegatedMailbox(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	rt := e.sim.IssueRefreshToken(simTenant, simClientID, "alice@contoso.com")
	body := strings.NewReader(fmt.Sprintf(`{"refresh_token": %q}`, rt))
	req, _ := http.NewRequest("PUT", "http://"+e.relays[0].HTTPAddr()+"/v1/mailboxes/alice@contoso.com", body)
	req.Header.Set("Authorization", "Bearer "+crmToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	got.ReadFrom(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.Contains(got.String(), rt) {
		t.Fatalf("PUT mailbox: %d %s", resp.StatusCode, got.String())
	}
	var st grantStatus
	if err := json.Unmarshal(got.Bytes(), &st); err != nil {
		t.Fatal(err)
	}
	used, err1 := time.Parse(time.RFC3339, st.LastUsedAt)
	lapses, err2 := time.Parse(time.RFC3339, st.LapsesAt)
	if err1 != nil || err2 != nil || lapses.Sub(used) != 90*24*time.Hour || time.Since(used) > time.Minute {
		t.Errorf("PUT mailbox: last used %q, lapses %q; want now and 90 days on", st.LastUsedAt, st.LapsesAt)
	}

	id := e.submit(t, 0, "alice@contoso.com", "a@example.org", exchangeMessage(1, "alice@contoso.com"))
	if m := e.get(t, id); m.Route != "mbx:contoso:alice@contoso.com" {
		t.Fatalf("route %q", m.Route)
	}
	waitFor(t, 10*time.Second, "the delegated message", func() bool { return e.sim.ReceivedCount() == 1 })
	r := e.sim.Received()[0]
	if r.Mailbox != "alice@contoso.com" || !r.Delegated {
		t.Fatalf("sent as %s, delegated %v", r.Mailbox, r.Delegated)
	}
	if n := e.sim.Counters().Mailboxes["alice@contoso.com"].RefreshTokenRedemptions; n != 1 {
		t.Errorf("%d refresh token redemptions, want 1", n)
	}
	assertNoSecretsLogged(t, e, rt)
}

// TestExchangeMailboxLimitsAcrossReplicas: two relays sharing one Redis
// never open more than 3 connections to one mailbox, and together send
// no more than its per-minute rate. The relay's own limits are not
// delivery failures: the messages over the rate are not leased, spend no
// attempt and log no failure; they wait, ready, for room.
func TestExchangeMailboxLimitsAcrossReplicas(t *testing.T) {
	e := newExchangeEnv(t, 2, func(o *Options) {
		o.Exchange.MessagesPerMinute = 24
		o.Delivery.Workers = 8
	})
	for i := range 30 {
		e.submit(t, i%2, "billing@contoso.com", fmt.Sprintf("r%d@example.org", i), exchangeMessage(i, "billing@contoso.com"))
	}
	waitFor(t, 15*time.Second, "24 messages sent", func() bool { return e.sim.ReceivedCount() >= 24 })
	var st queue.Stats
	waitFor(t, 15*time.Second, "no lease left", func() bool {
		st, _ = e.f.queue.Stats(context.Background())
		return st.Total.Leased == 0
	})
	time.Sleep(time.Second) // passes that would lease over the limit
	st, _ = e.f.queue.Stats(context.Background())
	if n := e.sim.ReceivedCount(); n != 24 {
		t.Errorf("%d messages within the first minute, want the limit of 24", n)
	}
	if c := e.sim.Counters().Mailboxes["billing@contoso.com"].MaxConcurrentSMTP; c > 3 || c < 1 {
		t.Errorf("%d concurrent connections to one mailbox, want at most 3", c)
	}
	if st.Total.Ready != 6 || st.Total.Scheduled != 0 || st.Total.Dead != 0 {
		t.Errorf("the rest should wait ready, not fail: %+v", st.Total)
	}
	for _, r := range st.Routes {
		ms, _ := e.f.queue.List(context.Background(), r.Route, queue.Ready, 0, 10)
		for _, m := range ms {
			if m.Attempts != 0 || m.LastError != "" {
				t.Errorf("a rate-limited message was tried: %+v", m)
			}
		}
	}
	if logs := e.logs.String(); strings.Contains(logs, "delivery failed") {
		t.Errorf("the relay's own rate limit logged delivery failures")
	}
}

// assertNoSecretsLogged checks the captured debug logs for the secret,
// the extra values given, and anything shaped like an access token.
func assertNoSecretsLogged(t *testing.T, e *exchangeEnv, extra ...string) {
	t.Helper()
	logs := e.logs.String()
	if logs == "" {
		t.Fatal("no logs captured")
	}
	for _, s := range append([]string{simSecret, "eyJ"}, extra...) {
		if strings.Contains(logs, s) {
			t.Errorf("the logs contain a secret or token (%.6s…)", s)
		}
	}
}

// TestExchangeGraph: an app set to "graph" sends through sendMail; a
// message over Graph's size limit goes by SMTP instead.
func TestExchangeGraph(t *testing.T) {
	e := newExchangeEnv(t, 1, func(o *Options) {
		for i := range o.Apps {
			o.Apps[i].Via = "graph"
		}
	})
	small := exchangeMessage(1, "billing@contoso.com")
	e.submit(t, 0, "billing@contoso.com", "a@example.org", small)
	large := "From: <billing@contoso.com>\r\nSubject: large\r\nMessage-ID: <large@test>\r\n\r\n" +
		strings.Repeat(strings.Repeat("y", 998)+"\r\n", 3300)
	e.submit(t, 0, "billing@contoso.com", "b@example.org", large)
	waitFor(t, 15*time.Second, "both messages at the simulator", func() bool { return e.sim.ReceivedCount() == 2 })
	for _, r := range e.sim.Received() {
		want := "graph"
		if r.MessageID == "<large@test>" {
			want = "smtp"
		}
		if r.Via != want || r.Mailbox != "billing@contoso.com" {
			t.Errorf("%s went by %s as %s, want %s", r.MessageID, r.Via, r.Mailbox, want)
		}
		if r.Via == "graph" && !bytes.HasSuffix(r.Data, []byte(small)) {
			t.Errorf("graph bytes differ:\n%s", r.Data)
		}
	}

	e.sim.SetFault(sim.Fault{GraphThrottle: 9 * time.Second})
	id := e.submit(t, 0, "billing@contoso.com", "c@example.org", exchangeMessage(3, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the throttled sendMail deferred", func() bool { return e.get(t, id).State == queue.Scheduled })
	if m := e.get(t, id); m.Attempts != 0 || time.Until(m.Due) > 10*time.Second || !strings.Contains(m.LastError, "429") {
		t.Errorf("graph 429: %+v (due in %v)", m, time.Until(m.Due))
	}
}

// TestExchangeDelegatedRotationAcrossReplicas: two relays redeem one
// mailbox's grant at once; every message goes out, the rotated refresh
// token is kept, and the stored one still works afterwards.
func TestExchangeDelegatedRotationAcrossReplicas(t *testing.T) {
	e := newExchangeEnv(t, 2, nil)
	rt := e.sim.IssueRefreshToken(simTenant, simClientID, "alice@contoso.com")
	ctx := context.Background()
	if err := e.relays[0].exchange.grants.Put(ctx, "alice@contoso.com", "contoso", rt); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.submit(t, i%2, "alice@contoso.com", fmt.Sprintf("r%d@example.org", i), exchangeMessage(i, "alice@contoso.com"))
		}()
	}
	wg.Wait()
	waitFor(t, 15*time.Second, "10 delegated messages", func() bool { return e.sim.ReceivedCount() == 10 })
	for _, r := range e.sim.Received() {
		if !r.Delegated || r.Mailbox != "alice@contoso.com" {
			t.Fatalf("sent as %s, delegated %v", r.Mailbox, r.Delegated)
		}
	}
	n := e.sim.Counters().Mailboxes["alice@contoso.com"].RefreshTokenRedemptions
	if n < 1 || n > 2 {
		t.Fatalf("%d redemptions by two replicas, want 1 or 2", n)
	}
	g, err := e.relays[1].exchange.grants.Get(ctx, "alice@contoso.com")
	if err != nil || g.Generation < 2 {
		t.Fatalf("grant after redemption: %+v %v; want the rotated token stored", g, err)
	}
	// The stored refresh token is the newest and still redeems.
	src := e.relays[1].exchange.grants.TokenSource(e.relays[1].exchange.creds["contoso"], "alice@contoso.com")
	src.Invalidate()
	if _, err := src.Token(ctx); err != nil {
		t.Fatalf("redeeming the stored refresh token: %v", err)
	}
}

// TestExchangePartialRecipients: a recipient Exchange rejects does not
// fail the others; the reply kept names it.
func TestExchangePartialRecipients(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	c, err := smtp.Dial(e.relays[0].SMTPAddrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", crmUser, crmPassword)); err != nil {
		t.Fatal(err)
	}
	err = c.SendMail("billing@contoso.com", []string{"ok@example.org", "unknown-x@example.org", "fine@example.org"},
		strings.NewReader(exchangeMessage(1, "billing@contoso.com")))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the message", func() bool { return e.sim.ReceivedCount() == 1 })
	if to := e.sim.Received()[0].To; strings.Join(to, ",") != "ok@example.org,fine@example.org" {
		t.Fatalf("delivered to %v", to)
	}
	st, _ := e.f.queue.Stats(context.Background())
	if st.Total.Dead != 0 {
		t.Fatalf("dead letters: %+v", st.Total)
	}
}

// TestExchangeReloadNow: Reload (SIGHUP) picks up a rewritten secret file
// at once, without waiting for the file watcher.
func TestExchangeReloadNow(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	writeFile(t, e.secretFile, "another-secret~000\n")
	if err := e.relays[0].Reload(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(e.logs.String(), "credential file changed") {
		t.Fatal("Reload did not load the changed secret")
	}
	writeFile(t, e.secretFile, "")
	if err := e.relays[0].Reload(); err == nil {
		t.Fatal("an empty secret file reloaded without error")
	}
}

// TestExchangeShutdownInterruptsStalledSend: a server that never greets
// (with the default 1 min command timeout) does not hold a delivery past
// the shutdown grace: cancelling sends closes the connection at once and
// the message goes back to the queue with no attempt spent.
func TestExchangeShutdownInterruptsStalledSend(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	e.sim.SetFault(sim.Fault{SMTPStall: "greeting"})
	id := e.submit(t, 0, "billing@contoso.com", "a@example.org", exchangeMessage(1, "billing@contoso.com"))
	waitFor(t, 5*time.Second, "the message being sent", func() bool { return e.get(t, id).State == queue.Leased })
	time.Sleep(300 * time.Millisecond) // into the wait for the greeting
	e.relays[0].deliverer.cancelSend()
	waitFor(t, 5*time.Second, "the stalled send to give up", func() bool { return e.get(t, id).State != queue.Leased })
	m := e.get(t, id)
	if m.Attempts != 0 || !strings.Contains(m.LastError, "interrupted by shutdown") {
		t.Fatalf("after the interrupted send: state %s, attempts %d, last error %q", m.State, m.Attempts, m.LastError)
	}
}

// TestAPIRepliesKeepAngleBrackets: GET /v1/messages/ID shows Exchange's
// 250 with its <message-id> as Exchange wrote it, not as \u003c…\u003e,
// which is how Go's JSON writes < and > unless told not to.
func TestAPIRepliesKeepAngleBrackets(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	id := e.submit(t, 0, "billing@contoso.com", "a@example.org", exchangeMessage(1, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "the message delivered", func() bool { return e.get(t, id).State == queue.Delivered })
	req, _ := http.NewRequest(http.MethodGet, "http://"+e.relays[0].HTTPAddr()+"/v1/messages/"+id, nil)
	req.Header.Set("Authorization", "Bearer "+crmToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), `"last_reply":"250 2.0.0 OK <`) || strings.Contains(string(body), `\u003c`) {
		t.Errorf("GET /v1/messages/%s: %s", id, body)
	}
}
