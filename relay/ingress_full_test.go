package relay

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"testing"
)

// TestRedisFullRefusalsNotWithdrawn: with Redis past its maxmemory
// (noeviction), SMTP answers 451 4.3.0 and HTTP 503. Redis refused the
// store whole, so nothing is queued to withdraw (a withdrawal would write
// a mark into the memory the drain frees), and the log says once, not
// once per refusal, that Redis is full and what to do. Once memory is
// freed, mail is taken again.
func TestRedisFullRefusalsNotWithdrawn(t *testing.T) {
	f := newFixture(t)
	var logs syncBuffer
	s := startRelayLogged(t, f, func(o *Options) { o.Delivery.Sender = "off" },
		slog.New(slog.NewTextHandler(&logs, nil)))
	if reply, _ := smtpSubmit(t, s); !strings.HasPrefix(reply, "250 ") {
		t.Fatalf("SMTP before: %q", reply)
	}
	rdb := f.redis.Client(t)
	ctx := context.Background()
	if err := rdb.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if reply, _ := smtpSubmit(t, s); !strings.HasPrefix(reply, "451 4.3.0 ") {
			t.Errorf("SMTP with Redis full: %q, want 451 4.3.0", reply)
		}
		if status, _ := postMessage(t, s); status != http.StatusServiceUnavailable {
			t.Errorf("HTTP with Redis full: %d, want 503", status)
		}
	}
	if n := s.smtp.in.withdraw.pending(); n != 0 {
		t.Errorf("%d withdrawals queued for stores Redis refused for want of memory, want 0", n)
	}
	var warned []string
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "Redis reached its maxmemory") || strings.Contains(line, "enqueue failed") {
			warned = append(warned, line)
		}
	}
	if len(warned) != 1 || !strings.Contains(warned[0], "Redis reached its maxmemory") ||
		!strings.Contains(warned[0], "451") || !strings.Contains(warned[0], "delivered") || !strings.Contains(warned[0], "Raise") {
		t.Errorf("log lines of the refusals after 4 of them:\n%s\nwant one saying Redis is full, new mail is refused, queued mail is delivered, and what to do",
			strings.Join(warned, "\n"))
	}

	if err := rdb.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	if reply, _ := smtpSubmit(t, s); !strings.HasPrefix(reply, "250 ") {
		t.Errorf("SMTP once memory is freed: %q", reply)
	}
	if st, err := s.Queue().Stats(ctx); err != nil || st.Total.Ready != 2 {
		t.Errorf("ready messages: %+v %v; want the 2 taken while Redis had room", st.Total, err)
	}
}

// TestStoreFailuresLogSampled: a Redis that refuses every write for
// another reason than its memory (here too few replicas; a full disk
// answers MISCONF the same way) refuses every message with 451, and the
// log says so once an interval, with the count held, not once a
// message.
func TestStoreFailuresLogSampled(t *testing.T) {
	f := newFixture(t)
	var logs syncBuffer
	s := startRelayLogged(t, f, func(o *Options) { o.Delivery.Sender = "off" },
		slog.New(slog.NewTextHandler(&logs, nil)))
	rdb := f.redis.Client(t)
	ctx := context.Background()
	if err := rdb.ConfigSet(ctx, "min-replicas-to-write", "1").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.ConfigSet(context.Background(), "min-replicas-to-write", "0") })
	for range 5 {
		if reply, _ := smtpSubmit(t, s); !strings.HasPrefix(reply, "451 4.3.0 ") {
			t.Errorf("SMTP with Redis refusing writes: %q, want 451 4.3.0", reply)
		}
	}
	if n := strings.Count(logs.String(), "enqueue failed"); n != 1 {
		t.Errorf("%d log lines for 5 refused stores, want 1:\n%s", n, logs.String())
	}
}
