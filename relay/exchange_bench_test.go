package relay

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkEndToEnd measures delivered throughput: b.N messages of 2 KB
// submitted over SMTP by 20 sessions, from 20 senders each sent as its
// own mailbox, delivered to the simulator over STARTTLS and XOAUTH2 with
// 3 connections per mailbox and the per-minute limit raised. The relay,
// the simulator, Redis and the clients share the machine. It reports
// messages/s from the first submission to the last message at the
// simulator.
func BenchmarkEndToEnd(b *testing.B) {
	delivered, accepted := endToEnd(b, b.N, nil)
	b.ReportMetric(delivered, "delivered/s")
	b.ReportMetric(accepted, "accepted/s")
}

// endToEnd submits n messages as BenchmarkEndToEnd describes and returns
// the delivered and accepted messages per second. change, when set,
// adjusts the relay's options.
func endToEnd(b *testing.B, n int, change func(*Options)) (delivered, accepted float64) {
	delivered, accepted, _ = endToEndCPU(b, n, change)
	return delivered, accepted
}

// endToEndCPU is endToEnd that also returns the CPU time this process
// (relay, simulator and clients; not Redis) spent per message, in
// microseconds: a measure the other processes on the machine disturb
// less than throughput.
func endToEndCPU(b *testing.B, n int, change func(*Options)) (delivered, accepted, cpuPerMsg float64) {
	const mailboxes = 20
	e := newExchangeEnv(b, 1, func(o *Options) {
		o.Log.Level = "warn"
		o.Exchange.MessagesPerMinute = 1_000_000
		o.Delivery.Workers = 3 * mailboxes
		if change != nil {
			change(o)
		}
		for i := range o.Apps {
			o.Apps[i].SenderMailboxes = map[string]string{}
			for m := 1; m <= mailboxes; m++ {
				addr := fmt.Sprintf("box%d@contoso.com", m)
				o.Apps[i].SenderMailboxes[addr] = addr
			}
		}
	})
	body := strings.Repeat(strings.Repeat("z", 76)+"\r\n", 25)
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start, cpu0 := time.Now(), processCPU()
	for s := range mailboxes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := smtp.Dial(e.relays[0].SMTPAddrs()[0])
			if err != nil {
				b.Error(err)
				return
			}
			defer c.Close()
			if err := c.Auth(sasl.NewPlainClient("", crmUser, crmPassword)); err != nil {
				b.Error(err)
				return
			}
			from := fmt.Sprintf("box%d@contoso.com", s+1)
			msg := "From: <" + from + ">\r\nSubject: bench\r\n\r\n" + body
			for next.Add(1) <= int64(n) {
				if err := c.SendMail(from, []string{"sink@example.org"}, strings.NewReader(msg)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	submitted := time.Since(start)
	deadline := time.Now().Add(5 * time.Minute)
	for e.sim.ReceivedCount() < n {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d messages delivered", e.sim.ReceivedCount(), n)
		}
		time.Sleep(20 * time.Millisecond)
		runtime.Gosched()
	}
	elapsed, cpu := time.Since(start), processCPU()-cpu0
	b.StopTimer()
	if c := e.sim.Counters().Clients[simClientID]; c.TokenRequests-c.GraphTokenRequests != 1 {
		b.Errorf("%d token requests for SMTP, want 1", c.TokenRequests-c.GraphTokenRequests)
	}
	return float64(n) / elapsed.Seconds(), float64(n) / submitted.Seconds(), float64(cpu.Microseconds()) / float64(n)
}

// BenchmarkMetricsOverhead measures what the delivery and ingress
// metrics cost end to end: rounds of the BenchmarkEndToEnd load (3,000
// messages each), with the metrics on and off in each round (which goes
// first alternates), in one run. Each run is a sub-benchmark reporting
// delivered/s; the log line gives the medians, the overhead (the drop of
// the median throughput with metrics on, in percent) and the median of
// the rounds' own overheads. Run it with -benchtime 1x.
func BenchmarkMetricsOverhead(b *testing.B) {
	const n, rounds = 3000, 6
	rates, cpus := map[bool][]float64{}, map[bool][]float64{}
	var paired []float64
	for r := range rounds {
		for _, on := range []bool{r%2 == 0, r%2 != 0} {
			b.Run(fmt.Sprintf("round=%d/metrics=%v", r+1, on), func(b *testing.B) {
				delivered, _, cpu := endToEndCPU(b, n, func(o *Options) { o.Ops.noMetrics = !on })
				b.ReportMetric(delivered, "delivered/s")
				b.ReportMetric(cpu, "cpu-us/msg")
				rates[on] = append(rates[on], delivered)
				cpus[on] = append(cpus[on], cpu)
			})
		}
		if len(rates[true]) == r+1 && len(rates[false]) == r+1 {
			paired = append(paired, (rates[false][r]-rates[true][r])/rates[false][r]*100)
		}
	}
	on, off := median(rates[true]), median(rates[false])
	cpuOn, cpuOff := median(cpus[true]), median(cpus[false])
	b.Logf("median of %d rounds: delivered/s metrics on %.0f, off %.0f: overhead %.2f%% (median of the rounds' own %.2f%%); "+
		"CPU µs per message on %.0f, off %.0f: overhead %.2f%%",
		rounds, on, off, (off-on)/off*100, median(paired), cpuOn, cpuOff, (cpuOn-cpuOff)/cpuOff*100)
}

// BenchmarkHotPathMetrics measures the metrics one message costs on its
// way through: its acceptance (counter and histogram), its send duration,
// its delivery (counter, latency histogram with native buckets, the
// per-minute counts), from 20 goroutines. Compare its ns/op with the time
// per message of BenchmarkEndToEnd.
func BenchmarkHotPathMetrics(b *testing.B) {
	m := newMetrics(prometheus.NewRegistry(), "bench")
	b.SetParallelism(10)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.accepted("ESMTPA", "crm", 900*time.Microsecond)
			m.sent("smtp", 12*time.Millisecond)
			m.delivered("contoso", 180*time.Millisecond)
		}
	})
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// processCPU is the user and system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
