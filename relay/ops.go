package relay

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"holdfast/breaker"
	"holdfast/queue"
	"holdfast/relay/ops"
)

// minuteFlush is how often each replica adds its deliveries to the
// fleet's per-minute counts.
const minuteFlush = 10 * time.Second

// setupOps registers the relay's metrics on s.reg and binds the
// operators' listener, unless ops.addr is empty.
func (s *Server) setupOps() error {
	var set *breaker.Set
	if s.gate != nil {
		set = s.gate.set
	}
	creds := make([]string, 0, len(s.opts.Credentials))
	for _, c := range s.opts.Credentials {
		creds = append(creds, c.Name)
	}
	s.summary = s.queue.NewSummarizer(routeCredential)
	sc := newStateCollector(s.summary, set, creds, s.durable.memoryUse, s.log.With("component", "metrics"))
	sc.readySince = s.readySince
	s.reg.MustRegister(sc)
	if set != nil {
		s.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "holdfast_replica_name_shared",
			Help: "1 while another running relay has this relay's replica name (option replica), else 0.",
		}, func() float64 {
			if set.ReplicaShared() {
				return 1
			}
			return 0
		}))
	}
	s.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "holdfast_ready",
		Help: "1 when /readyz answers 200: Redis reachable and the relay taking mail.",
	}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
		defer cancel()
		if s.ready(ctx) != nil {
			return 0
		}
		return 1
	}))
	if s.opts.Ops.Addr == "" {
		return nil
	}
	cfg := ops.Config{
		Gatherer: s.reg,
		Ready:    s.ready,
		Status:   &opsStatus{s: s},
		Expiry:   s.expirySource(),
		Log:      s.log.With("component", "ops"),
	}
	if s.opts.Ops.BasicAuth {
		cfg.AdminSHA256, _ = hex.DecodeString(s.opts.HTTP.AdminTokenSHA256)
	}
	var err error
	if s.opsLn, err = net.Listen("tcp", s.opts.Ops.Addr); err != nil {
		return fmt.Errorf("ops listener %s: %w", s.opts.Ops.Addr, err)
	}
	s.opsSrv = &http.Server{
		Handler:           ops.New(cfg),
		ReadHeaderTimeout: 10 * time.Second,
		WriteTimeout:      time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	return nil
}

// OpsAddr is the bound address of the operators' listener, "" when off.
func (s *Server) OpsAddr() string {
	if s.opsLn == nil {
		return ""
	}
	return s.opsLn.Addr().String()
}

// Registry is the relay's Prometheus registry, which /metrics serves.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// startOps serves the operators' listener, keeps the queue's summary
// fresh and flushes the per-minute counts until ctx ends.
func (s *Server) startOps(ctx context.Context) {
	s.wg.Go(func() { s.refreshSummary(ctx) })
	if s.metrics != nil {
		every := minuteFlush
		if s.opts.Ops.minuteFlush > 0 {
			every = s.opts.Ops.minuteFlush.D()
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.metrics.flushMinutes(ctx, s.queue, every, func(ctx context.Context) (int64, error) {
				sum, err := s.summary.Summarize(ctx)
				var held int64
				for _, g := range sum.Groups {
					held += g.Held
				}
				return held, err
			})
		}()
	}
	if s.opsSrv == nil {
		return
	}
	s.goServe(func() error {
		if err := s.opsSrv.Serve(s.opsLn); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
}

// refreshSummary counts every route of the queue's summary at start and
// every queue.SummaryRefresh, so that no scrape waits for a full count.
func (s *Server) refreshSummary(ctx context.Context) {
	t := time.NewTicker(queue.SummaryRefresh)
	defer t.Stop()
	for {
		if err := s.summary.Refresh(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("cannot count the queue for the metrics; the next scrape counts what it needs", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// opsStatus reads the status page's numbers the way the JSON endpoints
// do: the breakers through the BreakerReporter of GET /v1/breakers, the
// queue through queue.Stats.
type opsStatus struct {
	s *Server
}

func (o *opsStatus) Status(ctx context.Context) (ops.Status, error) {
	s := o.s
	now := time.Now()
	st := ops.Status{Now: now}
	stats, err := s.queue.Stats(ctx)
	if err != nil {
		return st, err
	}
	t := stats.Total
	st.Queue = ops.Depth{Ready: t.Ready, Scheduled: t.Scheduled, Sending: t.Leased, Held: t.Held, Dead: t.Dead}
	// The fleet's waits of the mailboxes with mail waiting, read once:
	// shown, and left out of the oldest ready message's age.
	ready := map[string]time.Time{}
	var waiting []string
	for _, r := range stats.Routes {
		if !r.ReadySince.IsZero() {
			ready[r.Route] = r.ReadySince
		}
		if r.Ready+r.Scheduled > 0 {
			waiting = append(waiting, r.Route)
		}
	}
	waits, err := s.waitsOf(ctx, waiting)
	if err != nil {
		return st, err
	}
	shown := describeWaits(waits)
	st.MailboxWaitCount = len(shown)
	st.MailboxWaits = shown[:min(len(shown), ops.MaxOpenMailboxes)]
	st.OldestReady = ops.Seconds(time.Duration(ageSeconds(now, s.exchange.readySince(ready, waits)) * float64(time.Second)))
	st.OldestHeld = ops.Seconds(time.Duration(ageSeconds(now, oldestHeld(stats)) * float64(time.Second)))

	minutes, err := s.queue.Minutes(ctx, now, 60)
	if err != nil {
		return st, err
	}
	st.Latency = latencySummary(minutes)
	for _, m := range minutes {
		st.Minutes = append(st.Minutes, ops.Minute{Start: m.Start, Delivered: m.Delivered, Held: m.Held})
	}
	if err := o.transports(ctx, &st); err != nil {
		return st, err
	}
	o.fullRoutes(&st, stats.Routes)
	if s.gate == nil {
		return st, nil
	}
	list, err := s.breakerReporter().List(ctx)
	if err != nil {
		return st, err
	}
	for _, b := range list {
		ob := ops.Breaker{Name: b.Name, State: b.State, Reason: b.Reason, Since: b.Since, Held: b.HeldMessages}
		switch {
		case b.Kind == "credential":
			ob.Name = b.Credential
			st.Breakers = append(st.Breakers, ob)
		case b.State == breaker.Open.String():
			st.OpenMailboxCount++
			if len(st.OpenMailboxes) < ops.MaxOpenMailboxes {
				ob.Name = strings.TrimPrefix(b.Name, "mbx:")
				st.OpenMailboxes = append(st.OpenMailboxes, ob)
			}
		}
	}
	recent, err := s.gate.set.Recent(ctx, 20)
	if err != nil {
		return st, err
	}
	for _, tr := range recent {
		st.Transitions = append(st.Transitions, ops.Transition{Breaker: tr.Name, To: tr.To.String(), Reason: tr.Reason, At: tr.At})
	}
	return st, nil
}

// transports fills in how each app's routes send, and the routes that
// send by Graph as a fallback.
func (o *opsStatus) transports(ctx context.Context, st *ops.Status) error {
	x := o.s.exchange
	if x == nil {
		return nil
	}
	for _, a := range o.s.opts.Apps {
		st.Transports = append(st.Transports, ops.Transport{App: a.Name, Via: a.Via, Fallback: a.Fallback})
	}
	routes, err := x.fallbacks.q.GraphFallbacks(ctx)
	if err != nil {
		return err
	}
	st.GraphFallbackCount = len(routes)
	for _, r := range slices.Sorted(maps.Keys(routes)) {
		if len(st.GraphFallbacks) == ops.MaxOpenMailboxes {
			break
		}
		st.GraphFallbacks = append(st.GraphFallbacks, ops.Fallback{Route: r, Until: routes[r]})
	}
	return nil
}

// fullRoutes fills in the routes at queue.max_messages_per_route, whose
// new mail the ingresses refuse, those holding the most first.
func (o *opsStatus) fullRoutes(st *ops.Status, routes []queue.RouteStats) {
	st.MaxPerRoute = o.s.opts.Queue.MaxMessagesPerRoute
	var full []ops.FullRoute
	for _, r := range routes {
		if r.Full(st.MaxPerRoute) {
			full = append(full, ops.FullRoute{Route: r.Route, Messages: r.Undelivered()})
		}
	}
	slices.SortFunc(full, func(a, b ops.FullRoute) int {
		return cmp.Or(cmp.Compare(b.Messages, a.Messages), strings.Compare(a.Route, b.Route))
	})
	st.FullRouteCount = len(full)
	st.FullRoutes = full[:min(len(full), ops.MaxOpenMailboxes)]
}

// latencySummary is the p50 and p95 of the minutes' latency buckets,
// interpolated within a bucket as Prometheus's histogram_quantile does.
func latencySummary(minutes []queue.Minute) ops.Latency {
	counts := make([]int64, len(latencyBuckets)+1)
	var total int64
	add := func(i int, n int64) {
		if i >= 0 && i < len(counts) {
			counts[i] += n
			total += n
		}
	}
	for _, m := range minutes {
		for i, n := range m.Latency {
			add(i, n)
		}
		for i, n := range m.EarlierLatency {
			add(i+earlierLatencyShift, n)
		}
	}
	l := ops.Latency{Count: total}
	if total == 0 {
		return l
	}
	l.P50 = ops.Seconds(bucketQuantile(0.5, counts, total))
	l.P95 = ops.Seconds(bucketQuantile(0.95, counts, total))
	return l
}

func bucketQuantile(q float64, counts []int64, total int64) time.Duration {
	rank := q * float64(total)
	var seen int64
	for i, n := range counts {
		if float64(seen+n) < rank || n == 0 {
			seen += n
			continue
		}
		if i == len(latencyBuckets) {
			// Past the last bucket: its bound is all that is known.
			return time.Duration(latencyBuckets[i-1] * float64(time.Second))
		}
		lo := 0.0
		if i > 0 {
			lo = latencyBuckets[i-1]
		}
		hi := latencyBuckets[i]
		sec := lo + (hi-lo)*(rank-float64(seen))/float64(n)
		return time.Duration(math.Round(sec*1000) * float64(time.Millisecond))
	}
	return 0
}
