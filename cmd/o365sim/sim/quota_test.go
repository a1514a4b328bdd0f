package sim

import (
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// TestRecipientQuota: a mailbox sends to at most RecipientQuota
// recipients in a rolling 24 hours; the message that would go over gets
// 554 5.2.0 SubmissionQuotaExceededException and is not recorded, and
// room comes back as the oldest recipients leave the window.
func TestRecipientQuota(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.RecipientQuota = 3 })
	tok := f.appToken(t, appID, appSecret, outlookScope)
	c := f.dialTLS(t)
	if err := c.Auth(&xoauth2{user: alice, token: tok}); err != nil {
		t.Fatal(err)
	}
	send := func(id string, to ...string) error {
		return c.SendMail(alice, to, strings.NewReader(testMessage(alice, to[0], id)))
	}
	if err := send("<q1@test>", "a@fabrikam.com", "b@fabrikam.com"); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(time.Hour)
	if err := send("<q2@test>", "c@fabrikam.com"); err != nil {
		t.Fatal(err)
	}
	err := send("<q3@test>", "d@fabrikam.com")
	wantSMTPError(t, err, 554, smtp.EnhancedCode{5, 2, 0}, errQuotaExceeded.Message)
	if !strings.Contains(err.Error(), "SubmissionQuotaExceededException") || f.ReceivedCount() != 2 {
		t.Fatalf("over quota: %v, %d received", err, f.ReceivedCount())
	}
	// The first message's two recipients leave the window 24 h after it.
	f.clock.Add(23*time.Hour - time.Second)
	wantSMTPError(t, send("<q4@test>", "d@fabrikam.com"), 554, smtp.EnhancedCode{5, 2, 0}, errQuotaExceeded.Message)
	f.clock.Add(time.Second)
	if err := send("<q5@test>", "d@fabrikam.com", "e@fabrikam.com"); err != nil {
		t.Fatalf("after the oldest left the window: %v", err)
	}
	if f.ReceivedCount() != 3 {
		t.Fatalf("%d received, want 3", f.ReceivedCount())
	}
}

// TestRecipientQuotaClockBack: entries leave the window in time order,
// also after the clock went back and an entry is earlier than the one
// before it; and the count stays the sum of what is in the window.
func TestRecipientQuotaClockBack(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.RecipientQuota = 3 })
	m := &mailbox{address: "q@contoso.com"}
	if !f.takeQuota(m, 2) {
		t.Fatal("2 of 3 refused")
	}
	f.clock.Add(-2 * time.Hour)
	if !f.takeQuota(m, 1) || f.takeQuota(m, 1) {
		t.Fatal("the third recipient refused, or a fourth taken")
	}
	// 22 h after the first: the later-sent entry, 2 h earlier, has left.
	f.clock.Add(24 * time.Hour)
	if !f.takeQuota(m, 1) || f.takeQuota(m, 1) {
		t.Fatalf("after the earlier entry left: used %d of 3", m.used)
	}
	// 24 h after the first: it has left too.
	f.clock.Add(2 * time.Hour)
	if !f.takeQuota(m, 2) || f.takeQuota(m, 1) || m.used != 3 || len(m.sent) != 2 {
		t.Fatalf("after the first left: used %d in %d entries", m.used, len(m.sent))
	}
	// Many sends leave one by one from the front.
	m = &mailbox{address: "r@contoso.com"}
	for i := range 100 {
		f.clock.Add(quotaWindow / 2)
		if !f.takeQuota(m, 1) {
			t.Fatalf("send %d refused, used %d", i, m.used)
		}
	}
	if m.used != len(m.sent) || len(m.sent) > 2 {
		t.Fatalf("used %d in %d entries", m.used, len(m.sent))
	}
}

// TestResetClearsQuota: Reset gives every mailbox its whole recipient
// quota back, as it clears the other counters.
func TestResetClearsQuota(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.RecipientQuota = 1 })
	tok := f.appToken(t, appID, appSecret, outlookScope)
	send := func(id string) error {
		c := f.dialTLS(t)
		defer c.Close()
		if err := c.Auth(&xoauth2{user: alice, token: tok}); err != nil {
			t.Fatal(err)
		}
		return c.SendMail(alice, []string{"d@fabrikam.com"}, strings.NewReader(testMessage(alice, "d@fabrikam.com", id)))
	}
	if err := send("<r1@test>"); err != nil {
		t.Fatal(err)
	}
	wantSMTPError(t, send("<r2@test>"), 554, smtp.EnhancedCode{5, 2, 0}, errQuotaExceeded.Message)
	f.Reset()
	if err := send("<r3@test>"); err != nil {
		t.Fatalf("after Reset: %v", err)
	}
}
