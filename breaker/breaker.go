package breaker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
)

// State is a breaker's fleet-wide state.
type State int

// The breaker states. There is no half-open state in the record: while
// open, the single prober holds a lease instead.
const (
	Closed State = iota
	Open
)

func (s State) String() string {
	if s == Open {
		return "open"
	}
	return "closed"
}

// MarshalText writes "closed" or "open".
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads "closed" or "open".
func (s *State) UnmarshalText(b []byte) error {
	switch string(b) {
	case "open":
		*s = Open
	case "closed":
		*s = Closed
	default:
		return fmt.Errorf("breaker: unknown state %q", b)
	}
	return nil
}

// Options configure a Set. The zero value of each field is its default.
type Options struct {
	Threshold    int           // consecutive counted failures, fleet-wide, that open a breaker; default 3
	OpenInterval time.Duration // wait before the first probe; default 30s
	MaxInterval  time.Duration // cap of the doubling open interval; default 5m
	ProbeLease   time.Duration // how long a probe is held without RenewProbe; default 10s
	Poll         time.Duration // how often cached records are re-read; default 500ms

	// Now is the clock; default time.Now. Every replica's clock is used
	// for the times in the shared record, so replicas need synchronised
	// clocks (to well under the open interval).
	Now func() time.Time
	// OnTransition, if set, is called once for each generation change
	// this Set sees, from Record, Trip, Reset, ProbeResult, Allow, Fresh
	// or Watch.
	OnTransition func(Transition)
	// OnMade, if set, is called once per transition across the fleet
	// (webhooks go from there): by the replica whose script made it, or,
	// when that replica lost the script's reply, by the first other
	// replica to see it. When Redis does not answer the claim, the
	// replica calls it anyway: a transition may then be told twice, with
	// the same ID, rather than not at all. Watch also calls it for a
	// transition whose claimant stopped renewing its claim (see
	// NoticeLease): a Webhook that tracks this Set renews the claims.
	OnMade func(Transition)
	// Logger; default slog.Default().
	Logger *slog.Logger
	// Replica names this replica, unique among the replicas running at
	// once and the same across its restarts: a replica started again
	// after it was killed while it held a probe's lease takes the probe
	// over (see AcquireProbe), and the notices it had claimed but not
	// posted (see NoticeLease). Watch tells when another running process
	// has the same name (see ReplicaShared). Empty: none.
	Replica string
}

// DefaultOptions returns the options with every default filled in.
func DefaultOptions() Options {
	var o Options
	o.setDefaults()
	return o
}

func (o *Options) setDefaults() {
	if o.Threshold == 0 {
		o.Threshold = 3
	}
	if o.OpenInterval == 0 {
		o.OpenInterval = 30 * time.Second
	}
	if o.MaxInterval == 0 {
		o.MaxInterval = 5 * time.Minute
	}
	if o.ProbeLease == 0 {
		o.ProbeLease = 10 * time.Second
	}
	if o.Poll == 0 {
		o.Poll = 500 * time.Millisecond
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

func (o *Options) validate() error {
	switch {
	case o.Threshold < 1:
		return fmt.Errorf("breaker: Threshold %d: must be at least 1", o.Threshold)
	case o.OpenInterval < time.Millisecond:
		return fmt.Errorf("breaker: OpenInterval %v: must be at least 1ms", o.OpenInterval)
	case o.MaxInterval < o.OpenInterval:
		return fmt.Errorf("breaker: MaxInterval %v: must be at least OpenInterval %v", o.MaxInterval, o.OpenInterval)
	case o.ProbeLease < time.Millisecond:
		return fmt.Errorf("breaker: ProbeLease %v: must be at least 1ms", o.ProbeLease)
	case o.Poll <= 0:
		return fmt.Errorf("breaker: Poll %v: must be positive", o.Poll)
	}
	return nil
}

// Status is a breaker's record as read from Redis.
type Status struct {
	Name       string        `json:"name"`
	State      State         `json:"state"`
	Reason     string        `json:"reason,omitempty"`
	Since      time.Time     `json:"since,omitzero"`
	Failures   int64         `json:"failures"`
	Generation int64         `json:"generation"`
	NextProbe  time.Time     `json:"next_probe,omitzero"`
	LastProbe  time.Time     `json:"last_probe,omitzero"`
	Interval   time.Duration `json:"interval"`
	// Spread is how many distinct members (delegated mailboxes) have
	// failed in a row under the breaker; see RecordSpread.
	Spread int64 `json:"spread"`
	// GoodFingerprint identifies the secret or certificate that last got
	// a token (see Succeeded).
	GoodFingerprint string `json:"good_fingerprint,omitempty"`
	// GoodSince is when GoodFingerprint's material first got a token.
	GoodSince time.Time `json:"good_since,omitzero"`
	// StaleReplicas name the replicas that said their material is not
	// the one that works (see MarkStale), sorted.
	StaleReplicas []string `json:"stale_replicas,omitempty"`
	// Held: an operator holds the breaker open (Hold); only Reset
	// closes it.
	Held bool `json:"held,omitempty"`
	// Answered is the number of the last request for a probe (AskProbe)
	// that the last probe result answers: the requests made before that
	// probe's lease was granted. AnsweredKnown reports that the record
	// has it for the last result: a relay of an earlier version writes
	// a result (LastProbe) without it.
	Answered      int64 `json:"answered,omitempty"`
	AnsweredKnown bool  `json:"answered_known,omitempty"`
	answeredAt    time.Time
}

// Transition is a change of a breaker's state as seen by one replica.
type Transition struct {
	// ID names the transition fleet-wide ("NAME@GENERATION"): a
	// receiver of webhooks deduplicates retries by it.
	ID         string    `json:"id"`
	Name       string    `json:"breaker"`
	From       State     `json:"from"`
	To         State     `json:"to"`
	Reason     string    `json:"reason,omitempty"`
	At         time.Time `json:"at"`
	Generation int64     `json:"generation"`
	// Found: the state began before this replica's Set was made, and
	// this is the first record of the breaker it read: a relay that
	// starts while a breaker is open finds it so, it does not see it
	// open.
	Found bool `json:"-"`
}

// ErrLeaseLost is returned by ProbeResult when this replica does not hold
// the probe lease (it never acquired it, it expired and another replica
// took it, or an operator reset the breaker).
var ErrLeaseLost = errors.New("breaker: probe lease lost")

// Set is one replica's view of all breakers. The shared record in Redis
// decides; a local gobreaker per breaker counts failures too and decides
// Allow while Redis cannot be reached. A Set is safe for concurrent use.
type Set struct {
	rdb redis.UniversalClient
	o   Options
	log *slog.Logger

	id      string    // this replica, for probes asked for by it
	started time.Time // when the Set was made (see Transition.Found)
	// noticeLease is NoticeLease; tests shorten it.
	noticeLease time.Duration
	released    atomic.Bool // ReleaseNotices was called
	shared      atomic.Bool // ReplicaShared; see announcer

	mu   sync.Mutex
	brks map[string]*entry
	// listed is when List last read every record; under mu.
	listed time.Time
}

// ErrStale is returned by RecordAs for a failure of a secret or
// certificate other than the one that last got a token: it did not count,
// and the caller's files are older (or newer) than the ones that work.
var ErrStale = errors.New("breaker: failure of a secret other than the one that works")

// probeHere is how long an immediate probe asked for by one replica is
// kept for it (ProbeNowHere) before any replica may run it.
const probeHere = 5 * time.Second

// entry is the local state of one breaker. Guarded by Set.mu.
type entry struct {
	local      *gobreaker.TwoStepCircuitBreaker[struct{}]
	st         Status    // last record read
	fetched    time.Time // when st was read; zero if never
	seen       Status    // state and generation last reported as a transition
	observed   bool      // a record of the breaker was read
	registered bool      // name is in namesKey
	token      string    // probe lease token, while this replica holds it
}

// New returns the breakers of one replica. It panics on invalid options;
// use DefaultOptions and change fields.
func New(rdb redis.UniversalClient, o Options) *Set {
	o.setDefaults()
	if err := o.validate(); err != nil {
		panic(err)
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	return &Set{
		rdb:         rdb,
		id:          hex.EncodeToString(b[:]),
		started:     o.Now(),
		noticeLease: NoticeLease,
		o:           o,
		log:         o.Logger.With("component", "breaker"),
		brks:        make(map[string]*entry),
	}
}

// ProbeLease is how long a probe lease lasts without RenewProbe
// (Options.ProbeLease).
func (s *Set) ProbeLease() time.Duration { return s.o.ProbeLease }

// Poll is how often this Set re-reads the records (Options.Poll).
func (s *Set) Poll() time.Duration { return s.o.Poll }

// Failure is what a breaker needs to know of a failed request, asked of
// the error itself: the relay's classification (relay/upstream.Error)
// answers. Declared here so that breaker depends on no classification.
type Failure interface {
	error
	// BreakerCounts reports whether the failure counts: the
	// credential's or the mailbox's own fault.
	BreakerCounts() bool
	// BreakerOpensNow reports whether it opens the breaker at once, e.g.
	// an expired client secret.
	BreakerOpensNow() bool
	// BreakerReason is the upstream's code and text, stored as the reason.
	BreakerReason() string
}

// Counts reports whether err counts on a breaker: a Failure that says so.
// Any other error (a bare network error) never counts.
func Counts(err error) bool {
	var f Failure
	return errors.As(err, &f) && f.BreakerCounts()
}

// opensNow reports whether err opens its breaker at once.
func opensNow(err error) bool {
	var f Failure
	return errors.As(err, &f) && f.BreakerOpensNow()
}

// maxReason bounds the stored reason.
const maxReason = 512

// Reason returns the text stored as a breaker's reason: the Failure's
// BreakerReason, or the error's text.
func Reason(err error) string {
	var f Failure
	var r string
	switch {
	case err == nil:
		return ""
	case errors.As(err, &f):
		r = f.BreakerReason()
	default:
		r = err.Error()
	}
	if len(r) > maxReason {
		r = strings.ToValidUTF8(r[:maxReason], "")
	}
	return strings.TrimSpace(r)
}

func validName(name string) error {
	if name == "" || strings.ContainsAny(name, "{}\r\n") {
		return fmt.Errorf("breaker: invalid name %q", name)
	}
	return nil
}

// newLocal returns the local breaker for name: it opens after Threshold
// consecutive counted failures on this replica and half-opens after the
// open interval.
func (s *Set) newLocal(name string) *gobreaker.TwoStepCircuitBreaker[struct{}] {
	threshold := uint32(s.o.Threshold)
	return gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        name,
		MaxRequests: 1,
		Timeout:     s.o.OpenInterval,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= threshold },
		IsExcluded:  func(err error) bool { return err != nil && !Counts(err) },
	})
}

// entry returns the local entry for name, creating it. Call with s.mu held.
func (s *Set) entry(name string) *entry {
	e := s.brks[name]
	if e == nil {
		e = &entry{local: s.newLocal(name), st: Status{Name: name}, seen: Status{Name: name}}
		s.brks[name] = e
	}
	return e
}

// register adds name to the names set once.
func (s *Set) register(ctx context.Context, name string) error {
	s.mu.Lock()
	done := s.entry(name).registered
	s.mu.Unlock()
	if done {
		return nil
	}
	if err := registerScript.Run(ctx, s.rdb, []string{namesKey}, name).Err(); err != nil {
		return fmt.Errorf("breaker %s: register: %w", name, err)
	}
	s.mu.Lock()
	s.entry(name).registered = true
	s.mu.Unlock()
	return nil
}

// run runs a script that returns the record and stores what it returns
// (takeReply), which it returns.
func (s *Set) run(ctx context.Context, sc *redis.Script, name string, args ...any) (Status, error) {
	_, st, err := s.runRaw(ctx, sc, name, args...)
	return st, err
}

// runRaw is run returning the script's reply too: the record, then any
// flag.
func (s *Set) runRaw(ctx context.Context, sc *redis.Script, name string, args ...any) ([]string, Status, error) {
	if err := s.register(ctx, name); err != nil {
		return nil, Status{}, err
	}
	v, err := s.script(ctx, sc, name, args...)
	if err != nil {
		return nil, Status{}, err
	}
	return v, s.takeReply(ctx, name, v), nil
}

// script runs one of the scripts that take a breaker's record, spread
// set and attempt state (see scripts.go), and returns its reply.
func (s *Set) script(ctx context.Context, sc *redis.Script, name string, args ...any) ([]string, error) {
	return sc.Run(ctx, s.rdb, []string{recordKey(name), spreadKey(name), attemptKey(name)}, args...).StringSlice()
}

// takeReply stores the record a script returned (take), and tells the fleet
// of the transition the script made, if any. The record is taken first:
// one Redis lost is raised before the fleet hears of the transition,
// which it then hears of once, at the raised generation.
func (s *Set) takeReply(ctx context.Context, name string, v []string) Status {
	st, m, moved := parseReply(name, v)
	got := s.take(ctx, st, isRecord(m))
	if moved {
		s.made(ctx, got)
	}
	return got
}

// take stores a record read from Redis (observe) and returns it. A record
// whose generation is below the one this Set stored was lost: Redis
// restarted empty, or its keys were flushed (Forget keeps the
// generation). Left so, this Set would take the record's next
// transitions for stale reads, and the holds its routes were fenced with
// would refuse every release. restoreScript raises it above what this
// Set knew, and take returns the record as raised.
func (s *Set) take(ctx context.Context, st Status, recorded bool) Status {
	known, behind := s.observe(st, recorded)
	if !behind {
		return st
	}
	open := "0"
	if known.State == Open {
		open = "1"
	}
	v, err := s.script(ctx, restoreScript, st.Name, known.Generation, ms(s.o.Now()), open)
	if err != nil {
		s.log.Warn("cannot restore a breaker record older than this replica's", "breaker", st.Name, "known", known.Generation, "read", st.Generation, "err", err)
		return st
	}
	// At or above the generation known now, so taken as it is. A record
	// found at or above it already was not lost: the read raced with a
	// newer one, or another replica raised it.
	got := s.takeReply(ctx, st.Name, v)
	if n := len(v); n >= 2 && v[n-2] == "raised" {
		s.log.Warn("breaker record lost from Redis (restarted empty, or flushed); its generations go on from this replica's",
			"breaker", st.Name, "known", known.Generation, "state", known.State, "now", got.State, "generation", got.Generation)
	}
	return got
}

// parseReply parses a script's reply: the record as HGETALL returns it,
// as a status and as fields, and whether the script made a transition.
func parseReply(name string, v []string) (Status, map[string]string, bool) {
	m := make(map[string]string, len(v)/2)
	for i := 0; i+1 < len(v); i += 2 {
		m[v[i]] = v[i+1]
	}
	moved := m["moved"] == "1"
	delete(m, "moved")
	delete(m, "raised") // restoreScript's
	return parseMap(name, m), m, moved
}

// made tells the fleet about a transition this Set's script made: a
// message on the events channel, which every replica's Watch reads at
// once, and OnMade.
func (s *Set) made(ctx context.Context, st Status) {
	tr := newTransition(st, 1-st.State)
	// The notice is claimed before the others are told.
	claimed := s.claim(tr)
	// The name goes back in the names set, which Forget may have taken
	// it out of since this Set last registered it: the command line
	// lists the breakers from there.
	if err := registerScript.Run(ctx, s.rdb, []string{namesKey}, st.Name).Err(); err != nil {
		s.log.Warn("cannot register the breaker's name; the command line may not list it until its next transition", "breaker", st.Name, "err", err)
	}
	if err := s.rdb.Publish(ctx, eventsChannel, st.Name+" "+strconv.FormatInt(st.Generation, 10)).Err(); err != nil {
		s.log.Warn("cannot publish breaker transition; replicas see it at their next poll", "breaker", st.Name, "err", err)
	}
	if claimed {
		s.o.OnMade(tr)
	}
}

// notify calls OnMade for a transition this Set saw unless another
// replica has claimed it: the replica whose script made it claims it
// first (see made), and the others that see it claim it in case that
// replica lost the script's reply.
func (s *Set) notify(tr Transition) {
	if s.claim(tr) {
		s.o.OnMade(tr)
	}
}

func newTransition(st Status, from State) Transition {
	return Transition{ID: st.Name + "@" + strconv.FormatInt(st.Generation, 10), Name: st.Name, From: from,
		To: st.State, Reason: st.Reason, At: st.Since, Generation: st.Generation}
}

func ms(t time.Time) int64 { return t.UnixMilli() }

// Allow reports whether requests under the breaker may go ahead: false
// while it is open fleet-wide. The record is cached and re-read when
// older than Poll. If Redis cannot be read, Allow returns the local
// breaker's answer with the error.
func (s *Set) Allow(ctx context.Context, name string) (bool, error) {
	if err := validName(name); err != nil {
		return false, err
	}
	now := s.o.Now()
	s.mu.Lock()
	e := s.entry(name)
	fresh := !e.fetched.IsZero() && now.Sub(e.fetched) < s.o.Poll
	state := e.st.State
	s.mu.Unlock()
	if fresh {
		return state == Closed, nil
	}
	st, err := s.read(ctx, name)
	if err != nil {
		s.mu.Lock()
		local := e.local.State() != gobreaker.StateOpen
		s.mu.Unlock()
		return local, err
	}
	return st.State == Closed, nil
}

// Fresh reads the records of the named breakers from Redis now, in one
// round trip, bypassing the cache: a request that must not start under a
// breaker an operator just tripped checks with it.
func (s *Set) Fresh(ctx context.Context, names ...string) ([]Status, error) {
	cmds := make([]*redis.MapStringStringCmd, len(names))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, n := range names {
			cmds[i] = p.HGetAll(ctx, recordKey(n))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("breaker: read: %w", err)
	}
	out := make([]Status, len(names))
	s.mu.Lock()
	for _, n := range names {
		s.entry(n) // breakers in use: listed, if closed and unrecorded
	}
	s.mu.Unlock()
	for i, n := range names {
		m := cmds[i].Val()
		out[i] = s.take(ctx, parseMap(n, m), isRecord(m))
	}
	return out, nil
}

// read reads a record from Redis and stores it.
func (s *Set) read(ctx context.Context, name string) (Status, error) {
	m, err := s.rdb.HGetAll(ctx, recordKey(name)).Result()
	if err != nil {
		return Status{}, fmt.Errorf("breaker %s: read: %w", name, err)
	}
	return s.take(ctx, parseMap(name, m), isRecord(m)), nil
}

// Record reports the outcome of a request under the breaker: nil is a
// success. Only failures that say they count do (see Failure); one that
// says so opens the breaker at once. A success resets
// the fleet-wide count; it costs no Redis round trip when this replica
// read a zero count within Poll.
func (s *Set) Record(ctx context.Context, name string, err error) error {
	return s.RecordAs(ctx, name, err, Material{})
}

// Material identifies the secret or certificate a request used.
type Material struct {
	// Fingerprint is a hash of it ("" when not known).
	Fingerprint string
	// Written is when its files were written (zero when not known).
	Written time.Time
}

// Stale reports whether m is older material than the breaker's record
// names as the one that works: another fingerprint, written before that
// one first got a token. failScript decides the same in Redis when it
// records a failure; both compare whole milliseconds, the record's unit,
// and TestStaleAgrees holds them to one answer.
func (m Material) Stale(st Status) bool {
	if m.Fingerprint == "" || st.GoodFingerprint == "" || m.Fingerprint == st.GoodFingerprint {
		return false
	}
	return m.Written.IsZero() || st.GoodSince.IsZero() || ms(m.Written) <= ms(st.GoodSince)-writtenSlack.Milliseconds()
}

// writtenSlack is how much earlier than GoodSince material may have been
// written and still count as newer. File modification times come from the
// kernel's coarse clock, a few milliseconds behind the time Go reads: a
// file written just after a token was issued can carry an earlier time.
// A replica's stale file is older by the Secret's propagation, seconds to
// minutes, or far more.
const writtenSlack = time.Second

// RecordAs is Record for a failure of the material m. When the breaker's
// record names another fingerprint as the one that works and m is older
// than it (Material.Stale), the failure does not count and RecordAs
// returns ErrStale: a replica whose files are not rotated yet must not
// undo a rotation for the fleet. Material written after the working one
// got its first token (a wrong new secret) counts as any failure does.
func (s *Set) RecordAs(ctx context.Context, name string, err error, m Material) error {
	fingerprint := m.Fingerprint
	written := ""
	if !m.Written.IsZero() {
		written = strconv.FormatInt(ms(m.Written), 10)
	}
	if verr := validName(name); verr != nil {
		return verr
	}
	if err != nil && !Counts(err) {
		return nil
	}
	s.mu.Lock()
	e := s.entry(name)
	local := e.local
	// Skip the round trip when the count was zero at a read within Poll.
	quiet := e.st.Failures == 0 && e.st.Spread == 0 && !e.fetched.IsZero() && s.o.Now().Sub(e.fetched) < s.o.Poll
	s.mu.Unlock()
	if done, aerr := local.Allow(); aerr == nil {
		done(err)
	}
	if err == nil {
		if quiet && local.Counts().ConsecutiveFailures == 0 {
			return nil
		}
		if _, rerr := s.run(ctx, successScript, name); rerr != nil {
			return fmt.Errorf("breaker %s: record success: %w", name, rerr)
		}
		return nil
	}
	now := s.o.Now()
	immediate := "0"
	if opensNow(err) {
		immediate = "1"
	}
	v, _, rerr := s.runRaw(ctx, failScript, name, ms(now), s.o.Threshold, s.o.OpenInterval.Milliseconds(),
		ms(now.Add(s.o.OpenInterval)), immediate, Reason(err), fingerprint, written, writtenSlack.Milliseconds())
	if rerr != nil {
		return fmt.Errorf("breaker %s: record failure: %w", name, rerr)
	}
	if len(v) >= 2 && v[len(v)-2] == "stale" {
		return fmt.Errorf("breaker %s: %w", name, ErrStale)
	}
	return nil
}

// staleField prefixes the record fields naming stale replicas.
const staleField = "stale:"

// MarkStale records, for operators, that replica's material for the
// breaker is stale (since now), or that it is no longer.
func (s *Set) MarkStale(ctx context.Context, name, replica string, stale bool) error {
	if err := validName(name); err != nil {
		return err
	}
	var err error
	if stale {
		err = s.rdb.HSet(ctx, recordKey(name), staleField+replica, ms(s.o.Now())).Err()
	} else {
		err = s.rdb.HDel(ctx, recordKey(name), staleField+replica).Err()
	}
	if err != nil {
		return fmt.Errorf("breaker %s: mark stale: %w", name, err)
	}
	// The view the relay's loops work from (Listed) has the mark at once.
	if _, err := s.read(ctx, name); err != nil {
		s.log.Warn("cannot read the breaker's record after marking this replica stale; the next read has it", "breaker", name, "err", err)
	}
	return nil
}

// unmarkScript removes a stale mark (field ARGV[1] of the record KEYS[1])
// if it still holds ARGV[2], the time it was read with: a replica that
// marked itself again meanwhile keeps its new mark.
var unmarkScript = flagged(`
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
return redis.call('HDEL', KEYS[1], ARGV[1])
`)

// DropGoneStale removes from the breaker's record the stale marks of
// those of replicas that no longer run: no process has announced the
// replica's name for three announcement periods (15 s by default; see
// announcer), and the mark is older than minAge, which leaves its mark to
// a replica that marked itself before its first announcement. It returns
// the replicas whose marks it removed. Pods that are replaced get new
// names, and a mark left by one killed while stale would otherwise stay
// in the record for good; a replica that runs again and is still stale
// marks itself again.
func (s *Set) DropGoneStale(ctx context.Context, name string, replicas []string, minAge time.Duration) ([]string, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	if len(replicas) == 0 {
		return nil, nil
	}
	present := make([]*redis.IntCmd, len(replicas))
	marks := make([]*redis.StringCmd, len(replicas))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, r := range replicas {
			present[i] = p.Exists(ctx, replicaKey(r))
			marks[i] = p.HGet(ctx, recordKey(name), staleField+r)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("breaker %s: read stale marks: %w", name, err)
	}
	cutoff := ms(s.o.Now().Add(-minAge))
	var dropped []string
	for i, r := range replicas {
		mark, err := marks[i].Result()
		if err != nil || present[i].Err() != nil || present[i].Val() != 0 {
			continue // no mark, the replica runs, or unknown
		}
		if at, perr := strconv.ParseInt(mark, 10, 64); perr == nil && at > cutoff {
			continue
		}
		n, err := unmarkScript.Run(ctx, s.rdb, []string{recordKey(name)}, staleField+r, mark).Int()
		if err != nil {
			return dropped, fmt.Errorf("breaker %s: remove the stale mark of %s: %w", name, r, err)
		}
		if n == 1 {
			dropped = append(dropped, r)
		}
	}
	return dropped, nil
}

// Succeeded records that the secret or certificate with the given
// fingerprint just got a token: failures of another one do not count
// (see RecordAs). It costs a round trip only when the fingerprint differs
// from the one this Set last recorded or read.
func (s *Set) Succeeded(ctx context.Context, name, fingerprint string) error {
	return s.succeeded(ctx, name, fingerprint, s.o.Now(), false)
}

// SucceededAt is Succeeded for a token got at an earlier moment, whose
// record Redis did not take then: it is not recorded if the breaker
// already names material that got its token later.
func (s *Set) SucceededAt(ctx context.Context, name, fingerprint string, at time.Time) error {
	return s.succeeded(ctx, name, fingerprint, at, true)
}

func (s *Set) succeeded(ctx context.Context, name, fingerprint string, at time.Time, late bool) error {
	if err := validName(name); err != nil {
		return err
	}
	s.mu.Lock()
	same := s.entry(name).st.GoodFingerprint == fingerprint
	s.mu.Unlock()
	if same || fingerprint == "" {
		return nil
	}
	flag := "0"
	if late {
		flag = "1"
	}
	if _, err := s.run(ctx, goodScript, name, fingerprint, ms(at), flag); err != nil {
		return fmt.Errorf("breaker %s: record success: %w", name, err)
	}
	return nil
}

// spreadMemory is how long a spread of failed members is remembered after
// its last failure: failures further apart are not "in a row".
const spreadMemory = time.Hour

// RecordSpread records a failure of member (a delegated mailbox) that
// counts on the breaker name (its credential) only across distinct
// members: name opens when n distinct members have failed with no
// success recorded on name between them. A success (Record with nil)
// clears the spread. Failures that do not count (see Counts) are ignored.
func (s *Set) RecordSpread(ctx context.Context, name, member string, err error, n int) error {
	if verr := validName(name); verr != nil {
		return verr
	}
	if err == nil || !Counts(err) {
		return nil
	}
	if n < 1 {
		n = 1
	}
	now := s.o.Now()
	_, rerr := s.run(ctx, spreadScript, name, ms(now), n, s.o.OpenInterval.Milliseconds(),
		ms(now.Add(s.o.OpenInterval)), member, Reason(err), spreadMemory.Milliseconds())
	if rerr != nil {
		return fmt.Errorf("breaker %s: record spread failure: %w", name, rerr)
	}
	return nil
}

// Trip opens the breaker on an operator's request. Its probes go on as
// for any open breaker: the first that succeeds closes it.
func (s *Set) Trip(ctx context.Context, name, reason string) error {
	return s.trip(ctx, name, reason, false)
}

func (s *Set) trip(ctx context.Context, name, reason string, hold bool) error {
	if err := validName(name); err != nil {
		return err
	}
	if reason == "" {
		reason = "tripped by operator"
	}
	verb, held := "trip", "0"
	if hold {
		verb, held = "hold", "1"
	}
	now := s.o.Now()
	if _, err := s.run(ctx, tripScript, name, ms(now), s.o.OpenInterval.Milliseconds(),
		ms(now.Add(s.o.OpenInterval)), reason, held); err != nil {
		return fmt.Errorf("breaker %s: %s: %w", name, verb, err)
	}
	return nil
}

// ErrHeld is ProbeNow's error for a breaker an operator holds (Hold):
// only Reset closes it, and no relay probes it.
var ErrHeld = errors.New("held by an operator until reset; it is not probed")

// Hold opens the breaker on an operator's request and keeps it open
// until Reset: no relay probes it, so a credential that works does not
// close it, as it closes a breaker opened by Trip at its next probe.
// For mail that must wait on purpose, as Postfix's "postsuper -h" holds
// it. An open breaker keeps its generation and gets the new reason.
func (s *Set) Hold(ctx context.Context, name, reason string) error {
	return s.trip(ctx, name, reason, true)
}

// Reset closes the breaker on an operator's request and clears its count.
// A breaker with no record is left as it is, closed and unlisted: a reset
// of a mistyped name, or of one Forget removed, does not make List name
// it.
func (s *Set) Reset(ctx context.Context, name string) error {
	if err := validName(name); err != nil {
		return err
	}
	// A record exists only for a name registered before it was made
	// (runRaw): the reset registers nothing.
	v, err := s.script(ctx, resetScript, name, ms(s.o.Now()))
	if err != nil {
		return fmt.Errorf("breaker %s: reset: %w", name, err)
	}
	s.takeReply(ctx, name, v)
	return nil
}

// Forget closes the breaker if it is open and removes its record, for a
// breaker no relay checks any more (a credential taken out of the
// configuration): List no longer names it. The record's generation
// stays, alone: a relay that records a failure for the name afterwards
// starts a fresh record whose generations go on from it, so that no
// relay takes the new record's transitions for stale reads, no route's
// hold fence refuses them, and no webhook receiver sees an ID again.
func (s *Set) Forget(ctx context.Context, name string) error {
	if err := s.Reset(ctx, name); err != nil {
		return err
	}
	if err := s.rdb.SRem(ctx, namesKey, name).Err(); err != nil {
		return fmt.Errorf("breaker %s: forget: %w", name, err)
	}
	// The record and its companions share one hash slot.
	keys := []string{recordKey(name), spreadKey(name), placesKey(name), attemptKey(name), worksKey(name), unprovenKey(name), notifiedKey(name)}
	reopened, err := forgetScript.Run(ctx, s.rdb, keys).Int()
	if err != nil {
		return fmt.Errorf("breaker %s: forget: %w", name, err)
	}
	if reopened == 1 {
		// A relay opened it between the reset and now: it is kept, and
		// listed again.
		if err := registerScript.Run(ctx, s.rdb, []string{namesKey}, name).Err(); err != nil {
			return fmt.Errorf("breaker %s: forget: %w", name, err)
		}
		return fmt.Errorf("breaker %s: it opened again while being forgotten, so its record is kept; forget it again once it is closed", name)
	}
	s.mu.Lock()
	delete(s.brks, name)
	s.mu.Unlock()
	return nil
}

// Cached returns the breaker's record as this Set last read it, with no
// round trip: after Allow, what Allow decided on.
func (s *Set) Cached(name string) Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.brks[name]; e != nil {
		return e.st
	}
	return Status{Name: name}
}

// Status reads a breaker's record. A breaker without a record is closed.
func (s *Set) Status(ctx context.Context, name string) (Status, error) {
	if err := validName(name); err != nil {
		return Status{}, err
	}
	return s.read(ctx, name)
}

// List reads the records of every breaker the fleet has recorded, and
// describes every breaker this Set knows, sorted by name. A name only
// this Set knows has no record (a breaker is registered before its first
// write), so it is closed and costs no read.
func (s *Set) List(ctx context.Context) ([]Status, error) {
	recorded, err := s.rdb.SMembers(ctx, namesKey).Result()
	if err != nil {
		return nil, fmt.Errorf("breaker: list names: %w", err)
	}
	// The names only this Set knows: their records as it last read them.
	// One it last read open is read again: a forgotten breaker (not in
	// the names set) whose close this Set missed would stay open here.
	s.mu.Lock()
	local := make(map[string]Status, len(s.brks))
	for n, e := range s.brks {
		local[n] = e.st
	}
	s.mu.Unlock()
	read := slices.Clone(recorded)
	for n, st := range local {
		if st.State == Open && !slices.Contains(recorded, n) {
			read = append(read, n)
		}
	}
	cmds := make(map[string]*redis.MapStringStringCmd, len(read))
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, n := range read {
			cmds[n] = p.HGetAll(ctx, recordKey(n))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("breaker: list: %w", err)
	}
	names := append(slices.Collect(maps.Keys(local)), recorded...)
	slices.Sort(names)
	names = slices.Compact(names)
	out := make([]Status, len(names))
	for i, n := range names {
		if c := cmds[n]; c != nil {
			m := c.Val()
			out[i] = s.take(ctx, parseMap(n, m), isRecord(m))
			continue
		}
		// A name only this Set knows, and as it last read it: closed,
		// at the generation it knows (a breaker forgotten goes on at its
		// generation, which the holds of its routes are fenced by).
		out[i] = local[n]
		s.observe(out[i], false)
	}
	s.mu.Lock()
	s.listed = time.Now()
	s.mu.Unlock()
	return out, nil
}

// Listed is List from this Set's view while Watch keeps it: every
// breaker this Set knows, as it last read or wrote its record. Watch
// reads a breaker at once when another replica publishes its transition,
// the open ones every Poll, and every record every watchFullEvery polls.
// A breaker registered by another replica and never written, which List
// describes as closed, is left out. When no List has read every record
// within twice that (no Watch runs, or Redis does not answer it), Listed
// reads them all (List).
func (s *Set) Listed(ctx context.Context) ([]Status, error) {
	s.mu.Lock()
	stale := s.listed.IsZero() || time.Since(s.listed) > 2*watchFullEvery*s.o.Poll
	s.mu.Unlock()
	if stale {
		return s.List(ctx)
	}
	return s.Known(), nil
}

// Known is every breaker this Set knows, as it last read or wrote its
// record, sorted by name, without a read: what Listed returns, however
// old. While Redis does not answer, nothing changes a record, so it is
// also what the records hold.
func (s *Set) Known() []Status {
	s.mu.Lock()
	out := make([]Status, 0, len(s.brks))
	for _, e := range s.brks {
		out = append(out, e.st)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b Status) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// openNames are the breakers this Set holds open.
func (s *Set) openNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	for n, e := range s.brks {
		if e.st.State == Open {
			names = append(names, n)
		}
	}
	return names
}

// isRecord reports whether m, as HGETALL read it, is a breaker's record:
// not empty, and more than what Forget keeps.
func isRecord(m map[string]string) bool {
	for k := range m {
		if k != "generation" && k != "since" && k != "state" {
			return true
		}
	}
	return false
}

// observe stores a record just read and reports a transition when its
// generation is newer than the last one this Set reported. A breaker that
// closes fleet-wide gets a fresh local breaker.
//
// recorded says Redis had a record (isRecord): a look at a breaker that
// has none, or only what Forget kept, and that this Set does not know
// (an operator's, at a mailbox no route uses) adds nothing to what it
// lists.
//
// A record older than the one stored is not stored: a read that raced
// with a newer one, or a record Redis lost. observe then returns the
// stored one and true, for take to tell the two apart.
func (s *Set) observe(st Status, recorded bool) (Status, bool) {
	s.mu.Lock()
	e := s.brks[st.Name]
	if e == nil {
		if !recorded {
			s.mu.Unlock()
			return Status{}, false
		}
		e = s.entry(st.Name)
	}
	if st.Generation < e.st.Generation {
		known := e.st
		s.mu.Unlock()
		return known, true
	}
	e.st = st
	e.fetched = s.o.Now()
	first := !e.observed
	e.observed = true
	var tr *Transition
	if st.Generation > e.seen.Generation {
		if st.State != e.seen.State {
			t := newTransition(st, e.seen.State)
			t.Found = first && st.Since.Before(s.started)
			tr = &t
		}
		if st.State == Closed {
			e.local = s.newLocal(st.Name)
		}
		e.seen = st
	}
	s.mu.Unlock()
	if tr == nil {
		return Status{}, false
	}
	s.log.Info("breaker transition", "breaker", tr.Name, "from", tr.From, "to", tr.To,
		"reason", tr.Reason, "generation", tr.Generation, "found", tr.Found)
	s.logTransition(*tr)
	if s.o.OnTransition != nil {
		s.o.OnTransition(*tr)
	}
	if !tr.Found {
		// A breaker found as it is at start was told of when it
		// changed.
		s.notify(*tr)
	}
	return Status{}, false
}

func parseMap(name string, m map[string]string) Status {
	st := Status{Name: name}
	for k, v := range m {
		st.set(k, v)
	}
	st.settle()
	return st
}

// settle works out what needs several fields: the answered count counts
// only for the result it was written with.
func (st *Status) settle() {
	st.AnsweredKnown = !st.answeredAt.IsZero() && st.answeredAt.Equal(st.LastProbe)
	if !st.AnsweredKnown {
		st.Answered = 0
	}
}

func (st *Status) set(k, v string) {
	n, _ := strconv.ParseInt(v, 10, 64)
	t := func() time.Time {
		if n == 0 {
			return time.Time{}
		}
		return time.UnixMilli(n)
	}
	switch k {
	case "state":
		if v == "open" {
			st.State = Open
		}
	case "reason":
		st.Reason = v
	case "since":
		st.Since = t()
	case "generation":
		st.Generation = n
	case "failures":
		st.Failures = n
	case "next_probe":
		st.NextProbe = t()
	case "last_probe":
		st.LastProbe = t()
	case "interval":
		st.Interval = time.Duration(n) * time.Millisecond
	case "spread":
		st.Spread = n
	case "good_fp":
		st.GoodFingerprint = v
	case "good_since":
		st.GoodSince = t()
	case "hold":
		st.Held = v == "1"
	case "answered":
		// "COUNT:LAST_PROBE"
		count, at, _ := strings.Cut(v, ":")
		st.Answered, _ = strconv.ParseInt(count, 10, 64)
		if ms, err := strconv.ParseInt(at, 10, 64); err == nil && ms > 0 {
			st.answeredAt = time.UnixMilli(ms)
		}
	default:
		if r, ok := strings.CutPrefix(k, staleField); ok {
			i, _ := slices.BinarySearch(st.StaleReplicas, r)
			st.StaleReplicas = slices.Insert(st.StaleReplicas, i, r)
		}
	}
}
