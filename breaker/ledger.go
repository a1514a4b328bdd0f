package breaker

import (
	"cmp"
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The notice ledger keeps, fleet-wide, which replica posts each
// transition's notice (OnMade, the webhook) and until when it has shown
// it is alive: the claim of a notice is a lease. A replica keeps the
// leases of the notices it still has to post (KeepNotices), ends them
// when a notice was posted or given up (NoticeDone), and hands them back
// when it stops (ReleaseNotices). A replica killed while a notice waited
// for a receiver stops renewing it: once the lease lapses, the first
// other replica's Watch takes the notice over and posts it. The same
// replica started again (Options.Replica) takes its own over at once.
// Each transition has its claim: an opening not yet posted is taken over
// even when the breaker has closed since.

// NoticeLease is how long a replica's claim of a notice lasts without
// KeepNotices. A notice whose poster was killed is taken over by
// another replica within about this long.
const NoticeLease = 15 * time.Second

// noticePatience is how old a transition may be and still be taken over:
// the webhook stops trying a transition webhookPatience after it.
const noticePatience = webhookPatience

// takeBatch bounds the lapsed notices one Watch poll takes over.
const takeBatch = 32

// The ledger's scripts read the time from Redis (TIME), not from the
// caller as the breaker's other scripts do: a lease set by one replica
// is judged by another, and their clocks may differ by more than the
// lease's margin.
const nowLua = `
local function nowMs()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
`

// notifyScript claims the notice of the transition of a breaker to
// generation ARGV[1] at ARGV[2] (unix ms): when no replica has claimed
// it, or a later one, yet (KEYS[1]), it files the claim in the breaker's
// claims (KEYS[2]) under "GENERATION AT": "UNTIL CLAIMANT REPLICA
// TRANSITION", with the lease's end (now + ARGV[4] ms), the claimant
// (ARGV[5], one per Set), its replica name (ARGV[6], maybe empty) and the
// transition (ARGV[3], JSON), and returns the lease's end; otherwise 0.
// A transition is later by its generation, or by its time for a record
// made anew (Forget, or a Redis that lost it) whose generations start
// again.
var notifyScript = flagged(nowLua + `
local v = redis.call('GET', KEYS[1])
if v then
  local g, t = string.match(v, '^(%d+) (%d+)$')
  if g and tonumber(g) >= tonumber(ARGV[1]) and tonumber(t) >= tonumber(ARGV[2]) then
    return 0
  end
end
local u = nowMs() + tonumber(ARGV[4])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1] .. ' ' .. ARGV[2],
  u .. ' ' .. ARGV[5] .. ' ' .. ARGV[6] .. ' ' .. ARGV[3])
return u`)

// claimLua defines claimOf(field): the parts of the claim filed under
// field in the breaker's claims (KEYS[1]), or nil when there is none
// (posted, given up, too old), and setClaim(field, until, by, replica,
// tr).
const claimLua = `
local function claimOf(field)
  local v = redis.call('HGET', KEYS[1], field)
  if not v then return nil end
  local u, by, replica, tr = string.match(v, '^(%d+) (%S+) (%S*) (.*)$')
  if not u then return nil end
  return {until_ = tonumber(u), by = by, replica = replica, tr = tr}
end
local function setClaim(field, u, by, replica, tr)
  redis.call('HSET', KEYS[1], field, string.format('%d', u) .. ' ' .. by .. ' ' .. replica .. ' ' .. tr)
end
`

// keepScript moves the end of the lease of the claim filed under ARGV[1]
// to now + ARGV[3] ms (now, for 0), if claimant ARGV[2] still holds it.
// Returns the lease's end, or 0 when it did not.
var keepScript = flagged(nowLua + claimLua + `
local c = claimOf(ARGV[1])
if not c or c.by ~= ARGV[2] then return 0 end
local u = nowMs() + tonumber(ARGV[3])
setClaim(ARGV[1], u, c.by, c.replica, c.tr)
return u`)

// takeScript takes over the claim filed under ARGV[1] if its lease
// lapsed, or its claimant is another process of replica ARGV[3] (not
// ""): the claim is then the caller's (ARGV[2]) for ARGV[4] ms. A
// transition more than ARGV[5] ms old is given up: its claim is removed.
//
// Returns {"take", transition JSON, lease end}, {"held"} for a claim
// still live, or {"done"} for none.
var takeScript = flagged(nowLua + claimLua + `
local c = claimOf(ARGV[1])
if not c then return {'done'} end
local now = nowMs()
local at = tonumber(string.match(ARGV[1], ' (%d+)$'))
if at < now - tonumber(ARGV[5]) then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return {'done'}
end
local again = ARGV[3] ~= '' and c.replica == ARGV[3] and c.by ~= ARGV[2]
if c.until_ > now and not again then return {'held'} end
local u = now + tonumber(ARGV[4])
setClaim(ARGV[1], u, ARGV[2], ARGV[3], c.tr)
return {'take', c.tr, u}`)

// scanScript returns up to ARGV[2] members of the fleet's list of claims
// (KEYS[1]) whose lease has ended by Redis's clock, or, with ARGV[1]
// "all", any.
var scanScript = flagged(nowLua + `
local upTo = '+inf'
if ARGV[1] ~= 'all' then upTo = nowMs() end
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', upTo, 'LIMIT', 0, tonumber(ARGV[2]))`)

// listScript files member ARGV[2] in the fleet's list of claims (KEYS[1])
// with score ARGV[1], or, with ARGV[3] "NX", only when it is not listed
// yet; flagged, as the claims are, so that it works while Redis is past
// its maxmemory.
var listScript = flagged(`
if ARGV[3] == 'NX' then return redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[2]) end
return redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])`)

// noticeField is the field of tr's claim in its breaker's claims.
func noticeField(tr Transition) string {
	return strconv.FormatInt(tr.Generation, 10) + " " + strconv.FormatInt(ms(tr.At), 10)
}

// noticeMember is tr's claim's member in the fleet's list (noticesKey),
// "GENERATION AT\nNAME": what tells one transition from another, also
// after Forget, when a breaker made anew counts its generations again.
func noticeMember(tr Transition) string { return noticeField(tr) + "\n" + tr.Name }

// claim reports whether this Set is to call OnMade for a transition: it
// claimed its notice, or Redis did not answer the claim.
func (s *Set) claim(tr Transition) bool {
	if s.o.OnMade == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	body, err := json.Marshal(tr)
	if err != nil {
		s.log.Error("breaker transition: encode", "breaker", tr.Name, "err", err)
		return true
	}
	// Listed first: a claim that Redis files while the list is out of
	// reach would never be found. Only if not listed yet: by this
	// replica's clock, it must not move a claimant's lease. The claim's
	// lease, from Redis's clock, then lists it again; a member listed
	// for nothing is removed by the first takeOver that reads it.
	member := noticeMember(tr)
	s.list(ctx, member, ms(s.o.Now().Add(s.noticeLease)), true)
	u, err := notifyScript.Run(ctx, s.rdb, []string{notifiedKey(tr.Name), claimsKey(tr.Name)},
		tr.Generation, ms(tr.At), body, s.noticeLease.Milliseconds(), s.id, s.o.Replica).Int64()
	if err != nil {
		s.log.Warn("cannot claim the breaker transition's notice; sending it anyway", "breaker", tr.Name, "err", err)
		return true
	}
	if u > 0 {
		s.list(ctx, member, u, false)
	}
	return u > 0
}

// list files a claim's lease in the fleet's list of notices being
// posted (noticesKey), which Watch reads for lapsed ones; with onlyNew,
// only a member not listed yet. A failure is logged: the poster's next
// KeepNotices files it again.
func (s *Set) list(ctx context.Context, member string, until int64, onlyNew bool) {
	mode := ""
	if onlyNew {
		mode = "NX"
	}
	if err := listScript.Run(ctx, s.rdb, []string{noticesKey}, until, member, mode).Err(); err != nil {
		s.log.Warn("cannot list the breaker notice's claim", "claim", member, "err", err)
	}
}

// KeepNotices renews this Set's claims of the notices of ts: their
// poster is alive and still trying them. The webhook calls it every
// NoticeLease/3. A claim since taken over by another replica, or whose
// notice was posted, is left alone.
func (s *Set) KeepNotices(ctx context.Context, ts []Transition) {
	s.moveLeases(ctx, ts, s.noticeLease, "cannot renew the breaker notices' claims")
}

// ReleaseNotices ends this Set's claims of the notices of ts, which it
// will not post (the relay stops): another replica takes them over at
// its next Watch poll. This Set's own Watch takes none over after it.
func (s *Set) ReleaseNotices(ctx context.Context, ts []Transition) {
	s.released.Store(true)
	s.moveLeases(ctx, ts, 0,
		"cannot hand the breaker notices back; another replica takes them over once their claims lapse")
}

func (s *Set) moveLeases(ctx context.Context, ts []Transition, lease time.Duration, failure string) {
	for _, tr := range ts {
		u, err := keepScript.Run(ctx, s.rdb, []string{claimsKey(tr.Name)}, noticeField(tr), s.id, lease.Milliseconds()).Int64()
		if err != nil {
			s.log.Warn(failure, "breaker", tr.Name, "err", err)
			continue
		}
		if u > 0 {
			s.list(ctx, noticeMember(tr), u, false)
		}
	}
}

// NoticeDone records that the notice of tr was posted, or given up: no
// replica takes it over.
func (s *Set) NoticeDone(ctx context.Context, tr Transition) {
	if err := s.rdb.HDel(ctx, claimsKey(tr.Name), noticeField(tr)).Err(); err != nil {
		s.log.Warn("cannot record the breaker notice as posted; another replica may post it again",
			"breaker", tr.Name, "err", err)
		return
	}
	if err := s.rdb.ZRem(ctx, noticesKey, noticeMember(tr)).Err(); err != nil {
		s.log.Warn("cannot unlist the posted breaker notice", "breaker", tr.Name, "err", err)
	}
}

// takeOver calls OnMade for the notices whose poster stopped renewing
// their claims: those listed with a lapsed lease or, when all is set,
// every one listed, so that this replica takes over at once those that a
// process of the same name claimed before it was killed. They are taken
// in the order of the transitions, at most takeBatch a call. It returns
// the first error, after trying every claim read.
func (s *Set) takeOver(ctx context.Context, all bool) error {
	if s.o.OnMade == nil || s.released.Load() {
		return nil
	}
	which := "lapsed"
	if all {
		which = "all"
	}
	members, err := scanScript.Run(ctx, s.rdb, []string{noticesKey}, which, takeBatch).StringSlice()
	if err != nil || len(members) == 0 {
		return err
	}
	type claimed struct {
		member, field, name string
		at, gen             int64
	}
	var cs []claimed
	for _, m := range members {
		field, name, ok := strings.Cut(m, "\n")
		gen, at, _ := strings.Cut(field, " ")
		g, gerr := strconv.ParseInt(gen, 10, 64)
		t, terr := strconv.ParseInt(at, 10, 64)
		if !ok || gerr != nil || terr != nil || validName(name) != nil {
			s.rdb.ZRem(ctx, noticesKey, m)
			continue
		}
		cs = append(cs, claimed{m, field, name, t, g})
	}
	slices.SortStableFunc(cs, func(a, b claimed) int {
		return cmp.Or(cmp.Compare(a.at, b.at), cmp.Compare(a.gen, b.gen))
	})
	var first error
	for _, c := range cs {
		if err := s.takeClaim(ctx, c.member, c.field, c.name); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// takeClaim takes over the claim of one listed member if it lapsed.
func (s *Set) takeClaim(ctx context.Context, member, field, name string) error {
	v, err := takeScript.Run(ctx, s.rdb, []string{claimsKey(name)}, field, s.id, s.o.Replica,
		s.noticeLease.Milliseconds(), noticePatience.Milliseconds()).Slice()
	if err != nil {
		return err
	}
	switch v[0] {
	case "done":
		return s.rdb.ZRem(ctx, noticesKey, member).Err()
	case "held":
		// Left as listed: its claimant lists it again as it renews
		// it, and a write here could undo a release made meanwhile.
	case "take":
		var tr Transition
		raw, _ := v[1].(string)
		if err := json.Unmarshal([]byte(raw), &tr); err != nil || tr.Name != name {
			s.log.Error("breaker notice: unreadable transition", "breaker", name, "err", err)
			return nil
		}
		u, _ := v[2].(int64)
		s.list(ctx, member, u, false)
		s.log.Info("taking over the breaker transition's notice from a replica that stopped posting it",
			"breaker", name, "to", tr.To, "generation", tr.Generation)
		s.o.OnMade(tr)
	}
	return nil
}
