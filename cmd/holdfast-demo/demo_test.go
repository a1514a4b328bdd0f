package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestCount(t *testing.T) {
	accepted := map[string]bool{"<a>": true, "<b>": true, "<c>": true, "<d>": true, "<e>": true}
	tests := []struct {
		name     string
		received []string
		dead     int
		want     tally
	}{
		{"every message once", []string{"<a>", "<b>", "<c>", "<d>", "<e>"}, 0,
			tally{Submitted: 5, Delivered: 5}},
		{"one twice, one missing", []string{"<a>", "<b>", "<b>", "<c>", "<d>"}, 0,
			tally{Submitted: 5, Delivered: 4, Duplicates: 1, Lost: 1}},
		{"a dead letter is bounced, not lost", []string{"<a>", "<b>", "<c>", "<d>"}, 1,
			tally{Submitted: 5, Delivered: 4, Bounced: 1}},
		{"a message never submitted", []string{"<a>", "<b>", "<c>", "<d>", "<e>", "<x>"}, 0,
			tally{Submitted: 5, Delivered: 5, Foreign: 1}},
		{"nothing delivered", nil, 0, tally{Submitted: 5, Lost: 5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := count(accepted, tt.received, tt.dead)
			if got != tt.want {
				t.Errorf("count = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestTallyOK(t *testing.T) {
	good := tally{Submitted: 3, Delivered: 3, Drained: true}
	if !good.ok() {
		t.Errorf("%+v: not ok", good)
	}
	for _, bad := range []tally{
		{Submitted: 3, Delivered: 2, Lost: 1, Drained: true},
		{Submitted: 3, Delivered: 3, Duplicates: 1, Drained: true},
		{Submitted: 3, Delivered: 2, Bounced: 1, Drained: true},
		{Submitted: 3, Delivered: 3, Refused: 1, Drained: true},
		{Submitted: 3, Delivered: 3, Foreign: 1, Drained: true},
		{Submitted: 3, Delivered: 3},
	} {
		if bad.ok() {
			t.Errorf("%+v: ok, want a failure", bad)
		}
	}
}

func TestMaxInWindow(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(secs ...float64) []time.Time {
		var ts []time.Time
		for _, s := range secs {
			ts = append(ts, t0.Add(time.Duration(s*float64(time.Second))))
		}
		return ts
	}
	tests := []struct {
		ts   []time.Time
		want int
	}{
		{nil, 0},
		{at(0), 1},
		{at(0, 1, 2, 60, 61), 3},     // 0 and 60 are a full window apart
		{at(0, 30, 59.9, 60, 89), 4}, // 30, 59.9, 60 and 89
	}
	for _, tt := range tests {
		if got := maxInWindow(tt.ts, time.Minute); got != tt.want {
			t.Errorf("maxInWindow(%v) = %d, want %d", tt.ts, got, tt.want)
		}
	}
}

// TestDemoShort plays the short demo against a freshly built holdfast:
// two relays, a Redis of its own, the secret expiring and rotated. It
// must end with nothing lost, duplicated or bounced, say so in its table,
// and leave none of the processes it started running.
func TestDemoShort(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "holdfast")
	build := exec.Command("go", "build", "-o", bin, "holdfast/cmd/holdfast")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build holdfast: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var out bytes.Buffer
	code := run(ctx, &out, shortPlan, bin)
	text := out.String()
	if code != exitOK {
		t.Fatalf("exit status %d, want 0:\n%s", code, text)
	}
	for _, want := range []string{
		`OPENED`, `AADSTS7000222`, `holdfast breaker status`, `cred:contoso +open`, `CLOSED`,
		`\n +[1-9][0-9]* +submitted`, `\n +0 +duplicates`, `\n +0 +lost`, `\n +0 +bounced \(dead letters\)`,
		`Nothing lost`,
	} {
		if !regexp.MustCompile(want).MatchString(text) {
			t.Errorf("the output lacks %q:\n%s", want, text)
		}
	}
	// Every PID it printed is gone.
	for _, line := range strings.Split(text, "\n") {
		var name string
		var pid int
		if n, _ := fmt.Sscanf(strings.TrimSpace(line), "%s pid %d", &name, &pid); n == 2 {
			if p, err := os.FindProcess(pid); err == nil && p.Signal(nil) == nil && !zombie(pid) {
				t.Errorf("%s (pid %d) still runs after the demo", name, pid)
			}
		}
	}
}

// zombie reports whether the process has exited but not been reaped.
func zombie(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && strings.Contains(string(stat), ") Z ")
}
