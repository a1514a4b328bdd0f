package relay

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"sync"
	"time"

	"holdfast/breaker"
	"holdfast/relay/o365"
	"holdfast/relay/upstream"
)

// The AUTHs of an app-only credential take places fleet-wide (see
// breaker's Attempts), so that no more refusals than the breaker's
// threshold reach Exchange before it opens, whatever the number of
// sessions and replicas. A first AUTH waits for a place; the retry with
// a new token after a refusal takes one only if it is free at once.

// authTurnWait is how long an AUTH waits for a place before its message
// is deferred as throttled; authTurnPoll is how often it asks meanwhile.
const (
	authTurnWait = 5 * time.Second
	authTurnPoll = 25 * time.Millisecond
)

// authTurn returns the route's o365.Route.Turn: places under its
// credential breaker.
func (g *gate) authTurn(route string) func(context.Context, bool) (o365.AuthTurn, error) {
	_, c, m, ok := parseRoute(route)
	if !ok {
		return nil
	}
	cred, mailbox := credentialBreaker(c), strings.ToLower(m)
	return func(ctx context.Context, wait bool) (o365.AuthTurn, error) {
		token := rand.Text()
		deadline := time.Now().Add(authTurnWait)
		for {
			a, err := g.set.EnterAttempt(ctx, cred, token, mailbox, !wait)
			if err != nil {
				// Redis unreadable: the AUTH goes ahead, as sends do on
				// the local breakers then.
				g.log.Warn("cannot take an AUTH place; going ahead", "breaker", cred, "err", err)
				return o365.AuthTurn{}, nil
			}
			switch a.Verdict {
			case breaker.Go, breaker.GoFresh:
				fresh := a.Verdict == breaker.GoFresh
				stop := g.renewTurn(cred, token)
				exit := g.exitTurn(cred, token, mailbox, fresh)
				return o365.AuthTurn{Refresh: g.newCure(cred, a.CuredAt) || fresh, Placed: true, Exit: func(o o365.AuthOutcome, err error) error {
					stop()
					return exit(o, err)
				}}, nil
			case breaker.Held:
				// The breaker opened while this AUTH waited for a place, and
				// this replica's view of it is a poll behind: the mail is
				// held as check holds it.
				return o365.AuthTurn{}, openError(cred, upstream.Credential, a.Reply, nil)
			case breaker.RefusedHere:
				// Refused at this mailbox alone, while the token may work
				// at others: the mailbox's failure, not the credential's.
				return o365.AuthTurn{}, &upstream.Error{Class: upstream.Mailbox, Reason: a.Reply,
					Text: "AUTH not tried: Exchange refused this credential's token at this mailbox too often in a row (and, since it last worked, at a few other mailboxes at most); " +
						"the app may lack its permission on the mailbox (FullAccess, or an RBAC for Applications scope): " + a.Reply}
			case breaker.Refused:
				return o365.AuthTurn{}, &upstream.Error{Class: upstream.Credential, Reason: a.Reply,
					Text: "AUTH not tried: this credential's AUTHs were refused too often in a row, fleet-wide (check it with \"holdfast creds check\"; the breaker's probe tries it again): " + a.Reply}
			}
			if !wait || !time.Now().Before(deadline) {
				return o365.AuthTurn{}, fmt.Errorf("breaker %s: %w", cred, o365.ErrNoTurn)
			}
			select {
			case <-ctx.Done():
				return o365.AuthTurn{}, ctx.Err()
			case <-time.After(authTurnPoll):
			}
		}
	}
}

// renewTurn keeps a place taken while its AUTH lasts, so that the place
// of a relay killed during its AUTH lapses within breaker.AttemptTTL. The
// returned func stops renewing, and returns once the renewal has ended.
func (g *gate) renewTurn(cred, token string) (stop func()) {
	return renewing(breaker.AttemptTTL/3, func(ctx context.Context) bool {
		if err := g.set.RenewAttempt(ctx, cred, token); err != nil && ctx.Err() == nil {
			g.log.Warn("cannot renew an AUTH place", "breaker", cred, "err", err)
		}
		return true
	})
}

// renewing calls renew every interval until renew returns false or the
// returned func is called; that func returns once renewing has ended.
// renew's context ends when it is called.
func renewing(every time.Duration, renew func(context.Context) bool) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if !renew(ctx) {
					return
				}
			}
		}
	})
	return func() {
		cancel()
		wg.Wait()
	}
}

// exitTurn gives a place back with the AUTH's outcome. fresh says the
// place was given to test a new token after a cached one's refusal
// (breaker.GoFresh): its success is a cure, which the other replicas
// hear of and replace their own cached tokens. It returns the mailbox's
// failure to count in place of a refusal that was the mailbox's alone:
// the credential has not worked there within a day, while it has at
// other mailboxes, or it has, and was refused since at few mailboxes
// alone.
func (g *gate) exitTurn(cred, token, mailbox string, fresh bool) func(o365.AuthOutcome, error) error {
	return func(outcome o365.AuthOutcome, err error) error {
		o, reply := breaker.Neutral, ""
		switch {
		case outcome == o365.AuthCured, outcome == o365.AuthOK && fresh:
			o = breaker.Cured
		case outcome == o365.AuthOK:
			o = breaker.Succeeded
		case outcome == o365.AuthRefused:
			o, reply = breaker.Failed, breaker.Reason(err)
		case outcome == o365.AuthStale:
			o, reply = breaker.FailedStale, breaker.Reason(err)
		}
		// The place is given back even when the send was cancelled.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		at, blame, xerr := g.set.ExitAttempt(ctx, cred, token, mailbox, o, reply)
		if xerr != nil {
			g.log.Warn("cannot give an AUTH place back; it lapses by itself", "breaker", cred, "err", xerr)
		}
		if o == breaker.Cured {
			// This replica's token is the new one already.
			g.newCure(cred, at)
		}
		var where string
		switch blame {
		case breaker.BlameNewMember:
			where = "where it has not worked within a day, while it works at other mailboxes"
		case breaker.BlameFewMembers:
			where = "where it worked within a day; since its last success it was refused at this mailbox and a few others alone, " +
				"so it is this mailbox's failure until an AUTH at another mailbox tests the credential"
		default:
			return nil
		}
		return &upstream.Error{Class: upstream.Mailbox, Reason: reply, Err: err,
			Text: "Exchange refused this credential's token at this mailbox, " + where +
				"; the app may lack its permission on the mailbox (FullAccess, or an RBAC for Applications scope): " + reply}
	}
}

// newCure reports whether a cure of a refused token at the time given is
// one this replica has not acted on yet, and marks it acted on: its
// cached token is then likely refused too, and is replaced before the
// AUTH.
func (g *gate) newCure(cred string, at time.Time) bool {
	if at.IsZero() {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !at.After(g.cured[cred]) {
		return false
	}
	if g.cured == nil {
		g.cured = map[string]time.Time{}
	}
	g.cured[cred] = at
	return true
}
