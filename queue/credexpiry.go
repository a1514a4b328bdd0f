package queue

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// CredentialExpiry is when a credential's secret or certificate in use
// expires, as one relay's expiry monitor last worked it out: for the
// command line, which reads no Graph and no certificate of the relays.
type CredentialExpiry struct {
	Replica   string
	ExpiresAt time.Time
	Source    string // where the date comes from: config, certificate, graph or entra
	CheckedAt time.Time
}

// SetCredentialExpiry records what one relay knows of a credential's
// expiry, replacing that relay's last record; a zero ExpiresAt removes
// it. The credential's records go keep after the last one written.
func (q *Queue) SetCredentialExpiry(ctx context.Context, credential string, e CredentialExpiry, keep time.Duration) error {
	key := credExpiryKey(credential)
	pipe := q.rdb.TxPipeline()
	if e.ExpiresAt.IsZero() {
		pipe.HDel(ctx, key, e.Replica)
	} else {
		pipe.HSet(ctx, key, e.Replica, fmt.Sprintf("%d %s %d", e.ExpiresAt.UnixMilli(), e.Source, e.CheckedAt.UnixMilli()))
		pipe.PExpire(ctx, key, keep)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("record the expiry of %s: %w", credential, err)
	}
	return nil
}

// SoonestCredentialExpiry returns the soonest date among the relays'
// records of the credential checked after since, or false when there is
// none.
func (q *Queue) SoonestCredentialExpiry(ctx context.Context, credential string, since time.Time) (CredentialExpiry, bool, error) {
	m, err := q.rdb.HGetAll(ctx, credExpiryKey(credential)).Result()
	if err != nil {
		return CredentialExpiry{}, false, fmt.Errorf("read the expiry of %s: %w", credential, err)
	}
	var soonest CredentialExpiry
	found := false
	for replica, v := range m {
		e, ok := parseCredExpiry(replica, v)
		if !ok || !e.CheckedAt.After(since) {
			continue
		}
		if !found || e.ExpiresAt.Before(soonest.ExpiresAt) {
			soonest, found = e, true
		}
	}
	return soonest, found, nil
}

func parseCredExpiry(replica, v string) (CredentialExpiry, bool) {
	f := strings.Fields(v)
	if len(f) != 3 {
		return CredentialExpiry{}, false
	}
	at, err1 := strconv.ParseInt(f[0], 10, 64)
	checked, err2 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil {
		return CredentialExpiry{}, false
	}
	return CredentialExpiry{Replica: replica, ExpiresAt: time.UnixMilli(at).UTC(), Source: f[1], CheckedAt: time.UnixMilli(checked).UTC()}, true
}
