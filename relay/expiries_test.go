package relay

import (
	"testing"
	"time"
)

// TestExpiries: a key lasts until its latest end, is forgotten when read
// past it, and a bounded set drops ended keys before lasting ones.
func TestExpiries(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	var e expiries
	if d := e.left("a", t0); d != 0 {
		t.Fatalf("a key never set lasts %v", d)
	}
	if !e.extend("a", t0.Add(10*time.Second), t0) {
		t.Error("a new key reported as lasting already")
	}
	if e.extend("a", t0.Add(5*time.Second), t0.Add(time.Second)) {
		t.Error("a lasting key reported as new")
	}
	if d := e.left("a", t0.Add(time.Second)); d != 9*time.Second {
		t.Errorf("after a shorter extend, a lasts %v more, want 9s: an extend never shortens", d)
	}
	if !e.extend("a", t0.Add(20*time.Second), t0.Add(10*time.Second)) {
		t.Error("a key extended at its end reported as lasting")
	}
	if d := e.left("a", t0.Add(20*time.Second)); d != 0 || len(e.until) != 0 {
		t.Errorf("at its end a lasts %v more and %d keys are kept, want 0 and 0", d, len(e.until))
	}

	b := expiries{max: 3}
	b.extend("ended", t0.Add(time.Second), t0)
	b.extend("x", t0.Add(time.Minute), t0)
	b.extend("y", t0.Add(time.Minute), t0)
	b.extend("z", t0.Add(time.Minute), t0.Add(2*time.Second))
	if b.left("ended", t0) != 0 || b.left("x", t0.Add(2*time.Second)) == 0 || b.left("z", t0.Add(2*time.Second)) == 0 {
		t.Errorf("at the bound, the ended key was not the one dropped: %v", b.until)
	}
	b.extend("w", t0.Add(time.Minute), t0.Add(3*time.Second))
	if len(b.until) != 1 || b.left("w", t0.Add(3*time.Second)) == 0 {
		t.Errorf("at the bound with no key ended, the set did not start afresh with the new key: %v", b.until)
	}
	b.extend("w", t0.Add(2*time.Minute), t0.Add(3*time.Second))
	if len(b.until) != 1 {
		t.Errorf("extending a kept key made room: %v", b.until)
	}
}
