package main

// target is one figure of "make bench" and the value it must reach.
type target struct {
	// name is what the summary calls the figure.
	name string
	// bench and unit find it in "go test -bench" output: the benchmark
	// (without its -GOMAXPROCS suffix) and the unit of a reported metric.
	// When bench is empty the figure comes from deploy/bench/ingress.sh,
	// and unit names its field (see ingressFields).
	bench, unit string
	// min or max bounds the median: a floor (at least) or a ceiling (at
	// most). Exactly one is set.
	min, max float64
	// why says where the target comes from.
	why string
}

// targets are every figure "make bench" checks, in the order printed.
// This is the one place they are set.
var targets = []target{
	{name: "SMTP ingress, holdfast serve + hfload", unit: "msgs/s", min: 3000,
		why: "the ingress target: 3,000 messages/s on 2 cores"},
	{name: "SMTP ingress accept latency p99", unit: "p99-ms", max: 20,
		why: "the ingress target: p99 under 20 ms"},
	{name: "peak RSS of holdfast serve under that load", unit: "rss-mib", max: 150,
		why: "the memory budget: under 150 MB"},
	{name: "SMTP ingress in one process", bench: "BenchmarkSMTPIngress", unit: "msgs/s", min: 3000,
		why: "the ingress target, without the process boundary"},
	{name: "SMTP ingress in one process, p99", bench: "BenchmarkSMTPIngress", unit: "p99-ms", max: 20,
		why: "the ingress target"},
	{name: "queue enqueue", bench: "BenchmarkEnqueue", unit: "msgs/s", min: 3000,
		why: "every accepted message is one enqueue: at least the ingress target"},
	{name: "queue lease + ack", bench: "BenchmarkLeaseAck", unit: "msgs/s", min: 1000,
		why: "100 times Exchange's ceiling for 20 mailboxes (20 × 30 a minute = 10/s)"},
	{name: "end to end, delivered to the simulator", bench: "BenchmarkEndToEnd", unit: "delivered/s", min: 1000,
		why: "100 times Exchange's ceiling for 20 mailboxes"},
	{name: "scrape, 10,000 routes, 1,000 changed since the last", bench: "BenchmarkScrape/routes=10000/waiting=10000/changed=1000", unit: "ms/scrape-p50", max: 50,
		why: "a scrape of the queue and breaker gauges with mail on every route (issue 8)"},
	{name: "scrape, 10,000 routes: Redis round trips", bench: "BenchmarkScrape/routes=10000/waiting=10000/changed=1000", unit: "roundtrips/scrape", max: 4,
		why: "a bounded number, however many routes (issue 8)"},
	{name: "a full count of 10,000 routes: Redis round trips", bench: "BenchmarkScrape/routes=10000/waiting=10000/full", unit: "roundtrips/scrape", max: 4,
		why: "counting every route (at start, every 5 minutes) still takes a bounded number of round trips (issue 8)"},
	{name: "one busy route beside 10,000 idle ones, of its rate alone", bench: "BenchmarkBusyRoute", unit: "ratio", min: 0.9,
		why: "idle routes must cost the dispatcher nothing (issue 10)"},
	{name: "dead SMTP endpoint: connections per probe interval", bench: "BenchmarkDeadUpstream", unit: "conns/probe-interval", max: 3,
		why: "a few attempts per replica per probe interval, not one per message (issue 10)"},
	{name: "new sessions a second, 200 mailboxes, 20 ms round trip", bench: "BenchmarkNewSessions", unit: "sessions/s", min: 30,
		why: "an AUTH place is held for the AUTH alone, not the set-up before it (about 15/s when it was)"},
	{name: "hold 2,000 mailboxes' routes, Redis 1 ms away", bench: "BenchmarkReconcileRoutes/redis-rtt=1ms", unit: "s/hold", max: 4,
		why: "a replica's held set follows an opened breaker within seconds, however many mailboxes (about 8 s one route after another)"},
	{name: "release 2,000 mailboxes' routes, Redis 1 ms away", bench: "BenchmarkReconcileRoutes/redis-rtt=1ms", unit: "s/release", max: 4,
		why: "mail flows within seconds of a rotation for every mailbox, not only the first (13 s one route after another)"},
	{name: "incident: upstream requests wasted", bench: "BenchmarkIncident", unit: "wasted-reqs", max: 5,
		why: "the opening failure and one probe per interval over an 8 s outage"},
	{name: "incident: rotation to breaker closed", bench: "BenchmarkIncident", unit: "ms-to-closed", max: 5000,
		why: "a rotated secret file is seen within 5 s"},
	{name: "incident: rotation to first delivery", bench: "BenchmarkIncident", unit: "ms-to-first-delivery", max: 5000,
		why: "as soon as the breaker closes"},
	{name: "incident: rotation to backlog drained", bench: "BenchmarkIncident", unit: "ms-to-drained", max: 20000,
		why: "about 700 held messages within 20 s"},
}
