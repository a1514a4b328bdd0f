package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// ReleaseSteps releases a route and returns how many steps it took.
func ReleaseSteps(ctx context.Context, q *Queue, route string, fence Fence) (int, error) {
	steps := 0
	_, err := q.releaseSteps(ctx, route, fence, func(time.Duration) { steps++ })
	return steps, err
}

// ReleaseStepsThen releases a route, calling between after the first step.
func ReleaseStepsThen(ctx context.Context, q *Queue, route string, fence Fence, between func()) error {
	steps := 0
	_, err := q.releaseSteps(ctx, route, fence, func(time.Duration) {
		if steps++; steps == 1 {
			between()
		}
	})
	return err
}

// MinuteKey is the hash of the fleet's counts of minute m (Unix minutes).
var MinuteKey = minuteKey

// CredExpiryKey is the hash of the relays' records of a credential's expiry.
var CredExpiryKey = credExpiryKey

// IdemKey holds the id of the message an idempotency key was first used
// for on a route.
var IdemKey = idemKey

// MovingKey is the set of a route's messages taken out by a move not
// finished yet.
func MovingKey(route string) string { return keysFor(route).moving }

// MessageKey is the hash of one message.
var MessageKey = msgKey

// MoveDoneHash is the SHA1 of the script that deletes a moved message
// from its old route, for tests that cut a move after its copy is stored.
var MoveDoneHash = moveDoneScript.Hash()

// SetMoveHook makes each move of q call f with the id of the message it
// took out, before it stores the copy.
func SetMoveHook(q *Queue, f func(id string)) { q.moveHook = f }

// SetMoveLockTTL sets how long q's moves hold a route's move lock
// without renewing it.
func SetMoveLockTTL(q *Queue, d time.Duration) { q.moveLockTTL = d }

// MoveLockKey is the key of a route's move lock.
func MoveLockKey(route string) string { return keysFor(route).moveLock }

// CredentialDateOwner returns the fingerprints relays recorded for the
// credential's date (see BindCredentialDate), or false when none did.
func (q *Queue) CredentialDateOwner(ctx context.Context, credential, date string) (string, bool, error) {
	v, err := q.rdb.HGet(ctx, credDateKey(credential), date).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return "", false, nil
	case err != nil:
		return "", false, fmt.Errorf("read the secret %s's date %s belongs to: %w", credential, date, err)
	}
	return v, true, nil
}
