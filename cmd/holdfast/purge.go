package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"slices"
	"strings"

	"holdfast/queue"
)

// purgeBatch is how many messages "queue purge" lists at a time.
const purgeBatch = 500

// queuePurge deletes the messages of a route and/or a state, after
// showing how many and asking (or with --yes).
func queuePurge(ctx context.Context, e *env, fs *flag.FlagSet, args []string) error {
	config := configFlag(fs, e)
	route := fs.String("route", "", "purge only `ROUTE` (default: every route)")
	state := fs.String("state", "", "purge only messages in `STATE`: "+stateNames()+" (default: every state)")
	yes := fs.Bool("yes", false, "delete without asking")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	if *route == "" && *state == "" {
		return usagef("give --route, --state or both: purge never deletes the whole queue by default")
	}
	// Every state includes moving, the messages of a move cut half-way
	// off the route: the next move of the route would send them.
	states := queue.States
	if *state != "" {
		st, ok := queue.ParseState(*state)
		if !ok || !slices.Contains(queue.States, st) {
			return usagef("--state %q: want one of %s", *state, stateNames())
		}
		states, *state = []queue.State{st}, string(st)
	}
	q, rdb, err := openQueue(*config)
	if err != nil {
		return err
	}
	defer rdb.Close()
	st, err := q.Stats(ctx)
	if err != nil {
		return err
	}
	// The messages counted now are the ones purged: mail that arrives
	// meanwhile is kept.
	plan := map[string]map[queue.State]int{}
	total := 0
	for _, r := range st.Routes {
		if *route != "" && r.Route != *route {
			continue
		}
		for _, s := range states {
			if n := int(countIn(r, s)); n > 0 {
				if plan[r.Route] == nil {
					plan[r.Route] = map[queue.State]int{}
				}
				plan[r.Route][s] = n
				total += n
			}
		}
	}
	what := describe(*route, *state)
	if total == 0 {
		fmt.Fprintf(e.stdout, "no messages %s\n", what)
		hintUnknownRoute(ctx, e, q, *route)
		return nil
	}
	if !*yes {
		if !e.stdinTTY {
			return fmt.Errorf("%d messages %s would be deleted; run again with --yes to delete them", total, what)
		}
		if !askYes(e, fmt.Sprintf("delete %d messages %s? This cannot be undone.", total, what)) {
			fmt.Fprintln(e.stdout, "nothing deleted")
			return nil
		}
	}
	deleted := 0
	for _, r := range slices.Sorted(maps.Keys(plan)) {
		for _, s := range states {
			n, err := purgeRoute(ctx, q, r, s, plan[r][s])
			deleted += n
			if err != nil {
				fmt.Fprintf(e.stdout, "deleted %d of %d messages %s before an error\n", deleted, total, what)
				return notWhileMoving(err, "purge")
			}
			if n > 0 {
				fmt.Fprintf(e.stdout, "route %s: %d %s messages deleted\n", r, n, s)
			}
		}
	}
	fmt.Fprintf(e.stdout, "deleted %d messages %s\n", deleted, what)
	return nil
}

// purgeRoute deletes up to limit messages of a route in a state and
// returns how many it deleted.
func purgeRoute(ctx context.Context, q *queue.Queue, route string, state queue.State, limit int) (int, error) {
	deleted := 0
	for deleted < limit {
		ms, err := q.List(ctx, route, state, 0, min(purgeBatch, limit-deleted))
		if err != nil {
			return deleted, err
		}
		if len(ms) == 0 {
			break
		}
		for _, m := range ms {
			if err := q.Delete(ctx, m.ID); err != nil {
				if errors.Is(err, queue.ErrNotFound) {
					continue // delivered or deleted meanwhile
				}
				return deleted, err
			}
			deleted++
		}
	}
	return deleted, nil
}

// countIn is a route's count of messages in a state.
func countIn(r queue.RouteStats, s queue.State) int64 {
	switch s {
	case queue.Ready:
		return r.Ready
	case queue.Scheduled:
		return r.Scheduled
	case queue.Leased:
		return r.Leased
	case queue.Held:
		return r.Held
	case queue.Dead:
		return r.Dead
	case queue.Moving:
		return r.Moving
	}
	return 0
}

func describe(route, state string) string {
	var parts []string
	if state != "" {
		parts = append(parts, "in state "+state)
	}
	if route != "" {
		parts = append(parts, "of route "+route)
	}
	return strings.Join(parts, " ")
}
