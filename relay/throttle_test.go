package relay

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"holdfast/queue"
)

var (
	attackerIP = net.IPv4(127, 0, 0, 1)
	otherIP    = net.IPv4(127, 0, 0, 2)
	thirdIP    = net.IPv4(127, 0, 0, 3)
)

// smtpAuth opens a session from ip and tries one AUTH PLAIN, returning the
// reply.
func smtpAuthFrom(t *testing.T, addr string, ip net.IP, user, password string) string {
	t.Helper()
	c := dialSMTPRaw(t, addr, ip)
	c.expect("220 ")
	c.cmd("EHLO client.test", "250 ")
	c.write("AUTH PLAIN " + smtpPlain("", user, password) + "\r\n")
	reply, err := c.readReply()
	if err != nil {
		t.Fatalf("AUTH: %v", err)
	}
	c.nc.Close()
	return reply
}

// TestAuthThrottleSMTP: 100 wrong passwords from one IP run bcrypt at most
// 10 times; past the threshold the IP and the user name get 454 4.7.0
// unchecked, another IP and user keep working, a success from another IP
// resets nothing, the refusals are counted, and unblocking clears a block.
func TestAuthThrottleSMTP(t *testing.T) {
	f := newFixture(t)
	s := startRelayOn(t, f, nil)
	// Refusals wait a second each; the test makes 90 of them.
	s.smtp.in.guard.delay = time.Millisecond
	addr := s.SMTPAddrs()[0]

	c := dialSMTPRaw(t, addr, attackerIP)
	c.expect("220 ")
	c.cmd("EHLO client.test", "250 ")
	replies := map[string]int{}
	for i := range 100 {
		c.write("AUTH PLAIN " + smtpPlain("", crmUser, "guess-"+string(rune('a'+i%26))) + "\r\n")
		reply, err := c.readReply()
		if err != nil {
			t.Fatalf("attempt %d: %v", i, err)
		}
		replies[reply[:9]]++
	}
	if runs := s.smtp.apps.bcryptRuns.Load(); runs > 10 {
		t.Errorf("%d bcrypt runs for 100 wrong passwords, want at most 10", runs)
	}
	if replies["535 5.7.8"] != 10 || replies["454 4.7.0"] != 90 {
		t.Errorf("replies %v, want 10 × 535 5.7.8 then 90 × 454 4.7.0", replies)
	}

	// The right password from the blocked IP is refused unchecked too.
	if r := smtpAuthFrom(t, addr, attackerIP, webUser, webPassword); !strings.HasPrefix(r, "454 4.7.0 ") {
		t.Errorf("right password from the blocked IP: %q, want 454 4.7.0", r)
	}
	// The blocked user name is refused from any IP.
	if r := smtpAuthFrom(t, addr, thirdIP, crmUser, crmPassword); !strings.HasPrefix(r, "454 4.7.0 ") {
		t.Errorf("blocked user from another IP: %q, want 454 4.7.0", r)
	}
	// Another IP and user are not affected, and their success resets
	// nothing.
	if r := smtpAuthFrom(t, addr, otherIP, webUser, webPassword); !strings.HasPrefix(r, "235 ") {
		t.Errorf("another IP and user: %q, want 235", r)
	}
	if r := smtpAuthFrom(t, addr, attackerIP, webUser, webPassword); !strings.HasPrefix(r, "454 4.7.0 ") {
		t.Errorf("blocked IP after another IP's success: %q, want 454 4.7.0", r)
	}
	if n := testutil.ToFloat64(s.smtp.in.guard.refused.WithLabelValues("smtp")); n != 93 {
		t.Errorf("holdfast_auth_throttled_total{ingress=smtp} = %v, want 93", n)
	}

	th := queue.NewAuthThrottle(f.redis.Client(t), 10, 5*time.Minute)
	if ok, err := th.Unblock(context.Background(), "ip", "127.0.0.1"); !ok || err != nil {
		t.Fatalf("unblock ip: %v %v", ok, err)
	}
	if r := smtpAuthFrom(t, addr, attackerIP, webUser, webPassword); !strings.HasPrefix(r, "235 ") {
		t.Errorf("after unblocking the IP: %q, want 235", r)
	}
	if r := smtpAuthFrom(t, addr, otherIP, crmUser, crmPassword); !strings.HasPrefix(r, "454 4.7.0 ") {
		t.Errorf("the user is still blocked: %q, want 454 4.7.0", r)
	}
	if ok, err := th.Unblock(context.Background(), "user", crmUser); !ok || err != nil {
		t.Fatalf("unblock user: %v %v", ok, err)
	}
	if r := smtpAuthFrom(t, addr, otherIP, crmUser, crmPassword); !strings.HasPrefix(r, "235 ") {
		t.Errorf("after unblocking the user: %q, want 235", r)
	}
}

// guessFrom tries n wrong passwords for user from ip, in one session.
func guessFrom(t *testing.T, addr string, ip net.IP, user string, n int) {
	t.Helper()
	c := dialSMTPRaw(t, addr, ip)
	c.expect("220 ")
	c.cmd("EHLO client.test", "250 ")
	for i := range n {
		c.write("AUTH PLAIN " + smtpPlain("", user, "guess-"+string(rune('a'+i%26))) + "\r\n")
		if _, err := c.readReply(); err != nil {
			t.Fatalf("guess %d: %v", i, err)
		}
	}
}

// TestAuthThrottleSMTPKnownIP: wrong passwords for an application's user
// name from another address block that name, but the application, from
// the IP it authenticated from before, keeps authenticating; the right
// password from a new IP is still refused.
func TestAuthThrottleSMTPKnownIP(t *testing.T) {
	f := newFixture(t)
	s := startRelayOn(t, f, nil)
	s.smtp.in.guard.delay = time.Millisecond
	addr := s.SMTPAddrs()[0]
	if r := smtpAuthFrom(t, addr, otherIP, crmUser, crmPassword); !strings.HasPrefix(r, "235 ") {
		t.Fatalf("the application before the guesses: %q, want 235", r)
	}
	guessFrom(t, addr, attackerIP, crmUser, 12)
	if r := smtpAuthFrom(t, addr, thirdIP, crmUser, crmPassword); !strings.HasPrefix(r, "454 4.7.0 ") {
		t.Errorf("the right password from a new IP: %q, want 454 4.7.0", r)
	}
	if r := smtpAuthFrom(t, addr, otherIP, crmUser, crmPassword); !strings.HasPrefix(r, "235 ") {
		t.Errorf("the application from its own IP during the guesses: %q, want 235", r)
	}
}

// TestAuthThrottleSMTPKnownIPCached: an application's new address (a new
// pod) whose AUTH the password cache answered is known too.
func TestAuthThrottleSMTPKnownIPCached(t *testing.T) {
	f := newFixture(t)
	s := startRelayOn(t, f, nil)
	s.smtp.in.guard.delay = time.Millisecond
	addr := s.SMTPAddrs()[0]
	for _, ip := range []net.IP{otherIP, thirdIP} {
		if r := smtpAuthFrom(t, addr, ip, crmUser, crmPassword); !strings.HasPrefix(r, "235 ") {
			t.Fatalf("the application from %v before the guesses: %q, want 235", ip, r)
		}
	}
	if runs := s.smtp.apps.bcryptRuns.Load(); runs != 1 {
		t.Fatalf("%d bcrypt runs, want 1: the second AUTH is the cache's", runs)
	}
	guessFrom(t, addr, attackerIP, crmUser, 12)
	if r := smtpAuthFrom(t, addr, thirdIP, crmUser, crmPassword); !strings.HasPrefix(r, "235 ") {
		t.Errorf("the application's second address during the guesses: %q, want 235", r)
	}
	if r := smtpAuthFrom(t, addr, net.IPv4(127, 0, 0, 4), crmUser, crmPassword); !strings.HasPrefix(r, "454 4.7.0 ") {
		t.Errorf("a new address during the guesses: %q, want 454 4.7.0", r)
	}
}

// httpFrom posts a message from ip with token.
func httpFrom(t *testing.T, s *Server, ip net.IP, token string) (int, http.Header) {
	t.Helper()
	code, hdr, _ := httpFromBody(t, s, ip, token)
	return code, hdr
}

// httpFromBody is httpFrom with the answer's body.
func httpFromBody(t *testing.T, s *Server, ip net.IP, token string) (int, http.Header, string) {
	t.Helper()
	tr := &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}}).DialContext}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodPost, "http://"+s.HTTPAddr()+"/v1/messages?from=billing@contoso.com&to=a@example.org",
		strings.NewReader("Subject: t\r\n\r\nhi\r\n"))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header, string(body)
}

// TestAuthThrottleHTTP: wrong bearer tokens from one IP get 401 up to the
// threshold, then 429 with Retry-After, even with the right token; another
// IP is not affected.
func TestAuthThrottleHTTP(t *testing.T) {
	f := newFixture(t)
	s := startRelayOn(t, f, nil)
	for i := range 10 {
		if code, _ := httpFrom(t, s, attackerIP, "wrong-token"); code != http.StatusUnauthorized {
			t.Fatalf("wrong token %d: %d, want 401", i, code)
		}
	}
	code, hdr := httpFrom(t, s, attackerIP, "wrong-token")
	if code != http.StatusTooManyRequests || hdr.Get("Retry-After") == "" {
		t.Errorf("11th wrong token: %d Retry-After %q, want 429 with Retry-After", code, hdr.Get("Retry-After"))
	}
	if code, _ := httpFrom(t, s, attackerIP, crmToken); code != http.StatusTooManyRequests {
		t.Errorf("right token from the blocked IP: %d, want 429", code)
	}
	if code, _ := httpFrom(t, s, otherIP, crmToken); code != http.StatusAccepted {
		t.Errorf("right token from another IP: %d, want 202", code)
	}
	if n := testutil.ToFloat64(s.smtp.in.guard.refused.WithLabelValues("http")); n != 2 {
		t.Errorf("holdfast_auth_throttled_total{ingress=http} = %v, want 2", n)
	}
}

// TestAuthThrottleAdminToken: wrong admin tokens at the breaker API count
// among the address's failed authentications, as wrong application
// tokens do: past the threshold the address gets 429, with the right
// admin token too, and at the messages API; another address is not
// affected. A request without a token is refused, not counted.
func TestAuthThrottleAdminToken(t *testing.T) {
	s := newExchangeEnv(t, 1, withAdminToken).relays[0]
	get := func(ip net.IP, token string) int {
		t.Helper()
		tr := &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}}).DialContext}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest(http.MethodGet, "http://"+s.HTTPAddr()+"/v1/breakers", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatalf("GET: %v", err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for range 20 {
		if code := get(attackerIP, ""); code != http.StatusUnauthorized {
			t.Fatalf("no token: %d, want 401", code)
		}
	}
	for i := range 10 {
		if code := get(attackerIP, "wrong-admin-token"); code != http.StatusUnauthorized {
			t.Fatalf("wrong admin token %d: %d, want 401", i, code)
		}
	}
	if code := get(attackerIP, adminToken); code != http.StatusTooManyRequests {
		t.Errorf("the right admin token from the blocked address: %d, want 429", code)
	}
	if code, _ := httpFrom(t, s, attackerIP, crmToken); code != http.StatusTooManyRequests {
		t.Errorf("an application's token from the blocked address: %d, want 429", code)
	}
	if code := get(otherIP, adminToken); code != http.StatusOK {
		t.Errorf("the right admin token from another address: %d, want 200", code)
	}
}

// TestAuthThrottleExemptNetwork: applications that share one address (a
// proxy, a NAT, the relay's own host) in auth_throttle.exempt_networks
// are not locked out by one of them failing: wrong tokens and passwords
// from there are refused one by one, not blocked, while the right ones
// keep working; an SMTP user name that failed too often is still blocked
// there, and an address outside the networks is blocked as before.
func TestAuthThrottleExemptNetwork(t *testing.T) {
	f := newFixture(t)
	s := startRelayOn(t, f, func(o *Options) { o.AuthThrottle.ExemptNetworks = []string{"127.0.0.0/30"} })
	s.smtp.in.guard.delay = time.Millisecond
	for i := range 15 {
		if code, _ := httpFrom(t, s, attackerIP, "stale-token"); code != http.StatusUnauthorized {
			t.Fatalf("wrong token %d from the shared address: %d, want 401", i, code)
		}
	}
	if code, _ := httpFrom(t, s, attackerIP, crmToken); code != http.StatusAccepted {
		t.Errorf("right token from the shared address after 15 wrong ones: %d, want 202", code)
	}
	addr := s.SMTPAddrs()[0]
	guessFrom(t, addr, attackerIP, "stale-app", 15)
	if r := smtpAuthFrom(t, addr, attackerIP, webUser, webPassword); !strings.HasPrefix(r, "235 ") {
		t.Errorf("right password from the shared address after 15 wrong ones of another user: %q, want 235", r)
	}
	if r := smtpAuthFrom(t, addr, attackerIP, "stale-app", "again"); !strings.HasPrefix(r, "454 4.7.0 ") {
		t.Errorf("the user name that failed 15 times, from the shared address: %q, want 454 4.7.0", r)
	}
	outside := net.IPv4(127, 0, 0, 9)
	for range 11 {
		httpFrom(t, s, outside, "wrong-token")
	}
	if code, _ := httpFrom(t, s, outside, crmToken); code != http.StatusTooManyRequests {
		t.Errorf("right token from a blocked address outside the networks: %d, want 429", code)
	}
}

// TestAuthThrottleManySessionsAtOnce: an application opening 20 sessions
// at once with the right password is neither throttled nor charged 20
// bcrypt runs.
func TestAuthThrottleManySessionsAtOnce(t *testing.T) {
	f := newFixture(t)
	s := startRelayOn(t, f, nil)
	addr := s.SMTPAddrs()[0]
	replies := make([]string, 20)
	done := make(chan struct{})
	for i := range replies {
		go func() {
			defer func() { done <- struct{}{} }()
			replies[i] = smtpAuthFrom(t, addr, attackerIP, crmUser, crmPassword)
		}()
	}
	for range replies {
		<-done
	}
	for i, r := range replies {
		if !strings.HasPrefix(r, "235 ") {
			t.Errorf("session %d: %q, want 235", i, r)
		}
	}
	if runs := s.smtp.apps.bcryptRuns.Load(); runs != 1 {
		t.Errorf("%d bcrypt runs for 20 sessions with one password, want 1", runs)
	}
	if b, err := queue.NewAuthThrottle(f.redis.Client(t), 10, time.Minute).Blocked(context.Background(), "127.0.0.1", crmUser); b != nil || err != nil {
		t.Errorf("after 20 successes: block %+v, %v; want none", b, err)
	}
}

// TestAuthBusyNotKnown: an attempt that no bcrypt worker was free to
// check takes its count back, but its IP is not recorded as known: its
// password was never checked.
func TestAuthBusyNotKnown(t *testing.T) {
	f := newFixture(t)
	s := startRelayOn(t, f, nil)
	a := s.smtp.apps
	a.pool.wait = 50 * time.Millisecond
	for range cap(a.pool.shared) {
		a.pool.shared <- struct{}{}
	}
	defer func() {
		for range cap(a.pool.shared) {
			<-a.pool.shared
		}
	}()
	if r := smtpAuthFrom(t, s.SMTPAddrs()[0], attackerIP, crmUser, "a-guess"); !strings.HasPrefix(r, "454 4.7.0 Temporary authentication failure") {
		t.Fatalf("AUTH with every worker busy: %q, want 454 4.7.0 Temporary authentication failure (no failure counted)", r)
	}
	th := queue.NewAuthThrottle(f.redis.Client(t), 10, 5*time.Minute)
	if known, err := th.Known(context.Background(), "127.0.0.1", crmUser); known || err != nil {
		t.Errorf("an unchecked guess's IP recorded as known: %v %v", known, err)
	}
}

// TestBcryptPoolKnownClient: while guesses hold the shared workers, a
// known client's check runs on the worker kept for known clients; an
// unknown one waits for a shared worker.
func TestBcryptPoolKnownClient(t *testing.T) {
	p := newBcryptPool(1)
	hold, started := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { _ = p.run(false, func() { close(started); <-hold }) })
	<-started
	unknown, known := make(chan error, 1), make(chan error, 1)
	wg.Go(func() { unknown <- p.run(false, func() {}) })
	wg.Go(func() { known <- p.run(true, func() {}) })
	select {
	case err := <-known:
		if err != nil {
			t.Errorf("known client: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("a known client's check waited behind the guess holding the shared worker")
	}
	select {
	case <-unknown:
		t.Error("an unknown client's check ran while the shared worker was busy")
	case <-time.After(100 * time.Millisecond):
	}
	close(hold)
	if err := <-unknown; err != nil {
		t.Errorf("unknown client once the worker was free: %v", err)
	}
}

// TestAuthKnownClientWhileGuessesWait: after a restart (no password
// cached), the application's first AUTH from its usual IP does not queue
// behind guesses that hold every shared bcrypt worker.
func TestAuthKnownClientWhileGuessesWait(t *testing.T) {
	f := newFixture(t)
	s := startRelayOn(t, f, nil)
	addr := s.SMTPAddrs()[0]
	if r := smtpAuthFrom(t, addr, otherIP, crmUser, crmPassword); !strings.HasPrefix(r, "235 ") {
		t.Fatalf("first AUTH: %q", r)
	}
	a := s.smtp.apps
	a.mu.Lock()
	clear(a.verified)
	a.mu.Unlock()
	for range cap(a.pool.shared) {
		a.pool.shared <- struct{}{}
	}
	defer func() {
		for range cap(a.pool.shared) {
			<-a.pool.shared
		}
	}()
	start := time.Now()
	if r := smtpAuthFrom(t, addr, otherIP, crmUser, crmPassword); !strings.HasPrefix(r, "235 ") {
		t.Errorf("the application's AUTH while every shared worker is busy: %q after %v, want 235", r, time.Since(start).Round(time.Millisecond))
	}
}

// TestAuthThrottleRepliesSayWhatToDo: the failure count of an address is
// shared by SMTP and HTTP. After wrong SMTP passwords, the 454 says how
// long the block lasts and how an operator lifts it, and the HTTP 429 for
// the same address does not blame a token.
func TestAuthThrottleRepliesSayWhatToDo(t *testing.T) {
	f := newFixture(t)
	s := startRelayOn(t, f, nil)
	s.smtp.in.guard.delay = time.Millisecond
	guessFrom(t, s.SMTPAddrs()[0], attackerIP, "nobody-"+crmUser, 10)

	r := smtpAuthFrom(t, s.SMTPAddrs()[0], attackerIP, webUser, webPassword)
	if !strings.HasPrefix(r, "454 4.7.0 ") || !strings.Contains(r, "try again in ") ||
		!strings.Contains(r, "holdfast creds unblock --ip 127.0.0.1") {
		t.Errorf("AUTH from the blocked address: %q; want 454 4.7.0 with the time left and the unblock command", r)
	}

	code, _, body := httpFromBody(t, s, attackerIP, crmToken)
	if code != http.StatusTooManyRequests || strings.Contains(body, "wrong token") ||
		!strings.Contains(body, "wrong SMTP passwords, API tokens and admin tokens") || !strings.Contains(body, "holdfast creds unblock --ip 127.0.0.1") {
		t.Errorf("HTTP from the blocked address: %d %s; want 429 naming every kind of failure and the unblock command", code, body)
	}
}
