package o365

import (
	"context"
	"errors"
	"testing"
	"time"

	"holdfast/relay/upstream"
)

// TestAuthFlights: one session at a time holds a token's turn; a token
// that authenticated is forgotten, a refused one is remembered for
// refusedMemory, and a turn that ended without a verdict is forgotten.
func TestAuthFlights(t *testing.T) {
	var a authFlights
	refused := &upstream.Error{Class: upstream.Credential, Code: 535, Enhanced: "5.7.3"}
	dialFailed := &upstream.Error{Class: upstream.Transient, Text: "connect", Err: errors.New("refused")}
	for _, tc := range []struct {
		name     string
		refused  bool
		err      error
		remember bool
	}{
		{"works", false, nil, false},
		{"refused, a new token works", true, nil, true},
		{"refused, the new one too", true, refused, true},
		{"refused, the token request too", true, &upstream.Error{Class: upstream.Credential, Code: 401}, true},
		{"no verdict", false, dialFailed, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := "token " + tc.name
			f, lead := a.enter(tok, "box1@contoso.com")
			if !lead {
				t.Fatal("the first session did not get the turn")
			}
			g, lead := a.enter(tok, "box1@contoso.com")
			if lead || g != f {
				t.Fatal("a second session got a turn while one was in flight")
			}
			if other, lead := a.enter("another token", "box1@contoso.com"); !lead {
				t.Fatal("another token waited for this one's turn")
			} else {
				a.end("another token", other, false, nil)
			}
			a.end(tok, f, tc.refused, tc.err)
			if err := g.wait(context.Background()); err != nil {
				t.Fatal(err)
			}
			if g.refused != tc.refused || g.err != tc.err {
				t.Fatalf("the waiting session saw %v, %v", g.refused, g.err)
			}
			h, lead := a.enter(tok, "box1@contoso.com")
			if lead == tc.remember {
				t.Fatalf("after the turn: lead %v, want the token remembered %v", lead, tc.remember)
			}
			if lead {
				a.end(tok, h, false, nil)
			}
			if tc.remember {
				// Remembered for refusedMemory, not longer.
				a.mu.Lock()
				f.at = f.at.Add(-refusedMemory - time.Second)
				a.mu.Unlock()
				if h, lead := a.enter(tok, "box1@contoso.com"); !lead {
					t.Fatal("a refused token remembered past refusedMemory")
				} else {
					a.end(tok, h, false, nil)
				}
			}
		})
	}
	// Waiting ends with ctx.
	f, _ := a.enter("slow", "box1@contoso.com")
	g, _ := a.enter("slow", "box1@contoso.com")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := g.wait(ctx); upstream.ClassOf(err) != upstream.Transient {
		t.Fatalf("a cancelled wait: %v", err)
	}
	a.end("slow", f, false, nil)
}
