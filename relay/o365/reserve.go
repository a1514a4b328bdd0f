package o365

import (
	"context"
	"time"
)

// A Grant is room to send one message of a mailbox now: a connection
// slot of the fleet's (with this replica's idle connection on it, when
// there is one) and a send counted in the mailbox's rate. Reserve hands
// grants out before messages are leased, so that the relay's own limits
// never fail a delivery. A grant goes to exactly one Send (through
// WithGrant) or is given back with Cancel.
type Grant struct {
	s       *SMTPSender
	mailbox string
	conn    *conn  // an idle connection of this replica, or nil
	slot    *conn  // a new slot when conn is nil, held with no connection (hold)
	send    string // the rate's token
}

type grantKey struct{}

// WithGrant returns a context that carries g to Send.
func WithGrant(ctx context.Context, g *Grant) context.Context {
	return context.WithValue(ctx, grantKey{}, g)
}

func grantOf(ctx context.Context, mailbox string) *Grant {
	g, _ := ctx.Value(grantKey{}).(*Grant)
	if g == nil || g.mailbox != mailbox || g.s == nil {
		return nil
	}
	return g
}

// slotRetry is how soon a replica looks again at a mailbox whose
// connection slots were all taken.
const slotRetry = 250 * time.Millisecond

// Reserve takes room for up to n messages of the mailbox: each grant is
// one of this replica's idle connections to the mailbox, or a free slot
// of the fleet, plus room in the mailbox's rate. While the mailbox waits
// for one of the kinds in holds (queue.Limiter.HoldMailbox), there is no
// room. With no grant it returns how long until room may free up.
func (s *SMTPSender) Reserve(ctx context.Context, mailbox string, n int, holds ...string) ([]*Grant, time.Duration, error) {
	var grants []*Grant
	for len(grants) < n {
		g := &Grant{s: s, mailbox: mailbox, conn: s.takeIdle(mailbox)}
		if g.conn == nil {
			h, err := s.takeSlot(ctx, mailbox)
			if err != nil {
				return grants, 0, err
			}
			if h == nil {
				return grants, slotRetry, nil
			}
			g.slot = h
		}
		token, wait, err := s.o.Limits.ReserveSend(ctx, mailbox, s.o.PerMinute, time.Minute, holds...)
		if err != nil || wait > 0 {
			g.send = ""
			g.Cancel()
			return grants, wait, err
		}
		g.send = token
		grants = append(grants, g)
	}
	return grants, 0, nil
}

// Cancel gives back a grant that no Send used.
func (g *Grant) Cancel() {
	if g == nil || g.s == nil {
		return
	}
	ctx := context.Background()
	if g.send != "" {
		_ = g.s.o.Limits.ReturnSend(ctx, g.mailbox, g.send)
	}
	g.release()
}

// release gives back the grant's connection or slot, keeping its send
// counted (a send happened, by another path).
func (g *Grant) release() {
	switch {
	case g.conn != nil:
		g.s.put(g.conn)
	case g.slot != nil:
		g.s.discard(g.slot)
	}
	g.s = nil
}

// Release gives back the grant's connection slot for a message that was
// sent without it (by Graph); its send stays counted.
func (g *Grant) Release() {
	if g != nil && g.s != nil {
		g.release()
	}
}
