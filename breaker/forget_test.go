package breaker

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestForgottenBreakerMadeAnew: a breaker forgotten (holdfast breaker
// reset --forget) while relays still use it starts a new record at
// generation 1 when it opens again. The relays that had seen the old
// record's later generations see the new one, and the relay that opens it
// names it again, so that the command line lists it.
func TestForgottenBreakerMadeAnew(t *testing.T) {
	var mu sync.Mutex
	var seen []Transition
	sets, clk := replicas(t, 3, func(i int, o *Options) {
		if i == 1 {
			o.OnTransition = func(tr Transition) {
				mu.Lock()
				seen = append(seen, tr)
				mu.Unlock()
			}
		}
	})
	relay, other, cli := sets[0], sets[1], sets[2]
	ctx := context.Background()
	const name = "cred:contoso"
	fresh := func() {
		t.Helper()
		clk.Add(time.Second)
		for _, s := range []*Set{relay, other} {
			if _, err := s.Fresh(ctx, name); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := relay.Trip(ctx, name, "test"); err != nil {
		t.Fatal(err)
	}
	fresh()
	if err := cli.Reset(ctx, name); err != nil {
		t.Fatal(err)
	}
	fresh()
	if err := cli.Forget(ctx, name); err != nil {
		t.Fatal(err)
	}
	fresh()
	if err := relay.Trip(ctx, name, "test again"); err != nil {
		t.Fatal(err)
	}
	fresh()

	if st := other.Cached(name); st.State != Open || st.Generation != 1 {
		t.Errorf("the other relay holds the breaker as %v at generation %d, want open at 1 (the new record)", st.State, st.Generation)
	}
	mu.Lock()
	var got []string
	for _, tr := range seen {
		got = append(got, tr.To.String())
	}
	mu.Unlock()
	if want := []string{"open", "closed", "open"}; !slices.Equal(got, want) {
		t.Errorf("the other relay saw transitions %v, want %v", got, want)
	}
	list, err := New(cli.rdb, Options{Now: clk.Now}).List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(list, func(st Status) bool { return st.Name == name && st.State == Open }) {
		t.Errorf("a new Set (the command line) lists %v, want %s open: the relay that opened it again did not name it", list, name)
	}
}

// TestReadLeavesNoTrace: reading a breaker that has no record (an
// operator's look at a mailbox no route uses) does not add it to what the
// Set lists.
func TestReadLeavesNoTrace(t *testing.T) {
	sets, _ := replicas(t, 1, nil)
	s := sets[0]
	ctx := context.Background()
	if st, err := s.Status(ctx, "mbx:nobody@example.com"); err != nil || st.State != Closed {
		t.Fatalf("Status = %+v, %v; want closed", st, err)
	}
	list, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 0 {
		t.Errorf("List = %v after reading a breaker with no record, want none", list)
	}
}
