// Command hfbench reads the output of "make bench" (the Go benchmarks
// and deploy/bench/ingress.sh) and prints a summary table: each figure's
// median, its target, and pass or short. It exits 1 when a figure falls
// short of its target or was not measured. The targets are set in
// targets.go.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

func main() {
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: hfbench [FILE]\n\nSummarise make bench output (from FILE, or stdin) against the targets.")
	}
	flag.Parse()
	var in io.Reader = os.Stdin
	if flag.NArg() == 1 {
		f, err := os.Open(flag.Arg(0))
		if err != nil {
			fmt.Fprintf(os.Stderr, "hfbench: %v\n", err)
			os.Exit(2)
		}
		defer f.Close()
		in = f
	} else if flag.NArg() > 1 {
		flag.Usage()
		os.Exit(2)
	}
	figures, err := parse(in)
	if err != nil {
		fmt.Fprintf(os.Stderr, "hfbench: %v\n", err)
		os.Exit(2)
	}
	rows := summarise(figures, targets)
	if err := writeTable(os.Stdout, rows); err != nil {
		fmt.Fprintf(os.Stderr, "hfbench: %v\n", err)
		os.Exit(2)
	}
	if !allPass(rows) {
		os.Exit(1)
	}
}

// figures are the values measured, by figure key (see key), one per run.
type figures map[string][]float64

// key is how a figure is found: its benchmark (empty for the ingress
// script) and unit.
func key(bench, unit string) string { return bench + " " + unit }

var (
	// benchLine is a line of go test -bench output: the name with its
	// -GOMAXPROCS suffix, the iterations, then value-unit pairs.
	benchLine = regexp.MustCompile(`^(Benchmark[^\s-]+)(?:-\d+)?\s+\d+\s+(.*)$`)
	// ingressLine is the summary line of deploy/bench/ingress.sh.
	ingressLine = regexp.MustCompile(`^median of (\d+) rounds: ([\d.]+) messages/s, accept latency p50 ([\d.]+) ms, p99 ([\d.]+) ms, peak RSS ([\d.]+) MiB`)
)

// ingressFields are the units given to the ingress script's figures, in
// the order of ingressLine's groups after the number of rounds.
var ingressFields = []string{"msgs/s", "p50-ms", "p99-ms", "rss-mib"}

// parse reads benchmark lines and the ingress summary; it ignores every
// other line.
func parse(r io.Reader) (figures, error) {
	fig := figures{}
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if m := benchLine.FindStringSubmatch(line); m != nil {
			f := strings.Fields(m[2])
			for i := 0; i+1 < len(f); i += 2 {
				v, err := strconv.ParseFloat(f[i], 64)
				if err != nil {
					break
				}
				fig[key(m[1], f[i+1])] = append(fig[key(m[1], f[i+1])], v)
			}
			continue
		}
		if m := ingressLine.FindStringSubmatch(line); m != nil {
			// The script's figures are medians of its rounds already.
			rounds, _ := strconv.Atoi(m[1])
			fig[key("", "rounds")] = append(fig[key("", "rounds")], float64(rounds))
			for i, unit := range ingressFields {
				v, err := strconv.ParseFloat(m[i+2], 64)
				if err != nil {
					return nil, fmt.Errorf("ingress summary %q: %w", line, err)
				}
				fig[key("", unit)] = append(fig[key("", unit)], v)
			}
		}
	}
	return fig, sc.Err()
}

// median of a non-empty list.
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}

// row is one line of the summary.
type row struct {
	t        target
	runs     int
	median   float64
	measured bool
	pass     bool
}

func summarise(fig figures, ts []target) []row {
	var rows []row
	for _, t := range ts {
		r := row{t: t}
		if xs := fig[key(t.bench, t.unit)]; len(xs) > 0 {
			r.runs, r.median, r.measured = len(xs), median(xs), true
			if rounds := fig[key("", "rounds")]; t.bench == "" && len(rounds) > 0 {
				r.runs = int(rounds[len(rounds)-1])
			}
			r.pass = (t.min == 0 || r.median >= t.min) && (t.max == 0 || r.median <= t.max)
		}
		rows = append(rows, r)
	}
	return rows
}

func allPass(rows []row) bool {
	for _, r := range rows {
		if !r.pass {
			return false
		}
	}
	return true
}

func writeTable(w io.Writer, rows []row) error {
	fmt.Fprintln(w, "\nSummary (medians; targets in cmd/hfbench/targets.go):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FIGURE\tSOURCE\tMEDIAN\tTARGET\tRESULT")
	short := 0
	for _, r := range rows {
		src := r.t.bench
		if src == "" {
			src = "deploy/bench/ingress.sh"
		}
		target := fmt.Sprintf("<= %s %s", num(r.t.max), r.t.unit)
		if r.t.min != 0 {
			target = fmt.Sprintf(">= %s %s", num(r.t.min), r.t.unit)
		}
		value, result := "-", "NOT MEASURED"
		if r.measured {
			value = fmt.Sprintf("%s %s (%d runs)", num(r.median), r.t.unit, r.runs)
			result = "pass"
			if !r.pass {
				result = "SHORT"
			}
		}
		if !r.pass {
			short++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.t.name, src, value, target, result)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range rows {
		if !r.pass {
			fmt.Fprintf(w, "  short: %s; its target is %s\n", r.t.name, r.t.why)
		}
	}
	if short == 0 {
		_, err := fmt.Fprintf(w, "All %d figures meet their targets.\n", len(rows))
		return err
	}
	_, err := fmt.Fprintf(w, "%d of %d figures fall short of their targets or were not measured.\n", short, len(rows))
	return err
}

// num prints a figure with the precision it deserves.
func num(v float64) string {
	if v >= 100 || v == math.Trunc(v) {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}
