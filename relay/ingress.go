package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"time"

	"holdfast/queue"
)

// store is what ingress and the API need of the queue.
type store interface {
	Enqueue(ctx context.Context, m queue.Submission) (id string, dup bool, err error)
	Get(ctx context.Context, id string) (*queue.Message, error)
}

var _ store = (*queue.Queue)(nil)

// ingress is what SMTP and HTTP submission share: stamping a Received:
// header, routing, and storing the message durably.
type ingress struct {
	hostname string
	store    store
	log      *slog.Logger
	now      func() time.Time
	// queued, when set, is called after each message is stored: it wakes
	// the delivery workers.
	queued func()
	// route, when set, decides a message's route (see senderRoute);
	// otherwise it is the app's Route.
	route func(ctx context.Context, app *App, from string) (string, error)
	// metrics, when set, counts accepted messages and times them.
	metrics *metrics
	// budget bounds the message bodies in memory; nil means no bound.
	budget *inflight
	// maxLine is the longest message line, CRLF included; 0 means the
	// default of smtp.max_line_length.
	maxLine int
	// timeout bounds storing one message; 0 means no bound beyond ctx.
	timeout time.Duration
	// guard throttles authentication guessing; nil does not throttle.
	guard *authGuard
	// healthy, when set, says why new mail must be refused now (Redis
	// not durable under redis.strict), or nil.
	healthy func() error
	// withdraw, when set, takes back a message whose store failed but
	// may have reached Redis (see withdrawer).
	withdraw *withdrawer
	// full samples the warnings that Redis is full (see warnFull), that
	// a route holds as many messages as it may (routeFull), and that a
	// store failed or was refused as not durable.
	full *logSampler
	// fullRoutes holds the routes found full a moment ago.
	fullRoutes *fullRoutes
}

// submission is a message handed to Holdfast by an application.
type submission struct {
	app        *App
	from       string
	route      string // from senderRoute, at MAIL FROM or before the body is read
	to         []string
	body       []byte // as stored: the Received: header (see stamp), then the message
	idemKey    string
	print      string // with idemKey: the envelope sent under it (see fingerprint)
	protocol   string // for Received: "ESMTPSA" (TLS), "ESMTPA", "HTTP" or "HTTPS"
	remoteAddr string // client address, host:port
	helo       string // SMTP HELO/EHLO name, empty for HTTP
}

// errStore wraps a failure to store a message: the submitter must get a
// temporary failure and try again.
var errStore = errors.New("the queue could not store the message")

// newBody returns an empty message buffer counted against the budget and
// app's share of it.
func (in *ingress) newBody(app string) *bodyBuf {
	b := in.budget
	if b == nil {
		b = newInflight(math.MaxInt64, 0)
	}
	buf := newBodyBuf(b)
	buf.app = app
	return buf
}

// fits reports whether a message of n bytes from app fits in the budget
// now.
func (in *ingress) fits(app string, n int64) bool {
	return in.budget == nil || in.budget.fits(app, n)
}

// stamp returns the Received: header for s, or nil when the relay has no
// host name. It goes at the start of the body buffer, before the message
// is read into it, so that the message is never copied to prepend it.
func (in *ingress) stamp(s submission) []byte {
	if in.hostname == "" {
		return nil
	}
	var b bytes.Buffer
	writeReceived(&b, in.hostname, s, in.now())
	return b.Bytes()
}

// check runs the message validator with this ingress's line limit.
func (in *ingress) check(msg []byte) *bodyFault {
	maxLine := in.maxLine
	if maxLine <= 0 {
		maxLine = DefaultOptions().SMTP.MaxLineLength
	}
	return checkMessage(msg, maxLine)
}

// accept stores a submission and returns its queue id. dup is true when an
// idempotency key matched an earlier message, which is not stored twice.
// A key that an earlier message used with another envelope stores
// nothing and returns that message's id with queue.ErrKeyReused.
// Nothing is stored unless it returns a nil error: a store that failed
// after reaching Redis is withdrawn (see withdrawer), except one with an
// idempotency key, whose retry finds it. s.body is stored as it
// is: the caller has put the Received: header of stamp first, and s.route
// is the route senderRoute decided.
func (in *ingress) accept(ctx context.Context, s submission) (id string, dup bool, err error) {
	start := time.Now()
	if in.healthy != nil {
		if err := in.healthy(); err != nil {
			if ok, held := in.full.allow("not durable"); ok {
				in.log.Error("message refused", withHeld([]any{"app", s.app.Name, "err", err}, held)...)
			}
			in.metrics.refused(s.protocol, s.app.Name, refusedNotDurable)
			return "", false, fmt.Errorf("%w: %w", errStore, err)
		}
	}
	if in.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, in.timeout)
		defer cancel()
	}
	id, dup, err = in.store.Enqueue(ctx, queue.Submission{
		Route:          s.route,
		App:            s.app.Name,
		From:           s.from,
		To:             s.to,
		Body:           s.body,
		IdempotencyKey: s.idemKey,
		Fingerprint:    s.print,
	})
	if errors.Is(err, queue.ErrKeyReused) {
		// Not a store failure: the client's own mistake, answered at once.
		in.log.Info("idempotency key reused for another message", "app", s.app.Name, "first", id, "via", s.protocol)
		return id, false, err
	}
	if errors.Is(err, queue.ErrRouteFull) {
		// Nothing was stored, by design: no withdrawal.
		in.routeFull(s)
		return "", false, err
	}
	if err != nil {
		if queue.RedisFull(err) {
			in.warnFull(s.app.Name, err)
			in.metrics.refused(s.protocol, s.app.Name, refusedRedisFull)
		} else {
			// Once an interval: a Redis that refuses writes (its disk
			// full, too few replicas) refuses every message.
			if ok, held := in.full.allow("store failed"); ok {
				in.log.Error("enqueue failed", withHeld([]any{"app", s.app.Name, "err", err}, held)...)
			}
			in.metrics.refused(s.protocol, s.app.Name, refusedStoreFailed)
		}
		// The submitter is told nothing was kept. A store that reached a
		// hung Redis runs when it resumes: withdraw it. A submission with
		// an idempotency key needs none; its retry finds the message.
		if id != "" && s.idemKey == "" && in.withdraw != nil && mayHaveReachedRedis(err) {
			in.withdraw.add(s.route, id)
		}
		return "", false, fmt.Errorf("%w: %w", errStore, err)
	}
	if in.queued != nil && !dup {
		in.queued()
	}
	if !dup {
		in.metrics.accepted(s.protocol, s.app.Name, time.Since(start))
	}
	in.log.Info("queued", "id", id, "app", s.app.Name, "from", s.from, "rcpts", len(s.to), "bytes", len(s.body), "via", s.protocol, "dup", dup)
	return id, dup, nil
}

// warnFull logs, at most once per logSampleEvery, that a message was
// refused because Redis reached its maxmemory (queue.RedisFull), and what
// to do: every refusal meanwhile would write the same line.
func (in *ingress) warnFull(app string, err error) {
	if ok, held := in.full.allow("redis full"); ok {
		in.log.Error("Redis reached its maxmemory: new mail is refused (SMTP 451 4.3.0, HTTP 503) "+
			"until memory is freed; mail already queued or held stays and is delivered, which frees memory. "+
			"Raise Redis's maxmemory, or free memory in Redis",
			withHeld([]any{"app", app, "err", err}, held)...)
	}
}

// routeFull records that the route of s holds as many messages as it may
// (queue.ErrRouteFull): it counts the refusal, remembers the route for
// fullRecheck, and logs, at most once per logSampleEvery and route, what
// it means and what to do.
func (in *ingress) routeFull(s submission) {
	in.fullRoutes.mark(s.route, in.now())
	in.metrics.refused(s.protocol, s.app.Name, refusedRouteFull)
	if ok, held := in.full.allow("route full " + s.route); ok {
		in.log.Warn("the route holds as many undelivered messages as queue.max_messages_per_route allows: "+
			"its new mail is refused (SMTP 452 4.3.1, HTTP 429) until some is delivered. "+
			"See why it is not delivered (holdfast queue stats, breaker status), or raise the bound",
			withHeld([]any{"route", s.route, "app", s.app.Name, "via", s.protocol}, held)...)
	}
}

// refuseFull reports whether new mail of route is refused before its
// body is read, because a store of the route's was refused for its bound
// a moment ago, and counts the refusal.
func (in *ingress) refuseFull(route, protocol, app string) bool {
	if !in.fullRoutes.full(route, in.now()) {
		return false
	}
	in.metrics.refused(protocol, app, refusedRouteFull)
	return true
}

// writeReceived writes a Received: trace header (RFC 5321 section 4.4).
// Only values Holdfast checked or made itself go into it: the client's IP,
// the application's name and the protocol; the HELO name is quoted as a
// comment only when it is a plain host name.
func writeReceived(b *bytes.Buffer, hostname string, s submission, now time.Time) {
	b.WriteString("Received: from ")
	if s.helo != "" && isPlainHost(s.helo) {
		b.WriteString(s.helo)
	} else {
		b.WriteString("unknown")
	}
	if s.remoteAddr != "" {
		b.WriteString(" (" + hostOnly(s.remoteAddr) + ")")
	}
	fmt.Fprintf(b, "\r\n\tby %s (Holdfast) with %s (app %s)\r\n\t; %s\r\n",
		hostname, s.protocol, s.app.Name, now.UTC().Format(time.RFC1123Z))
}

func isPlainHost(s string) bool {
	if len(s) == 0 || len(s) > 255 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '.' || c == '-' || c == '[' || c == ']' || c == ':' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

func hostOnly(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return "[" + h + "]"
}
