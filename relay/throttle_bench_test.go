package relay

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// BenchmarkAcceptUnderGuessing measures a legitimate client's accept
// latency, one whole session per message from 127.0.0.2 (connect, AUTH,
// MAIL to the 250 after DATA, QUIT), on an idle relay and while 40
// connections from 127.0.0.1 guess passwords as fast as the relay answers.
// It reports the p50 and p99 in ms; "guessing" should stay within twice
// "idle". The guesses name unknown users, which cost a bcrypt check at the
// default cost until the IP is throttled; timing starts once the throttle
// has cut them off, after one untimed session of the legitimate client.
func BenchmarkAcceptUnderGuessing(b *testing.B) {
	for _, guessing := range []bool{false, true} {
		name := "idle"
		if guessing {
			name = "guessing"
		}
		b.Run(name, func(b *testing.B) { benchAcceptUnderGuessing(b, guessing) })
	}
}

func benchAcceptUnderGuessing(b *testing.B, guessing bool) {
	s := startRelayOn(b, newFixture(b), func(o *Options) { o.Delivery.Sender = "off" })
	addr := s.SMTPAddrs()[0]

	ctx, stop := context.WithCancel(context.Background())
	var attackers sync.WaitGroup
	if guessing {
		for i := range 40 {
			attackers.Go(func() { guessPasswords(ctx, addr, i) })
		}
		// Let the guesses reach the throttle's threshold and their
		// bcrypt checks finish first, as in a running attack.
		for s.smtp.apps.bcryptRuns.Load() < 10 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	defer func() {
		stop()
		attackers.Wait()
	}()

	body := "From: <web@fabrikam.example>\r\nSubject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("x", 76)+"\r\n", 25)
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 10 * time.Second}
	latencies := make([]time.Duration, 0, b.N)
	session := func() {
		nc, err := d.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		c := smtp.NewClient(nc)
		if err := c.Auth(sasl.NewPlainClient("", webUser, webPassword)); err != nil {
			b.Fatal(err)
		}
		if err := c.SendMail("web@fabrikam.example", []string{"alice@example.org"}, strings.NewReader(body)); err != nil {
			b.Fatal(err)
		}
		_ = c.Quit()
	}
	// The first session's password check, cached after, waits for the
	// guesses' checks ahead of it in the pool; it is not timed, idle or
	// not.
	session()
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		session()
		latencies = append(latencies, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(latencies)
	n := len(latencies)
	b.ReportMetric(float64(latencies[n/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(latencies[min(n-1, n*99/100)].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(s.smtp.apps.bcryptRuns.Load()), "bcrypt-runs")
}

// guessPasswords tries wrong passwords over one connection from 127.0.0.1
// after another until ctx ends.
func guessPasswords(ctx context.Context, addr string, n int) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, Timeout: 10 * time.Second}
	for i := 0; ctx.Err() == nil; i++ {
		nc, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		c := smtp.NewClient(nc)
		for j := 0; j < 20 && ctx.Err() == nil; j++ {
			user := fmt.Sprintf("guess-%d-%d", n, i*20+j)
			if err := c.Auth(sasl.NewPlainClient("", user, "wrong")); err == nil {
				break
			}
		}
		_ = c.Close()
	}
}
