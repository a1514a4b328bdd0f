package relay

import (
	"slices"
	"time"

	"holdfast/relay/destination"
)

// routeEndpoints is which upstream endpoints each route's messages are
// sent through, so that a route is not leased while they are dead. An
// app route (app:CRED:MAILBOX) carries the messages of the apps of its
// credential; a delegated route (mbx:CRED:MAILBOX) those of any app whose
// sender has the grant, which go by SMTP (exchange.transport).
type routeEndpoints struct {
	byCredential map[string][]string
}

// newRouteEndpoints records the transport of every app: Graph for
// via: graph, Exchange's SMTP endpoint otherwise, and both for fallback:
// graph.
func newRouteEndpoints(apps []App) routeEndpoints {
	r := routeEndpoints{byCredential: map[string][]string{}}
	for _, a := range apps {
		eps := []string{destination.SMTP}
		switch {
		case a.Via == "graph":
			eps = []string{destination.Graph}
		case a.Fallback == "graph":
			eps = append(eps, destination.Graph)
		}
		for _, ep := range eps {
			if !slices.Contains(r.byCredential[a.Credential], ep) {
				r.byCredential[a.Credential] = append(r.byCredential[a.Credential], ep)
			}
		}
	}
	return r
}

// of returns the endpoints the messages of a route may be sent through.
// A credential no app names sends by SMTP, and so does a delegated route.
func (r routeEndpoints) of(delegated bool, cred string) []string {
	eps := r.byCredential[cred]
	if delegated || len(eps) == 0 {
		return []string{destination.SMTP}
	}
	return eps
}

// room says how many messages of a route may be leased now by its
// endpoints' dead-destination breakers (-1 for no limit), and, with none,
// how long until that may change. Every route needs the token endpoint.
// A route whose messages go by both SMTP and Graph is leased while either
// can take them: Send hands back the messages of the dead one untried.
func (r routeEndpoints) room(dest *destination.Set, delegated bool, cred string) (int, time.Duration) {
	tokenRoom, tokenWait := dest.Room(destination.Token)
	if tokenRoom == 0 {
		return 0, tokenWait
	}
	room, wait := 0, time.Duration(0)
	for _, ep := range r.of(delegated, cred) {
		n, w := dest.Room(ep)
		switch {
		case n < 0:
			room = -1
		case room >= 0:
			room = max(room, n)
		}
		if n == 0 && (wait == 0 || w < wait) {
			wait = w
		}
	}
	if room == 0 {
		return 0, wait
	}
	if tokenRoom > 0 && (room < 0 || tokenRoom < room) {
		room = tokenRoom
	}
	return room, 0
}
