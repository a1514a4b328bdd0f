package queue

import (
	"context"
	"errors"
	"fmt"
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
// KEYS[1] the message, KEYS[2] due, KEYS[3] live, KEYS[4] moving.
// ARGV[1] id, ARGV[2] now, ARGV[3] the route, ARGV[4] the prefix of the
// route's idempotency keys, ARGV[5] that of their fingerprints, ARGV[6]
// the route it moves to.
//
// Returns {1, app, from, to, body, ambiguity flag, idempotency key,
// fingerprint, route moved to} (the key "" for none; the route "" for a
// message taken out by a relay that did not record it), {0} when there is
// no message on the route, or {2, state} when it is not waiting.
var moveOutScript = drainScript(`
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
return {1, m[3], m[4], m[5], m[6], m[7] or '', key, print, dest}
`)

// moveRetargetScript records the new route of a message a cut move left
// in its old route's moving set, when that move stored no copy: a move
// cut again goes on from there.
//
// KEYS[1] the message. ARGV[1] the route. Returns 0 when the message is
// no longer moving.
var moveRetargetScript = drainScript(`
if redis.call('HGET', KEYS[1], '` + fState + `') ~= '` + stMoving + `' then return 0 end
redis.call('HSET', KEYS[1], '` + fMoveTo + `', ARGV[1])
return 1
`)

// moveDoneScript deletes a moved message from its old route, and points
// the old route's idempotency key that named it at its copy.
//
// KEYS[1] the message, KEYS[2] moving, KEYS[3] the old route's
// idempotency key, when the message carried one. ARGV[1] id, ARGV[2] the
// copy's id.
var moveDoneScript = drainScript(`
redis.call('SREM', KEYS[2], ARGV[1])
if KEYS[3] and redis.call('GET', KEYS[3]) == ARGV[1] then
  local ttl = redis.call('PTTL', KEYS[3])
  if ttl > 0 then redis.call('SET', KEYS[3], ARGV[2], 'PX', ttl) end
end
return redis.call('DEL', KEYS[1])
`)

// forgetKeyScript lets go of an idempotency key that names a message an
// earlier move took off the key's route.
//
// KEYS[1] the idempotency key. ARGV[1] the id it names.
var forgetKeyScript = drainScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

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
// returns the copy's id there; else it stores the message on to.
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
	newID, _, err := q.move(ctx, id, m.Route, to)
	return newID, err
}

// move is Move of message id of route from. It returns the copy's id
// and its route: to, or the route of a cut move that stored the copy.
func (q *Queue) move(ctx context.Context, id, from, to string) (string, string, error) {
	rk := keysFor(from)
	res, err := moveOutScript.Run(ctx, q.rdb, []string{msgKey(id), rk.due, rk.live, rk.moving},
		id, q.opts.Now().UnixMilli(), from, idemBase(from), idemPrintBase(from), to).Slice()
	if err != nil {
		return "", "", fmt.Errorf("move %s: %w", id, err)
	}
	// Taken out, or pruned from the route's sets: its counts changed.
	q.logChange(ctx, from)
	switch res[0].(int64) {
	case 0:
		return "", "", fmt.Errorf("move %s: %w", id, ErrNotFound)
	case 2:
		return "", "", fmt.Errorf("move %s (%s): %w", id, res[1], ErrNotMovable)
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
			err = q.retarget(ctx, id, to)
		}
		if dup = newID != ""; dup {
			where = before
		}
	}
	if err == nil && !dup {
		newID, dup, err = q.storeCopy(ctx, id, sub, appKey)
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
	keys := []string{msgKey(id), rk.moving}
	if appKey != "" {
		keys = append(keys, idemKey(from, appKey))
	}
	if err := moveDoneScript.Run(ctx, q.rdb, keys, id, newID).Err(); err != nil {
		return newID, where, fmt.Errorf("move %s: stored on %s as %s, but not deleted from %s (move the route again): %w", id, where, newID, from, err)
	}
	// Out of the moving set, which the counts include.
	q.logChange(ctx, from)
	return newID, where, nil
}

// storeCopy stores sub, the copy of message id, under the application's
// key appKey (sub's, "" for none) or else "moved:ID", and returns its id
// and whether it was stored before. A key on the new route that names a
// message not stored there was pointed by an earlier move off it at that
// move's copy (this message, moved back, or one it was moved as): this
// message is no copy of that one, and takes the key over. A key the
// application gave another message there stays that message's.
func (q *Queue) storeCopy(ctx context.Context, id string, sub Submission, appKey string) (string, bool, error) {
	forwarded := func(got string, dup bool) bool {
		return appKey != "" && dup && (got == id || !onRoute(got, sub.Route))
	}
	newID, dup, err := q.Enqueue(ctx, sub)
	if err == nil && forwarded(newID, dup) {
		if err = forgetKeyScript.Run(ctx, q.rdb, []string{idemKey(sub.Route, appKey)}, newID).Err(); err != nil {
			return "", false, err
		}
		if newID, dup, err = q.Enqueue(ctx, sub); err == nil && forwarded(newID, dup) {
			err = ErrKeyReused
		}
	}
	if appKey != "" && errors.Is(err, ErrKeyReused) {
		sub.IdempotencyKey, sub.Fingerprint = "moved:"+id, ""
		return q.Enqueue(ctx, sub)
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

// retarget records to as the route a moving message goes to.
func (q *Queue) retarget(ctx context.Context, id, to string) error {
	n, err := moveRetargetScript.Run(ctx, q.rdb, []string{msgKey(id)}, to).Int()
	if err == nil && n == 0 {
		err = ErrNotFound
	}
	return err
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
// whose message is gone are pruned on the way.
func (q *Queue) MoveRoute(ctx context.Context, from, to string, limit int) (Moved, error) {
	var done Moved
	if !ValidRoute(from) || !ValidRoute(to) || from == to {
		return done, fmt.Errorf("move: routes %q and %q: want two valid routes", from, to)
	}
	ids, err := q.rdb.SMembers(ctx, keysFor(from).moving).Result()
	if err != nil {
		return done, fmt.Errorf("move: %w", err)
	}
	moved := 0
	for moved < limit {
		// The moving set's entries come first; the waiting mail is read
		// once they are done, whatever became of them.
		halfWay := len(ids) > 0
		if !halfWay {
			if ids, err = q.waitingIDs(ctx, from, min(500, limit-moved)); err != nil || len(ids) == 0 {
				return done, err
			}
		}
		n := 0
		for _, id := range ids[:min(len(ids), limit-moved)] {
			_, where, err := q.move(ctx, id, from, to)
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
		moved, ids = moved+n, nil
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
