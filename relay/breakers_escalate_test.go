package relay

import (
	"context"
	"testing"

	"holdfast/auth"
	"holdfast/breaker"
	"holdfast/relay/o365"
	"holdfast/relay/upstream"

	"golang.org/x/oauth2"
)

// TestDelegatedRejectionsEscalate: Exchange's 535 5.7.3 to delegated
// tokens of distinct mailboxes of one credential, in a row, opens the
// credential's breaker; repeats on one mailbox, other mailbox failures
// and failures broken by a success do not.
func TestDelegatedRejectionsEscalate(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	g := &gate{set: breaker.New(f.redis.Client(t), breaker.Options{}), q: f.queue, log: discardLogger(), escalate: 3}
	rejected := &upstream.Error{Class: upstream.Mailbox, Code: 535, Enhanced: "5.7.3", Text: "Authentication unsuccessful [AM0PR04CA0001]"}
	disabled := &upstream.Error{Class: upstream.Mailbox, Code: 535, Enhanced: "5.7.139", Text: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox."}
	route := func(mailbox string) string { return grantRoutePrefix + "contoso:" + mailbox }
	cred := func() breaker.Status {
		t.Helper()
		st, err := g.set.Status(ctx, "cred:contoso")
		if err != nil {
			t.Fatal(err)
		}
		return st
	}

	// One mailbox failing again and again opens only its own breaker.
	for range 3 {
		g.failed(ctx, route("alice@contoso.com"), rejected)
	}
	if st, _ := g.set.Status(ctx, "mbx:alice@contoso.com"); st.State != breaker.Open {
		t.Fatalf("alice's breaker: %+v, want open", st)
	}
	if st := cred(); st.State != breaker.Closed || st.Spread != 1 {
		t.Fatalf("credential after one mailbox: %+v", st)
	}
	// SMTP AUTH disabled on a mailbox is the mailbox's setting, and an
	// app-only route's 535 counts on the credential the usual way.
	g.failed(ctx, route("bob@contoso.com"), disabled)
	if st := cred(); st.State != breaker.Closed || st.Spread != 1 {
		t.Fatalf("5.7.139 joined the spread: %+v", st)
	}
	// A delivery under the credential breaks the row.
	g.failed(ctx, route("carol@contoso.com"), rejected)
	g.delivered(ctx, route("dave@contoso.com"))
	if st := cred(); st.State != breaker.Closed || st.Spread != 0 {
		t.Fatalf("after a delivery: %+v, want the spread cleared", st)
	}
	for _, m := range []string{"alice@contoso.com", "carol@contoso.com", "erin@contoso.com"} {
		g.failed(ctx, route(m), rejected)
	}
	st := cred()
	if st.State != breaker.Open || st.Reason != "3 mailboxes failed in a row (alice@contoso.com, carol@contoso.com, erin@contoso.com): 535 5.7.3 Authentication unsuccessful [AM0PR04CA0001]" {
		t.Fatalf("after three mailboxes in a row: %+v, want the credential open", st)
	}
	// App-only routes are not escalated: their 535 is already the
	// credential's.
	if o365.DelegatedTokenRefused(&upstream.Error{Class: upstream.Credential, Code: 535, Enhanced: "5.7.3"}) {
		t.Fatal("an app-only 535 counted as a delegated rejection")
	}
}

// refusingTokens is a token source that Entra refuses, counting requests.
type refusingTokens struct{ requests int }

func (r *refusingTokens) Token(context.Context) (*oauth2.Token, error) {
	r.requests++
	return nil, &auth.TokenError{HTTPStatus: 401, Code: "invalid_client", AADSTS: "AADSTS7000215", Description: "Invalid client secret provided."}
}

func (r *refusingTokens) Invalidate() {}

// TestRefusedCredentialsAskOncePerHold: after Entra refuses a credential,
// the sends already past the breaker check wait as throttled, without a
// request and without counting a failure, until the refusal is a
// refusalHold old or the files change.
func TestRefusedCredentialsAskOncePerHold(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	g := &gate{set: breaker.New(f.redis.Client(t), breaker.Options{}), q: f.queue, log: discardLogger(), escalate: 3}
	src := &refusingTokens{}
	const route = appRoutePrefix + "contoso:noreply@contoso.com"
	if _, err := g.token(ctx, route, src); upstream.ClassOf(err) != upstream.Transient || src.requests != 1 {
		// ClassOf of a bare *auth.TokenError: classified later, by o365.
		t.Fatalf("first request: %v, %d requests", err, src.requests)
	}
	_, err := g.token(ctx, route, src)
	if upstream.ClassOf(err) != upstream.Throttled || upstream.RetryAfterOf(err) <= 0 || src.requests != 1 {
		t.Fatalf("within the hold: %v (%v), %d requests; want throttled with no request", err, upstream.ClassOf(err), src.requests)
	}
	// Another credential is not held.
	if _, err := g.token(ctx, appRoutePrefix+"fabrikam:noreply@contoso.com", src); src.requests != 2 || upstream.ClassOf(err) == upstream.Throttled {
		t.Fatalf("another credential: %v, %d requests", err, src.requests)
	}
	g.forgetRefusals()
	if g.token(ctx, route, src); src.requests != 3 {
		t.Fatalf("after the files changed: %d requests, want 3", src.requests)
	}
}
