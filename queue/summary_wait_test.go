package queue_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

// TestSummarizeGivesUpWhileAnotherWaits: with Redis hung, a summary
// whose context has no deadline (the relay's per-minute sample) waits on
// Redis for seconds. A scrape's summary, with a deadline of its own,
// gives up at that deadline instead of waiting for the first to end: a
// scraper's timeout is not spent waiting behind it.
func TestSummarizeGivesUpWhileAnotherWaits(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), ReadTimeout: 5 * time.Second, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	q := queue.New(rdb, queue.Options{})
	if _, _, err := q.Enqueue(t.Context(), queue.Submission{Route: "crm", App: "crm", From: "a@contoso.com",
		To: []string{"b@example.org"}, Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	s := q.NewSummarizer(func(string) string { return "all" })
	if _, err := s.Summarize(t.Context()); err != nil {
		t.Fatal(err)
	}

	srv.Pause(t)
	first := make(chan error, 1)
	go func() {
		_, err := s.Summarize(context.Background())
		first <- err
	}()
	time.Sleep(200 * time.Millisecond) // the first is waiting on Redis
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := s.Summarize(ctx)
	took := time.Since(start)
	srv.Resume(t)
	<-first
	if err == nil {
		t.Fatal("a summary with Redis hung succeeded")
	}
	if took > 2*time.Second {
		t.Errorf("a summary with a 300ms deadline returned after %v, behind the one waiting on the hung Redis", took.Round(time.Millisecond))
	}
}
