package ops

import (
	"encoding/json"
	"math"
	"strconv"
	"time"
)

// Status is the fleet's state as the status page shows it. The numbers
// are the ones GET /v1/breakers and "holdfast queue stats" give.
type Status struct {
	Now time.Time `json:"now"`
	// Breakers are the credential breakers, one per configured
	// credential.
	Breakers []Breaker `json:"credential_breakers"`
	// OpenMailboxes are the first MaxOpenMailboxes open mailbox breakers;
	// OpenMailboxCount counts them all.
	OpenMailboxes    []Breaker `json:"open_mailbox_breakers"`
	OpenMailboxCount int       `json:"open_mailbox_breaker_count"`
	Queue            Depth     `json:"queue"`
	// OldestReady is how long the longest-waiting ready message has
	// waited for a worker; OldestHeld the age of the oldest held message.
	OldestReady Seconds `json:"oldest_ready_seconds"`
	OldestHeld  Seconds `json:"oldest_held_seconds"`
	// Latency is the delivery latency over the last hour, fleet-wide.
	Latency Latency `json:"latency_last_hour"`
	// Expiries are filled in from the ExpirySource.
	Expiries []Expiry `json:"credential_expiry"`
	// Transitions are the latest breaker transitions, newest first.
	Transitions []Transition `json:"transitions"`
	// Minutes are the last hour's per-minute counts, oldest first.
	Minutes []Minute `json:"minutes"`
	// Transports say how each app's routes send.
	Transports []Transport `json:"transports"`
	// GraphFallbacks are the first MaxOpenMailboxes routes that send by
	// Graph because Exchange said SMTP AUTH is disabled for their mailbox
	// (fallback: graph); GraphFallbackCount counts them all.
	GraphFallbacks     []Fallback `json:"graph_fallbacks"`
	GraphFallbackCount int        `json:"graph_fallback_count"`
	// MailboxWaits are the first MaxOpenMailboxes mailboxes with mail
	// waiting that Exchange or Graph asked the fleet to leave alone for
	// a while; MailboxWaitCount counts them all.
	MailboxWaits     []MailboxWait `json:"mailbox_waits"`
	MailboxWaitCount int           `json:"mailbox_wait_count"`
	// FullRoutes are the first MaxOpenMailboxes routes holding
	// MaxPerRoute undelivered messages or more, whose new mail is
	// refused; FullRouteCount counts them all. MaxPerRoute is the
	// relay's queue.max_messages_per_route, 0 for no bound.
	FullRoutes     []FullRoute `json:"full_routes"`
	FullRouteCount int         `json:"full_route_count"`
	MaxPerRoute    int         `json:"max_messages_per_route"`
}

// FullRoute is a route at its bound, and the messages it holds not yet
// delivered.
type FullRoute struct {
	Route    string `json:"route"`
	Messages int64  `json:"messages"`
}

// MailboxWait is a mailbox no relay sends as until Until, and why.
type MailboxWait struct {
	Mailbox string    `json:"mailbox"`
	Until   time.Time `json:"until"`
	Why     string    `json:"why"`
	// All says the wait holds all of the mailbox's mail (Exchange's
	// block, its recipient quota), not only what goes by Graph.
	All bool `json:"all_mail"`
}

// Transport is how an app's routes send: Via ("smtp" or "graph"), and
// Fallback ("graph" or "") for routes whose mailbox has SMTP AUTH
// disabled.
type Transport struct {
	App      string `json:"app"`
	Via      string `json:"via"`
	Fallback string `json:"fallback,omitempty"`
}

// Fallback is a route that sends by Graph until a time, when SMTP is
// tried again.
type Fallback struct {
	Route string    `json:"route"`
	Until time.Time `json:"until"`
}

// MaxOpenMailboxes is how many open mailbox breakers the page lists.
const MaxOpenMailboxes = 50

// Breaker is one breaker's state.
type Breaker struct {
	Name   string    `json:"name"`
	State  string    `json:"state"`
	Reason string    `json:"reason,omitempty"`
	Since  time.Time `json:"since,omitzero"`
	Held   int64     `json:"held_messages"`
}

// Depth counts the queue's messages by state.
type Depth struct {
	Ready     int64 `json:"ready"`
	Scheduled int64 `json:"scheduled"`
	Sending   int64 `json:"sending"`
	Held      int64 `json:"held"`
	Dead      int64 `json:"dead"`
}

// Latency is a delivery latency summary.
type Latency struct {
	Count int64   `json:"count"`
	P50   Seconds `json:"p50_seconds"`
	P95   Seconds `json:"p95_seconds"`
}

// latencyJSON is Latency as JSON: the percentiles in seconds to the
// millisecond, as the status page shows them. Most deliveries take well
// under a second, and whole seconds would write them as 0.
type latencyJSON struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50_seconds"`
	P95   float64 `json:"p95_seconds"`
}

func (l Latency) MarshalJSON() ([]byte, error) {
	ms := func(s Seconds) float64 {
		return float64(time.Duration(s).Round(time.Millisecond).Milliseconds()) / 1000
	}
	return json.Marshal(latencyJSON{l.Count, ms(l.P50), ms(l.P95)})
}

func (l *Latency) UnmarshalJSON(b []byte) error {
	var v latencyJSON
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	sec := func(f float64) Seconds { return Seconds(time.Duration(math.Round(f*1000)) * time.Millisecond) }
	*l = Latency{Count: v.Count, P50: sec(v.P50), P95: sec(v.P95)}
	return nil
}

// Transition is one breaker transition.
type Transition struct {
	Breaker string    `json:"breaker"`
	To      string    `json:"to"`
	Reason  string    `json:"reason,omitempty"`
	At      time.Time `json:"at"`
}

// Minute is one minute's delivered messages and the held messages
// sampled in it.
type Minute struct {
	Start     time.Time `json:"start"`
	Delivered int64     `json:"delivered"`
	Held      int64     `json:"held"`
}

// Seconds is a duration written in JSON as seconds.
type Seconds time.Duration

// MarshalJSON writes whole seconds.
func (s Seconds) MarshalJSON() ([]byte, error) {
	return strconv.AppendInt(nil, int64(time.Duration(s)/time.Second), 10), nil
}
