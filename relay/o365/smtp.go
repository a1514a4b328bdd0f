package o365

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/oauth2"

	"holdfast/auth"
	"holdfast/queue"
	"holdfast/relay/upstream"
)

// TokenSource gives access tokens for one credential or delegated grant.
type TokenSource interface {
	Token(ctx context.Context) (*oauth2.Token, error)
	// Invalidate drops a cached token the server rejected.
	Invalidate()
}

// Route says how a message is sent: as which mailbox, with which tokens.
type Route struct {
	Mailbox string
	Tokens  TokenSource
	Kind    AuthKind
	// Check, when set, runs just before the message is sent (MAIL FROM),
	// on a connection ready to send: an error abandons the send with
	// nothing sent. The relay's breakers use it.
	Check func(ctx context.Context) error
	// Turn, when set, is asked for a place before each AUTH with the
	// route's credential, so that only a few AUTHs of one credential are
	// in doubt at a time, fleet-wide (the relay's breakers). With wait
	// it may wait for one; without, it answers at once. It returns an
	// error wrapping ErrNoTurn when no place came, or the error to count
	// in place of an AUTH (the credential was refused too often).
	Turn func(ctx context.Context, wait bool) (AuthTurn, error)
	// probe: the route is opened for a breaker's probe (Probe), one
	// session of its own.
	probe bool
	// slot is the slot held for the connection being opened (openOn,
	// Probe), or nil: once it is lost, the connection is closed before
	// its AUTH (authOn).
	slot *conn
}

// AuthTurn is a place for one AUTH, from Route.Turn.
type AuthTurn struct {
	// Refresh asks for a new token before the AUTH: another session
	// found its cached token refused and a new one good.
	Refresh bool
	// Exit gives the place back with the AUTH's outcome and error. It
	// returns the error to count in place of err, or nil: a refusal the
	// places found to be the mailbox's alone is the mailbox's failure.
	Exit func(o AuthOutcome, err error) error
	// Placed: a place was taken. Without it (the places could not be
	// read) the AUTH may go ahead, unbounded fleet-wide.
	Placed bool
}

// AuthOutcome is how an AUTH ended, for AuthTurn.Exit.
type AuthOutcome int

const (
	// AuthNeutral: the AUTH says nothing of the credential (the
	// connection failed, the mailbox's own refusal).
	AuthNeutral AuthOutcome = iota
	// AuthOK: the token worked.
	AuthOK
	// AuthCured: a new token worked after the cached one was refused.
	AuthCured
	// AuthRefused: Exchange refused the token.
	AuthRefused
	// AuthStale: Exchange refused a cached token, as a stale one may be
	// (RetryWithNewToken): a new one may cure it.
	AuthStale
)

// authOutcome is the outcome of an AUTH that returned err; stale says
// Exchange refused the token as a cached token may be refused
// (RetryWithNewToken); cure says the token replaced a refused one.
func authOutcome(err error, stale, cure bool) AuthOutcome {
	switch {
	case err == nil && cure:
		return AuthCured
	case err == nil:
		return AuthOK
	case stale:
		return AuthStale
	case upstream.ClassOf(err) == upstream.Credential:
		return AuthRefused
	}
	return AuthNeutral
}

// ErrNoTurn is wrapped by the error of a Route.Turn that got no place.
var ErrNoTurn = errors.New("other AUTHs with this credential are in doubt")

// Router returns the route of a message.
type Router func(ctx context.Context, m *queue.Message) (Route, error)

// Limits is what the sender needs of the fleet-wide per-mailbox limits.
type Limits interface {
	AcquireConn(ctx context.Context, mailbox string, max int, ttl time.Duration) (*queue.Slot, error)
	Renew(ctx context.Context, s *queue.Slot, ttl time.Duration) error
	Release(ctx context.Context, s *queue.Slot) error
	TakeSend(ctx context.Context, mailbox string, limit int, window time.Duration) (time.Duration, error)
	ReserveSend(ctx context.Context, mailbox string, limit int, window time.Duration, holds ...string) (string, time.Duration, error)
	ReturnSend(ctx context.Context, mailbox, token string) error
}

var _ Limits = (*queue.Limiter)(nil)

// SMTPOptions configure SMTP submission. Zero values are defaults.
type SMTPOptions struct {
	// Addr is the submission endpoint. Default "smtp.office365.com:587".
	Addr string
	// TLS configures STARTTLS; certificates are always verified. Its
	// RootCAs may name a private CA (the simulator's). Default: the
	// system roots, ServerName from Addr.
	TLS *tls.Config
	// InsecurePlaintext skips STARTTLS. Only for tests against a local
	// server; never against Microsoft.
	InsecurePlaintext bool
	// DialTimeout (default 15s), CommandTimeout (default 1m) and
	// DataTimeout (for the reply after the message, default 5m).
	DialTimeout, CommandTimeout, DataTimeout time.Duration
	// MaxConns is the connections per mailbox across the fleet. Default 3.
	MaxConns int
	// PerMinute is the messages per mailbox per minute across the fleet.
	// Default 30.
	PerMinute int
	// MaxWait is how long a send waits for a connection slot or the rate
	// limit before it gives the message back as throttled. Default 5s.
	MaxWait time.Duration
	// IdleTimeout closes connections idle this long, freeing their slot
	// for other replicas. Default 2s (Postfix's
	// smtp_connection_cache_time_limit).
	IdleTimeout time.Duration
	Limits      Limits
	Router      Router
	Logger      *slog.Logger
	// OnAuth, when set, is told the result of every AUTH XOAUTH2.
	OnAuth func(err error)
	// Endpoint, when set, guards each connection: it is asked before
	// dialling and told whether the server was reached and greeted.
	Endpoint Endpoint
	// OnBlocked, when set, is told of Exchange's timed hold of a
	// mailbox's sending (ErrMailboxBlocked; not the recipient quota,
	// whose wait the caller works out from its own count) before the
	// refused connection's slot is given back, so that the fleet can
	// learn of the wait before another send takes the slot.
	OnBlocked func(ctx context.Context, mailbox string, err error)
}

// Endpoint is a dead-destination breaker for the SMTP endpoint (see
// relay/destination): Allow refuses while it is open, with an error to
// return; otherwise done must be told the outcome.
type Endpoint interface {
	Allow() (done func(err error), err error)
}

func (o SMTPOptions) withDefaults() SMTPOptions {
	if o.Addr == "" {
		o.Addr = "smtp.office365.com:587"
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 15 * time.Second
	}
	if o.CommandTimeout <= 0 {
		o.CommandTimeout = time.Minute
	}
	if o.DataTimeout <= 0 {
		o.DataTimeout = 5 * time.Minute
	}
	if o.MaxConns <= 0 {
		o.MaxConns = 3
	}
	if o.PerMinute <= 0 {
		o.PerMinute = 30
	}
	if o.MaxWait <= 0 {
		o.MaxWait = 5 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// SMTPSender delivers messages by SMTP submission with XOAUTH2, reusing
// each mailbox's connections between messages.
type SMTPSender struct {
	o SMTPOptions

	mu   sync.Mutex
	idle map[string][]*conn // by mailbox
	live map[*conn]bool     // every slot held, with its connection or none yet (hold); renewed by reap

	flights authFlights

	stop     chan struct{} // closed by Close; ends the reaper
	stopOnce sync.Once
	// reaper is the reaper (reap); Close waits for it.
	reaper sync.WaitGroup
	// quits are the reaper's quits of idle connections, each on its own;
	// Close waits for them.
	quits sync.WaitGroup
}

// conn is an authenticated submission connection and its fleet-wide slot,
// or a slot held with no connection on it yet (c nil; see hold).
type conn struct {
	c *smtp.Client
	// w, when the server offers PIPELINING, sends the transactions
	// (pipeline.go).
	w *wire
	// kept says the connection was idle before (put): its next
	// transaction starts with RSET.
	kept    bool
	slot    *queue.Slot
	mailbox string
	used    time.Time
	renewed time.Time // when slot was last taken or renewed; under SMTPSender.mu
	// lost says its slot expired and may be another's now (a Redis
	// failover that lost the slot, a replica stalled past slotTTL): the
	// connection is closed as soon as it is idle, so that the mailbox
	// stays within its connection limit. It is not handed to a send
	// (granted) and starts no transaction (submit); a transaction begun
	// runs to its end (see submit). A slot held with no connection has
	// none opened on it (openOn). Under SMTPSender.mu.
	lost bool
}

// NewSMTPSender returns a sender. o.Router and o.Limits are required.
func NewSMTPSender(o SMTPOptions) (*SMTPSender, error) {
	if o.Router == nil || o.Limits == nil {
		return nil, errors.New("o365: SMTP sender needs a router and limits")
	}
	s := &SMTPSender{o: o.withDefaults(), idle: map[string][]*conn{}, live: map[*conn]bool{}, stop: make(chan struct{})}
	s.reaper.Go(s.reap)
	return s, nil
}

// reap closes connections idle longer than IdleTimeout, so that their
// fleet-wide slots go to whoever needs them, and renews the slots of the
// others, idle or busy, every third of their lifetime. The renewals go
// side by side (up to renewAtOnce), and the quits on their own
// (SMTPSender.quits): with Redis or Exchange slow to answer, a renewal
// waiting behind the others, or behind a quit's QUIT and release, would
// come after its slot's end.
func (s *SMTPSender) reap() {
	every := s.o.IdleTimeout / 2
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		var old []*conn
		s.mu.Lock()
		for mbx, list := range s.idle {
			keep := list[:0]
			for _, c := range list {
				if time.Since(c.used) >= s.o.IdleTimeout {
					old = append(old, c)
				} else {
					keep = append(keep, c)
				}
			}
			if len(keep) == 0 {
				delete(s.idle, mbx)
			} else {
				s.idle[mbx] = keep
			}
		}
		var renew []*conn
		for c := range s.live {
			if !c.lost && !slices.Contains(old, c) && time.Since(c.renewed) >= slotTTL/3 {
				renew = append(renew, c)
			}
		}
		s.mu.Unlock()
		for _, c := range old {
			s.quits.Go(func() { s.quit(c) })
		}
		var wg sync.WaitGroup
		turns := make(chan struct{}, renewAtOnce)
		for _, c := range renew {
			turns <- struct{}{}
			wg.Go(func() {
				defer func() { <-turns }()
				s.renew(c, every)
			})
		}
		wg.Wait()
	}
}

// renewAtOnce is how many slot renewals the reaper runs at a time.
const renewAtOnce = 16

// slotMargin is how long before its slot's end a renewal must be
// answered.
const slotMargin = 500 * time.Millisecond

// renew renews c's slot, the renewal bounded to end slotMargin before the
// slot does. A slot whose next renewal, every later and as long as this
// one may take, could end after the slot (which may be another relay's
// by then) is taken for lost, as one Redis says expired: its connection
// is closed as soon as it is idle.
func (s *SMTPSender) renew(c *conn, every time.Duration) {
	s.mu.Lock()
	end := c.renewed.Add(slotTTL)
	s.mu.Unlock()
	start := time.Now()
	deadline := start.Add(slotTTL / 3)
	if d := end.Add(-slotMargin); d.Before(deadline) {
		deadline = d
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	err := s.o.Limits.Renew(ctx, c.slot, slotTTL)
	cancel()
	late := !time.Now().Add(every + slotTTL/3).Before(end)
	if err == nil {
		s.mu.Lock()
		c.renewed = start // the slot's new end counts from the request
		s.mu.Unlock()
	}
	switch {
	case errors.Is(err, queue.ErrSlotLost):
		s.o.Logger.Warn("a connection slot expired and may be another's; closing its connection", "mailbox", c.mailbox)
		s.loseSlot(c)
	case err != nil && late:
		s.o.Logger.Warn("cannot renew a connection slot before it expires; closing its connection", "mailbox", c.mailbox, "err", err)
		s.loseSlot(c)
	case err != nil:
		s.o.Logger.Warn("cannot renew a connection slot", "mailbox", c.mailbox, "err", err)
	}
}

// loseSlot closes a connection whose slot expired: at once when it is
// idle, or when its send ends (put). A send given the connection and not
// yet begun closes it itself (granted, submit).
func (s *SMTPSender) loseSlot(c *conn) {
	s.mu.Lock()
	c.lost = true
	list := s.idle[c.mailbox]
	i := slices.Index(list, c)
	if i >= 0 {
		s.idle[c.mailbox] = slices.Delete(list, i, i+1)
	}
	s.mu.Unlock()
	if i >= 0 {
		s.quits.Go(func() { s.quit(c) })
	}
}

// slotLost reports whether c's slot was taken for lost (conn.lost).
func (s *SMTPSender) slotLost(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return c.lost
}

// slotTTL is how long a connection slot lives without renewal: a
// replica that dies without releasing its slots (kill -9) holds them this
// long at most. reap renews live ones every third of it.
const slotTTL = 6 * time.Second

// slotDelay is when a message that found every connection slot of its
// mailbox taken is tried again: connections are released within
// IdleTimeout of their last message.
const slotDelay = 5 * time.Second

// Send submits one message. It returns the final reply, or an
// *upstream.Error classified by ClassifySMTP or ClassifyToken.
func (s *SMTPSender) Send(ctx context.Context, m *queue.Message) (string, error) {
	route, err := s.o.Router(ctx, m)
	if err != nil {
		return "", err
	}
	if g := grantOf(ctx, route.Mailbox); g != nil {
		// Room was reserved before the message was leased.
		send := g.send
		c, err := s.granted(ctx, route, g)
		if err != nil {
			s.returnSend(ctx, route.Mailbox, send)
			return "", err
		}
		return s.submit(ctx, c, route, m, send)
	}
	// The connection slot comes first: a send counted against the rate
	// must be one that has a connection to go out on.
	c, err := s.get(ctx, route)
	if err != nil {
		return "", err
	}
	if wait, err := s.waitRate(ctx, route.Mailbox); err != nil || wait > 0 {
		s.put(c)
		if err != nil {
			return "", err
		}
		return "", &upstream.Error{Class: upstream.Throttled, RetryAfter: wait,
			Text: fmt.Sprintf("%s has sent %d messages in the last minute", route.Mailbox, s.o.PerMinute)}
	}
	return s.submit(ctx, c, route, m, "")
}

// returnSend gives back send, a grant's send counted in the mailbox's
// rate (none when empty), for a send that failed before its message went
// out (no connection, token or AUTH): otherwise retries while Exchange is
// away would spend the mailbox's minute on nothing.
func (s *SMTPSender) returnSend(ctx context.Context, mailbox, send string) {
	if send != "" {
		_ = s.o.Limits.ReturnSend(context.WithoutCancel(ctx), mailbox, send)
	}
}

// afterTransaction, set by tests alone, runs between a transaction's end
// and submit's look at its cancellation.
var afterTransaction func()

// submit sends the message on c and keeps or discards c after. send is
// the grant's send counted in the mailbox's rate, or empty: it is given
// back (returnSend) when the route's check refuses the send, or when c
// is replaced and no other connection can be had. Cancelling ctx
// (shutdown, or the message's lease lost) closes the connection: a
// message not yet ended by its final dot is not sent.
//
// A connection whose slot was lost (see conn.lost) before its
// transaction begins is closed, and the message goes on another
// connection: the slot may be another relay's, whose connection would
// be the mailbox's fourth. A transaction already begun (MAIL FROM sent;
// on Exchange, which offers PIPELINING, MAIL FROM goes with RCPT TO and
// the data in one write) runs to its end, and the connection is closed
// after: cut mid-way, the message would go again whole later, and a cut
// that came as its final dot went out, before the reply, could deliver
// it twice.
func (s *SMTPSender) submit(ctx context.Context, c *conn, route Route, m *queue.Message, send string) (string, error) {
	if route.Check != nil {
		if err := route.Check(ctx); err != nil {
			s.put(c)
			s.returnSend(ctx, route.Mailbox, send)
			return "", err
		}
	}
	for {
		if s.slotLost(c) {
			s.o.Logger.Debug("a connection's slot expired before its transaction; sending on another", "mailbox", c.mailbox)
			s.quit(c)
			var err error
			if c, err = s.get(ctx, route); err != nil {
				s.returnSend(ctx, route.Mailbox, send)
				return "", err
			}
			continue
		}
		stop := context.AfterFunc(ctx, func() { c.c.Close() })
		var reply string
		var err error
		if c.w != nil {
			reply, err = s.pipelined(ctx, c, m, c.kept)
		} else {
			reply, err = s.transact(ctx, c, m)
		}
		if afterTransaction != nil {
			afterTransaction()
		}
		if !stop() && !answered(err) {
			// Cut by the cancel. A reply that came stands: an acceptance
			// here, a refusal (a block of the mailbox among them, which
			// the fleet must know of) below.
			s.discard(c)
			if err == nil {
				return reply, nil
			}
			return "", &upstream.Error{Class: upstream.Transient, Text: "send interrupted", Err: ctx.Err()}
		}
		if errors.Is(err, errStaleConn) {
			// Nothing was sent: the message goes on another connection,
			// kept or new.
			s.o.Logger.Debug("a kept connection did not answer; sending on another", "mailbox", c.mailbox, "err", err)
			s.discard(c)
			if c, err = s.get(ctx, route); err != nil {
				s.returnSend(ctx, route.Mailbox, send)
				return "", err
			}
			continue
		}
		if err != nil {
			if s.o.OnBlocked != nil && errors.Is(err, ErrMailboxBlocked) && !errors.Is(err, ErrSubmissionQuota) {
				s.o.OnBlocked(ctx, c.mailbox, err)
			}
			s.discard(c)
			return "", err
		}
		s.put(c)
		return reply, nil
	}
}

// answered reports whether err is the server's refusal, a reply that
// came, rather than a failure to get one.
func answered(err error) bool {
	var ue *upstream.Error
	return errors.As(err, &ue) && ue.Code != 0
}

// waitRate takes a send from the mailbox's rate, waiting up to MaxWait.
func (s *SMTPSender) waitRate(ctx context.Context, mailbox string) (time.Duration, error) {
	deadline := time.Now().Add(s.o.MaxWait)
	for {
		wait, err := s.o.Limits.TakeSend(ctx, mailbox, s.o.PerMinute, time.Minute)
		if err != nil || wait == 0 || time.Now().Add(wait).After(deadline) {
			return wait, err
		}
		if err := sleepCtx(ctx, wait); err != nil {
			return 0, err
		}
	}
}

// takeIdle returns one of this replica's idle connections to the
// mailbox that is young enough to reuse, or nil.
func (s *SMTPSender) takeIdle(mailbox string) *conn {
	for {
		s.mu.Lock()
		list := s.idle[mailbox]
		var c *conn
		if n := len(list); n > 0 {
			c, s.idle[mailbox] = list[n-1], list[:n-1]
		}
		s.mu.Unlock()
		if c == nil || time.Since(c.used) < s.o.IdleTimeout {
			return c
		}
		s.discard(c)
	}
}

// granted returns the grant's connection, or a new one on the grant's
// slot (also when the granted connection no longer answers: the new one
// takes its slot). A granted connection whose slot was lost while the
// grant waited is closed, and the send takes another connection, with a
// slot of its own (get); so does a lost slot with no connection on it
// (openOn).
func (s *SMTPSender) granted(ctx context.Context, r Route, g *Grant) (*conn, error) {
	g.s = nil
	h := g.slot
	if c := g.conn; c != nil {
		if s.slotLost(c) {
			s.quit(c)
			return s.get(ctx, r)
		}
		if c.w != nil || c.c.Reset() == nil {
			return c, nil
		}
		// Its slot, renewed by reap while the RSET ran, goes to the new
		// connection, unless it was lost meanwhile.
		_ = c.c.Close()
		h = c
	}
	return s.openOn(ctx, r, h)
}

// hold records slot, taken by a request sent at taken, as held with no
// connection on it yet (a grant's, waiting for its send; one whose
// connection is being opened), so that reap renews it as it renews a
// connection's: unrenewed, it would expire while it waits, and another
// relay could take it. The returned conn is filled in by openOn.
func (s *SMTPSender) hold(mailbox string, slot *queue.Slot, taken time.Time) *conn {
	h := &conn{slot: slot, mailbox: mailbox, renewed: taken}
	s.mu.Lock()
	s.live[h] = true
	s.mu.Unlock()
	return h
}

// openOn opens a connection on h's slot, held with no connection (hold)
// or its connection closed, and returns h with the connection on it;
// reap renews the slot while the connection lives. A slot found lost
// while it was held (see conn.lost) is given up, and the send takes
// another (get): the slot may be another relay's, and a connection on it
// the mailbox's fourth. So is a slot lost while the connection opened,
// up to its AUTH (authOn), where Exchange counts the connection as the
// mailbox's; one lost after is the connection's, closed before its
// transaction (submit). When the connection cannot be opened, the slot
// is released.
func (s *SMTPSender) openOn(ctx context.Context, r Route, h *conn) (*conn, error) {
	if s.slotLost(h) {
		s.o.Logger.Debug("a held connection slot expired before its connection was opened; taking another", "mailbox", h.mailbox)
		s.discard(h)
		return s.get(ctx, r)
	}
	r.slot = h
	c, err := s.open(ctx, r)
	if errors.Is(err, errSlotLost) {
		s.o.Logger.Debug("a held connection slot expired before its connection's AUTH; taking another", "mailbox", h.mailbox)
		s.discard(h)
		return s.get(ctx, r)
	}
	if err != nil {
		s.discard(h)
		return nil, err
	}
	s.mu.Lock()
	h.c, h.w, h.used, h.kept = c.c, c.w, c.used, false
	s.mu.Unlock()
	return h, nil
}

// get returns an idle connection of the mailbox, or opens one when the
// fleet has a free slot for it.
func (s *SMTPSender) get(ctx context.Context, r Route) (*conn, error) {
	for c := s.takeIdle(r.Mailbox); c != nil; c = s.takeIdle(r.Mailbox) {
		if c.w != nil || c.c.Reset() == nil {
			return c, nil
		}
		s.discard(c)
	}
	h, err := s.acquire(ctx, r.Mailbox)
	if err != nil {
		return nil, err
	}
	return s.openOn(ctx, r, h)
}

// takeSlot takes a free slot of the mailbox, if the fleet has one, and
// holds it (hold); nil when none is free.
func (s *SMTPSender) takeSlot(ctx context.Context, mailbox string) (*conn, error) {
	start := time.Now()
	slot, err := s.o.Limits.AcquireConn(ctx, mailbox, s.o.MaxConns, slotTTL)
	if err != nil || slot == nil {
		return nil, err
	}
	return s.hold(mailbox, slot, start), nil
}

// acquire takes a free slot of the mailbox, waiting up to MaxWait, and
// holds it (takeSlot).
func (s *SMTPSender) acquire(ctx context.Context, mailbox string) (*conn, error) {
	deadline := time.Now().Add(s.o.MaxWait)
	for {
		h, err := s.takeSlot(ctx, mailbox)
		if err != nil || h != nil {
			return h, err
		}
		if time.Now().After(deadline) {
			return nil, &upstream.Error{Class: upstream.Throttled, RetryAfter: slotDelay,
				Text: fmt.Sprintf("%s already has %d connections open", mailbox, s.o.MaxConns)}
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// transact sends one message on an authenticated connection. Recipients
// go one by one: a permanently rejected recipient does not fail the
// others, and is named in the returned reply. A temporary rejection of any
// recipient retries the whole message later, so that nobody gets it twice.
// A ctx cancelled before the final dot abandons the message.
func (s *SMTPSender) transact(ctx context.Context, c *conn, m *queue.Message) (string, error) {
	if err := c.c.Mail(m.From, nil); err != nil {
		return "", smtpError("MAIL FROM", AtMessage, err, AppOnly, true)
	}
	accepted, rejected, err := recipients(m.To, func(rcpt string) error { return c.c.Rcpt(rcpt, nil) })
	if err != nil {
		return "", err
	}
	if accepted == 0 {
		return "", allRejected(rejected)
	}
	w, err := c.c.Data()
	if err != nil {
		return "", smtpError("DATA", AtMessage, err, AppOnly, true)
	}
	if _, err := w.Write(m.Body); err != nil {
		w.Close()
		return "", &upstream.Error{Class: upstream.Transient, Text: "write message", Err: err}
	}
	if err := ctx.Err(); err != nil {
		// Cancelled before the final dot: the message is not sent. The
		// caller closes the connection mid-DATA.
		return "", &upstream.Error{Class: upstream.Transient, Text: "send abandoned before the end of DATA", Err: err}
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", smtpError("end of DATA", AtMessage, err, AppOnly, true)
	}
	c.used = time.Now()
	return sentReply(resp.StatusText, rejected), nil
}

// sentReply is the reply recorded for a sent message: the server's text
// after 250, and the recipients it rejected.
func sentReply(text string, rejected []string) string {
	reply := "250 " + text
	if len(rejected) > 0 {
		reply += "; rejected: " + strings.Join(rejected, "; ")
	}
	return reply
}

// recipients reads the reply to each RCPT TO of to, in order, from reply:
// it counts the accepted ones and names the permanently rejected ones for
// the message's reply. Any other rejection is returned as the error: the
// message is retried whole later, so that nobody gets it twice.
func recipients(to []string, reply func(rcpt string) error) (accepted int, rejected []string, err error) {
	for _, rcpt := range to {
		err := reply(rcpt)
		if err == nil {
			accepted++
			continue
		}
		ue := smtpError("RCPT TO "+rcpt, AtMessage, err, AppOnly, true)
		if ue.Class != upstream.Permanent {
			return 0, nil, ue
		}
		rejected = append(rejected, rcpt+": "+ue.Error())
	}
	return accepted, rejected, nil
}

// allRejected is the error of a message whose every recipient was
// rejected.
func allRejected(rejected []string) *upstream.Error {
	return &upstream.Error{Class: upstream.Permanent, Code: 550,
		Text: "every recipient was rejected: " + strings.Join(rejected, "; ")}
}

// put keeps a connection for the mailbox's next message. reap renews its
// slot.
func (s *SMTPSender) put(c *conn) {
	c.kept = true
	s.mu.Lock()
	lost := c.lost
	if !lost {
		s.idle[c.mailbox] = append(s.idle[c.mailbox], c)
	}
	s.mu.Unlock()
	if lost {
		s.quit(c)
	}
}

// quit says goodbye on a connection that is not wanted any more, then
// discards it.
func (s *SMTPSender) quit(c *conn) {
	_ = c.c.Quit()
	s.discard(c)
}

// discard closes a connection, if any, and frees its slot. A lost slot
// is freed too: Release frees the slot by its own token, so it frees a
// slot whose renewal came late, still held until it expires, and leaves
// alone one that expired and that another relay may hold now.
func (s *SMTPSender) discard(c *conn) {
	if c.c != nil {
		_ = c.c.Close()
	}
	s.mu.Lock()
	delete(s.live, c)
	s.mu.Unlock()
	if c.slot != nil {
		_ = s.o.Limits.Release(context.Background(), c.slot)
	}
}

// Close closes every idle connection and stops the reaper, and returns
// once the reaper and its quits have ended; so does every Close, also
// one called while another runs. Sends still running finish on their own
// connections.
func (s *SMTPSender) Close() error {
	s.stopOnce.Do(func() { close(s.stop) })
	s.reaper.Wait()
	s.mu.Lock()
	idle := s.idle
	s.idle = map[string][]*conn{}
	s.mu.Unlock()
	for _, list := range idle {
		for _, c := range list {
			s.quit(c)
		}
	}
	s.quits.Wait()
	return nil
}

// smtpError turns a go-smtp error to command, at step at, into a
// classified upstream error.
func smtpError(command string, at Step, err error, kind AuthKind, fresh bool) *upstream.Error {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		ec := ""
		if se.EnhancedCode != smtp.NoEnhancedCode && se.EnhancedCode != (smtp.EnhancedCode{}) {
			ec = fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
		}
		e := ClassifySMTP(SMTPReply{Code: se.Code, Enhanced: ec, Text: se.Message}, at, kind, fresh)
		if e.Err != nil {
			e.Err = fmt.Errorf("%s: %w", command, e.Err)
		} else {
			e.Err = errors.New(command)
		}
		return e
	}
	return &upstream.Error{Class: upstream.Transient, Text: command, Err: err}
}

// ClassifyTokenError classifies a failed token fetch of a route of the
// given kind: a *auth.TokenError by ClassifyToken, any other error as
// transient.
func ClassifyTokenError(err error, kind AuthKind) error {
	var te *auth.TokenError
	var ue *upstream.Error
	if errors.As(err, &ue) && !errors.As(err, &te) {
		return err // already classified, e.g. by the token source's breaker
	}
	if !errors.As(err, &te) {
		return &upstream.Error{Class: upstream.Transient, Text: "token request", Err: err}
	}
	e := ClassifyToken(TokenFailure{HTTPStatus: te.HTTPStatus, Code: te.Code, AADSTS: te.AADSTS,
		Text: te.Description, RetryAfter: te.RetryAfter}, kind)
	e.Err = err
	return e
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Probe checks that the route's credentials work without sending mail: a
// new token, then EHLO, STARTTLS, AUTH XOAUTH2 as the mailbox and QUIT.
// It takes one of the mailbox's connection slots while it runs.
func (s *SMTPSender) Probe(ctx context.Context, r Route) error {
	r.Tokens.Invalidate()
	h, err := s.acquire(ctx, r.Mailbox)
	if err != nil {
		return err
	}
	defer s.discard(h)
	r.probe, r.slot = true, h
	c, err := s.open(ctx, r)
	if err != nil {
		return err
	}
	_ = c.c.Quit()
	return nil
}
