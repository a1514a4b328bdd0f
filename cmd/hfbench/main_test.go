package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

// sample is make bench output as the tools print it, trimmed.
const sample = `== queue
goos: linux
BenchmarkEnqueue-2    	   20000	     50961 ns/op	  40.19 MB/s	     19623 msgs/s	    1353 B/op	      37 allocs/op
BenchmarkEnqueue-2    	   20000	     36236 ns/op	  56.52 MB/s	     27597 msgs/s	    1353 B/op	      37 allocs/op
BenchmarkEnqueue-2    	   20000	     56007 ns/op	  36.57 MB/s	     17855 msgs/s	    1353 B/op	      37 allocs/op
BenchmarkLeaseAck-2   	   20000	     63970 ns/op	       900 msgs/s	    6433 B/op	      60 allocs/op
BenchmarkSMTPIngress-2   	   20000	    187415 ns/op	  10.66 MB/s	      5336 msgs/s	         2.263 p50-ms	        20.18 p99-ms	   16306 B/op	     129 allocs/op
BenchmarkSMTPIngress-2   	   20000	    187415 ns/op	  10.66 MB/s	      6000 msgs/s	         2.263 p50-ms	        8.5 p99-ms	   16306 B/op	     129 allocs/op
BenchmarkSMTPIngress   	   20000	    187415 ns/op	  10.66 MB/s	      6100 msgs/s	         2.263 p50-ms	        9.5 p99-ms	   16306 B/op	     129 allocs/op
PASS
round 1: 4993 msg/s, p50 3.25 ms, p99 9.57 ms, peak RSS 16 MiB (30000 accepted, 0 failed)
median of 3 rounds: 4993 messages/s, accept latency p50 3.25 ms, p99 9.57 ms, peak RSS 16 MiB
`

func TestParse(t *testing.T) {
	fig, err := parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	check := func(k string, want ...float64) {
		t.Helper()
		got := fig[k]
		if len(got) != len(want) {
			t.Errorf("%q: %v, want %v", k, got, want)
			return
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("%q: %v, want %v", k, got, want)
				return
			}
		}
	}
	check(key("BenchmarkEnqueue", "msgs/s"), 19623, 27597, 17855)
	check(key("BenchmarkEnqueue", "MB/s"), 40.19, 56.52, 36.57)
	check(key("BenchmarkSMTPIngress", "p99-ms"), 20.18, 8.5, 9.5) // with and without -GOMAXPROCS
	check(key("", "msgs/s"), 4993)
	check(key("", "p99-ms"), 9.57)
	check(key("", "rss-mib"), 16)
	check(key("", "rounds"), 3)
	if _, ok := fig[key("BenchmarkEndToEnd", "delivered/s")]; ok {
		t.Error("a figure that was not in the output")
	}
}

func TestMedian(t *testing.T) {
	for _, tt := range []struct {
		xs   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(tt.xs); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.xs, got, tt.want)
		}
	}
}

func TestSummarise(t *testing.T) {
	fig, err := parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	ts := []target{
		{name: "enqueue", bench: "BenchmarkEnqueue", unit: "msgs/s", min: 19000},    // median 19623: pass
		{name: "lease", bench: "BenchmarkLeaseAck", unit: "msgs/s", min: 1000},      // 900: short
		{name: "p99", bench: "BenchmarkSMTPIngress", unit: "p99-ms", max: 9.5},      // median 9.5: pass
		{name: "p99 strict", bench: "BenchmarkSMTPIngress", unit: "p99-ms", max: 9}, // short
		{name: "rss", unit: "rss-mib", max: 150},                                    // 16: pass
		{name: "e2e", bench: "BenchmarkEndToEnd", unit: "delivered/s", min: 1},      // not measured
	}
	rows := summarise(fig, ts)
	want := []bool{true, false, true, false, true, false}
	for i, r := range rows {
		if r.pass != want[i] {
			t.Errorf("%s: pass %v (median %v), want %v", r.t.name, r.pass, r.median, want[i])
		}
	}
	if allPass(rows) {
		t.Error("allPass with short rows")
	}
	if !allPass(rows[:1]) {
		t.Error("not allPass with only passing rows")
	}
	var out bytes.Buffer
	if err := writeTable(&out, rows); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"SHORT", "NOT MEASURED", ">= 1000 msgs/s", "19623 msgs/s (3 runs)", "16 rss-mib (3 runs)", "3 of 6 figures fall short"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the table lacks %q:\n%s", want, out.String())
		}
	}
}

// TestTargets checks that every target can be found and is a floor or a
// ceiling, not both.
func TestTargets(t *testing.T) {
	for _, tg := range targets {
		if (tg.min == 0) == (tg.max == 0) {
			t.Errorf("%s: set exactly one of min and max", tg.name)
		}
		if tg.bench == "" && !slices.Contains(ingressFields, tg.unit) {
			t.Errorf("%s: the ingress script reports no %q", tg.name, tg.unit)
		}
		if tg.why == "" {
			t.Errorf("%s: say where the target comes from", tg.name)
		}
	}
}
