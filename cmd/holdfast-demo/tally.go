package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// tally is the demo's outcome, the table it ends with.
type tally struct {
	Submitted  int // messages that got a 250
	Refused    int // submissions that did not
	Delivered  int // distinct submitted messages Exchange received
	Duplicates int // receptions beyond the first of a message
	Lost       int // submitted, never received, and not dead-lettered
	Bounced    int // dead letters: accepted, then given up on
	Foreign    int // received messages the demo never submitted
	// Wasted is the upstream requests that failed while the breaker was
	// open: token requests and SMTP AUTH attempts Microsoft refused.
	Wasted int
	// ToFirst and ToDrained run from the rotation to the first delivery
	// after it and to the last message delivered; Drained is false when
	// the backlog did not drain in time.
	ToFirst, ToDrained time.Duration
	Drained            bool
}

// count fills the message figures from the Message-IDs that got a 250,
// those Exchange received (one entry per reception) and the number of
// dead letters.
func count(accepted map[string]bool, received []string, dead int) tally {
	t := tally{Submitted: len(accepted), Bounced: dead}
	seen := map[string]int{}
	for _, id := range received {
		seen[id]++
	}
	for id, n := range seen {
		if !accepted[id] {
			t.Foreign++
			continue
		}
		t.Delivered++
		t.Duplicates += n - 1
	}
	t.Lost = max(0, t.Submitted-t.Delivered-t.Bounced)
	return t
}

// ok reports whether the claim holds: nothing refused, lost, duplicated,
// bounced or unknown, and the backlog drained.
func (t tally) ok() bool {
	return t.Refused == 0 && t.Lost == 0 && t.Duplicates == 0 && t.Bounced == 0 && t.Foreign == 0 && t.Drained
}

func (t tally) write(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	row := func(name string, v any, note string) { fmt.Fprintf(tw, "  %v\t  %s\t%s\n", v, name, note) }
	want0 := func(n int) string {
		if n == 0 {
			return ""
		}
		return "\t  <- must be 0"
	}
	row("submitted (250 OK)", t.Submitted, "")
	row("refused at submission", t.Refused, want0(t.Refused))
	row("delivered to Exchange", t.Delivered, "")
	row("duplicates", t.Duplicates, want0(t.Duplicates))
	row("lost", t.Lost, want0(t.Lost))
	row("bounced (dead letters)", t.Bounced, want0(t.Bounced))
	if t.Foreign > 0 {
		row("received but never submitted", t.Foreign, want0(t.Foreign))
	}
	row("upstream requests wasted while open", t.Wasted, "")
	row("seconds from rotation to first delivery", seconds(t.ToFirst, true), "")
	row("seconds from rotation to drained", seconds(t.ToDrained, t.Drained), "")
	return tw.Flush()
}

func seconds(d time.Duration, ok bool) string {
	if !ok {
		return "never"
	}
	return fmt.Sprintf("%.1f", d.Seconds())
}
