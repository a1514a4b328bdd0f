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
// KEYS[1] the message, KEYS[2] due, KEYS[3] live, KEYS[4] moving.
// ARGV[1] id, ARGV[2] now, ARGV[3] the ambiguity flag's field.
//
// Returns {1, app, from, to, body, ambiguity flag}, {0} when there is no
// message, or {2, state} when it is not waiting.
var moveOutScript = drainScript(`
local m = redis.call('HMGET', KEYS[1], 'st', 'app', 'from', 'to', 'body', ARGV[3])
if not m[1] then return {0} end
if m[1] ~= 'queued' and m[1] ~= 'moving' then return {2, m[1]} end
if m[1] == 'queued' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('SADD', KEYS[4], ARGV[1])
  redis.call('HSET', KEYS[1], 'st', 'moving', 'upd', ARGV[2])
end
return {1, m[2], m[3], m[4], m[5], m[6] or ''}
`)

// moveDoneScript deletes a moved message from its old route.
//
// KEYS[1] the message, KEYS[2] moving. ARGV[1] id.
var moveDoneScript = drainScript(`
redis.call('SREM', KEYS[2], ARGV[1])
return redis.call('DEL', KEYS[1])
`)

// Move moves a message waiting on its route (ready, scheduled or held)
// to route to, where it waits as a new message, due now, its lifetime
// and attempts starting again, and returns its id there. The route's
// mail goes on from there: another credential's route when its own no
// longer works, or was taken out of the configuration.
//
// A Move that stops half-way (the process killed, Redis lost) leaves the
// message in its old route's moving set, out of reach of the workers;
// MoveRoute of that route finishes it. The copy is stored under the
// idempotency key "moved:ID" on the new route, so that a Move run again
// stores it once.
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
	return q.move(ctx, id, m.Route, to)
}

// move is Move of message id of route from.
func (q *Queue) move(ctx context.Context, id, from, to string) (string, error) {
	rk := keysFor(from)
	res, err := moveOutScript.Run(ctx, q.rdb, []string{msgKey(id), rk.due, rk.live, rk.moving}, id, q.opts.Now().UnixMilli(), fAmbiguous).Slice()
	if err != nil {
		return "", fmt.Errorf("move %s: %w", id, err)
	}
	switch res[0].(int64) {
	case 0:
		return "", fmt.Errorf("move %s: %w", id, ErrNotFound)
	case 2:
		return "", fmt.Errorf("move %s (%s): %w", id, res[1], ErrNotMovable)
	}
	q.logChange(ctx, from)
	str := func(i int) string { v, _ := res[i].(string); return v }
	newID, _, err := q.Enqueue(ctx, Submission{Route: to, App: str(1), From: str(2), To: splitRcpts(str(3)),
		Body: []byte(str(4)), IdempotencyKey: "moved:" + id})
	if err == nil && str(5) != "" {
		// An earlier attempt may have sent it: the next one looks first.
		err = q.MarkAmbiguous(ctx, newID)
	}
	if err != nil {
		return "", fmt.Errorf("move %s to %s (it waits in %s's moving set; move the route again): %w", id, to, from, err)
	}
	if err := moveDoneScript.Run(ctx, q.rdb, []string{msgKey(id), rk.moving}, id).Err(); err != nil {
		return newID, fmt.Errorf("move %s: stored on %s as %s, but not deleted from %s (move the route again): %w", id, to, newID, from, err)
	}
	return newID, nil
}

// MoveRoute moves up to limit messages waiting on route from to route to
// (Move), first those of a move that stopped half-way, and returns how
// many it moved. Messages being sent stay.
func (q *Queue) MoveRoute(ctx context.Context, from, to string, limit int) (int, error) {
	if !ValidRoute(from) || !ValidRoute(to) || from == to {
		return 0, fmt.Errorf("move: routes %q and %q: want two valid routes", from, to)
	}
	ids, err := q.rdb.SMembers(ctx, keysFor(from).moving).Result()
	if err != nil {
		return 0, fmt.Errorf("move: %w", err)
	}
	moved := 0
	for moved < limit {
		if len(ids) == 0 {
			if ids, err = q.waitingIDs(ctx, from, min(500, limit-moved)); err != nil || len(ids) == 0 {
				return moved, err
			}
		}
		n := 0
		for _, id := range ids[:min(len(ids), limit-moved)] {
			_, err := q.move(ctx, id, from, to)
			switch {
			case errors.Is(err, ErrNotMovable), errors.Is(err, ErrNotFound):
				// Leased, or deleted, since it was listed.
			case err != nil:
				return moved + n, err
			default:
				n++
			}
		}
		if n == 0 {
			return moved, nil
		}
		moved, ids = moved+n, nil
	}
	return moved, nil
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
