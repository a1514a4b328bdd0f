package relay

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"holdfast/breaker"
	"holdfast/queue"
	"holdfast/queue/redistest"
)

// roundTrips counts the commands and pipelines a client sends: each is
// one round trip to Redis.
type roundTrips struct{ n atomic.Int64 }

func (r *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		r.n.Add(1)
		return next(ctx, cmd)
	}
}

func (r *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		r.n.Add(1)
		return next(ctx, cmds)
	}
}

// BenchmarkScrape measures one scrape of the scrape-time gauges (queue
// depth by state and credential, oldest ready and held ages, breaker
// state, open mailbox breakers). Every route has had mail; "waiting"
// routes still have a message (every tenth of them held), the others
// were delivered and are empty. 100 mailbox breakers are open.
//
// "full" is a scrape that counts every route, as a relay does off the
// scrape's path at start and every queue.SummaryRefresh (Refresh costs
// the same); "changed=N" is a scrape after a new message on N routes
// picked at random since the scrape before (untimed): the queue counts
// those routes again and keeps the others' counts. It reports the median ms per scrape and the
// Redis round trips per scrape, which must not grow with the routes.
func BenchmarkScrape(b *testing.B) {
	for _, c := range []struct{ routes, waiting int }{{100, 100}, {10_000, 1_000}, {10_000, 10_000}} {
		b.Run(fmt.Sprintf("routes=%d/waiting=%d", c.routes, c.waiting), func(b *testing.B) {
			srv := redistest.Start(b)
			rdb := srv.Client(b)
			q := queue.New(rdb, queue.Options{})
			set := breaker.New(rdb, breaker.Options{Logger: discardLogger()})
			fillRoutes(b, q, set, c.routes, c.waiting)
			counter := &roundTrips{}
			rdb.AddHook(counter)
			modes := []int{-1, 0}
			if c.routes >= 10_000 {
				modes = append(modes, c.routes/10)
			}
			for _, changed := range modes {
				name := fmt.Sprintf("changed=%d", changed)
				if changed < 0 {
					name = "full"
				}
				b.Run(name, func(b *testing.B) {
					benchScrapes(b, q, set, counter, c.routes, changed)
				})
			}
		})
	}
}

// benchScrapes times b.N scrapes: each with a new collector when changed
// is negative, else with one collector, changed routes getting a message
// before each scrape.
func benchScrapes(b *testing.B, q *queue.Queue, set *breaker.Set, counter *roundTrips, routes, changed int) {
	ctx := context.Background()
	newReg := func() *prometheus.Registry {
		reg := prometheus.NewRegistry()
		reg.MustRegister(newStateCollector(q.NewSummarizer(routeCredential), set, []string{"contoso"}, nil, discardLogger()))
		return reg
	}
	reg := newReg()
	if _, err := reg.Gather(); err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(uint64(routes), uint64(changed)))
	times := make([]time.Duration, 0, b.N)
	var trips int64
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		if changed < 0 {
			reg = newReg()
		}
		for range changed {
			mbx := fmt.Sprintf("box%d@contoso.com", 1+rng.IntN(routes))
			if _, _, err := q.Enqueue(ctx, queue.Submission{Route: appRoute("contoso", mbx), App: "crm", From: mbx,
				To: []string{"x@example.org"}, Body: []byte("Subject: s\r\n\r\nb\r\n")}); err != nil {
				b.Fatal(err)
			}
		}
		before := counter.n.Load()
		b.StartTimer()
		start := time.Now()
		fams, err := reg.Gather()
		times = append(times, time.Since(start))
		b.StopTimer()
		trips += counter.n.Load() - before
		if err != nil || len(fams) != 5 {
			b.Fatalf("gather: %d families, %v", len(fams), err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	b.ReportMetric(float64(times[len(times)/2].Microseconds())/1000, "ms/scrape-p50")
	b.ReportMetric(float64(trips)/float64(b.N), "roundtrips/scrape")
}

// fillRoutes enqueues one message on each of n routes of the credential
// contoso and delivers it on all but the first waiting routes, holds every
// tenth waiting route and opens 100 mailbox breakers.
func fillRoutes(b *testing.B, q *queue.Queue, set *breaker.Set, n, waiting int) {
	b.Helper()
	ctx := context.Background()
	var wg sync.WaitGroup
	var next atomic.Int64
	errs := make(chan error, 20)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)); i <= n; i = int(next.Add(1)) {
				mbx := fmt.Sprintf("box%d@contoso.com", i)
				route := appRoute("contoso", mbx)
				if _, _, err := q.Enqueue(ctx, queue.Submission{Route: route, App: "crm", From: mbx,
					To: []string{"x@example.org"}, Body: []byte("Subject: s\r\n\r\nb\r\n")}); err != nil {
					errs <- err
					return
				}
				if i > waiting {
					l, err := q.Lease(ctx, route, 1, time.Minute)
					if err == nil && len(l.Leases) == 1 {
						err = q.Ack(ctx, l.Leases[0], "250 OK")
					}
					if err != nil {
						errs <- err
						return
					}
				} else if i%10 == 0 {
					if err := q.HoldRoute(ctx, route, "breaker open"); err != nil {
						errs <- err
						return
					}
				}
				if i <= 100 {
					if err := set.Trip(ctx, mailboxBreaker(mbx), "bench"); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}
