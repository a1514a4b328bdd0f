package relay

import "time"

// fullRecheck is how long after a store refused for its route's bound
// (queue.ErrRouteFull) the route's next submissions are refused before
// their body is read. Those that come after it are read to the end, and
// the queue says again whether the route has room.
const fullRecheck = time.Second

// maxFullRoutes bounds the routes fullRoutes keeps (expiries.max).
const maxFullRoutes = 10000

// fullRoutes remembers the routes whose last store was refused because
// they hold queue.max_messages_per_route messages, for fullRecheck, so
// that MAIL FROM and an HTTP submission of their mail are refused at
// once. The queue's refusal is what counts; this only spares the bodies.
type fullRoutes struct {
	every time.Duration
	set   expiries // route: until when it is taken as full
}

// newFullRoutes remembers a full route for every, or fullRecheck when
// every is 0.
func newFullRoutes(every time.Duration) *fullRoutes {
	if every <= 0 {
		every = fullRecheck
	}
	return &fullRoutes{every: every, set: expiries{max: maxFullRoutes}}
}

// mark records that route was full at now.
func (f *fullRoutes) mark(route string, now time.Time) {
	f.set.extend(route, now.Add(f.every), now)
}

// full reports whether route was found full less than every before now.
func (f *fullRoutes) full(route string, now time.Time) bool {
	return f.set.left(route, now) > 0
}
