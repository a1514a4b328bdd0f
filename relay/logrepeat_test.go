package relay

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestRepeatHandler: a warning repeated word for word within 10 s is
// written once, and the next one written after that says how many were
// held back; lines that differ in an attribute, the logger's included,
// and lines below warning are all written.
func TestRepeatHandler(t *testing.T) {
	var buf bytes.Buffer
	h := newRepeatHandler(slog.NewJSONHandler(&buf, nil))
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	h.sample.now = func() time.Time { return now }
	log := slog.New(h)
	down := errors.New("dial tcp 127.0.0.1:6390: connect: connection refused")
	delivery, breakers := log.With("component", "delivery"), log.With("component", "breaker")
	for range 5 {
		delivery.Warn("cannot read due routes", "err", down)
		breakers.Warn("cannot read due routes", "err", down) // another logger
		delivery.Info("poll")
	}
	delivery.Warn("cannot read due routes", "err", errors.New("i/o timeout")) // another error
	delivery.Error("cannot read due routes", "err", down)                     // another level
	now = now.Add(9 * time.Second)
	delivery.Warn("cannot read due routes", "err", down)
	now = now.Add(time.Second)
	delivery.Warn("cannot read due routes", "err", down)

	type line struct {
		Level, Msg, Component, Err string
		Held                       int `json:"like_lines_held_back"`
	}
	var got []line
	for _, s := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var l line
		if err := json.Unmarshal([]byte(s), &l); err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		if l.Msg != "poll" {
			got = append(got, l)
		}
	}
	want := []line{
		{"WARN", "cannot read due routes", "delivery", down.Error(), 0},
		{"WARN", "cannot read due routes", "breaker", down.Error(), 0},
		{"WARN", "cannot read due routes", "delivery", "i/o timeout", 0},
		{"ERROR", "cannot read due routes", "delivery", down.Error(), 0},
		{"WARN", "cannot read due routes", "delivery", down.Error(), 5}, // 4 in the loop, 1 at 9 s
	}
	if len(got) != len(want) {
		t.Fatalf("%d lines written, want %d:\n%s", len(got), len(want), buf.String())
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if n := strings.Count(buf.String(), `"msg":"poll"`); n != 5 {
		t.Errorf("%d info lines written, want every one of 5", n)
	}
}
