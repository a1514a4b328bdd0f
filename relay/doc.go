// Package relay is the Holdfast service: SMTP ingress, the HTTP API, the
// delivery workers and the lifecycle that ties them to the queue.
//
// It owns how mail gets in (authentication, sender rules, limits), which
// route a message takes, and what a delivery outcome does to a message. It
// does not own storage (package queue), tokens (package auth) or breaker
// state (package breaker). Senders plug in through the Sender interface,
// declared here.
package relay
