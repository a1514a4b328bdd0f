package o365

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"holdfast/auth"
	"holdfast/relay/upstream"
)

// open dials, secures and authenticates a connection as the route's
// mailbox. A cached token refused as stale (see RetryWithNewToken) is
// replaced and AUTH retried once with the new one. AUTHs with one token
// take turns until one has a verdict (authflight.go).
func (s *SMTPSender) open(ctx context.Context, r Route) (*conn, error) {
	var last string
	for range 3 {
		tok, err := r.Tokens.Token(ctx)
		if err != nil {
			return nil, ClassifyTokenError(err, r.Kind)
		}
		if tok.AccessToken == last {
			// The token refused in another session's turn is still the
			// one the source gives.
			return nil, refusedElsewhere(nil)
		}
		f, lead := s.flights.enter(tok.AccessToken, r.Mailbox)
		if lead {
			c, refused, err := s.openFresh(ctx, r, nil)
			s.flights.end(tok.AccessToken, f, refused, err)
			return c, err
		}
		if err := f.wait(ctx); err != nil {
			return nil, err
		}
		switch {
		case f.refused && f.err != nil && !strings.EqualFold(f.mailbox, r.Mailbox):
			// Refused at another mailbox, which may be that mailbox's
			// alone (the app lacks its permission there): a probe, or a
			// session with a fleet-wide place, which bounds the refusals
			// across mailboxes, tests the token at its own.
			c, _, err := s.openFresh(ctx, r, f.err)
			return c, err
		case f.refused && f.err != nil:
			// The token was refused, and the retry failed: that one
			// failure is what the breaker hears of it.
			return nil, refusedElsewhere(f.err)
		case !f.refused:
			// The token works, or the turn ended without a verdict on it
			// (the connection failed): go ahead without a turn.
			c, _, err := s.openFresh(ctx, r, nil)
			return c, err
		}
		// The token was refused and a new one works: take the source's
		// token again.
		last = tok.AccessToken
	}
	return nil, refusedElsewhere(nil)
}

// openFresh authenticates with the source's token and, when Exchange
// refuses it as a cached token may be, once more with a new one. Each
// AUTH first takes a place (Route.Turn); the second does not wait for
// one, and without it the send waits as throttled for another session's
// verdict. refused says whether Exchange refused the first token.
// elsewhere, when set, is the token's refusal at another mailbox: the
// AUTH goes ahead only with a place or for a probe, else waits as
// throttled.
func (s *SMTPSender) openFresh(ctx context.Context, r Route, elsewhere error) (*conn, bool, error) {
	// The session is set up (greeting, EHLO, STARTTLS, EHLO) before the
	// place is taken, so that a place is held for the AUTH alone: the
	// places bound how many AUTHs of a credential are in flight
	// fleet-wide, and so how many sessions it opens a second.
	c, w, err := s.dial(ctx)
	if err != nil {
		return nil, false, err
	}
	turn, err := s.turn(ctx, r, true)
	if err != nil {
		c.Close()
		return nil, false, err
	}
	if elsewhere != nil && !turn.Placed && !r.probe {
		turn.Exit(AuthNeutral, nil)
		c.Close()
		return nil, false, refusedElsewhere(elsewhere)
	}
	if turn.Refresh {
		r.Tokens.Invalidate()
	}
	// The source's token now: the one the caller had may have been
	// replaced in another session's turn.
	tok, err := r.Tokens.Token(ctx)
	if err != nil {
		turn.Exit(AuthNeutral, err)
		c.Close()
		return nil, false, ClassifyTokenError(err, r.Kind)
	}
	// A token fetched for this turn is a new one: its refusal is not
	// retried.
	cn, retry, err := s.authOn(ctx, c, w, r, tok.AccessToken, turn.Refresh)
	if instead := turn.Exit(authOutcome(err, retry, false), err); instead != nil {
		err = instead
	}
	if !retry {
		return cn, false, err
	}
	r.Tokens.Invalidate()
	tok, terr := r.Tokens.Token(ctx)
	if terr != nil {
		return nil, true, ClassifyTokenError(terr, r.Kind)
	}
	again, terr := s.turn(ctx, r, false)
	if errors.Is(terr, ErrNoTurn) {
		// Another session's new token is being tried: its verdict is
		// this one's too.
		return nil, true, &upstream.Error{Class: upstream.Throttled, RetryAfter: flightWait,
			Text: "the cached token was refused, and another session's AUTH with a new one is in doubt", Err: err}
	}
	if terr != nil {
		return nil, true, terr
	}
	cn, _, err = s.authenticate(ctx, r, tok.AccessToken, true)
	if instead := again.Exit(authOutcome(err, false, true), err); instead != nil {
		err = instead
	}
	return cn, true, err
}

// turn takes a place for an AUTH of the route (see Route.Turn); a route
// without Turn always has one.
func (s *SMTPSender) turn(ctx context.Context, r Route, wait bool) (AuthTurn, error) {
	if r.Turn == nil {
		return AuthTurn{Exit: func(AuthOutcome, error) error { return nil }}, nil
	}
	t, err := r.Turn(ctx, wait)
	if errors.Is(err, ErrNoTurn) && wait {
		return t, &upstream.Error{Class: upstream.Throttled, RetryAfter: flightWait,
			Text: "other AUTHs with this credential are in doubt; waiting for their verdict", Err: err}
	}
	if err == nil && t.Exit == nil {
		t.Exit = func(AuthOutcome, error) error { return nil }
	}
	return t, err
}

// authenticate dials and authenticates with token. retry reports a refusal
// of a cached token (see RetryWithNewToken), which a new token may cure.
func (s *SMTPSender) authenticate(ctx context.Context, r Route, token string, fresh bool) (*conn, bool, error) {
	c, w, err := s.dial(ctx)
	if err != nil {
		return nil, false, err
	}
	return s.authOn(ctx, c, w, r, token, fresh)
}

// errSlotLost is wrapped by the error of a connection closed before its
// AUTH because the slot held for it was lost (see conn.lost).
var errSlotLost = errors.New("the connection slot held for this connection expired before its AUTH")

// authOn authenticates on a session dial set up, and closes it unless
// the AUTH succeeded. When the route's slot (Route.slot) was lost, the
// session is closed before its AUTH: Exchange counts a connection as the
// mailbox's from its AUTH, and the slot may be another relay's now.
func (s *SMTPSender) authOn(ctx context.Context, c *smtp.Client, w *wire, r Route, token string, fresh bool) (*conn, bool, error) {
	if r.slot != nil && s.slotLost(r.slot) {
		c.Close()
		return nil, false, &upstream.Error{Class: upstream.Throttled, RetryAfter: slotDelay,
			Text: r.Mailbox + ": connection slot lost before AUTH", Err: errSlotLost}
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	err := c.Auth(auth.NewXOAUTH2Client(r.Mailbox, token))
	if s.o.OnAuth != nil {
		s.o.OnAuth(err)
	}
	if !stop() {
		c.Close()
		return nil, false, &upstream.Error{Class: upstream.Transient, Text: "AUTH interrupted", Err: ctx.Err()}
	}
	if err == nil {
		cn := &conn{c: c, mailbox: r.Mailbox, used: time.Now()}
		if ok, _ := c.Extension("PIPELINING"); ok {
			w.eightBit, _ = c.Extension("8BITMIME")
			w.chunking, _ = c.Extension("CHUNKING")
			cn.w = w
		}
		return cn, false, nil
	}
	c.Close()
	uerr := smtpError("AUTH", AtAuth, err, r.Kind, fresh)
	return nil, RetryWithNewToken(SMTPReply{Code: uerr.Code, Enhanced: uerr.Enhanced, Text: uerr.Text}, fresh), uerr
}

func (s *SMTPSender) dial(ctx context.Context) (*smtp.Client, *wire, error) {
	if s.o.Endpoint == nil {
		return s.connect(ctx)
	}
	done, err := s.o.Endpoint.Allow()
	if err != nil {
		return nil, nil, err
	}
	c, w, err := s.connect(ctx)
	if ctx.Err() != nil && err != nil {
		err = ctx.Err() // cancelled: says nothing of the endpoint
	}
	done(err)
	return c, w, err
}

// connect dials and, unless InsecurePlaintext, starts TLS. It returns the
// session's go-smtp client and the wire under it.
func (s *SMTPSender) connect(ctx context.Context) (*smtp.Client, *wire, error) {
	d := net.Dialer{Timeout: s.o.DialTimeout}
	nc, err := d.DialContext(ctx, "tcp", s.o.Addr)
	if err != nil {
		return nil, nil, &upstream.Error{Class: upstream.Transient, Text: "connect to " + s.o.Addr, Err: err}
	}
	var c *smtp.Client
	var w *wire
	if s.o.InsecurePlaintext {
		c, w = smtp.NewClient(nc), newWire(nc)
	} else {
		cfg := s.o.TLS.Clone()
		if cfg == nil {
			cfg = &tls.Config{}
		}
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(s.o.Addr)
		}
		cfg.MinVersion = max(cfg.MinVersion, tls.VersionTLS12)
		// Closing the connection is what bounds the greeting, EHLO and
		// STARTTLS by ctx; CommandTimeout bounds them as a whole.
		hctx, cancel := context.WithTimeout(ctx, s.o.CommandTimeout)
		stop := context.AfterFunc(hctx, func() { nc.Close() })
		command := "STARTTLS"
		tc, err := startTLS(nc, cfg)
		if err == nil {
			// The handshake and the EHLO after it, which go-smtp would
			// leave to the first command: the session is ready for
			// its AUTH when it is returned.
			c, w = smtp.NewClient(newGreetedConn(tc)), newWire(tc)
			c.CommandTimeout = s.o.CommandTimeout
			command, err = "TLS handshake and EHLO", c.Hello(helloName)
		}
		interrupted := !stop()
		cancel()
		if interrupted {
			nc.Close()
			return nil, nil, &upstream.Error{Class: upstream.Transient,
				Text: fmt.Sprintf("no greeting, EHLO or STARTTLS reply or TLS handshake from %s within %v", s.o.Addr, s.o.CommandTimeout),
				Err:  cmp.Or(ctx.Err(), hctx.Err())}
		}
		if err != nil {
			nc.Close()
			return nil, nil, smtpError(command, AtSession, err, AppOnly, false)
		}
	}
	c.CommandTimeout = s.o.CommandTimeout
	c.SubmissionTimeout = s.o.DataTimeout
	return c, w, nil
}
