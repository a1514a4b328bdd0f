package main

import (
	"context"
	"flag"
	"fmt"
	"text/tabwriter"
	"time"

	"holdfast/breaker"
)

// openBreakers loads the configuration at path and returns the fleet's
// breakers and a function that closes the Redis connection.
func openBreakers(path string) (*breaker.Set, func(), error) {
	_, rdb, err := openRedis(path)
	if err != nil {
		return nil, nil, err
	}
	return breaker.New(rdb, breaker.Options{}), func() { _ = rdb.Close() }, nil
}

// breakerStatus prints every breaker the fleet has used: state, since
// when, why, its failure count and its next probe.
func breakerStatus(ctx context.Context, e *env, fs *flag.FlagSet, args []string) error {
	config := configFlag(fs, e)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	set, closeSet, err := openBreakers(*config)
	if err != nil {
		return err
	}
	defer closeSet()
	list, err := set.List(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(e.stdout, list)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "BREAKER\tSTATE\tSINCE\tFAILURES\tNEXT PROBE\tREASON")
	for _, st := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", st.Name, st.State, stamp(st.Since), st.Failures, nextProbe(st), st.Reason)
	}
	return tw.Flush()
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func nextProbe(st breaker.Status) string {
	if st.State != breaker.Open {
		return "-"
	}
	return stamp(st.NextProbe)
}

// breakerVerb runs one operator verb on the named breakers.
func breakerVerb(verb string, do func(ctx context.Context, set *breaker.Set, name string) error) func(context.Context, *env, *flag.FlagSet, []string) error {
	return func(ctx context.Context, e *env, fs *flag.FlagSet, args []string) error {
		config := configFlag(fs, e)
		names, err := parseArgs(fs, args)
		if err != nil {
			return err
		}
		if len(names) == 0 {
			return usagef("name at least one breaker (see holdfast breaker status)")
		}
		set, closeSet, err := openBreakers(*config)
		if err != nil {
			return err
		}
		defer closeSet()
		for _, name := range names {
			if err := do(ctx, set, name); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			fmt.Fprintf(e.stdout, "%s: %s\n", name, verb)
		}
		return nil
	}
}

var (
	breakerTrip = breakerVerb("tripped: its mail is held until reset or a successful probe", func(ctx context.Context, set *breaker.Set, name string) error {
		return set.Trip(ctx, name, "tripped by an operator")
	})
	breakerReset = breakerVerb("reset: closed, its mail is released", func(ctx context.Context, set *breaker.Set, name string) error {
		return set.Reset(ctx, name)
	})
	breakerProbe = breakerVerb("probe requested: a relay probes it within a second", func(ctx context.Context, set *breaker.Set, name string) error {
		open, err := set.ProbeNow(ctx, name)
		if err == nil && !open {
			return fmt.Errorf("it is closed; there is nothing to probe")
		}
		return err
	})
)
