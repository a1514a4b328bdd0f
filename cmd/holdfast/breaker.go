package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"text/tabwriter"
	"time"

	"holdfast/auth"
	"holdfast/breaker"
	"holdfast/queue"
	"holdfast/relay"

	"github.com/redis/go-redis/v9"
)

// newBreakerSet returns the fleet's breakers for a command: it reads and
// changes them, and logs nothing of what it sees (the relays do).
func newBreakerSet(o relay.Options, rdb redis.UniversalClient) *breaker.Set {
	bo := o.Breakers.Options()
	bo.Logger = slog.New(slog.DiscardHandler)
	return breaker.New(rdb, bo)
}

// breakerStatus prints every breaker: state, since when, why, its failure
// count, the mail it holds, its next probe and its credential's expiry.
func breakerStatus(ctx context.Context, e *env, fs *flag.FlagSet, args []string) error {
	config := configFlag(fs, e)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	o, rdb, err := openRedis(*config)
	if err != nil {
		return err
	}
	defer func() { _ = rdb.Close() }()
	report := relay.NewBreakerReporter(newBreakerSet(o, rdb), queue.New(rdb, o.Queue.Options()), o)
	list, err := report.List(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(e.stdout, list)
	}
	now := e.now()
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "BREAKER\tSTATE\tSINCE\tFAILURES\tHELD\tOLDEST\tNEXT PROBE\tEXPIRES\tREASON")
	for _, b := range list {
		oldest := "-"
		if !b.OldestHeld.IsZero() {
			oldest = age(now.Sub(b.OldestHeld))
		}
		next := stamp(b.NextProbe)
		if b.HeldByOperator {
			next = "none: held until reset"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\n", b.Name, b.State, stamp(b.Since), b.Failures,
			b.HeldMessages, oldest, next, expires(b.CredentialExpires, now), orDash(b.Reason))
	}
	return tw.Flush()
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// expires is a credential's expiry with the days left, counted and
// flagged as the relays' expiry monitor and creds check do: rounded up,
// and ROTATE within 30 days.
func expires(t, now time.Time) string {
	days := auth.DaysLeft(t, now)
	switch auth.ExpiryLevel(t, now) {
	case auth.LevelUnknown:
		return "-"
	case auth.LevelExpired:
		return t.UTC().Format(time.DateOnly) + " (EXPIRED)"
	case auth.LevelWarning, auth.LevelCritical:
		return fmt.Sprintf("%s (%dd, ROTATE)", t.UTC().Format(time.DateOnly), days)
	}
	return fmt.Sprintf("%s (%dd)", t.UTC().Format(time.DateOnly), days)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// breakerVerb runs one operator verb on the named breakers. Every name
// is checked before any is changed: a name no relay checks (a typo, a
// credential not in the configuration) is refused. With forgettable, the
// verb takes --forget, which instead removes the record of such a name,
// for a credential taken out of the configuration. do may return what
// to print instead of verb.
func breakerVerb(verb string, forgettable bool, do func(ctx context.Context, set *breaker.Set, name string) (string, error)) func(context.Context, *env, *flag.FlagSet, []string) error {
	return breakerVerbThen(verb, forgettable, do, nil)
}

// breakerVerbThen is breakerVerb, and calls then, if not nil, once do
// has run for every name.
func breakerVerbThen(verb string, forgettable bool, do func(ctx context.Context, set *breaker.Set, name string) (string, error), then func(ctx context.Context, set *breaker.Set) error) func(context.Context, *env, *flag.FlagSet, []string) error {
	return func(ctx context.Context, e *env, fs *flag.FlagSet, args []string) error {
		config := configFlag(fs, e)
		forget := new(bool)
		if forgettable {
			forget = fs.Bool("forget", false, "remove the records of breakers, instead of resetting: of a credential taken out of the configuration, or of a mailbox (a mistyped trip, a mailbox no longer used; it is closed first)")
		}
		names, err := parseArgs(fs, args)
		if err != nil {
			return err
		}
		if len(names) == 0 {
			return usagef("name at least one breaker (see holdfast breaker status)")
		}
		o, rdb, err := openRedis(*config)
		if err != nil {
			return err
		}
		defer func() { _ = rdb.Close() }()
		set := newBreakerSet(o, rdb)
		report := relay.NewBreakerReporter(set, queue.New(rdb, o.Queue.Options()), o)
		var checked, unchecked []string // by the relays of config
		for i, name := range names {
			var known bool
			if names[i], known = report.Known(name); known {
				checked = append(checked, names[i])
			} else {
				unchecked = append(unchecked, names[i])
			}
		}
		if *forget {
			return forgetBreakers(ctx, e, set, names, checked, *config)
		}
		if len(unchecked) > 0 {
			creds := make([]string, len(o.Credentials))
			for i, c := range o.Credentials {
				creds[i] = "cred:" + c.Name
			}
			configured := "none is configured"
			if len(creds) > 0 {
				configured = "configured: " + strings.Join(creds, ", ")
			}
			hint := ""
			if forgettable {
				hint = "; to remove the record of a credential taken out of the configuration, use --forget"
			}
			for _, n := range unchecked {
				if m, ok := strings.CutPrefix(n, "mbx:"); ok {
					hint += fmt.Sprintf("; %q is not a mailbox address", m)
				}
			}
			return usagef("%s: no relay checks such a breaker; name cred:NAME of a credential in %s (%s) or mbx:ADDRESS%s",
				strings.Join(unchecked, ", "), *config, configured, hint)
		}
		for _, name := range names {
			done, err := do(ctx, set, name)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			fmt.Fprintf(e.stdout, "%s: %s\n", name, cmp.Or(done, verb))
		}
		if then != nil {
			return then(ctx, set)
		}
		return nil
	}
}

// forgetBreakers removes the records of names, which must each have one.
// A credential's must be checked by no relay of config (checked lists the
// names relays check); a mailbox's may be, since relays check any
// mailbox: forgetting one closes it, and a later failure starts a new
// record.
func forgetBreakers(ctx context.Context, e *env, set *breaker.Set, names, checked []string, config string) error {
	var creds []string
	for _, name := range checked {
		if strings.HasPrefix(name, "cred:") {
			creds = append(creds, name)
		}
	}
	if len(creds) > 0 {
		return usagef("%s: relays of %s check it; --forget removes only the breakers of credentials no relay checks, and of mailboxes (reset closes a breaker)",
			strings.Join(creds, ", "), config)
	}
	list, err := set.List(ctx)
	if err != nil {
		return err
	}
	recorded := map[string]bool{}
	for _, st := range list {
		recorded[st.Name] = true
	}
	var missing []string
	for _, name := range names {
		if !recorded[name] {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return usagef("%s: no such breaker record (see holdfast breaker status)", strings.Join(missing, ", "))
	}
	for _, name := range names {
		if err := set.Forget(ctx, name); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		fmt.Fprintf(e.stdout, "%s: forgotten: its record is removed\n", name)
	}
	return nil
}

var (
	breakerTrip = breakerVerb("tripped: its mail is held until reset or a successful probe", false, func(ctx context.Context, set *breaker.Set, name string) (string, error) {
		if err := set.Trip(ctx, name, "tripped by an operator"); err != nil {
			return "", err
		}
		if st, err := set.Status(ctx, name); err == nil && st.Held {
			return "tripped, and still held by an operator: only holdfast breaker reset releases its mail", nil
		}
		return "", nil
	})
	breakerHold = breakerVerb("held: its mail waits, and no relay probes it, until holdfast breaker reset", false, func(ctx context.Context, set *breaker.Set, name string) (string, error) {
		return "", set.Hold(ctx, name, "held by an operator")
	})
	breakerReset = breakerVerb("reset: closed, its mail is released", true, func(ctx context.Context, set *breaker.Set, name string) (string, error) {
		before, err := set.Status(ctx, name)
		if err != nil {
			return "", err
		}
		if err := set.Reset(ctx, name); err != nil {
			return "", err
		}
		if before.State == breaker.Closed {
			return "reset: it was closed already (its failure count is cleared)", nil
		}
		return "", nil
	})
)

// probeWaitDefault is how long "breaker probe" waits for a relay's probe
// result: a token request and an SMTP AUTH, with Entra's and Exchange's
// usual answers.
const probeWaitDefault = 10 * time.Second

// probePoll is how often "breaker probe" reads the record while it waits.
const probePoll = 100 * time.Millisecond

// breakerProbe asks the fleet to probe open breakers now and, unless
// --wait is 0, waits for their results together and prints each.
func breakerProbe(ctx context.Context, e *env, fs *flag.FlagSet, args []string) error {
	wait := fs.Duration("wait", probeWaitDefault, "wait up to `DURATION` for the relays' probe results and print them; 0 does not wait")
	var asked []pendingProbe
	var held []string // not probed: an operator holds them
	request := func(ctx context.Context, set *breaker.Set, name string) (string, error) {
		var before breaker.Status
		if *wait > 0 {
			var err error
			if before, err = set.Status(ctx, name); err != nil {
				return "", err
			}
		}
		n, err := set.AskProbe(ctx, name)
		if err == nil && n == 0 {
			// What a probe would bring about already holds.
			return "closed; there is nothing to probe", nil
		}
		if errors.Is(err, breaker.ErrHeld) {
			// The other names are asked about all the same.
			held = append(held, name+" (held by an operator)")
			return "held by an operator until holdfast breaker reset; not probed", nil
		}
		if err == nil {
			asked = append(asked, pendingProbe{name: name, asked: n, before: before.LastProbe, generation: before.Generation})
		}
		return "", err
	}
	await := func(ctx context.Context, set *breaker.Set) error {
		var open []string
		if *wait > 0 {
			var err error
			if open, err = awaitProbes(ctx, e, set, asked, *wait); err != nil {
				return err
			}
		}
		if open = append(held, open...); len(open) > 0 {
			return fmt.Errorf("still open: %s", strings.Join(open, ", "))
		}
		return nil
	}
	return breakerVerbThen("probe requested: a relay probes it within a second", false, request, await)(ctx, e, fs, args)
}

// awaitProbes waits up to wait for the probe result that answers each
// request (see pendingProbe.answered), or for the breaker to close, and
// prints it as it comes. Each poll reads every record waited for in one
// round trip. It returns the breakers not closed at the end (still open,
// or with no result), so that the command fails unless the mail of every
// breaker asked about may go.
func awaitProbes(ctx context.Context, e *env, set *breaker.Set, asked []pendingProbe, wait time.Duration) ([]string, error) {
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	tick := time.NewTicker(probePoll)
	defer tick.Stop()
	var open []string
	for len(asked) > 0 {
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return nil, fmt.Errorf("interrupted before the probe results came; holdfast breaker status shows them")
			}
			for _, a := range asked {
				fmt.Fprintf(e.stdout, "%s: no probe result within %s: no relay runs, or the probe waits (a mailbox's while its credential's breaker is open); holdfast breaker status shows it when it comes\n", a.name, wait)
				open = append(open, a.name+" (no result)")
			}
			return open, nil
		case <-tick.C:
		}
		sts, err := set.Fresh(wctx, probeNames(asked)...)
		if err != nil {
			if wctx.Err() != nil {
				continue // the wait ended during the read
			}
			return nil, err
		}
		var left []pendingProbe
		for i, st := range sts {
			switch {
			case st.State == breaker.Closed:
				fmt.Fprintf(e.stdout, "%s: probed: closed, its mail is released\n", st.Name)
			case asked[i].reopened(st):
				fmt.Fprintf(e.stdout, "%s: closed since the request, its mail released, and open again: %s\n", st.Name, orDash(st.Reason))
				open = append(open, st.Name)
			case asked[i].answered(st):
				next := ""
				if !st.NextProbe.IsZero() {
					next = fmt.Sprintf("; next probe %s (in %s)", stamp(st.NextProbe), age(st.NextProbe.Sub(e.now())))
				}
				fmt.Fprintf(e.stdout, "%s: probed: still open: %s%s\n", st.Name, orDash(st.Reason), next)
				open = append(open, st.Name)
			default:
				left = append(left, asked[i])
			}
		}
		asked = left
	}
	return open, nil
}
