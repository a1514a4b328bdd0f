package queue_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

// BenchmarkEnqueue measures durable enqueues of 2 KB messages from 20
// concurrent goroutines against a private redis-server with AOF everysec.
func BenchmarkEnqueue(b *testing.B) {
	srv := redistest.Start(b)
	q := queue.New(srv.Client(b), queue.Options{})
	body := []byte("Subject: bench\r\n\r\n" + strings.Repeat("x", 2048-18))
	b.SetParallelism(10) // with GOMAXPROCS 2: 20 goroutines
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := q.Enqueue(context.Background(), queue.Submission{
				Route: "bench", App: "bench", From: "a@example.com", To: []string{"b@example.org"}, Body: body,
			}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}

// BenchmarkLeaseAck measures the delivery side: lease batches of 10 and
// ack each message.
func BenchmarkLeaseAck(b *testing.B) {
	srv := redistest.Start(b)
	q := queue.New(srv.Client(b), queue.Options{})
	ctx := context.Background()
	body := []byte("Subject: bench\r\n\r\n" + strings.Repeat("x", 2048-18))
	for range b.N {
		if _, _, err := q.Enqueue(ctx, queue.Submission{Route: "bench", From: "a@example.com", To: []string{"b@example.org"}, Body: body}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	start := time.Now()
	done := 0
	for done < b.N {
		res, err := q.Lease(ctx, "bench", 10, time.Minute)
		if err != nil {
			b.Fatal(err)
		}
		for _, l := range res.Leases {
			if err := q.Ack(ctx, l, "250 ok"); err != nil {
				b.Fatal(err)
			}
			done++
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}
