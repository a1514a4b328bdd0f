package relay

import (
	"context"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"holdfast/breaker"
	"holdfast/queue"
)

// scrapeTimeout bounds the Redis reads of one scrape.
const scrapeTimeout = 5 * time.Second

// stateCollector reads the queue depth and the breakers at scrape time:
// a fixed number of Redis round trips (the route set with the queue's
// change log, one pipeline of counts of the routes changed since the last
// scrape, the breaker names and one pipeline of breaker records; one
// pipeline per node on Redis Cluster, where every route is counted),
// however many routes and breakers exist.
type stateCollector struct {
	sum   *queue.Summarizer
	set   *breaker.Set // nil without the exchange sender
	creds []string     // configured credentials: their series always exist
	now   func() time.Time
	log   interface{ Warn(string, ...any) }
	// memory is Redis's memory use as the durability check last read it
	// (every redis.check_interval); nil when unknown.
	memory func() []queue.NodeMemory
	// readySince, when set, is the oldest ready message's due time
	// among the routes given, leaving out mail that waits for the
	// upstream (Server.readySince); without it, every route counts.
	readySince func(context.Context, map[string]time.Time) (time.Time, error)

	depth, oldestReady, oldestHeld, brkOpen, mbxOpen, redisUsed, redisMax *prometheus.Desc
}

func newStateCollector(sum *queue.Summarizer, set *breaker.Set, creds []string, memory func() []queue.NodeMemory,
	log interface{ Warn(string, ...any) }) *stateCollector {
	return &stateCollector{
		sum: sum, set: set, creds: creds, memory: memory, now: time.Now, log: log,
		redisUsed: prometheus.NewDesc("holdfast_redis_memory_used_bytes",
			"Redis's used_memory, per server (every master of a Cluster), as read every redis.check_interval.",
			[]string{"node"}, nil),
		redisMax: prometheus.NewDesc("holdfast_redis_maxmemory_bytes",
			"Redis's maxmemory, per server; 0 when none is set. Past it Redis refuses new mail.",
			[]string{"node"}, nil),
		depth: prometheus.NewDesc("holdfast_queue_messages",
			"Messages in the queue by state (ready, scheduled, sending, held, dead) and credential.",
			[]string{"state", "credential"}, nil),
		oldestReady: prometheus.NewDesc("holdfast_queue_oldest_ready_age_seconds",
			"How long the longest-waiting ready message has been due without a worker taking it.", nil, nil),
		oldestHeld: prometheus.NewDesc("holdfast_queue_oldest_held_age_seconds",
			"Age of the oldest message held by an open auth breaker.", nil, nil),
		brkOpen: prometheus.NewDesc("holdfast_breaker_open",
			"1 while the credential's auth breaker is open, else 0.", []string{"credential"}, nil),
		mbxOpen: prometheus.NewDesc("holdfast_mailbox_breakers_open",
			"Open mailbox auth breakers among the credential's routes.", []string{"credential"}, nil),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.depth, c.oldestReady, c.oldestHeld, c.brkOpen, c.mbxOpen, c.redisUsed, c.redisMax} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	if c.memory != nil {
		for _, n := range c.memory() {
			ch <- prometheus.MustNewConstMetric(c.redisUsed, prometheus.GaugeValue, float64(n.Used), n.Addr)
			ch <- prometheus.MustNewConstMetric(c.redisMax, prometheus.GaugeValue, float64(n.Max), n.Addr)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	sum, err := c.sum.Summarize(ctx)
	if err != nil {
		c.log.Warn("metrics: cannot read the queue", "err", err)
		ch <- prometheus.NewInvalidMetric(c.depth, err)
		if c.set != nil {
			// The breakers as last read: a series that vanished with
			// Redis would resolve HoldfastBreakerOpen while the
			// breaker is open.
			open, _ := openBreakers(c.set.Known(), nil, c.creds)
			for cr, v := range open {
				ch <- prometheus.MustNewConstMetric(c.brkOpen, prometheus.GaugeValue, v, cr)
			}
		}
		return
	}
	now := c.now()
	for _, cr := range c.creds {
		if _, ok := sum.Groups[cr]; !ok {
			sum.Groups[cr] = queue.RouteStats{}
		}
	}
	for cr, n := range sum.Groups {
		for _, v := range []struct {
			state string
			n     int64
		}{{"ready", n.Ready}, {"scheduled", n.Scheduled}, {"sending", n.Leased}, {"held", n.Held}, {"dead", n.Dead},
			{"moving", n.Moving}} {
			ch <- prometheus.MustNewConstMetric(c.depth, prometheus.GaugeValue, float64(v.n), v.state, cr)
		}
	}
	since := sum.ReadySince
	if c.readySince != nil {
		if t, err := c.readySince(ctx, sum.ReadyRoutes); err != nil {
			c.log.Warn("metrics: cannot read the mailboxes' waits; the oldest ready message's age counts their mail", "err", err)
		} else {
			since = t
		}
	}
	ch <- prometheus.MustNewConstMetric(c.oldestReady, prometheus.GaugeValue, ageSeconds(now, since))
	ch <- prometheus.MustNewConstMetric(c.oldestHeld, prometheus.GaugeValue, ageSeconds(now, sum.OldestHeld))
	if c.set == nil {
		return
	}
	list, err := c.set.List(ctx)
	if err != nil {
		c.log.Warn("metrics: cannot read the breakers; they are shown as last read", "err", err)
		list = c.set.Known()
	}
	open, mbx := openBreakers(list, sum.Routes, c.creds)
	for cr, v := range open {
		ch <- prometheus.MustNewConstMetric(c.brkOpen, prometheus.GaugeValue, v, cr)
	}
	for cr, n := range mbx {
		ch <- prometheus.MustNewConstMetric(c.mbxOpen, prometheus.GaugeValue, float64(n), cr)
	}
}

// openBreakers maps each credential to 1 when its breaker is open, and
// counts the open mailbox breakers among each credential's routes.
func openBreakers(list []breaker.Status, routes []string, creds []string) (open map[string]float64, mbx map[string]int) {
	open, mbx = map[string]float64{}, map[string]int{}
	for _, cr := range creds {
		open[cr], mbx[cr] = 0, 0
	}
	openMbx := map[string]bool{}
	for _, st := range list {
		if st.State != breaker.Open {
			continue
		}
		if cr, ok := strings.CutPrefix(st.Name, "cred:"); ok {
			open[cr] = 1
		} else {
			openMbx[st.Name] = true
		}
	}
	seen := map[[2]string]bool{}
	for _, r := range routes {
		credName, mbxName, ok := routeBreakers(r)
		if !ok || !openMbx[mbxName] {
			continue
		}
		cr := strings.TrimPrefix(credName, "cred:")
		if k := [2]string{cr, mbxName}; !seen[k] {
			seen[k] = true
			mbx[cr]++
		}
	}
	return open, mbx
}

func ageSeconds(now, t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return max(0, now.Sub(t).Seconds())
}

// oldestHeld is the submit time of the oldest message on a held route.
func oldestHeld(stats queue.Stats) time.Time {
	var oldest time.Time
	for _, rs := range stats.Routes {
		if rs.Held > 0 && !rs.Oldest.IsZero() && (oldest.IsZero() || rs.Oldest.Before(oldest)) {
			oldest = rs.Oldest
		}
	}
	return oldest
}
