package relay

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"holdfast/queue"
)

// TestLogSampler: one line a key per interval; the next line let through
// says how many were held back; keys are apart; a nil sampler lets all
// through.
func TestLogSampler(t *testing.T) {
	now := time.Unix(1000, 0)
	s := newLogSampler(10 * time.Second)
	s.now = func() time.Time { return now }
	if ok, held := s.allow("a"); !ok || held != 0 {
		t.Fatalf("first line: %v %d", ok, held)
	}
	for range 5 {
		if ok, _ := s.allow("a"); ok {
			t.Fatal("a line within the interval let through")
		}
	}
	if ok, _ := s.allow("b"); !ok {
		t.Fatal("another key's first line held back")
	}
	now = now.Add(10 * time.Second)
	if ok, held := s.allow("a"); !ok || held != 5 {
		t.Fatalf("after the interval: %v, %d held back, want true, 5", ok, held)
	}
	var none *logSampler
	if ok, _ := none.allow("a"); !ok {
		t.Fatal("a nil sampler held a line back")
	}
}

// TestRefusalLogsSampled: a storm of wrong tokens from one address writes
// a line per kind of refusal, not two per request.
func TestRefusalLogsSampled(t *testing.T) {
	logs := &syncBuffer{}
	s := startRelayLogged(t, newFixture(t), nil, slog.New(slog.NewTextHandler(logs, nil)))
	codes := map[int]int{}
	for range 40 {
		code, _ := httpFrom(t, s, attackerIP, "wrong-token")
		codes[code]++
	}
	if codes[http.StatusUnauthorized] != 10 || codes[http.StatusTooManyRequests] != 30 {
		t.Fatalf("replies %v, want 10 × 401 then 30 × 429", codes)
	}
	out := logs.String()
	for msg, want := range map[string]int{
		"status=401":                       1,
		"status=429":                       1,
		"authentication refused: too many": 1,
	} {
		if n := strings.Count(out, msg); n != want {
			t.Errorf("%d lines with %q, want %d:\n%s", n, msg, want, out)
		}
	}
}

// TestSMTPErrorLogSampled: connections reset by their clients, each an
// error line of go-smtp's, write one line per kind of error every
// interval, not one each.
func TestSMTPErrorLogSampled(t *testing.T) {
	e := newSMTPEnv(t)
	for range 8 {
		c := dialSMTP(t, e.insecure)
		c.write("EHLO client.test\r\n")
		c.expect("250 ")
		c.write("NOOP\r\n")
		c.nc.(*net.TCPConn).SetLinger(0)
		c.nc.Close()
	}
	waitFor(t, 5*time.Second, "a go-smtp error line", func() bool { return strings.Contains(e.logs.String(), "go-smtp: ") })
	time.Sleep(200 * time.Millisecond)
	if n := strings.Count(e.logs.String(), "go-smtp: "); n != 1 {
		t.Errorf("%d go-smtp error lines for 8 resets, want 1:\n%s", n, e.logs.String())
	}
}

// TestUnreadableBodyLogSampled: requests whose clients go away mid-body
// write one "request body unreadable" line per client IP every interval.
func TestUnreadableBodyLogSampled(t *testing.T) {
	logs := &syncBuffer{}
	s := startRelayLogged(t, newFixture(t), nil, slog.New(slog.NewTextHandler(logs, nil)))
	for range 8 {
		nc, err := net.Dial("tcp", s.HTTPAddr())
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.WriteString(nc, "POST /v1/messages?from=billing@contoso.com&to=a@example.org HTTP/1.1\r\nHost: x\r\n"+
			"Authorization: Bearer "+crmToken+"\r\nContent-Length: 1000\r\n\r\nSubject: t\r\n")
		time.Sleep(20 * time.Millisecond)
		nc.Close()
	}
	waitFor(t, 5*time.Second, "an unreadable-body line", func() bool { return strings.Contains(logs.String(), "request body unreadable") })
	time.Sleep(200 * time.Millisecond)
	if n := strings.Count(logs.String(), "request body unreadable"); n != 1 {
		t.Errorf("%d unreadable-body lines for 8 requests, want 1:\n%s", n, logs.String())
	}
}

// failingLimiter is an authLimiter whose Redis does not answer.
type failingLimiter struct{ authLimiter }

func (failingLimiter) Blocked(context.Context, string, string) (*queue.Block, error) {
	return nil, context.DeadlineExceeded
}

func (failingLimiter) Failed(context.Context, string, string) error { return context.DeadlineExceeded }

// TestUncountedFailuresLogSampled: with Redis not answering, each failed
// authentication that cannot be counted goes on, and the warning is
// written once an interval, not once a failure (a client guessing
// passwords during a Redis outage).
func TestUncountedFailuresLogSampled(t *testing.T) {
	logs := &syncBuffer{}
	g := newAuthGuard(failingLimiter{}, time.Second, nil, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(logs, nil)))
	for range 50 {
		g.failed(t.Context(), "192.0.2.1", "crm")
	}
	if n := strings.Count(logs.String(), "cannot count a failed authentication"); n != 1 {
		t.Errorf("%d warnings for 50 failures, want 1:\n%s", n, logs.String())
	}
}

// TestUnreadableCountsLogSampled: with the failure counts unreadable,
// authentication goes on, and the warning is written once an interval,
// not once an attempt.
func TestUnreadableCountsLogSampled(t *testing.T) {
	logs := &syncBuffer{}
	g := newAuthGuard(failingLimiter{}, time.Second, nil, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(logs, nil)))
	for range 50 {
		if b := g.blocked(t.Context(), "http", "192.0.2.1", ""); b != nil {
			t.Fatalf("blocked with the counts unreadable: %+v", b)
		}
	}
	if n := strings.Count(logs.String(), "cannot read the failure counts"); n != 1 {
		t.Errorf("%d warnings for 50 attempts, want 1:\n%s", n, logs.String())
	}
}
