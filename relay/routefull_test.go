package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestRouteFullRefusesNewMail: a route holding queue.max_messages_per_route
// messages refuses its next message at the end of DATA with 452 4.3.1 and
// stores nothing, then refuses at MAIL FROM, before the body, for a
// while; HTTP answers 429 with a Retry-After, except to the retry of a
// stored Idempotency-Key, which is a duplicate. Another app's route takes
// mail meanwhile, the refusals are counted and logged once, and the
// route takes mail again once one of its messages has left.
func TestRouteFullRefusesNewMail(t *testing.T) {
	f := newFixture(t)
	var logs syncBuffer
	s := startRelayLogged(t, f, func(o *Options) {
		o.Delivery.Sender = "off"
		o.Queue.MaxMessagesPerRoute = 2
		// Long enough for the early refusals, on any machine.
		o.Queue.routeFullRecheck = time.Minute
	}, slog.New(slog.NewTextHandler(&logs, nil)))
	ctx := context.Background()
	// Every app's counts start at zero: a first refusal is an increase.
	if n := testutil.CollectAndCount(s.metrics.refusedBy); n != 2*2*4 {
		t.Errorf("%d refusal series at start, want 16: 2 apps, 2 ingresses, 4 reasons", n)
	}

	status, _, keyed := postRouted(t, s, "order-7")
	if status != http.StatusAccepted {
		t.Fatalf("first HTTP message: %d", status)
	}
	c := dialSMTP(t, s.SMTPAddrs()[0])
	c.login()
	second := c.send("billing@contoso.com", []string{"a@example.org"}, "Subject: 2\r\n\r\nhi\r\n.\r\n")
	c.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
	c.cmd("RCPT TO:<a@example.org>", "250 ")
	c.cmd("DATA", "354 ")
	c.write("Subject: 3\r\n\r\nhi\r\n.\r\n")
	c.expect("452 4.3.1 Too many messages from this sender are waiting for delivery")
	// The session goes on; its next message is refused before its body.
	c.cmd("MAIL FROM:<billing@contoso.com>", "452 4.3.1 ")
	c.cmd("MAIL FROM:<billing@crm.example>", "452 4.3.1 ")

	if status, retry, _ := postRouted(t, s, ""); status != http.StatusTooManyRequests || retry != routeFullRetryAfter {
		t.Errorf("HTTP on the full route: %d, Retry-After %q; want 429 and %s", status, retry, routeFullRetryAfter)
	}
	// With an Idempotency-Key the body is read and the queue decides: a
	// new key is refused, the stored one's retry is its duplicate.
	if status, _, _ := postRouted(t, s, "order-8"); status != http.StatusTooManyRequests {
		t.Errorf("HTTP with a new key on the full route: %d, want 429", status)
	}
	if status, _, again := postRouted(t, s, "order-7"); status != http.StatusAccepted || !again.Duplicate || again.ID != keyed.ID {
		t.Errorf("retry of a stored key on the full route: %d %+v, want 202 and the duplicate of %s", status, again, keyed.ID)
	}

	w := dialSMTP(t, s.SMTPAddrs()[0])
	w.cmd("EHLO client.test", "250 ")
	w.cmd("AUTH PLAIN "+smtpPlain("", "web", webPassword), "235 ")
	w.send("web@fabrikam.example", []string{"a@example.org"}, "Subject: web\r\n\r\nhi\r\n.\r\n")

	st, err := s.Queue().Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Total.Ready != 3 {
		t.Errorf("%d messages queued, want crm's 2 and web's 1", st.Total.Ready)
	}
	for _, c := range []struct {
		ingress string
		want    float64
	}{{"smtp", 3}, {"http", 2}} {
		if n := testutil.ToFloat64(s.metrics.refusedBy.WithLabelValues(c.ingress, "crm", refusedRouteFull)); n != c.want {
			t.Errorf("%s refusals counted for route_full: %v, want %v", c.ingress, n, c.want)
		}
	}
	var warned []string
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "max_messages_per_route") {
			warned = append(warned, line)
		}
	}
	if len(warned) != 1 || !strings.Contains(warned[0], "route=crm") || !strings.Contains(warned[0], "452 4.3.1") {
		t.Errorf("log lines naming the bound after 5 refusals:\n%s\nwant one, naming the route and the reply", strings.Join(warned, "\n"))
	}

	// One message leaves: the queue takes one more (a keyed submission
	// is read whatever the relay remembers; TestFullRoutes covers that).
	if err := s.Queue().Delete(ctx, second); err != nil {
		t.Fatal(err)
	}
	if status, _, _ := postRouted(t, s, "order-9"); status != http.StatusAccepted {
		t.Errorf("HTTP after a message left the full route: %d, want 202", status)
	}
	if status, _, _ := postRouted(t, s, "order-10"); status != http.StatusTooManyRequests {
		t.Errorf("HTTP once the route is full again: %d, want 429", status)
	}
}

// postRouted submits a small message of crm's over HTTP, with an
// Idempotency-Key when key is not empty, and returns the status, the
// Retry-After header and the reply.
func postRouted(t *testing.T, s *Server, key string) (int, string, submitReply) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+s.HTTPAddr()+"/v1/messages?from=billing@contoso.com&to=a@example.org",
		strings.NewReader("Subject: t\r\n\r\nhi\r\n"))
	req.Header.Set("Authorization", "Bearer "+crmToken)
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	defer resp.Body.Close()
	var reply submitReply
	if resp.StatusCode == http.StatusAccepted {
		if err := json.NewDecoder(resp.Body).Decode(&reply); err != nil {
			t.Fatalf("202 body: %v", err)
		}
	}
	return resp.StatusCode, resp.Header.Get("Retry-After"), reply
}

// TestFullRoutes: a route found full is refused early for fullRecheck,
// then looked at again; sessions mark routes at once, as the ingress's
// do (go test -race).
func TestFullRoutes(t *testing.T) {
	f := newFullRoutes(0)
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	if f.full("crm", now) {
		t.Fatal("a route never marked is full")
	}
	f.mark("crm", now)
	if !f.full("crm", now.Add(fullRecheck-time.Millisecond)) || f.full("web", now) {
		t.Fatal("the marked route is not full within fullRecheck, or another is")
	}
	if f.full("crm", now.Add(fullRecheck)) || len(f.set.until) != 0 {
		t.Fatalf("the mark outlived fullRecheck: %v", f.set.until)
	}
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() { f.mark(fmt.Sprint("r", i), now) })
	}
	wg.Wait()
	if n := len(f.set.until); n != 4 || f.set.max != maxFullRoutes {
		t.Errorf("%d routes kept after 4 marks, bound %d; want 4 and %d", n, f.set.max, maxFullRoutes)
	}
}
