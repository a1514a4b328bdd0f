package queue

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// CredentialExpiry is when a credential's secret or certificate in use
// expires, as one relay's expiry monitor last worked it out: for the
// command line, which reads no Graph and no certificate of the relays.
type CredentialExpiry struct {
	Replica string
	// ExpiresAt is zero when the relay knows no date.
	ExpiresAt time.Time
	Source    string // where the date comes from: config, certificate, graph or entra
	CheckedAt time.Time
	// Until is when the record stops counting: its relay checks again
	// before then, unless it stopped.
	Until time.Time
}

// setCredExpiryScript replaces one relay's record (ARGV[1]) with ARGV[2],
// or removes it when ARGV[2] is "", removes the records past their Until
// at ARGV[3] (unix ms), and keeps the hash until the last Until left.
var setCredExpiryScript = redis.NewScript(`
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
local now, last = tonumber(ARGV[3]), 0
local kv = redis.call('HGETALL', KEYS[1])
for i = 1, #kv, 2 do
  local untilMs = tonumber(string.match(kv[i + 1], '(%d+)$') or '0')
  if untilMs <= now then
    redis.call('HDEL', KEYS[1], kv[i])
  elseif untilMs > last then
    last = untilMs
  end
end
if last > 0 then redis.call('PEXPIREAT', KEYS[1], last) end
return 0
`)

// noDateSource stands for the source in the record of a relay that
// knows no date, whose Source is empty.
const noDateSource = "-"

// SetCredentialExpiry records what one relay knows of a credential's
// expiry, replacing that relay's last record; a zero ExpiresAt records
// that it knows no date (as 0, source "-"). The records of every relay
// past their Until go (a relay stopped, a pod replaced), and the hash
// goes with the last of them.
func (q *Queue) SetCredentialExpiry(ctx context.Context, credential string, e CredentialExpiry) error {
	ms, src := int64(0), noDateSource
	if !e.ExpiresAt.IsZero() {
		ms, src = e.ExpiresAt.UnixMilli(), e.Source
	}
	v := fmt.Sprintf("%d %s %d %d", ms, src, e.CheckedAt.UnixMilli(), e.Until.UnixMilli())
	err := setCredExpiryScript.Run(ctx, q.rdb, []string{credExpiryKey(credential)}, e.Replica, v, e.CheckedAt.UnixMilli()).Err()
	if err != nil {
		return fmt.Errorf("record the expiry of %s: %w", credential, err)
	}
	return nil
}

// SoonestCredentialExpiry returns the soonest date among the relays'
// records of the credential that still count at now; a record of no date
// (zero ExpiresAt) when every one that counts knows none; false when
// none counts.
func (q *Queue) SoonestCredentialExpiry(ctx context.Context, credential string, now time.Time) (CredentialExpiry, bool, error) {
	m, err := q.rdb.HGetAll(ctx, credExpiryKey(credential)).Result()
	if err != nil {
		return CredentialExpiry{}, false, fmt.Errorf("read the expiry of %s: %w", credential, err)
	}
	var soonest CredentialExpiry
	found := false
	for replica, v := range m {
		e, ok := parseCredExpiry(replica, v)
		if !ok || !e.Until.After(now) {
			continue
		}
		if !found || soonest.ExpiresAt.IsZero() || (!e.ExpiresAt.IsZero() && e.ExpiresAt.Before(soonest.ExpiresAt)) {
			soonest, found = e, true
		}
	}
	return soonest, found, nil
}

func parseCredExpiry(replica, v string) (CredentialExpiry, bool) {
	f := strings.Fields(v)
	if len(f) != 4 {
		return CredentialExpiry{}, false
	}
	var ms [3]int64
	for i, s := range []string{f[0], f[2], f[3]} {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return CredentialExpiry{}, false
		}
		ms[i] = n
	}
	e := CredentialExpiry{Replica: replica, Source: f[1], CheckedAt: time.UnixMilli(ms[1]).UTC(), Until: time.UnixMilli(ms[2]).UTC()}
	if ms[0] != 0 {
		e.ExpiresAt = time.UnixMilli(ms[0]).UTC()
	}
	if e.Source == noDateSource {
		e.Source = ""
	}
	return e, true
}

// bindDateScript records ARGV[2] for field ARGV[1] unless a value is
// there already, or, when ARGV[3] is "1", adds it to the fingerprints
// there, separated by spaces; it returns the value kept.
var bindDateScript = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then
  v = ARGV[2]
elseif ARGV[3] == '1' then
  for fp in string.gmatch(v, '%S+') do
    if fp == ARGV[2] then return v end
  end
  v = v .. ' ' .. ARGV[2]
else
  return v
end
redis.call('HSET', KEYS[1], ARGV[1], v)
return v
`)

// BindCredentialDate records that an end date given for a credential
// (date: where it comes from and the date, e.g. "config
// 2027-02-14T00:00:00Z") belongs to the secret or certificate whose
// fingerprint is fingerprint, unless some relay recorded it for another
// before, and returns the fingerprints the date belongs to, separated
// by spaces: the first one seen with it across the fleet and its
// restarts, and each one it was stated for since. stated says the date
// was written for this one (auth.Credential.DateStatedFor): it is then
// added to those the date belongs to, as two secrets may end on the
// same date. The hash holds one field per date ever given, and no
// deadline.
func (q *Queue) BindCredentialDate(ctx context.Context, credential, date, fingerprint string, stated bool) (string, error) {
	flag := "0"
	if stated {
		flag = "1"
	}
	v, err := bindDateScript.Run(ctx, q.rdb, []string{credDateKey(credential)}, date, fingerprint, flag).Text()
	if err != nil {
		return "", fmt.Errorf("record the secret %s's date %s belongs to: %w", credential, date, err)
	}
	return v, nil
}

// DateBelongsTo reports whether fingerprint is among owners, as
// BindCredentialDate returns them.
func DateBelongsTo(owners, fingerprint string) bool {
	return slices.Contains(strings.Fields(owners), fingerprint)
}
