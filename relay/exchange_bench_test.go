package relay

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// BenchmarkEndToEnd measures delivered throughput: b.N messages of 2 KB
// submitted over SMTP by 20 sessions, from 20 senders each sent as its
// own mailbox, delivered to the simulator over STARTTLS and XOAUTH2 with
// 3 connections per mailbox and the per-minute limit raised. The relay,
// the simulator, Redis and the clients share the machine. It reports
// messages/s from the first submission to the last message at the
// simulator.
func BenchmarkEndToEnd(b *testing.B) {
	const mailboxes = 20
	e := newExchangeEnv(b, 1, func(o *Options) {
		o.Log.Level = "warn"
		o.Exchange.MessagesPerMinute = 1_000_000
		o.Delivery.Workers = 3 * mailboxes
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
	start := time.Now()
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
			for next.Add(1) <= int64(b.N) {
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
	for e.sim.ReceivedCount() < b.N {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d messages delivered", e.sim.ReceivedCount(), b.N)
		}
		time.Sleep(20 * time.Millisecond)
		runtime.Gosched()
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "delivered/s")
	b.ReportMetric(float64(b.N)/submitted.Seconds(), "accepted/s")
	if c := e.sim.Counters().Clients[simClientID]; c.TokenRequests-c.GraphTokenRequests != 1 {
		b.Errorf("%d token requests for SMTP, want 1", c.TokenRequests-c.GraphTokenRequests)
	}
}
