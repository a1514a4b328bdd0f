package o365

import (
	"context"
	"errors"
	"testing"

	"holdfast/relay/upstream"
)

// TestAuthFlights: one session at a time holds a token's turn; a token
// that authenticated is forgotten, a refused one is remembered, and a
// turn that ended without a verdict is forgotten.
func TestAuthFlights(t *testing.T) {
	var a authFlights
	refused := &upstream.Error{Class: upstream.Credential, Code: 535, Enhanced: "5.7.3"}
	dialFailed := &upstream.Error{Class: upstream.Transient, Text: "connect", Err: errors.New("refused")}
	for _, tc := range []struct {
		name     string
		tokenOK  bool
		err      error
		remember bool
	}{
		{"works", true, nil, false},
		{"refused, a new token works", false, nil, true},
		{"refused, the new one too", false, refused, true},
		{"no verdict", false, dialFailed, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := "token " + tc.name
			f, lead := a.enter(tok)
			if !lead {
				t.Fatal("the first session did not get the turn")
			}
			g, lead := a.enter(tok)
			if lead || g != f {
				t.Fatal("a second session got a turn while one was in flight")
			}
			if other, lead := a.enter("another token"); !lead {
				t.Fatal("another token waited for this one's turn")
			} else {
				a.end("another token", other, true, nil)
			}
			a.end(tok, f, tc.tokenOK, tc.err)
			if err := g.wait(context.Background()); err != nil {
				t.Fatal(err)
			}
			if g.tokenOK != tc.tokenOK || g.err != tc.err {
				t.Fatalf("the waiting session saw %v, %v", g.tokenOK, g.err)
			}
			h, lead := a.enter(tok)
			if lead == tc.remember {
				t.Fatalf("after the turn: lead %v, want the token remembered %v", lead, tc.remember)
			}
			if lead {
				a.end(tok, h, true, nil)
			}
		})
	}
	// Waiting ends with ctx.
	f, _ := a.enter("slow")
	g, _ := a.enter("slow")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := g.wait(ctx); upstream.ClassOf(err) != upstream.Transient {
		t.Fatalf("a cancelled wait: %v", err)
	}
	a.end("slow", f, true, nil)
}
