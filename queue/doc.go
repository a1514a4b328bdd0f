// Package queue is Holdfast's durable mail queue in Redis.
//
// It owns the messages from the moment ingress accepts them until they are
// delivered, dead-lettered or deleted: storage, leasing to delivery
// workers, retries with backoff, dead letters, the queue lifetime, holding
// whole routes, and the operator's inspection verbs. It does not know how
// mail is delivered or why a route is held; the relay and the breaker
// decide that.
//
// Every change that touches more than one key runs as one Lua script, and
// every key of a route carries the route's hash tag, so the queue works on
// a single Redis and on Redis Cluster alike. All keys are built in keys.go.
//
// # Lifecycle
//
// A message is enqueued due now. A worker leases due messages of a route
// for a lease duration; while leased, no other worker can take them. The
// worker then settles the lease: Ack (delivered), Retry (failed, try again
// after a backoff, spending an attempt), Defer (try again after a delay
// without spending an attempt: throttling and auth holds) or Fail
// (dead-letter). A lease that is not settled in time expires and the
// message becomes due again, its attempt history kept. A message still
// undelivered when its lifetime ends is dead-lettered with its last error.
// A held route is never leased. The time a message spends held does not
// count against its lifetime, up to Options.HeldGrace: ReleaseRoute
// credits it, and a message held for longer is dead-lettered while still
// held once its lifetime plus the grace has run out.
package queue
