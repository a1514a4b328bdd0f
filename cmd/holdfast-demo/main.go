// Command holdfast-demo replays the February 2025 incident against the
// Exchange Online simulator, in about a minute and a half, and says what
// happens as it happens.
//
// It starts a Redis of its own on a free loopback port, the simulator (in
// this process) and two "holdfast serve" replicas. An application submits
// mail to both; the client secret expires at Entra ID (AADSTS7000222);
// the auth breaker opens and the relays hold the mail they keep
// accepting; the operator rotates the secret file and the breaker closes
// without a restart; the backlog drains. It ends with a table of what was
// submitted, delivered, duplicated, lost and bounced, and exits 1 if
// anything was lost, duplicated, bounced or refused.
//
// Everything it starts it stops by PID, relays first, also on Ctrl-C.
// Run it with "make demo", which builds bin/holdfast first.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

func main() {
	holdfast := flag.String("holdfast", "bin/holdfast", "the holdfast `binary` to run as the relays")
	short := flag.Bool("short", false, "a shorter run with fewer messages (used by the tests)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	p := fullPlan
	if *short {
		p = shortPlan
	}
	code := run(ctx, os.Stdout, p, *holdfast)
	stop()
	os.Exit(code)
}

// Exit statuses.
const (
	exitOK     = 0
	exitFailed = 1 // something was lost, duplicated, bounced or refused
	exitError  = 2 // the demo could not run
)

// run plays the demo and returns the exit status.
func run(ctx context.Context, out io.Writer, p plan, holdfast string) int {
	if _, err := os.Stat(holdfast); err != nil {
		fmt.Fprintf(os.Stderr, "holdfast-demo: %v (build it first: make build)\n", err)
		return exitError
	}
	d := &demo{out: &lockedWriter{w: out}, plan: p, holdfast: holdfast}
	t, err := d.play(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "\nholdfast-demo: %v\n", err)
		return exitError
	}
	if !t.ok() {
		fmt.Fprintln(out, "\nFAILED: the relays lost, duplicated, bounced or refused mail, or did not drain.")
		return exitFailed
	}
	fmt.Fprintln(out, "\nNothing lost, nothing duplicated, nothing bounced.")
	return exitOK
}

// lockedWriter serialises the writes of the narration and of the live
// counts.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
