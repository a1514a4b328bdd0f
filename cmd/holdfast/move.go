package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"holdfast/queue"
	"holdfast/relay"
)

// queueMove moves the mail waiting on a route to another, after a count
// and a confirmation (or --yes): the way out for mail queued on the
// routes of a credential that no longer works, or was taken out of the
// configuration.
func queueMove(ctx context.Context, e *env, fs *flag.FlagSet, args []string) error {
	config := configFlag(fs, e)
	from := fs.String("route", "", "move the mail waiting on `ROUTE`")
	to := fs.String("to", "", "to `ROUTE`, e.g. app:CREDENTIAL:MAILBOX of another credential")
	yes := fs.Bool("yes", false, "move without asking")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	switch {
	case *from == "" || *to == "":
		return usagef("give --route ROUTE and --to ROUTE")
	case *from == *to:
		return usagef("--route and --to are the same route")
	case !queue.ValidRoute(*from):
		return usagef("--route %q is not a route name", *from)
	case !queue.ValidRoute(*to):
		return usagef("--to %q is not a route name", *to)
	}
	o, rdb, err := openRedis(*config)
	if err != nil {
		return err
	}
	defer func() { _ = rdb.Close() }()
	if cred, ok := relay.RouteCredential(*to); ok && !slices.ContainsFunc(o.Credentials, func(c relay.Credential) bool { return c.Name == cred }) {
		return usagef("--to %s: credential %q is not configured, so no relay would send its mail", *to, cred)
	}
	q := queue.New(rdb, o.Queue.Options())
	st, err := q.Stats(ctx)
	if err != nil {
		return err
	}
	var waiting, sending int64
	for _, r := range st.Routes {
		if r.Route == *from {
			waiting, sending = r.Ready+r.Scheduled+r.Held, r.Leased
		}
	}
	if waiting > 0 && !*yes {
		what := fmt.Sprintf("%d messages waiting on %s to %s", waiting, *from, *to)
		if !e.stdinTTY {
			return fmt.Errorf("%s would be moved; run again with --yes to move them", what)
		}
		if !askYes(e, "move "+what+"? They start there as new messages: their lifetime and attempts begin again.") {
			fmt.Fprintln(e.stdout, "nothing moved")
			return nil
		}
	}
	// Also finishes a move that stopped half-way, which the count leaves
	// out.
	done, err := q.MoveRoute(ctx, *from, *to, math.MaxInt)
	var locked *queue.MoveLockedError
	if errors.As(err, &locked) {
		return fmt.Errorf("another queue move of %s is running: nothing moved; run this one again once it ends (if it was killed, its lock of the route lapses in %s)",
			locked.Route, locked.Left.Round(time.Second))
	}
	if err != nil {
		fmt.Fprintf(e.stdout, "moved %d messages from %s to %s%s before an error\n", done.To, *from, *to, earlier(done))
		return err
	}
	if done.Total() == 0 {
		fmt.Fprintf(e.stdout, "no messages waiting on %s\n", *from)
		hintUnknownRoute(ctx, e, q, *from)
	} else {
		fmt.Fprintf(e.stdout, "moved %d messages from %s to %s%s\n", done.To, *from, *to, earlier(done))
	}
	if sending > 0 {
		fmt.Fprintf(e.stdout, "%d being sent stay on %s: run the move again once they are settled\n", sending, *from)
	}
	return nil
}

// earlier says which messages of a move cut half-way were finished on
// that move's route, where it had stored their copy, rather than moved to
// the route of this one: "; finished 2 of an earlier move on ROUTE", for
// each such route; "" for none.
func earlier(done queue.Moved) string {
	var b strings.Builder
	for _, r := range slices.Sorted(maps.Keys(done.Earlier)) {
		fmt.Fprintf(&b, "; finished %d of an earlier move on %s", done.Earlier[r], r)
	}
	return b.String()
}

// notWhileMoving says, for a deletion refused because a move of the
// route runs (err is a *queue.MoveLockedError), that the route's mail
// stays until the move ends and what to run again then; any other err
// is returned as it is.
func notWhileMoving(err error, again string) error {
	var locked *queue.MoveLockedError
	if !errors.As(err, &locked) {
		return err
	}
	return fmt.Errorf("a queue move of %s is running: its mail is not deleted while it runs; run the %s again once it ends (if it was killed, its lock of the route lapses in %s)",
		locked.Route, again, locked.Left.Round(time.Second))
}
