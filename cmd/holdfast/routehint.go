package main

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"holdfast/queue"
)

// routeHintMax is how many similar routes a hint names at most.
const routeHintMax = 5

// hintUnknownRoute tells on stderr when route is not among the routes
// that have had mail (a typo, or a route pruned after a day without
// any), and names the routes that contain what was typed, or else those
// one typing mistake away (nearest). It is for the commands that select
// by --route and find nothing: they still succeed, as there is nothing
// to do.
func hintUnknownRoute(ctx context.Context, e *env, q *queue.Queue, route string) {
	if route == "" {
		return
	}
	routes, err := q.Routes(ctx)
	if err != nil || slices.Contains(routes, route) {
		return
	}
	var like []string
	for _, r := range routes {
		if strings.Contains(strings.ToLower(r), strings.ToLower(route)) {
			like = append(like, r)
		}
	}
	if len(like) == 0 {
		like = nearest(route, routes)
	}
	switch {
	case len(like) == 0:
		fmt.Fprintf(e.stderr, "holdfast: no route %q has mail now; \"holdfast queue stats\" lists the routes\n", route)
	case len(like) > routeHintMax:
		fmt.Fprintf(e.stderr, "holdfast: no route %q has mail now; %d routes are like it, e.g. %s\n",
			route, len(like), strings.Join(like[:routeHintMax], ", "))
	default:
		fmt.Fprintf(e.stderr, "holdfast: no route %q has mail now; did you mean %s?\n", route, strings.Join(like, " or "))
	}
}
