package queue

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrNotMovable is returned by Move for a message that is being sent,
// delivered or dead: only mail waiting on its route (ready, scheduled or
// held) moves.
var ErrNotMovable = errors.New("the message is not waiting on its route")

// moveOutScript takes a waiting message out of its route for a move: out
// of the route's due and live sets and into its moving set, its state
// "moving", so that no worker leases it meanwhile. A message already in
// the moving set (a move that stopped half-way) is taken as it is.
//
// When it takes the message out, it records the application's
// idempotency key for the move to carry, if the route still remembers
// that key for this message, with the key's fingerprint: the move then
// stores the copy under the same key every time it runs, even should the
// old route forget the key in between.
//
// An id that the route's sets name without its message (deleted, or
// lost with a write Redis did not keep), or with a message of another
// route or one no longer waiting, is taken out of the route's due, live
// and moving sets: a move prunes what it finds gone.
//
// It records the route the move takes the message to, too: a move run
// again to another route looks there first for the copy (see move).
//
// It runs only for the move holding the route's move lock, and renews
// the lock, first thing: a move whose lock lapsed (see lockMoves) takes
// nothing out.
//
// KEYS[1] the message, KEYS[2] due, KEYS[3] live, KEYS[4] moving,
// KEYS[5] the route's move lock.
// ARGV[1] id, ARGV[2] now, ARGV[3] the route, ARGV[4] the prefix of the
// route's idempotency keys, ARGV[5] that of their fingerprints, ARGV[6]
// the route it moves to, ARGV[7] the move's lock token, ARGV[8] the
// lock's lifetime in ms.
//
// Returns {1, app, from, to, body, ambiguity flag, idempotency key,
// fingerprint, route moved to, Redis's time of the renewal in unix ms}
// (the key "" for none; the route "" for a message taken out by a relay
// that did not record it), {0} when there is no message on the route,
// {2, state} when it is not waiting, or {3} when the move does not hold
// the lock.
var moveOutScript = drainScript(`
if redis.replicate_commands then redis.replicate_commands() end
if redis.call('GET', KEYS[5]) ~= ARGV[7] then return {3} end
redis.call('PEXPIRE', KEYS[5], ARGV[8])
local t = redis.call('TIME')
local renewed = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local m = redis.call('HMGET', KEYS[1], 'st', 'route', 'app', 'from', 'to', 'body', '` + fAmbiguous + `',
  '` + fIdemKey + `', '` + fMoveKey + `', '` + fMovePrint + `', '` + fMoveTo + `')
if not m[1] or m[2] ~= ARGV[3] then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('SREM', KEYS[4], ARGV[1])
  return {0}
end
if m[1] ~= '` + stQueued + `' and m[1] ~= '` + stMoving + `' then
  redis.call('SREM', KEYS[4], ARGV[1])
  return {2, m[1]}
end
local key, print, dest = m[9] or '', m[10] or '', m[11] or ''
if m[1] == '` + stQueued + `' then
  dest = ARGV[6] or ''
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('SADD', KEYS[4], ARGV[1])
  redis.call('HSET', KEYS[1], 'st', '` + stMoving + `', 'upd', ARGV[2], '` + fMoveTo + `', dest)
  if m[8] and m[8] ~= '' and redis.call('GET', ARGV[4] .. m[8]) == ARGV[1] then
    key, print = m[8], redis.call('GET', ARGV[5] .. m[8]) or ''
    redis.call('HSET', KEYS[1], '` + fMoveKey + `', key, '` + fMovePrint + `', print)
  end
end
return {1, m[3], m[4], m[5], m[6], m[7] or '', key, print, dest, renewed}
`)

// moveRetargetScript records the new route of a message a cut move left
// in its old route's moving set, when that move stored no copy: a move
// cut again goes on from there.
//
// KEYS[1] the message, KEYS[2] the old route's move lock. ARGV[1] the
// route, ARGV[2] the move's lock token. Returns 0 when the message is no
// longer moving, -1 when the move does not hold the lock.
var moveRetargetScript = drainScript(`
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return -1 end
if redis.call('HGET', KEYS[1], '` + fState + `') ~= '` + stMoving + `' then return 0 end
redis.call('HSET', KEYS[1], '` + fMoveTo + `', ARGV[1])
return 1
`)

// moveDoneScript deletes a moved message from its old route, and points
// the old route's idempotency key that named it at its copy.
//
// KEYS[1] the message, KEYS[2] moving, KEYS[3] the old route's move
// lock, KEYS[4] the old route's idempotency key, when the message carried
// one. ARGV[1] id, ARGV[2] the copy's id, ARGV[3] the move's lock token.
// Returns -1, changing nothing, when the move does not hold the lock.
var moveDoneScript = drainScript(`
if redis.call('GET', KEYS[3]) ~= ARGV[3] then return -1 end
redis.call('SREM', KEYS[2], ARGV[1])
if KEYS[4] and redis.call('GET', KEYS[4]) == ARGV[1] then
  local ttl = redis.call('PTTL', KEYS[4])
  if ttl > 0 then redis.call('SET', KEYS[4], ARGV[2], 'PX', ttl) end
end
return redis.call('DEL', KEYS[1])
`)

// deleteIfScript deletes a key while it holds a value: an idempotency
// key that names a message an earlier move took off the key's route
// (storeCopy lets go of it), or a route's move lock held by a move's
// token (lockMoves releases it).
//
// KEYS[1] the key. ARGV[1] the value. Returns 1 when it deleted the key.
var deleteIfScript = drainScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// moveLockTTL is how long a route's move lock lasts without a renewal
// (Queue.moveLockTTL, which tests shorten).
const moveLockTTL = 30 * time.Second

// ErrMoveLocked is returned by Move and MoveRoute when another move of
// the route is running (see MoveLockedError).
var ErrMoveLocked = errors.New("another move of the route is running")

// ErrMoveLockLost is returned by a move whose lock of the route lapsed
// before it was done (it hung longer than the lock lasts): another move
// may have taken over, so it stopped. What it had taken out waits in the
// route's moving set for the next move, as with a move cut half-way.
var ErrMoveLockLost = errors.New("the move's lock of the route lapsed")

// MoveLockedError says which route another move is running off, and
// when its lock lapses if that move is gone without releasing it.
type MoveLockedError struct {
	Route string
	Left  time.Duration // until the lock lapses, unless renewed
}

func (e *MoveLockedError) Error() string {
	return fmt.Sprintf("another move of route %s is running; its lock lapses in %s unless that move renews it", e.Route, e.Left.Round(time.Second))
}

func (e *MoveLockedError) Unwrap() error { return ErrMoveLocked }

// moveLockScript takes a route's move lock.
//
// KEYS[1] the lock. ARGV[1] the token, ARGV[2] the lifetime in ms.
// Returns -3 when taken, else the holder's time left in ms (-1 for
// none, which is not set).
var moveLockScript = drainScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return -3 end
return redis.call('PTTL', KEYS[1])
`)

// lockMoves takes route's move lock for a move, and returns its token
// and the function that releases it.
//
// One move at a time runs off a route: two at once, to two routes, could
// each store a copy of the same message (the second finding none yet
// where the first was storing it), and two to one route would each count
// it. So a move holds the route's move lock while it runs: a token with
// a lifetime of moveLockTTL, renewed by each message's take-out, and
// released at the end, error or not. A move killed outright leaves the
// lock until it lapses. Each write of a move off the route checks, in
// its script, that the move still holds the lock; the copy's store, on
// the other route's slot, cannot, and is fenced by a deadline instead:
// half the lock's lifetime from the take-out's renewal, in Redis's
// clock, so that a store that comes later (the move hung past the lock's
// lapse, another move of the route free to start) stores nothing.
func (q *Queue) lockMoves(ctx context.Context, route string) (string, func(), error) {
	token := newToken()
	key := keysFor(route).moveLock
	left, err := moveLockScript.Run(ctx, q.rdb, []string{key}, token, q.moveLockTTL.Milliseconds()).Int64()
	if err != nil {
		return "", nil, fmt.Errorf("move: lock route %s: %w", route, err)
	}
	if left != -3 {
		return "", nil, &MoveLockedError{Route: route, Left: time.Duration(max(left, 0)) * time.Millisecond}
	}
	unlock := func() {
		// Released even when the move's context was cancelled; a release
		// lost leaves the lock until it lapses.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = deleteIfScript.Run(ctx, q.rdb, []string{key}, token).Err()
	}
	return token, unlock, nil
}

// Move moves a message waiting on its route (ready, scheduled or held)
// to route to, where it waits as a new message, due now, its lifetime
// and attempts starting again, and returns its id there. The route's
// mail goes on from there: another credential's route when its own no
// longer works, or was taken out of the configuration.
//
// The message keeps the application's idempotency key, as long as its
// route still remembered it: the application's retry under that key, on
// either route, is answered with the copy as a duplicate. The new route
// remembers the key for Options.IdempotencyTTL from the move. When the
// application already sent the message again there under that key (it
// was given the new credential before the move), that message is the
// copy, and no second one is stored. A key the application used on the
// new route for another envelope stays that other message's. A key that
// an earlier move off the new route pointed at its copy (the message
// moved back) names the message's new copy there.
//
// A Move that stops half-way (the process killed, Redis lost) leaves the
// message in its old route's moving set, out of reach of the workers;
// MoveRoute of that route finishes it. The copy is stored under the
// application's key, or the key "moved:ID" when it carries none, so that
// a Move run again stores it once. A Move run again to another route
// than the cut one's finishes where that one stored the copy, if it did
// (found by those keys, so within Options.IdempotencyTTL of the cut), and
// returns the copy's id there; else it stores the message on to. While
// another move of the message's route runs, it moves nothing and returns
// a *MoveLockedError.
func (q *Queue) Move(ctx context.Context, id, to string) (string, error) {
	if !ValidRoute(to) {
		return "", fmt.Errorf("move: invalid route name %q", to)
	}
	m, err := q.Get(ctx, id)
	if err != nil {
		return "", fmt.Errorf("move: %w", err)
	}
	if m.Route == to {
		return "", fmt.Errorf("move %s: it is on %s already", id, to)
	}
	token, unlock, err := q.lockMoves(ctx, m.Route)
	if err != nil {
		return "", err
	}
	defer unlock()
	newID, _, err := q.move(ctx, id, m.Route, to, token)
	return newID, err
}

// move is Move of message id of route from, by the move holding the
// route's move lock with token. It returns the copy's id and its route:
// to, or the route of a cut move that stored the copy.
func (q *Queue) move(ctx context.Context, id, from, to, token string) (string, string, error) {
	rk := keysFor(from)
	res, err := moveOutScript.Run(ctx, q.rdb, []string{msgKey(id), rk.due, rk.live, rk.moving, rk.moveLock},
		id, q.opts.Now().UnixMilli(), from, idemBase(from), idemPrintBase(from), to,
		token, q.moveLockTTL.Milliseconds()).Slice()
	if err != nil {
		return "", "", fmt.Errorf("move %s: %w", id, err)
	}
	switch res[0].(int64) {
	case 0:
		// Pruned from the route's sets: its counts changed.
		q.logChange(ctx, from)
		return "", "", fmt.Errorf("move %s: %w", id, ErrNotFound)
	case 2:
		return "", "", fmt.Errorf("move %s (%s): %w", id, res[1], ErrNotMovable)
	case 3:
		return "", "", fmt.Errorf("move %s off %s: %w", id, from, ErrMoveLockLost)
	}
	// Taken out: its route's counts changed.
	q.logChange(ctx, from)
	// The copy's store is fenced by the lock's renewal (see lockMoves).
	deadline := res[9].(int64) + (q.moveLockTTL / 2).Milliseconds()
	if q.moveHook != nil {
		q.moveHook(id)
	}
	str := func(i int) string { v, _ := res[i].(string); return v }
	appKey := str(6)
	sub := Submission{Route: to, App: str(1), From: str(2), To: splitRcpts(str(3)), Body: []byte(str(4)),
		IdempotencyKey: "moved:" + id}
	if appKey != "" {
		sub.IdempotencyKey, sub.Fingerprint = appKey, str(7)
	}
	var (
		newID string
		dup   bool
		where = to
	)
	if before := str(8); before != "" && before != to {
		// A cut move took it to another route: its copy may be there.
		if newID, err = q.copyOn(ctx, id, before, appKey, str(7)); err == nil && newID == "" {
			err = q.retarget(ctx, id, from, to, token)
		}
		if dup = newID != ""; dup {
			where = before
		}
	}
	if err == nil && !dup {
		newID, dup, err = q.storeCopy(ctx, id, sub, appKey, deadline)
	}
	if err == nil && str(5) != "" {
		// An earlier attempt may have sent it: the next one looks first.
		// A copy stored before may be gone since (delivered and
		// forgotten, or deleted): there is nothing left to mark.
		if err = q.MarkAmbiguous(ctx, newID); dup && errors.Is(err, ErrNotFound) {
			err = nil
		}
	}
	if err != nil {
		return "", "", fmt.Errorf("move %s to %s (it waits in %s's moving set; move the route again): %w", id, where, from, err)
	}
	keys := []string{msgKey(id), rk.moving, rk.moveLock}
	if appKey != "" {
		keys = append(keys, idemKey(from, appKey))
	}
	n, err := moveDoneScript.Run(ctx, q.rdb, keys, id, newID, token).Int()
	if err == nil && n < 0 {
		err = ErrMoveLockLost
	}
	if err != nil {
		return newID, where, fmt.Errorf("move %s: stored on %s as %s, but not deleted from %s (move the route again): %w", id, where, newID, from, err)
	}
	// Out of the moving set, which the counts include.
	q.logChange(ctx, from)
	return newID, where, nil
}

// storeCopy stores sub, the copy of message id, under the application's
// key appKey (sub's, "" for none) or else "moved:ID", unless Redis runs
// the store past deadline (unix ms, in Redis's clock), and returns its
// id and whether it was stored before. A key on the new route that names a
// message not stored there was pointed by an earlier move off it at that
// move's copy (this message, moved back, or one it was moved as): this
// message is no copy of that one, and takes the key over. A key the
// application gave another message there stays that message's.
func (q *Queue) storeCopy(ctx context.Context, id string, sub Submission, appKey string, deadline int64) (string, bool, error) {
	forwarded := func(got string, dup bool) bool {
		return appKey != "" && dup && (got == id || !onRoute(got, sub.Route))
	}
	newID, dup, err := q.enqueue(ctx, sub, deadline)
	if err == nil && forwarded(newID, dup) {
		if err = deleteIfScript.Run(ctx, q.rdb, []string{idemKey(sub.Route, appKey)}, newID).Err(); err != nil {
			return "", false, err
		}
		if newID, dup, err = q.enqueue(ctx, sub, deadline); err == nil && forwarded(newID, dup) {
			err = ErrKeyReused
		}
	}
	if appKey != "" && errors.Is(err, ErrKeyReused) {
		sub.IdempotencyKey, sub.Fingerprint = "moved:"+id, ""
		newID, dup, err = q.enqueue(ctx, sub, deadline)
	}
	if errors.Is(err, ErrPastDeadline) {
		return "", false, fmt.Errorf("%w (nothing stored on %s)", ErrMoveLockLost, sub.Route)
	}
	return newID, dup, err
}

// copyOn returns the id of the copy of message id that a cut move stored
// on route, found by the idempotency key it was stored under (the
// application's, when its fingerprint is the message's, or "moved:ID"),
// or "" when it stored none there.
func (q *Queue) copyOn(ctx context.Context, id, route, appKey, print string) (string, error) {
	keys := []string{idemKey(route, "moved:"+id)}
	if appKey != "" {
		keys = append(keys, idemKey(route, appKey), idemPrintKey(route, appKey))
	}
	v, err := q.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return "", err
	}
	str := func(i int) string { s, _ := v[i].(string); return s }
	if c := str(0); c != "" {
		return c, nil
	}
	if appKey == "" {
		return "", nil
	}
	// The application's key names the copy, unless an earlier move off
	// the route pointed it at a message elsewhere.
	if c := str(1); c != "" && c != id && onRoute(c, route) && (print == "" || str(2) == "" || str(2) == print) {
		return c, nil
	}
	return "", nil
}

// retarget records to as the route a message moving off from goes to,
// for the move holding from's move lock with token.
func (q *Queue) retarget(ctx context.Context, id, from, to, token string) error {
	n, err := moveRetargetScript.Run(ctx, q.rdb, []string{msgKey(id), keysFor(from).moveLock}, to, token).Int()
	switch {
	case err != nil:
		return err
	case n < 0:
		return ErrMoveLockLost
	case n == 0:
		return ErrNotFound
	}
	return nil
}

// Moved is what MoveRoute did: the messages it took off the route, by
// the route where they are now.
type Moved struct {
	// To counts the messages stored on the route moved to (or found
	// there, sent again by their application).
	To int
	// Earlier counts, by route, the messages of a move cut half-way to
	// another route that had stored their copy there: they were
	// finished there, not moved to the route moved to.
	Earlier map[string]int
}

// Total is how many messages left the route.
func (m Moved) Total() int {
	n := m.To
	for _, e := range m.Earlier {
		n += e
	}
	return n
}

// add counts a message whose copy is on route where of a move to route
// to.
func (m *Moved) add(where, to string) {
	if where == to {
		m.To++
		return
	}
	if m.Earlier == nil {
		m.Earlier = map[string]int{}
	}
	m.Earlier[where]++
}

// MoveRoute moves up to limit messages waiting on route from to route to
// (Move), first those of a move that stopped half-way, and says where
// they went. Messages being sent stay. Entries of the route's moving set
// whose message is gone are pruned on the way. While another move of
// the route runs, it moves nothing and returns a *MoveLockedError.
func (q *Queue) MoveRoute(ctx context.Context, from, to string, limit int) (Moved, error) {
	var done Moved
	if !ValidRoute(from) || !ValidRoute(to) || from == to {
		return done, fmt.Errorf("move: routes %q and %q: want two valid routes", from, to)
	}
	token, unlock, err := q.lockMoves(ctx, from)
	if err != nil {
		return done, err
	}
	defer unlock()
	ids, err := q.rdb.SMembers(ctx, keysFor(from).moving).Result()
	if err != nil {
		return done, fmt.Errorf("move: %w", err)
	}
	for left := limit; left > 0; left = limit - done.Total() {
		// The moving set's entries come first; the waiting mail is read
		// once they are done, whatever became of them.
		halfWay := len(ids) > 0
		if !halfWay {
			if ids, err = q.waitingIDs(ctx, from, min(500, left)); err != nil || len(ids) == 0 {
				return done, err
			}
		}
		n := 0
		for _, id := range ids[:min(len(ids), left)] {
			_, where, err := q.move(ctx, id, from, to, token)
			switch {
			case errors.Is(err, ErrNotMovable), errors.Is(err, ErrNotFound):
				// Leased, or deleted, since it was listed.
			case err != nil:
				return done, err
			default:
				done.add(where, to)
				n++
			}
		}
		if n == 0 && !halfWay {
			return done, nil
		}
		ids = nil
	}
	return done, nil
}

// waitingIDs lists up to n ids of messages waiting on route: held,
// ready, then scheduled.
func (q *Queue) waitingIDs(ctx context.Context, route string, n int) ([]string, error) {
	var ids []string
	for _, st := range []State{Held, Ready, Scheduled} {
		ms, err := q.List(ctx, route, st, 0, n-len(ids))
		if err != nil {
			return nil, fmt.Errorf("move: %w", err)
		}
		for _, m := range ms {
			ids = append(ids, m.ID)
		}
		if len(ids) >= n {
			break
		}
	}
	return ids, nil
}
