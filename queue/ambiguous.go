package queue

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// markAmbiguousScript sets the ambiguity flag of a message that still
// exists.
//
// KEYS[1] message hash. ARGV[1] the flag's field name.
// Returns 1, or 0 when there is no such message.
var markAmbiguousScript = drainScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], '1')
return 1
`)

// MarkAmbiguous records that an attempt to deliver message id ended
// without knowing whether the upstream sent it (a 5xx or a timeout after
// the request was written). The flag stays with the message, across
// retries and restarts, so that every later attempt first asks the
// upstream whether the message went out.
func (q *Queue) MarkAmbiguous(ctx context.Context, id string) error {
	if !ValidID(id) {
		return fmt.Errorf("mark %q ambiguous: %w", id, ErrNotFound)
	}
	n, err := markAmbiguousScript.Run(ctx, q.rdb, []string{msgKey(id)}, fAmbiguous).Int()
	if err != nil {
		return fmt.Errorf("mark %s ambiguous: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("mark %s ambiguous: %w", id, ErrNotFound)
	}
	return nil
}

// Ambiguous reports whether an earlier attempt to deliver message id had
// an unknown outcome (see MarkAmbiguous).
func (q *Queue) Ambiguous(ctx context.Context, id string) (bool, error) {
	if !ValidID(id) {
		return false, nil
	}
	v, err := q.rdb.HGet(ctx, msgKey(id), fAmbiguous).Result()
	if err == redis.Nil {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("ambiguity of %s: %w", id, err)
	}
	return v == "1", nil
}
