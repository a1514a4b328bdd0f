package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Exit statuses.
const (
	exitOK    = 0
	exitError = 1 // the command ran and failed
	exitUsage = 2 // the command line was wrong
)

// env is what one invocation reads from and writes to, so that tests can
// run commands in-process.
type env struct {
	stdin     io.Reader
	stdout    io.Writer
	stderr    io.Writer
	getenv    func(string) string
	stdinTTY  bool // stdin is a terminal: prompt before reading it
	stdoutTTY bool // stdout is a terminal: redraw progress in place
	now       func() time.Time
	// reload receives a value for each SIGHUP: re-read credential files.
	reload <-chan struct{}
}

// command is one subcommand. Path is its words after "holdfast".
type command struct {
	path     string
	synopsis string // the arguments after the path, for usage lines
	brief    string
	run      func(ctx context.Context, e *env, fs *flag.FlagSet, args []string) error
}

// commands is every subcommand, in the order the usage text lists them.
var commands = []*command{
	{path: "serve", synopsis: "[--config FILE] [--check-config]", brief: "run the relay until SIGINT or SIGTERM", run: serve},
	{path: "queue stats", synopsis: "[--json]", brief: "count messages per route and state", run: queueStats},
	{path: "queue list", synopsis: "--route R --state S [--offset N] [--limit N] [--json]", brief: "list a route's messages in one state", run: queueList},
	{path: "queue show", synopsis: "ID [--json]", brief: "show one message", run: queueShow},
	{path: "queue requeue", synopsis: "ID...", brief: "move dead letters back to the queue, due now", run: queueRequeue},
	{path: "queue delete", synopsis: "ID...", brief: "delete messages in any state", run: queueDelete},
	{path: "queue purge", synopsis: "[--route R] [--state S] [--yes]", brief: "delete every message of a route and/or a state, after a count and a confirmation", run: queuePurge},
	{path: "queue move", synopsis: "--route R --to R [--yes]", brief: "move the mail waiting on a route to another route, after a count and a confirmation", run: queueMove},
	{path: "queue flush", synopsis: "[--route R] [--end-waits [--yes]]", brief: "make scheduled messages due now, ignoring backoff; --end-waits first ends their mailboxes' waits on every relay (without --route, after a confirmation or --yes)", run: queueFlush},
	{path: "queue drain", synopsis: "[--route R] [--timeout D]", brief: "deliver everything queued now, ignoring backoff, and report what remains", run: queueDrain},
	{path: "breaker status", synopsis: "[--json]", brief: "show every auth breaker: state, since, reason, failures, next probe", run: breakerStatus},
	{path: "breaker trip", synopsis: "NAME...", brief: "open breakers by hand: their mail is held until reset or a successful probe", run: breakerTrip},
	{path: "breaker hold", synopsis: "NAME...", brief: "open breakers and keep them open, unprobed, until reset: their mail waits", run: breakerHold},
	{path: "breaker reset", synopsis: "[--forget] NAME...", brief: "close breakers by hand: their mail is released", run: breakerReset},
	{path: "breaker probe", synopsis: "[--wait 10s] NAME...", brief: "probe open breakers now, ignoring their interval, and print the results", run: breakerProbe},
	{path: "creds hash", synopsis: "", brief: "print the bcrypt password_hash of a password read on stdin", run: credsHash},
	{path: "creds token", synopsis: "", brief: "print a new HTTP bearer token and its token_sha256", run: credsToken},
	{path: "creds unblock", synopsis: "--ip ADDRESS | --user NAME", brief: "clear the failed-authentication count of a client IP or SMTP user, lifting its block", run: credsUnblock},
	{path: "creds check", synopsis: "[--within 30d] [--json]", brief: "print every credential's expiry, its source and days left, and test a live token request; fail within --within", run: credsCheck},
	{path: "creds rotate", synopsis: "[--print] CREDENTIAL", brief: "create a new client secret with Graph, write it to the secret directory and retire the old one after rotate_grace; --print shows it instead", run: credsRotate},
	{path: "creds devcert", synopsis: "--out DIR [--host H,...]", brief: "write a self-signed development certificate", run: credsDevcert},
	{path: "version", synopsis: "", brief: "print the version", run: printVersion},
}

// usageError is a command line that cannot run. reported is true when the
// flag package has already printed the problem and the usage.
type usageError struct {
	msg      string
	reported bool
}

func (e *usageError) Error() string { return e.msg }

// exitCodeError is a failure that exits with its own status rather than
// exitError, for scripts that tell failures apart.
type exitCodeError struct {
	code int
	err  error
}

func (e *exitCodeError) Error() string { return e.err.Error() }
func (e *exitCodeError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// run runs one command line (without the program name) and returns the
// exit status.
func run(ctx context.Context, args []string, e *env) int {
	if len(args) == 0 {
		writeUsage(e.stderr, "")
		return exitUsage
	}
	if isHelp(args[0]) {
		writeUsage(e.stdout, "")
		return exitOK
	}
	if args[0] == "--version" || args[0] == "-version" {
		args = append([]string{"version"}, args[1:]...)
	}
	c, rest := findCommand(args)
	if c == nil {
		group := args[0]
		switch meant := flagsFirst(args); {
		case meant != "":
			fmt.Fprintf(e.stderr, "holdfast: flags go after the command: %s\n", meant)
			return exitUsage
		case !isGroup(group):
			fmt.Fprintf(e.stderr, "holdfast: unknown command %q%s\n", group, didYouMean(group, commandWords("")))
			group = ""
		case len(args) > 1 && isHelp(args[1]):
			writeUsage(e.stdout, group)
			return exitOK
		case len(args) > 1:
			fmt.Fprintf(e.stderr, "holdfast: %s: unknown command %q%s\n", group, args[1], didYouMean(args[1], commandWords(group)))
		}
		writeUsage(e.stderr, group)
		return exitUsage
	}

	fs := flag.NewFlagSet("holdfast "+c.path, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		line := "usage: holdfast " + c.path
		if fs.Lookup("config") != nil && !strings.Contains(c.synopsis, "--config") {
			line += " [--config FILE]"
		}
		if c.synopsis != "" {
			line += " " + c.synopsis
		}
		fmt.Fprintf(fs.Output(), "%s\n\n%s.\n", line, c.brief)
		if hasFlags(fs) {
			fmt.Fprintln(fs.Output(), "\nflags:")
			fs.PrintDefaults()
		}
	}
	err := c.run(ctx, e, fs, rest)
	var (
		ue *usageError
		ce *exitCodeError
	)
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &ue):
		if !ue.reported {
			fmt.Fprintf(e.stderr, "holdfast: %s: %s\n", c.path, ue.msg)
			fs.Usage()
		}
		return exitUsage
	case errors.As(err, &ce):
		fmt.Fprintf(e.stderr, "holdfast: %s: %v\n", c.path, err)
		return ce.code
	default:
		fmt.Fprintf(e.stderr, "holdfast: %s: %v\n", c.path, err)
		return exitError
	}
}

// findCommand returns the command named by the first words of args and
// the arguments after them.
func findCommand(args []string) (*command, []string) {
	for _, c := range commands {
		words := strings.Fields(c.path)
		if len(args) >= len(words) && strings.Join(args[:len(words)], " ") == c.path {
			return c, args[len(words):]
		}
	}
	return nil, nil
}

// flagsFirst returns the command line args meant, with the flags moved
// after the command, when they start with flags given before a command
// (holdfast --config FILE queue stats); otherwise "".
func flagsFirst(args []string) string {
	if len(args) == 0 || !strings.HasPrefix(args[0], "-") {
		return ""
	}
	for i := 1; i < len(args); i++ {
		if c, rest := findCommand(args[i:]); c != nil {
			line := []string{"holdfast", c.path}
			for _, a := range append(append([]string(nil), args[:i]...), rest...) {
				line = append(line, shellQuote(a))
			}
			return strings.Join(line, " ")
		}
	}
	return ""
}

// shellQuote quotes a for a shell when it holds anything but letters,
// digits and ./:=@%+,_-.
func shellQuote(a string) string {
	plain := a != "" && strings.IndexFunc(a, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("./:=@%+,_-", r))
	}) < 0
	if plain {
		return a
	}
	return "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
}

// commandWords are the words that may follow group ("" for the first
// word of a command line): the commands and groups there.
func commandWords(group string) []string {
	var out []string
	for _, c := range commands {
		rest := c.path
		if group != "" {
			var ok bool
			if rest, ok = strings.CutPrefix(c.path, group+" "); !ok {
				continue
			}
		}
		if w, _, _ := strings.Cut(rest, " "); !slices.Contains(out, w) {
			out = append(out, w)
		}
	}
	return out
}

// didYouMean is "; did you mean X?" for the words near word, or "".
func didYouMean(word string, words []string) string {
	near := nearest(word, words)
	if len(near) == 0 {
		return ""
	}
	return "; did you mean " + strings.Join(near, " or ") + "?"
}

func isGroup(name string) bool {
	for _, c := range commands {
		if strings.HasPrefix(c.path, name+" ") {
			return true
		}
	}
	return false
}

func isHelp(arg string) bool {
	return arg == "help" || arg == "-h" || arg == "-help" || arg == "--help"
}

// writeUsage prints the command list, or only a group's commands.
func writeUsage(w io.Writer, group string) {
	if group == "" {
		fmt.Fprint(w, "Holdfast is an outbound mail relay for Microsoft 365.\n\nusage: holdfast COMMAND [flags] [args]\n\ncommands:\n")
	} else {
		fmt.Fprintf(w, "usage: holdfast %s COMMAND [flags] [args]\n\ncommands:\n", group)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	for _, c := range commands {
		if group == "" || strings.HasPrefix(c.path, group+" ") {
			fmt.Fprintf(tw, "  %s\t%s\n", c.path, c.brief)
		}
	}
	tw.Flush()
	fmt.Fprint(w, `
Every command but creds hash, creds token, creds devcert and version reads
the relays' configuration from --config FILE (default: $HOLDFAST_CONFIG,
else ./holdfast.yaml).
Run "holdfast COMMAND -h" for a command's arguments and flags.
`)
}

func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

// parseArgs parses flags that may come before, between or after the
// positional arguments, and returns the positional ones. Everything after
// "--" is positional.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, &usageError{msg: err.Error(), reported: true}
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if len(rest) < len(args) && args[len(args)-len(rest)-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// configFlag adds --config, whose default is $HOLDFAST_CONFIG or
// ./holdfast.yaml.
func configFlag(fs *flag.FlagSet, e *env) *string {
	def := e.getenv("HOLDFAST_CONFIG")
	if def == "" {
		def = "holdfast.yaml"
	}
	return fs.String("config", def, "configuration `FILE`; $HOLDFAST_CONFIG sets the default")
}

func printVersion(_ context.Context, e *env, fs *flag.FlagSet, args []string) error {
	if err := noArgs(fs, args); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "holdfast %s\n", version)
	return nil
}

// askYes asks question on the terminal, with " [y/N] " after it, and
// reports whether the answer was y or yes.
func askYes(e *env, question string) bool {
	fmt.Fprintf(e.stdout, "%s [y/N] ", question)
	answer, _ := bufio.NewReader(e.stdin).ReadString('\n')
	a := strings.ToLower(strings.TrimSpace(answer))
	return a == "y" || a == "yes"
}
