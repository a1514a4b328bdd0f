package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Rotation is a credential's client secret rotation that created a new
// secret and waits to remove the old one: after RemoveAfter, and only once
// the new one has got a token (the breaker's record of the material that
// works shows NewFingerprint). It holds no secret.
type Rotation struct {
	Credential     string
	OldKeyID       string // the old secret's keyId in Graph
	OldHint        string
	OldFile        string // where the old secret was read, on the host that rotated
	NewKeyID       string
	NewHint        string
	NewFingerprint string
	At             time.Time // when the new secret was created
	RemoveAfter    time.Time
}

// SetRotation records a pending rotation, replacing the credential's last.
func (q *Queue) SetRotation(ctx context.Context, r Rotation) error {
	err := q.rdb.HSet(ctx, rotationKey(r.Credential), map[string]any{
		"old_key_id": r.OldKeyID, "old_hint": r.OldHint, "old_file": r.OldFile,
		"new_key_id": r.NewKeyID, "new_hint": r.NewHint, "new_fp": r.NewFingerprint,
		"at": r.At.UnixMilli(), "remove_after": r.RemoveAfter.UnixMilli(),
	}).Err()
	if err != nil {
		return fmt.Errorf("record rotation of %s: %w", r.Credential, err)
	}
	return nil
}

// PendingRotation returns the credential's pending rotation, or false.
func (q *Queue) PendingRotation(ctx context.Context, credential string) (Rotation, bool, error) {
	m, err := q.rdb.HGetAll(ctx, rotationKey(credential)).Result()
	if errors.Is(err, redis.Nil) || (err == nil && len(m) == 0) {
		return Rotation{}, false, nil
	}
	if err != nil {
		return Rotation{}, false, fmt.Errorf("read rotation of %s: %w", credential, err)
	}
	ms := func(k string) time.Time { n, _ := strconv.ParseInt(m[k], 10, 64); return time.UnixMilli(n) }
	return Rotation{Credential: credential, OldKeyID: m["old_key_id"], OldHint: m["old_hint"], OldFile: m["old_file"],
		NewKeyID: m["new_key_id"], NewHint: m["new_hint"], NewFingerprint: m["new_fp"],
		At: ms("at"), RemoveAfter: ms("remove_after")}, true, nil
}

// EndRotation forgets the credential's pending rotation.
func (q *Queue) EndRotation(ctx context.Context, credential string) error {
	if err := q.rdb.Del(ctx, rotationKey(credential)).Err(); err != nil {
		return fmt.Errorf("end rotation of %s: %w", credential, err)
	}
	return nil
}
