// Package destination keeps a dead-destination breaker per upstream
// endpoint (Exchange's SMTP endpoint, Graph, the token endpoint), per
// replica, as Postfix does for a dead destination: consecutive transient
// failures to reach an endpoint (refused or timed-out connections, 421 at
// the greeting, 5xx from the token endpoint) open its breaker, and while
// it is open no message that needs the endpoint is leased. After the
// probe interval one request tests it. A Retry-After from the endpoint
// suspends it for that long, for every message.
//
// These breakers say whether an endpoint can be reached; they never hold
// mail or count against the auth circuit breakers, which judge
// credentials.
package destination

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"

	"holdfast/relay/upstream"
)

// The endpoints.
const (
	SMTP  = "smtp"
	Graph = "graph"
	Token = "token"
)

// Options configure a Set. Zero values are defaults.
type Options struct {
	// Failures is how many consecutive transient failures open an
	// endpoint's breaker. Default 3.
	Failures uint32
	// ProbeInterval is how long a breaker stays open before one request
	// tests the endpoint. Default 10s.
	ProbeInterval time.Duration
	Logger        *slog.Logger
}

// Set is the breakers of one replica's endpoints. The zero Set is not
// usable; a nil *Set lets everything through.
type Set struct {
	o  Options
	mu sync.Mutex
	ep map[string]*endpoint
}

type endpoint struct {
	cb        *gobreaker.TwoStepCircuitBreaker[struct{}]
	opened    time.Time // when the breaker last opened; under Set.mu
	suspended time.Time // Retry-After: no requests before; under Set.mu
	probing   time.Time // when Room last handed out the half-open test; under Set.mu
	last      string    // the last failure, for the refusals it causes; under Set.mu
}

// New returns a set of closed breakers.
func New(o Options) *Set {
	if o.Failures == 0 {
		o.Failures = 3
	}
	if o.ProbeInterval <= 0 {
		o.ProbeInterval = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Set{o: o, ep: map[string]*endpoint{}}
}

// Dead reports whether a failed request says its endpoint cannot be
// reached: what the classification of upstream failures calls transient.
// Refused and timed-out connections are not *upstream.Error and count as
// transient there too.
func Dead(err error) bool {
	return err != nil && upstream.ClassOf(err) == upstream.Transient
}

func (s *Set) get(name string) *endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.ep[name]
	if e == nil {
		e = &endpoint{}
		e.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
			Name:        name,
			MaxRequests: 1,
			Timeout:     s.o.ProbeInterval,
			ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= s.o.Failures },
			IsSuccessful: func(err error) bool {
				return !Dead(err)
			},
			IsExcluded: func(err error) bool {
				return errors.Is(err, context.Canceled)
			},
			OnStateChange: func(name string, from, to gobreaker.State) {
				// Called with the breaker's lock held, from Allow or
				// done, never under s.mu.
				if to == gobreaker.StateOpen {
					s.mu.Lock()
					s.ep[name].opened = time.Now()
					s.mu.Unlock()
				}
				s.o.Logger.Warn("upstream endpoint breaker "+to.String(), "endpoint", name, "from", from.String())
			},
		})
		s.ep[name] = e
	}
	return e
}

// Room says how many requests to the endpoint may start now: -1 for no
// limit, 1 while its breaker is half-open, 0 while it is open or
// suspended, with how long until that ends.
func (s *Set) Room(name string) (int, time.Duration) {
	if s == nil {
		return -1, 0
	}
	e := s.get(name)
	s.mu.Lock()
	suspended, opened := e.suspended, e.opened
	s.mu.Unlock()
	if d := time.Until(suspended); d > 0 {
		return 0, d
	}
	switch e.cb.State() {
	case gobreaker.StateOpen:
		return 0, max(time.Until(opened.Add(s.o.ProbeInterval)), time.Millisecond)
	case gobreaker.StateHalfOpen:
		// One test per half-open period: the caller leases one message
		// for it.
		// The breaker's lock is never taken under s.mu: OnStateChange
		// takes s.mu under the breaker's.
		busy := e.cb.Counts().Requests > 0
		s.mu.Lock()
		defer s.mu.Unlock()
		if busy || time.Since(e.probing) < s.o.ProbeInterval {
			return 0, s.o.ProbeInterval / 10
		}
		e.probing = time.Now()
		return 1, 0
	}
	return -1, 0
}

// Allow asks to send one request to the endpoint. When the breaker lets
// it through, done must be called with the request's outcome (nil or its
// classified error). Otherwise the error is Throttled, with when to try
// again: the relay's own wait, which spends no attempt.
func (s *Set) Allow(name string) (done func(err error), err error) {
	if s == nil {
		return func(error) {}, nil
	}
	e := s.get(name)
	s.mu.Lock()
	suspended := time.Until(e.suspended)
	s.mu.Unlock()
	if suspended > 0 {
		return nil, s.refused(e, name, suspended)
	}
	d, err := e.cb.Allow()
	if err != nil {
		return nil, s.refused(e, name, s.o.ProbeInterval)
	}
	return func(err error) {
		throttled := upstream.ClassOf(err) == upstream.Throttled
		if Dead(err) || throttled {
			s.mu.Lock()
			e.last = err.Error()
			s.mu.Unlock()
		}
		if ra := upstream.RetryAfterOf(err); ra > 0 && (throttled || Dead(err)) {
			s.Suspend(name, ra)
		}
		d(err)
	}, nil
}

func (s *Set) refused(e *endpoint, name string, wait time.Duration) error {
	s.mu.Lock()
	last := e.last
	s.mu.Unlock()
	return &upstream.Error{Class: upstream.Throttled, RetryAfter: wait, Err: ErrPaused,
		Text: fmt.Sprintf("the relay leaves the %s endpoint alone for %v after: %s", name, wait.Round(time.Millisecond), last)}
}

// ErrPaused is wrapped by the errors of requests an open or suspended
// breaker refused: the relay's own wait, not a delivery failure.
var ErrPaused = errors.New("endpoint paused")

// Suspend stops requests to the endpoint for d, as its Retry-After asked.
func (s *Set) Suspend(name string, d time.Duration) {
	if s == nil || d <= 0 {
		return
	}
	e := s.get(name)
	s.mu.Lock()
	if until := time.Now().Add(d); until.After(e.suspended) {
		e.suspended = until
	}
	s.mu.Unlock()
}

// Transport returns rt guarded by the breaker of each request's endpoint
// (endpointOf; "" means unguarded). classify turns a response into the
// classified error it stands for, nil when the endpoint answered fine.
func (s *Set) Transport(rt http.RoundTripper, endpointOf func(*http.Request) string, classify func(*http.Response) error) http.RoundTripper {
	return &transport{s: s, rt: rt, endpointOf: endpointOf, classify: classify}
}

type transport struct {
	s          *Set
	rt         http.RoundTripper
	endpointOf func(*http.Request) string
	classify   func(*http.Response) error
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	name := t.endpointOf(req)
	if name == "" {
		return t.rt.RoundTrip(req)
	}
	done, err := t.s.Allow(name)
	if err != nil {
		return nil, err
	}
	resp, err := t.rt.RoundTrip(req)
	if err != nil {
		done(err)
		return nil, err
	}
	done(t.classify(resp))
	return resp, nil
}

// RetryAfter parses a Retry-After header in seconds; zero when absent.
func RetryAfter(h http.Header) time.Duration {
	n, err := strconv.Atoi(h.Get("Retry-After"))
	if err != nil || n <= 0 {
		return 0
	}
	return time.Duration(n) * time.Second
}
