package breaker

import (
	"context"
	"fmt"
	"testing"
	"time"
)

func enter(t *testing.T, s *Set, name, token string, retry bool) Attempt {
	t.Helper()
	return enterAt(t, s, name, token, "", retry)
}

func enterAt(t *testing.T, s *Set, name, token, member string, retry bool) Attempt {
	t.Helper()
	a, err := s.EnterAttempt(context.Background(), name, token, member, retry)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func exit(t *testing.T, s *Set, name, token string, o Outcome) time.Time {
	t.Helper()
	return exitAt(t, s, name, token, "", o)
}

// exitOnly gives a place back and reports whether a refusal was the
// member's alone, where the credential never worked.
func exitOnly(t *testing.T, s *Set, name, token, member string, o Outcome) bool {
	t.Helper()
	_, blame, err := s.ExitAttempt(context.Background(), name, token, member, o, "535 5.7.3 Authentication unsuccessful")
	if err != nil {
		t.Fatal(err)
	}
	return blame == BlameNewMember
}

func exitAt(t *testing.T, s *Set, name, token, member string, o Outcome) time.Time {
	t.Helper()
	at, _, err := s.ExitAttempt(context.Background(), name, token, member, o, "535 5.7.3 Authentication unsuccessful")
	if err != nil {
		t.Fatal(err)
	}
	return at
}

// TestAttemptsBoundRefusals: three replicas (threshold 3) ask for places
// for AUTHs together. Two first attempts get one and the third waits;
// after two refusals a retry with a new token takes the kept place, and
// a first attempt still waits for its verdict. A cure frees every place
// and is told to the next attempt. Refusals that reach the bound with
// nothing in doubt make every attempt Refused, with the last reply,
// until a breaker transition starts the count again.
func TestAttemptsBoundRefusals(t *testing.T) {
	sets, clk := replicas(t, 3, nil)
	a, b, c := sets[0], sets[1], sets[2]
	const name = "cred:contoso"
	if v := enter(t, a, name, "a1", false).Verdict; v != Go {
		t.Fatalf("first place: %v", v)
	}
	if v := enter(t, b, name, "b1", false).Verdict; v != Go {
		t.Fatalf("second place: %v", v)
	}
	if v := enter(t, c, name, "c1", false).Verdict; v != Wait {
		t.Fatalf("third first attempt: %v, want Wait (the last place is kept for a retry)", v)
	}
	exit(t, a, name, "a1", Failed)
	exit(t, b, name, "b1", Failed)
	if v := enter(t, a, name, "a2", true).Verdict; v != Go {
		t.Fatalf("retry with a new token after two refusals: %v, want Go", v)
	}
	if v := enter(t, b, name, "b2", true).Verdict; v != Wait {
		t.Fatalf("second retry while the first is in doubt: %v, want Wait", v)
	}
	if v := enter(t, c, name, "c2", false).Verdict; v != Wait {
		t.Fatalf("first attempt while a retry is in doubt: %v, want Wait, not Refused", v)
	}
	clk.Add(time.Second)
	cured := exit(t, a, name, "a2", Cured)
	got := enter(t, c, name, "c3", false)
	if got.Verdict != Go || !got.CuredAt.Equal(cured) {
		t.Fatalf("after a cure: %+v, want Go with CuredAt %v", got, cured)
	}
	exit(t, c, name, "c3", Succeeded)

	// Refused twice in a row with nothing in doubt: first attempts are
	// Refused; a retry may still take the last place.
	for i := range 2 {
		tok := fmt.Sprint("r", i)
		if v := enter(t, a, name, tok, false).Verdict; v != Go {
			t.Fatalf("attempt %d: %v", i, v)
		}
		exit(t, a, name, tok, Failed)
	}
	got = enter(t, b, name, "b3", false)
	if got.Verdict != Refused || got.Reply != "535 5.7.3 Authentication unsuccessful" {
		t.Fatalf("after two refusals: %+v, want Refused with the reply", got)
	}
	if v := enter(t, b, name, "b4", true).Verdict; v != Go {
		t.Fatalf("retry after two refusals: %v, want Go", v)
	}
	exit(t, b, name, "b4", Failed)
	if v := enter(t, c, name, "c4", true).Verdict; v != Refused {
		t.Fatalf("retry after three refusals: %v, want Refused", v)
	}

	// A transition starts the count again; an open breaker gives no
	// place (its probe, which takes none, decides).
	record(t, a, name, credErr)
	record(t, a, name, credErr)
	record(t, a, name, credErr)
	if st := status(t, a, name); st.State != Open {
		t.Fatalf("breaker %v, want open", st.State)
	}
	for i := range 5 {
		a := enter(t, c, name, fmt.Sprint("o", i), i%2 == 1)
		if a.Verdict != Held || a.Reply != credErr.Error() {
			t.Fatalf("open breaker, attempt %d: %v %q, want Held with the breaker's reason %q", i, a.Verdict, a.Reply, credErr.Error())
		}
	}
	if err := a.Reset(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	if v := enter(t, c, name, "c5", false).Verdict; v != Go {
		t.Fatalf("after a reset: %v, want Go", v)
	}
}

// TestAttemptPlaceLapses: a place kept by RenewAttempt stays taken past
// AttemptTTL; one whose holder stops renewing it (a killed process) is
// free again AttemptTTL after the last renewal.
func TestAttemptPlaceLapses(t *testing.T) {
	sets, clk := replicas(t, 1, func(_ int, o *Options) { o.Threshold = 2 })
	s := sets[0]
	const name = "cred:contoso"
	if v := enter(t, s, name, "dead", false).Verdict; v != Go {
		t.Fatalf("first place: %v", v)
	}
	if v := enter(t, s, name, "next", false).Verdict; v != Wait {
		t.Fatalf("second first attempt, threshold 2: %v, want Wait", v)
	}
	for range 3 {
		clk.Add(AttemptTTL / 2)
		if err := s.RenewAttempt(context.Background(), name, "dead"); err != nil {
			t.Fatal(err)
		}
	}
	if v := enter(t, s, name, "next", false).Verdict; v != Wait {
		t.Fatalf("a renewed place, 1.5 AttemptTTL on: %v, want Wait", v)
	}
	clk.Add(AttemptTTL + time.Millisecond)
	if v := enter(t, s, name, "next", false).Verdict; v != Go {
		t.Fatalf("after the place lapsed: %v, want Go", v)
	}
}

// TestAttemptStaleThenFresh: two cached tokens refused, and the retry
// that would test a new one ends without a verdict (a dropped
// connection): the next first attempt is told to use a new token rather
// than Refused; its refusal then makes attempts Refused. A success
// recorded on the breaker (a delivery on a connection already open)
// clears the refusals.
func TestAttemptStaleThenFresh(t *testing.T) {
	sets, _ := replicas(t, 1, nil)
	s := sets[0]
	const name = "cred:contoso"
	for _, tok := range []string{"a", "b"} {
		if v := enter(t, s, name, tok, false).Verdict; v != Go {
			t.Fatalf("first attempt %s: %v", tok, v)
		}
		exit(t, s, name, tok, FailedStale)
	}
	if v := enter(t, s, name, "retry", true).Verdict; v != Go {
		t.Fatalf("retry: %v", v)
	}
	exit(t, s, name, "retry", Neutral)
	if v := enter(t, s, name, "c", false).Verdict; v != GoFresh {
		t.Fatalf("after stale refusals and a retry without a verdict: %v, want GoFresh", v)
	}
	exit(t, s, name, "c", Failed)
	if v := enter(t, s, name, "d", false).Verdict; v != Refused {
		t.Fatalf("after the new token's refusal: %v, want Refused", v)
	}
	record(t, s, name, credErr)
	record(t, s, name, nil)
	if v := enter(t, s, name, "e", false).Verdict; v != Go {
		t.Fatalf("after a success on the breaker: %v, want Go", v)
	}
}

// TestAttemptRenewKeepsKey: renewing a place keeps the places' key
// alive, not only the place's score.
func TestAttemptRenewKeepsKey(t *testing.T) {
	sets, _ := replicas(t, 1, nil)
	s := sets[0]
	const name = "cred:contoso"
	if v := enter(t, s, name, "a", false).Verdict; v != Go {
		t.Fatal(v)
	}
	time.Sleep(AttemptTTL / 2)
	if err := s.RenewAttempt(context.Background(), name, "a"); err != nil {
		t.Fatal(err)
	}
	ttl, err := s.rdb.PTTL(context.Background(), placesKey(name)).Result()
	if err != nil || ttl < AttemptTTL*9/10 {
		t.Fatalf("the places' key expires in %v after a renewal (%v), want about %v", ttl, err, AttemptTTL)
	}
}

// TestAttemptsOneMemberRefused: a good credential refused at one member
// only (an app without permission on one mailbox). Its cached token and
// the retry with a new one are refused there; that member's next
// attempts get RefusedHere, which counts against it alone, while an
// attempt at another member takes the last place and tests the
// credential there. A success elsewhere clears the refusals. Refusals at
// two members make every attempt Refused, after no more than Threshold
// refusals, as with unnamed members.
func TestAttemptsOneMemberRefused(t *testing.T) {
	sets, _ := replicas(t, 2, nil)
	a, b := sets[0], sets[1]
	const name = "cred:contoso"
	if v := enterAt(t, a, name, "m1", "m", false).Verdict; v != Go {
		t.Fatalf("first attempt at m: %v", v)
	}
	exitAt(t, a, name, "m1", "m", FailedStale)
	if v := enterAt(t, a, name, "m2", "m", true).Verdict; v != Go {
		t.Fatalf("retry at m with a new token: %v, want Go", v)
	}
	exitAt(t, a, name, "m2", "m", Failed)
	for _, s := range []*Set{a, b} {
		for _, retry := range []bool{false, true} {
			got := enterAt(t, s, name, "m3", "m", retry)
			if got.Verdict != RefusedHere || got.Reply != "535 5.7.3 Authentication unsuccessful" {
				t.Fatalf("attempt at m (retry %v) after its two refusals: %+v, want RefusedHere with the reply", retry, got)
			}
		}
	}
	if v := enterAt(t, b, name, "x1", "x", false).Verdict; v != Go {
		t.Fatalf("first attempt at x after two refusals at m alone: %v, want Go (Refused before)", v)
	}
	if v := enterAt(t, b, name, "y1", "y", false).Verdict; v != Wait {
		t.Fatalf("attempt at y while x tests the credential: %v, want Wait", v)
	}
	exitAt(t, b, name, "x1", "x", Succeeded)
	if v := enterAt(t, a, name, "m4", "m", false).Verdict; v != Go {
		t.Fatalf("attempt at m after a success elsewhere: %v, want Go", v)
	}
	exitAt(t, a, name, "m4", "m", Failed)
	if v := enterAt(t, b, name, "y2", "y", false).Verdict; v != Go {
		t.Fatalf("attempt at y after one refusal at m: %v, want Go", v)
	}
	exitAt(t, b, name, "y2", "y", Failed)

	// Refused at two members: every attempt is Refused, at m too.
	if v := enterAt(t, a, name, "z1", "z", true).Verdict; v != Go {
		t.Fatalf("retry at z after refusals at m and y: %v, want Go (the last place)", v)
	}
	exitAt(t, a, name, "z1", "z", Failed)
	for _, member := range []string{"m", "y", "z", "w", ""} {
		if v := enterAt(t, b, name, "r", member, false).Verdict; v != Refused {
			t.Fatalf("attempt at %q after three refusals at three members: %v, want Refused", member, v)
		}
	}
}

// TestAttemptsMemberNeverWorked: once the credential worked at some
// members, a refusal at one it did not work at within a day is that
// member's alone (a mailbox added without the app's permission): not
// counted against the credential, so refusals at several such members do
// not open it, while they are at most half of the members it worked
// at. Past that, before any success, and a day after the last, every
// refusal counts.
func TestAttemptsMemberNeverWorked(t *testing.T) {
	sets, clk := replicas(t, 1, nil)
	s := sets[0]
	const name = "cred:contoso"
	try := func(token, member string, o Outcome) bool {
		t.Helper()
		if v := enterAt(t, s, name, token, member, false).Verdict; v != Go {
			t.Fatalf("attempt at %s: %v, want Go", member, v)
		}
		return exitOnly(t, s, name, token, member, o)
	}
	if try("a1", "a", Failed) {
		t.Fatal("a refusal before any success was taken as the member's alone")
	}
	const worked = 20
	for i := range worked {
		try(fmt.Sprint("w", i), fmt.Sprint("w", i), Succeeded)
	}
	for i := range worked / 2 {
		m := fmt.Sprint("n", i)
		for _, o := range []Outcome{FailedStale, Failed} { // the cached token, then a new one
			if !try(fmt.Sprint("t", i, o), m, o) {
				t.Fatalf("the refusal at %s (%v), where the credential never worked while it did at %d others, counted against it", m, o, worked)
			}
		}
	}
	if v := enterAt(t, s, name, "g1", "g", false).Verdict; v != Go {
		t.Fatalf("attempt at g after refusals at ten members it never worked at: %v, want Go", v)
	}
	exitAt(t, s, name, "g1", "g", Neutral)
	if try("n10", "n10", Failed) {
		t.Error("a refusal at an eleventh new member, past half of the 20 it worked at, was taken as the member's alone")
	}
	try("w0", "w0", Succeeded)
	if !try("n11", "n11", Failed) {
		t.Error("after a success, a refusal at a new member counted against the credential")
	}
	clk.Add(worksFor + time.Minute)
	if try("n12", "n12", Failed) {
		t.Error("a refusal a day after the last success was taken as the member's alone")
	}
}

// TestAttemptsOneMemberStale: when cached tokens were refused at one
// member, the test elsewhere uses a new token.
func TestAttemptsOneMemberStale(t *testing.T) {
	sets, _ := replicas(t, 1, nil)
	s := sets[0]
	const name = "cred:contoso"
	for _, tok := range []string{"m1", "m2"} {
		if v := enterAt(t, s, name, tok, "m", false).Verdict; v != Go {
			t.Fatalf("attempt %s at m: %v", tok, v)
		}
	}
	exitAt(t, s, name, "m1", "m", FailedStale)
	exitAt(t, s, name, "m2", "m", FailedStale)
	if v := enterAt(t, s, name, "m3", "m", true).Verdict; v != RefusedHere {
		t.Fatalf("retry at m after two refusals there: %v, want RefusedHere", v)
	}
	if v := enterAt(t, s, name, "x1", "x", false).Verdict; v != GoFresh {
		t.Fatalf("attempt at x after cached tokens refused at m: %v, want GoFresh", v)
	}
}

// TestAttemptsFewMembersRefused: two members the credential worked at
// lose the permission at once. The refusals at the second are its own
// (BlameFewMembers), both then get RefusedHere, and an attempt at a third
// tests the credential: a success clears the refusals. When the third is
// refused too, that refusal counts, and every attempt is Refused: 4
// refusals reached the upstream, 2×Threshold-2.
func TestAttemptsFewMembersRefused(t *testing.T) {
	sets, _ := replicas(t, 2, nil)
	a, b := sets[0], sets[1]
	const name = "cred:contoso"
	try := func(s *Set, token, member string, retry bool, o Outcome) Blame {
		t.Helper()
		if v := enterAt(t, s, name, token, member, retry).Verdict; v != Go {
			t.Fatalf("attempt %s at %s: %v, want Go", token, member, v)
		}
		_, blame, err := s.ExitAttempt(context.Background(), name, token, member, o, "535 5.7.3 Authentication unsuccessful")
		if err != nil {
			t.Fatal(err)
		}
		return blame
	}
	for i := range 5 {
		try(a, fmt.Sprint("w", i), fmt.Sprint("m", i), false, Succeeded)
	}
	for round, third := range []Outcome{Succeeded, Failed} {
		refusals := []struct {
			s      *Set
			token  string
			member string
			retry  bool
			o      Outcome
			want   Blame
		}{
			{a, "m1a", "m1", false, FailedStale, BlameCredential},
			{a, "m1b", "m1", true, Failed, BlameCredential},
			{b, "m2a", "m2", false, FailedStale, BlameFewMembers},
		}
		for _, r := range refusals {
			if got := try(r.s, fmt.Sprint(r.token, round), r.member, r.retry, r.o); got != r.want {
				t.Fatalf("round %d: refusal %s at %s taken as %v, want %v", round, r.token, r.member, got, r.want)
			}
		}
		for _, s := range []*Set{a, b} {
			for _, m := range []string{"m1", "m2"} {
				for _, retry := range []bool{false, true} {
					if got := enterAt(t, s, name, "x", m, retry); got.Verdict != RefusedHere || got.Reply != "535 5.7.3 Authentication unsuccessful" {
						t.Fatalf("round %d: attempt at %s (retry %v) after the refusals at m1 and m2: %+v, want RefusedHere", round, m, retry, got)
					}
				}
			}
		}
		if v := enterAt(t, b, name, fmt.Sprint("m3", round), "m3", false).Verdict; v != Go {
			t.Fatalf("round %d: attempt at m3 after refusals at m1 and m2 alone: %v, want Go", round, v)
		}
		if v := enterAt(t, a, name, "m4", "m4", false).Verdict; v != Wait {
			t.Fatalf("round %d: attempt at m4 while m3 tests the credential: %v, want Wait", round, v)
		}
		_, blame, err := b.ExitAttempt(context.Background(), name, fmt.Sprint("m3", round), "m3", third, "535 5.7.3 Authentication unsuccessful")
		if err != nil {
			t.Fatal(err)
		}
		if third == Succeeded {
			if v := enterAt(t, a, name, "m1c", "m1", false).Verdict; v != Go {
				t.Fatalf("attempt at m1 after a success at m3: %v, want Go", v)
			}
			exitAt(t, a, name, "m1c", "m1", Neutral)
			continue
		}
		if blame != BlameCredential {
			t.Fatalf("the refusal at a third member taken as %v, want it counted against the credential", blame)
		}
		for _, m := range []string{"m1", "m2", "m3", "m4", ""} {
			if v := enterAt(t, a, name, "r", m, false).Verdict; v != Refused {
				t.Fatalf("attempt at %q after refusals at three members it worked at: %v, want Refused", m, v)
			}
		}
	}
}
