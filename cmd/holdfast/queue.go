package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"holdfast/queue"
	"holdfast/relay"
)

// loadConfig loads the configuration at path; a missing file's error says
// how to point at the right one.
func loadConfig(path string) (relay.Options, error) {
	o, err := relay.Load(path)
	if err == nil {
		return o, nil
	}
	// The configuration itself is missing, not a file it names.
	if _, serr := os.Stat(path); errors.Is(serr, os.ErrNotExist) {
		return relay.Options{}, fmt.Errorf("%w; point at the relays' configuration with --config FILE or $HOLDFAST_CONFIG (make run's is deploy/local/holdfast.dev.yaml)", err)
	}
	return relay.Options{}, err
}

// openRedis loads the configuration at path and connects to its Redis,
// for the operator commands.
func openRedis(path string) (relay.Options, redis.UniversalClient, error) {
	o, err := loadConfig(path)
	if err != nil {
		return relay.Options{}, nil, err
	}
	// go-redis logs failed dials on its own; the error that reaches the
	// operator says the same in one line.
	redis.SetLogger(quietLogger{})
	rdb := relay.RedisClient(o.Redis)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// A Redis that answers PING with an error (MISCONF while it cannot
	// write to its disk) still answers reads: the operator's view goes
	// on, and a command that writes gets Redis's own reason.
	if err := rdb.Ping(ctx).Err(); err != nil && !answered(err) {
		_ = rdb.Close()
		return relay.Options{}, nil, fmt.Errorf("redis %v (redis.addrs in %s) does not answer: %w; is it running, and is this the relays' configuration?",
			o.Redis.Addrs, path, err)
	}
	return o, rdb, nil
}

// answered reports whether err is Redis's own error reply, not a failure
// to reach it.
func answered(err error) bool {
	var reply redis.Error
	return errors.As(err, &reply)
}

// openQueue loads the configuration at path and returns its queue and
// the Redis client under it, which the caller closes.
func openQueue(path string) (*queue.Queue, redis.UniversalClient, error) {
	o, rdb, err := openRedis(path)
	if err != nil {
		return nil, nil, err
	}
	return queue.New(rdb, o.Queue.Options()), rdb, nil
}

// quietLogger discards go-redis's internal log.
type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

// noArgs parses flags and refuses positional arguments.
func noArgs(fs *flag.FlagSet, args []string) error {
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	return nil
}

// notFound turns the queue's "no such message" into a short error.
func notFound(id string, err error) error {
	if errors.Is(err, queue.ErrNotFound) {
		return fmt.Errorf("no such message %s", id)
	}
	return err
}

// statsJSON is one route's line of "queue stats --json"; the total has no
// route.
type statsJSON struct {
	Route            string     `json:"route,omitempty"`
	Ready            int64      `json:"ready"`
	Scheduled        int64      `json:"scheduled"`
	Sending          int64      `json:"sending"`
	Held             int64      `json:"held"`
	Dead             int64      `json:"dead"`
	Moving           int64      `json:"moving"` // messages of a move to another route cut half-way
	Oldest           *time.Time `json:"oldest,omitempty"`
	OldestAgeSeconds float64    `json:"oldest_age_seconds"`
	HoldReason       string     `json:"hold_reason,omitempty"`
	// Full: the route holds queue.max_messages_per_route messages, and
	// its new mail is refused.
	Full bool `json:"full"`
}

func toStatsJSON(s queue.RouteStats, now time.Time, bound int) statsJSON {
	j := statsJSON{
		Route: s.Route, Ready: s.Ready, Scheduled: s.Scheduled, Sending: s.Leased,
		Held: s.Held, Dead: s.Dead, Moving: s.Moving, HoldReason: s.HoldReason,
		OldestAgeSeconds: s.OldestAge(now).Seconds(), Full: s.Full(bound),
	}
	if !s.Oldest.IsZero() {
		t := s.Oldest.UTC()
		j.Oldest = &t
	}
	return j
}

func queueStats(ctx context.Context, e *env, fs *flag.FlagSet, args []string) error {
	config := configFlag(fs, e)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	q, rdb, err := openQueue(*config)
	if err != nil {
		return err
	}
	defer rdb.Close()
	st, err := q.Stats(ctx)
	if err != nil {
		return err
	}
	routes := make([]string, len(st.Routes))
	for i, r := range st.Routes {
		routes[i] = r.Route
	}
	waits, err := relay.MailboxWaits(ctx, rdb, routes, e.now)
	if err != nil {
		return err
	}
	now, bound := e.now(), q.Options().MaxPerRoute
	if *asJSON {
		out := struct {
			Routes       []statsJSON         `json:"routes"`
			Total        statsJSON           `json:"total"`
			MailboxWaits []relay.MailboxWait `json:"mailbox_waits"`
		}{Routes: []statsJSON{}, Total: toStatsJSON(st.Total, now, 0), MailboxWaits: waits}
		for _, r := range st.Routes {
			out.Routes = append(out.Routes, toStatsJSON(r, now, bound))
		}
		return writeJSON(e.stdout, out)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ROUTE\tREADY\tSCHEDULED\tSENDING\tHELD\tDEAD\tOLDEST")
	line := func(name string, s queue.RouteStats) {
		oldest := "-"
		if !s.Oldest.IsZero() {
			oldest = age(s.OldestAge(now))
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%s\n", name, s.Ready, s.Scheduled, s.Leased, s.Held, s.Dead, oldest)
	}
	empty := 0
	for _, r := range st.Routes {
		if r.Undelivered()+r.Dead+r.Moving == 0 {
			// Kept until pruned a day after its last mail: with hundreds
			// of mailboxes, the rows with mail would be lost among these.
			empty++
			continue
		}
		line(r.Route, r)
	}
	line("total", st.Total)
	if err := tw.Flush(); err != nil {
		return err
	}
	if empty > 0 {
		fmt.Fprintf(e.stdout, "%d routes with no mail not shown (--json lists every route)\n", empty)
	}
	for _, r := range st.Routes {
		if r.HoldReason != "" {
			fmt.Fprintf(e.stdout, "route %s is held: %s\n", r.Route, r.HoldReason)
		}
		if r.Moving > 0 {
			fmt.Fprintf(e.stdout, "route %s: %d messages stopped half-way in a move to another route; no relay sends them "+
				"until holdfast queue move --route %s --to ROUTE finishes it\n", r.Route, r.Moving, r.Route)
		}
		if r.Full(bound) {
			fmt.Fprintf(e.stdout, "route %s holds %d messages not yet delivered, queue.max_messages_per_route: "+
				"its new mail is refused (452 4.3.1, HTTP 429) until some leaves\n", r.Route, r.Undelivered())
		}
	}
	printMailboxWaits(e.stdout, waits, now, "")
	return nil
}

// messageJSON is a message as "queue list --json" and "queue show --json"
// print it. Times are omitted when not set.
type messageJSON struct {
	ID        string     `json:"id"`
	Route     string     `json:"route"`
	App       string     `json:"app"`
	State     string     `json:"state"`
	From      string     `json:"from"`
	To        []string   `json:"to"`
	Size      int        `json:"size"`
	Attempts  int        `json:"attempts"`
	Submitted *time.Time `json:"submitted,omitempty"`
	Expires   *time.Time `json:"expires,omitempty"`
	Due       *time.Time `json:"due,omitempty"`
	LeaseEnd  *time.Time `json:"lease_end,omitempty"`
	Updated   *time.Time `json:"updated,omitempty"`
	Done      *time.Time `json:"done,omitempty"`
	KeptUntil *time.Time `json:"kept_until,omitempty"`
	// LastReply is the upstream's last answer, as the HTTP API names it:
	// the 250 of a delivered message, else the last failure, which
	// LastError repeats.
	LastReply      string `json:"last_reply,omitempty"`
	LastError      string `json:"last_error,omitempty"`
	Reason         string `json:"reason,omitempty"`
	HoldReason     string `json:"hold_reason,omitempty"`
	IdempotencyKey string `json:"idempotency_key,omitempty"`
}

func toMessageJSON(m *queue.Message) messageJSON {
	t := func(v time.Time) *time.Time {
		if v.IsZero() {
			return nil
		}
		v = v.UTC()
		return &v
	}
	lastError, expires := m.LastError, t(m.Expires)
	if m.State == queue.Delivered {
		// Its lifetime no longer matters; kept_until says when its
		// record goes.
		lastError, expires = "", nil
	}
	return messageJSON{
		ID: m.ID, Route: m.Route, App: m.App, State: string(m.State), From: m.From, To: m.To,
		Size: m.Size, Attempts: m.Attempts,
		Submitted: t(m.Submitted), Expires: expires, Due: t(m.Due), LeaseEnd: t(m.LeaseEnd),
		Updated: t(m.Updated), Done: t(m.Done), KeptUntil: t(m.KeptUntil),
		LastReply: m.LastError, LastError: lastError, Reason: m.Reason, HoldReason: m.HoldReason, IdempotencyKey: m.IdempotencyKey,
	}
}

func queueList(ctx context.Context, e *env, fs *flag.FlagSet, args []string) error {
	config := configFlag(fs, e)
	route := fs.String("route", "", "the `ROUTE` to list (required)")
	stateName := fs.String("state", "", "the `STATE` to list (required): "+stateNames())
	offset := fs.Int("offset", 0, "skip the first `N` messages")
	limit := fs.Int("limit", 50, "list at most `N` messages")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	if *route == "" {
		return usagef("--route is required")
	}
	if *stateName == "" {
		return usagef("--state is required")
	}
	state, ok := queue.ParseState(*stateName)
	if !ok || !slices.Contains(queue.States, state) {
		return usagef("--state %q: messages can be listed by %s", *stateName, stateNames())
	}
	if *offset < 0 || *limit < 1 {
		return usagef("--offset must be at least 0 and --limit at least 1")
	}
	q, rdb, err := openQueue(*config)
	if err != nil {
		return err
	}
	defer rdb.Close()
	msgs, err := q.List(ctx, *route, state, *offset, *limit)
	if err != nil {
		return err
	}
	if *asJSON {
		out := make([]messageJSON, 0, len(msgs))
		for _, m := range msgs {
			out = append(out, toMessageJSON(m))
		}
		return writeJSON(e.stdout, out)
	}
	if len(msgs) == 0 {
		fmt.Fprintf(e.stdout, "no %s messages in route %s\n", state, *route)
		hintUnknownRoute(ctx, e, q, *route)
		return nil
	}
	now := e.now()
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAGE\tSIZE\tATTEMPTS\tFROM\tTO\tNOTE")
	for _, m := range msgs {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\n", m.ID, age(now.Sub(m.Submitted)), m.Size, m.Attempts,
			orNull(m.From), recipients(m.To), oneLine(note(m, now), 60))
	}
	return tw.Flush()
}

// note is the most useful thing to know about a listed message.
func note(m *queue.Message, now time.Time) string {
	switch {
	case m.State == queue.Dead:
		return m.Reason
	case m.State == queue.Held:
		return "held: " + m.HoldReason
	case m.State == queue.Leased:
		return "lease ends in " + age(m.LeaseEnd.Sub(now))
	case m.State == queue.Scheduled && m.LastError != "":
		return "next try in " + age(m.Due.Sub(now)) + ": " + m.LastError
	case m.State == queue.Scheduled:
		return "next try in " + age(m.Due.Sub(now))
	case m.State == queue.Moving:
		return "a move not finished: holdfast queue move --route " + m.Route + " --to ROUTE finishes it"
	}
	if m.LastError == "" {
		return "-"
	}
	return m.LastError
}

func queueShow(ctx context.Context, e *env, fs *flag.FlagSet, args []string) error {
	config := configFlag(fs, e)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("give exactly one message id")
	}
	id := pos[0]
	q, rdb, err := openQueue(*config)
	if err != nil {
		return err
	}
	defer rdb.Close()
	m, err := q.Get(ctx, id)
	if err != nil {
		return notFound(id, err)
	}
	if *asJSON {
		return writeJSON(e.stdout, toMessageJSON(m))
	}
	now := e.now()
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	field := func(name, value string) {
		if value != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", name, value)
		}
	}
	when := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		d := now.Sub(t)
		if d >= 0 {
			return fmt.Sprintf("%s (%s ago)", t.UTC().Format(time.RFC3339), age(d))
		}
		return fmt.Sprintf("%s (in %s)", t.UTC().Format(time.RFC3339), age(-d))
	}
	field("id", m.ID)
	field("state", string(m.State))
	field("route", m.Route)
	field("app", m.App)
	fmt.Fprintf(tw, "from:\t%s\n", orNull(m.From))
	field("to", strings.Join(m.To, ", "))
	field("size", fmt.Sprintf("%d bytes", m.Size))
	field("attempts", fmt.Sprint(m.Attempts))
	field("submitted", when(m.Submitted))
	if m.State == queue.Delivered {
		// Its lifetime no longer matters: its record, without the body,
		// goes queue.delivered_retention after delivery, as the relay
		// that delivered it set it.
		field("kept until", when(m.KeptUntil))
	} else {
		field("expires", when(m.Expires))
	}
	field("due", when(m.Due))
	field("lease ends", when(m.LeaseEnd))
	field("updated", when(m.Updated))
	field("done", when(m.Done))
	if m.State == queue.Delivered {
		// What the upstream said when it took the message.
		field("upstream reply", oneLine(m.LastError, 0))
	} else {
		field("last error", oneLine(m.LastError, 0))
	}
	field("reason", oneLine(m.Reason, 0))
	field("hold reason", oneLine(m.HoldReason, 0))
	field("idempotency key", m.IdempotencyKey)
	return tw.Flush()
}

// eachID opens the queue and runs do for every message id on the command
// line, reporting each result. It fails if any id failed.
func eachID(e *env, fs *flag.FlagSet, args []string, verb string, do func(q *queue.Queue, id string) error) error {
	config := configFlag(fs, e)
	ids, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(ids) == 0 {
		return usagef("give at least one message id")
	}
	q, rdb, err := openQueue(*config)
	if err != nil {
		return err
	}
	defer rdb.Close()
	failed := 0
	for _, id := range ids {
		if err := do(q, id); err != nil {
			fmt.Fprintf(e.stderr, "holdfast: queue %s: %v\n", verb, notFound(id, err))
			failed++
			continue
		}
		fmt.Fprintf(e.stdout, "%sd %s\n", verb, id)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d messages failed", failed, len(ids))
	}
	return nil
}

func queueRequeue(ctx context.Context, e *env, fs *flag.FlagSet, args []string) error {
	return eachID(e, fs, args, "requeue", func(q *queue.Queue, id string) error {
		return q.Requeue(ctx, id)
	})
}

func queueDelete(ctx context.Context, e *env, fs *flag.FlagSet, args []string) error {
	return eachID(e, fs, args, "delete", func(q *queue.Queue, id string) error {
		if err := q.Delete(ctx, id); err != nil {
			return fmt.Errorf("message %s: %w", id, notWhileMoving(err, "delete"))
		}
		return nil
	})
}

func queueFlush(ctx context.Context, e *env, fs *flag.FlagSet, args []string) error {
	config := configFlag(fs, e)
	route := fs.String("route", "", "flush only `ROUTE` (default: every route)")
	endWaits := fs.Bool("end-waits", false, "first end the waits Exchange or Graph asked of the routes' mailboxes, on every relay: once their cause is fixed")
	yes := fs.Bool("yes", false, "with --end-waits and no --route, end every mailbox's waits without asking")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	if *yes && !*endWaits {
		return usagef("--yes goes with --end-waits: a flush alone asks nothing")
	}
	if _, ok := relay.RouteMailbox(*route); *endWaits && *route != "" && !ok {
		return usagef("--end-waits: route %q sends as no Exchange mailbox (app:CREDENTIAL:MAILBOX or mbx:CREDENTIAL:MAILBOX)", *route)
	}
	q, rdb, err := openQueue(*config)
	if err != nil {
		return err
	}
	defer rdb.Close()
	routes := []string{*route}
	if *route == "" {
		if routes, err = q.Routes(ctx); err != nil {
			return err
		}
	}
	if *endWaits && *route == "" && !*yes {
		ok, err := confirmEndWaits(ctx, e, rdb, routes)
		if err != nil || !ok {
			return err
		}
	}
	if *endWaits {
		ended, err := relay.EndMailboxWaits(ctx, rdb, routes, e.now)
		for _, mw := range ended {
			fmt.Fprintf(e.stdout, "mailbox %s: wait ended (was until %s: %s)\n", mw.Mailbox, mw.Until.UTC().Format(time.RFC3339), mw.Why)
		}
		if err != nil {
			return err
		}
		if len(ended) == 0 {
			fmt.Fprintln(e.stdout, "no mailbox waited")
		}
	}
	total := 0
	for _, r := range routes {
		n, err := q.Flush(ctx, r)
		if err != nil {
			return err
		}
		total += n
		if n > 0 || len(routes) == 1 {
			fmt.Fprintf(e.stdout, "route %s: %d scheduled messages made due now\n", r, n)
		}
	}
	if len(routes) != 1 {
		fmt.Fprintf(e.stdout, "%d messages in %d routes made due now\n", total, len(routes))
	} else if total == 0 {
		hintUnknownRoute(ctx, e, q, *route)
	}
	// Nor does it release the routes an open breaker holds.
	if err := printHeldRoutes(ctx, e, q, *route); err != nil {
		return err
	}
	// A flush alone does not end the upstream's waits: say which mail
	// they hold.
	waits, err := relay.MailboxWaits(ctx, rdb, routes, e.now)
	if err != nil {
		return err
	}
	printMailboxWaits(e.stdout, waits, e.now(), "; its mail goes out then")
	if len(waits) > 0 && !*endWaits {
		fmt.Fprintln(e.stdout, "once the cause is fixed, queue flush --end-waits ends the waits on every relay")
	}
	return nil
}

// printHeldRoutes says, for each route held by an open breaker (route
// alone, unless it is ""), how many messages it holds and why.
func printHeldRoutes(ctx context.Context, e *env, q *queue.Queue, route string) error {
	st, err := q.Stats(ctx)
	if err != nil {
		return err
	}
	for _, rs := range st.Routes {
		if rs.Held > 0 && (route == "" || rs.Route == route) {
			fmt.Fprintf(e.stdout, "route %s: %d messages held (%s); a flush leaves them held: they go when the breaker closes (holdfast breaker status)\n",
				rs.Route, rs.Held, orDash(rs.HoldReason))
		}
	}
	return nil
}

// confirmEndWaits lists the mailboxes of routes that wait and asks
// whether to end every wait: one mailbox fixed and the --route left out
// would send the others' mail into their blocks. Without a terminal it
// refuses, as queue purge does. It reports whether to go on: true as
// well when nothing waits.
func confirmEndWaits(ctx context.Context, e *env, rdb redis.UniversalClient, routes []string) (bool, error) {
	waits, err := relay.MailboxWaits(ctx, rdb, routes, e.now)
	if err != nil || len(waits) == 0 {
		return err == nil, err
	}
	mailboxes := map[string]bool{}
	for _, w := range waits {
		mailboxes[w.Mailbox] = true
	}
	printMailboxWaits(e.stdout, waits, e.now(), "")
	which := fmt.Sprintf("%d mailboxes", len(mailboxes))
	if len(mailboxes) == 1 {
		which = "1 mailbox"
	}
	if !e.stdinTTY {
		return false, fmt.Errorf("the waits of %s would end on every relay; run again with --yes to end them all, "+
			"or give --route ROUTE to end one mailbox's", which)
	}
	if !askYes(e, fmt.Sprintf("end the waits of %s on every relay? Exchange blocks again a mailbox whose cause is not fixed.", which)) {
		fmt.Fprintln(e.stdout, "no wait ended, nothing flushed")
		return false, nil
	}
	return true, nil
}

// printMailboxWaits prints one line for each wait, then more.
func printMailboxWaits(w io.Writer, waits []relay.MailboxWait, now time.Time, more string) {
	for _, mw := range waits {
		fmt.Fprintf(w, "mailbox %s waits until %s (in %s): %s%s\n",
			mw.Mailbox, mw.Until.UTC().Format(time.RFC3339), age(mw.Until.Sub(now)), mw.Why, more)
	}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	// For a terminal or a script, not a web page.
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

func stateNames() string {
	names := make([]string, len(queue.States))
	for i, s := range queue.States {
		names[i] = string(s)
	}
	return strings.Join(names, ", ")
}

// age prints a duration to the second, shortened past an hour: "42s",
// "3m12s", "5h4m", "3d7h"; "0s" for zero or less.
func age(d time.Duration) string {
	d = d.Round(time.Second)
	switch {
	case d <= 0:
		return "0s"
	case d < time.Hour:
		return d.String()
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%dm", d/time.Hour, d%time.Hour/time.Minute)
	}
	days := d / (24 * time.Hour)
	return fmt.Sprintf("%dd%dh", days, (d-days*24*time.Hour)/time.Hour)
}

func orNull(from string) string {
	if from == "" {
		return "<>"
	}
	return from
}

// recipients prints the first recipient and how many more there are.
func recipients(to []string) string {
	switch len(to) {
	case 0:
		return ""
	case 1:
		return to[0]
	}
	return fmt.Sprintf("%s +%d", to[0], len(to)-1)
}

// oneLine folds s onto one line and cuts it to max runes (0: no limit).
func oneLine(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); max > 0 && len(r) > max {
		return string(r[:max-1]) + "…"
	}
	return s
}
