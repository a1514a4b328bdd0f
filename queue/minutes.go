package queue

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Per-minute counts are kept in Redis so that every replica's status page
// shows the whole fleet: each replica adds what it delivered, and samples
// how many messages are held, into the hash of the current minute, which
// expires after MinuteRetention.
//
// Minute hash fields:
//
//	delivered  messages delivered in the minute, fleet-wide
//	held       messages held at the last sample taken in the minute
//	lt:I       deliveries whose latency fell in bucket I of the caller's
//	           bucket list
//	lat:I      the same, written by relays whose bucket list was an
//	           earlier one (Minute.EarlierLatency); this version no longer
//	           writes it, and reads it until its minutes expire
const (
	fMinDelivered      = "delivered"
	fMinHeld           = "held"
	fMinLatency        = "lt:"
	fMinLatencyEarlier = "lat:"
)

// MinuteRetention is how long a minute's counts are kept.
const MinuteRetention = 2 * time.Hour

// MinuteDelta is what one replica adds to a minute.
type MinuteDelta struct {
	Delivered int64
	// Held, when not negative, replaces the minute's held sample.
	Held int64
	// Latency counts deliveries by latency bucket index.
	Latency map[int]int64
}

// Minute is the fleet's counts of one minute.
type Minute struct {
	Start     time.Time
	Delivered int64
	Held      int64
	Latency   map[int]int64
	// EarlierLatency counts deliveries by bucket index in the caller's
	// earlier bucket list, as relays that used it recorded them.
	EarlierLatency map[int]int64
}

// AddMinute adds d to the counts of the minute holding at, in one round
// trip.
func (q *Queue) AddMinute(ctx context.Context, at time.Time, d MinuteDelta) error {
	key := minuteKey(at.Unix() / 60)
	_, err := q.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		if d.Delivered != 0 {
			p.HIncrBy(ctx, key, fMinDelivered, d.Delivered)
		}
		if d.Held >= 0 {
			p.HSet(ctx, key, fMinHeld, d.Held)
		}
		for i, n := range d.Latency {
			if n != 0 {
				p.HIncrBy(ctx, key, fMinLatency+strconv.Itoa(i), n)
			}
		}
		p.Expire(ctx, key, MinuteRetention)
		return nil
	})
	if err != nil {
		return fmt.Errorf("minute counts: %w", err)
	}
	return nil
}

// Minutes returns the counts of the n minutes up to and including the one
// holding end, oldest first, in one round trip. A minute nobody recorded
// has zero counts.
func (q *Queue) Minutes(ctx context.Context, end time.Time, n int) ([]Minute, error) {
	last := end.Unix() / 60
	cmds := make([]*redis.MapStringStringCmd, n)
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range n {
			cmds[i] = p.HGetAll(ctx, minuteKey(last-int64(n-1-i)))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("minute counts: %w", err)
	}
	out := make([]Minute, n)
	for i, c := range cmds {
		m := Minute{Start: time.Unix((last-int64(n-1-i))*60, 0).UTC(), Latency: map[int]int64{}, EarlierLatency: map[int]int64{}}
		for k, v := range c.Val() {
			switch {
			case k == fMinDelivered:
				m.Delivered = atoi(v)
			case k == fMinHeld:
				m.Held = atoi(v)
			case strings.HasPrefix(k, fMinLatency):
				if b, err := strconv.Atoi(k[len(fMinLatency):]); err == nil {
					m.Latency[b] += atoi(v)
				}
			case strings.HasPrefix(k, fMinLatencyEarlier):
				if b, err := strconv.Atoi(k[len(fMinLatencyEarlier):]); err == nil {
					m.EarlierLatency[b] += atoi(v)
				}
			}
		}
		out[i] = m
	}
	return out, nil
}
