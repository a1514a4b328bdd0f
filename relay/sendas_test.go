package relay

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// TestSenderWithoutMailboxRefused: a sender the app's senders allow
// (@contoso.com) but that no mailbox sends as (not the app's mailbox
// noreply@, not mapped, no grant) is refused at MAIL FROM with 550 5.7.60
// and at POST with 403, instead of being accepted and dead-lettered with
// Exchange's SendAsDenied. Mapped senders and the app's mailbox still go.
func TestSenderWithoutMailboxRefused(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	r := e.relays[0]

	c, err := smtp.Dial(r.SMTPAddrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", crmUser, crmPassword)); err != nil {
		t.Fatal(err)
	}
	err = c.Mail("anyone@contoso.com", nil)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 60}) ||
		!strings.Contains(se.Message, "no mailbox of this application sends as anyone@contoso.com") ||
		!strings.Contains(se.Message, "sender_mailboxes") {
		t.Fatalf("MAIL FROM:<anyone@contoso.com>: %v, want 550 5.7.60 saying no mailbox sends as it", err)
	}
	// The session goes on: a mapped sender and the app's mailbox are
	// accepted and delivered.
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	e.submit(t, 0, "billing@contoso.com", "x@example.org", exchangeMessage(1, "billing@contoso.com"))
	e.submit(t, 0, "noreply@contoso.com", "x@example.org", exchangeMessage(2, "noreply@contoso.com"))
	waitFor(t, 10*time.Second, "both delivered", func() bool { return e.sim.ReceivedCount() == 2 })

	// HTTP: 403 with the same reason, and nothing stored.
	req, _ := http.NewRequest("POST", "http://"+r.HTTPAddr()+"/v1/messages?from=anyone@contoso.com&to=x@example.org",
		strings.NewReader("Subject: hi\r\n\r\nbody\r\n"))
	req.Header.Set("Authorization", "Bearer "+crmToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "sender_not_permitted") ||
		!strings.Contains(string(body), "5.7.60") || !strings.Contains(string(body), "no mailbox of this application sends as anyone@contoso.com") {
		t.Fatalf("POST from anyone@contoso.com: %d %s, want 403 sender_not_permitted with the reason", resp.StatusCode, body)
	}
	st, err := e.f.queue.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Total.Dead != 0 || st.Total.Ready+st.Total.Scheduled+st.Total.Held != 0 {
		t.Errorf("the queue holds %+v; want nothing stored for the refused sender", st.Total)
	}
}
