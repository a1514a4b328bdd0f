package sim

import (
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

// TestSMTPMailboxSendAs: a mailbox sends as the senders it has SendAs on
// (an address or a whole @domain), envelope and From, and still not as
// anyone else.
func TestSMTPMailboxSendAs(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.Tenants[0].Mailboxes[0].SendAs = []string{"news@fabrikam.com", "@Sales.Contoso.com"}
	})
	tok := f.appToken(t, appID, appSecret, outlookScope)
	c := f.dialTLS(t)
	if err := c.Auth(&xoauth2{user: alice, token: tok}); err != nil {
		t.Fatal(err)
	}
	for i, from := range []string{"news@fabrikam.com", "bob@sales.contoso.com", "BOB@SALES.CONTOSO.COM", alice} {
		msg := testMessage(from, "dave@fabrikam.com", "<sendas"+string(rune('a'+i))+"@x>")
		if err := c.SendMail(from, []string{"dave@fabrikam.com"}, strings.NewReader(msg)); err != nil {
			t.Errorf("send as %s: %v", from, err)
		}
	}
	for _, from := range []string{"other@fabrikam.com", "bob@contoso.com", "x@notsales.contoso.com"} {
		err := c.SendMail(from, []string{"dave@fabrikam.com"}, strings.NewReader(testMessage(from, "dave@fabrikam.com", "<denied@x>")))
		wantSMTPError(t, err, 554, smtp.EnhancedCode{5, 2, 252},
			"SendAsDenied; "+alice+" not allowed to send as "+from+"; STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied")
	}
	if n := f.ReceivedCount(); n != 4 {
		t.Errorf("%d messages received, want 4", n)
	}
}
