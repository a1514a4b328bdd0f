package relay

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// BenchmarkSMTPIngress measures SMTP ingress end to end in one process:
// 20 authenticated sessions over loopback send 2 KB messages to a relay
// with delivery off, stored in a private redis-server with AOF everysec.
// It reports messages/s and the accept latency (MAIL FROM to the 250
// after DATA) at p50 and p99.
func BenchmarkSMTPIngress(b *testing.B) {
	f := newFixture(b)
	o := f.opts
	o.Redis.Addrs = []string{f.redis.Addr()}
	o.HTTP.Addr = "127.0.0.1:0"
	o.Delivery.Sender = "off"
	s, err := New(context.Background(), o, nil, discardLogger())
	if err != nil {
		b.Fatal(err)
	}
	s.Start()
	defer s.Shutdown(context.Background())
	addr := s.SMTPAddrs()[0]

	const sessions = 20
	body := "From: <billing@contoso.com>\r\nSubject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("x", 76)+"\r\n", 25)
	clients := make([]*smtp.Client, sessions)
	for i := range clients {
		c, err := smtp.Dial(addr)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Auth(sasl.NewPlainClient("", crmUser, crmPassword)); err != nil {
			b.Fatal(err)
		}
		clients[i] = c
		defer c.Close()
	}

	var (
		next      atomic.Int64
		mu        sync.Mutex
		latencies = make([]time.Duration, 0, b.N)
		wg        sync.WaitGroup
	)
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	start := time.Now()
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var own []time.Duration
			for next.Add(1) <= int64(b.N) {
				t0 := time.Now()
				if err := c.SendMail("billing@contoso.com", []string{"alice@example.org"}, strings.NewReader(body)); err != nil {
					b.Error(err)
					return
				}
				own = append(own, time.Since(t0))
			}
			mu.Lock()
			latencies = append(latencies, own...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	slices.Sort(latencies)
	if n := len(latencies); n > 0 {
		b.ReportMetric(float64(n)/elapsed.Seconds(), "msgs/s")
		b.ReportMetric(float64(latencies[n/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(latencies[min(n-1, n*99/100)].Microseconds())/1000, "p99-ms")
	}
}
