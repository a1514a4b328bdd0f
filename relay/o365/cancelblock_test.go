package o365_test

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"

	"holdfast/queue"
	"holdfast/relay/o365"
)

// blockingSink refuses every message at the end of its data as Exchange
// refuses a mailbox it blocks for a while.
type blockingSink struct{}

func (blockingSink) NewSession(*smtp.Conn) (smtp.Session, error) { return &blockingSession{}, nil }

type blockingSession struct{ sinkSession }

func (*blockingSession) Data(r io.Reader) error {
	_, _ = io.Copy(io.Discard, r)
	return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 2, 251},
		Message: "Sender throttled due to continuous invalid recipients errors"}
}

// TestBlockedAsCancelled: Exchange's 550 5.2.251, read just as the send
// is cancelled (the relay stopping, or the message's lease lost), is
// still the answer: the block is reported to OnBlocked, so the fleet
// leaves the mailbox alone, and returned as it came, not as an
// interrupted send that another relay would try again into the block.
func TestBlockedAsCancelled(t *testing.T) {
	for _, pipelining := range []bool{true, false} {
		name := "pipelined"
		var hide []string
		if !pipelining {
			name, hide = "unpipelined", []string{"PIPELINING"}
		}
		t.Run(name, func(t *testing.T) {
			var mu sync.Mutex
			var blocked []string
			p := newProxy(t, serveSMTP(t, blockingSink{}), hide)
			s, err := o365.NewSMTPSender(o365.SMTPOptions{
				Addr:              p.ln.Addr().String(),
				InsecurePlaintext: true,
				PerMinute:         1000,
				Limits:            freeLimits{},
				Router: func(context.Context, *queue.Message) (o365.Route, error) {
					return o365.Route{Mailbox: "box@contoso.com", Tokens: fixedToken{}, Kind: o365.AppOnly}, nil
				},
				OnBlocked: func(_ context.Context, mailbox string, _ error) {
					mu.Lock()
					blocked = append(blocked, mailbox)
					mu.Unlock()
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			o365.SetAfterTransaction(t, cancel)
			_, err = s.Send(ctx, sinkMessage(1, "a@example.org"))
			if !errors.Is(err, o365.ErrMailboxBlocked) {
				t.Errorf("Send returned %v, want Exchange's block", err)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(blocked) != 1 || blocked[0] != "box@contoso.com" {
				t.Errorf("OnBlocked told of %q, want box@contoso.com once", blocked)
			}
		})
	}
}
