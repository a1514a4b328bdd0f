package relay

import (
	"context"
	"sync/atomic"
	"testing"
)

// fakeGrants is a grant index with a lookup counter.
type fakeGrants struct {
	grants  map[string]string
	lookups atomic.Int32
}

func (f *fakeGrants) GrantCredential(_ context.Context, mailbox string) (string, bool, error) {
	f.lookups.Add(1)
	cred, ok := f.grants[mailbox]
	return cred, ok, nil
}

func TestExchangeRouting(t *testing.T) {
	app := &App{Name: "crm", Credential: "contoso", Mailbox: "noreply@contoso.com",
		SenderMailboxes: map[string]string{"billing@contoso.com": "billing@contoso.com", "@sales.contoso.com": "sales@contoso.com"}}
	g := &fakeGrants{grants: map[string]string{"alice@contoso.com": "contoso-delegated"}}
	r := newExchangeRouting(g)
	for _, tc := range []struct{ from, want string }{
		{"Alice@Contoso.com", "mbx:contoso-delegated:alice@contoso.com"},
		{"billing@contoso.com", "app:contoso:billing@contoso.com"},
		{"BILLING@contoso.com", "app:contoso:billing@contoso.com"},
		{"bob@sales.contoso.com", "app:contoso:sales@contoso.com"},
		{"NoReply@contoso.com", "app:contoso:noreply@contoso.com"},
	} {
		got, err := r.route(context.Background(), app, tc.from)
		if err != nil || got != tc.want {
			t.Errorf("route(%s) = %q, %v; want %q", tc.from, got, err, tc.want)
		}
		delegated, cred, mbx, ok := parseRoute(got)
		if !ok || cred == "" || mbx == "" || delegated != (got[:4] == "mbx:") {
			t.Errorf("parseRoute(%q) = %v %q %q %v", got, delegated, cred, mbx, ok)
		}
	}
	// A sender that is neither mapped, nor granted, nor the app's mailbox
	// has no mailbox to send it: Exchange would refuse it (SendAsDenied).
	if got, err := r.route(context.Background(), app, "anyone@contoso.com"); err == nil {
		t.Errorf("route(anyone@contoso.com) = %q, want a no-mailbox error", got)
	} else if _, ok := asNoMailbox(err); !ok {
		t.Errorf("route(anyone@contoso.com): %v, want a *noMailboxError", err)
	}
	// Lookups are cached: routing the same senders again asks nothing.
	before := g.lookups.Load()
	r.route(context.Background(), app, "alice@contoso.com")
	r.route(context.Background(), app, "anyone@contoso.com")
	if g.lookups.Load() != before {
		t.Errorf("cached lookups went to the index again")
	}
	r.forget("alice@contoso.com")
	r.route(context.Background(), app, "alice@contoso.com")
	if g.lookups.Load() != before+1 {
		t.Errorf("forget did not drop the cached lookup")
	}
	if _, _, _, ok := parseRoute("crm"); ok {
		t.Error("a dir-sender route parsed as an exchange route")
	}
}

// TestSenderMailboxFoldsASCIIOnly: a sender's letters are matched against
// sender_mailboxes with ASCII case folding only, as the sender check
// does: a KELVIN SIGN (which Unicode lower-cases to "k") is not the
// mailbox spelled with "k".
func TestSenderMailboxFoldsASCIIOnly(t *testing.T) {
	app := &App{Mailbox: "noreply@contoso.com", SenderMailboxes: map[string]string{
		"Kim@Contoso.com": "kim@contoso.com",
		"@contoso.com":    "shared@contoso.com",
	}}
	for _, tc := range []struct{ from, want string }{
		{"KIM@contoso.COM", "kim@contoso.com"},
		{"\u212Aim@contoso.com", "shared@contoso.com"},
	} {
		if got, ok := senderMailbox(app, tc.from); !ok || got != tc.want {
			t.Errorf("senderMailbox(%q) = %q, %v; want %q", tc.from, got, ok, tc.want)
		}
	}
	if got, ok := senderMailbox(&App{Mailbox: "kim@contoso.com"}, "\u212Aim@contoso.com"); ok {
		t.Errorf("the app's mailbox matched a KELVIN SIGN sender: %q", got)
	}
}
