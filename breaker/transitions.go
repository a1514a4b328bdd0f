package breaker

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// logKeep is how many transitions the fleet's log keeps.
const logKeep = 100

// logEntry is a transition as the log stores it. From is left out: it is
// one replica's view, while the rest is the same on every replica, so that
// every replica that sees a transition writes the same member and the log
// holds it once.
type logEntry struct {
	Name       string `json:"breaker"`
	To         string `json:"to"`
	Reason     string `json:"reason,omitempty"`
	At         int64  `json:"at"`
	Generation int64  `json:"generation"`
}

// logTransition adds a transition to the fleet's log. A failure is only
// logged: the log is for people, the record decides.
func (s *Set) logTransition(tr Transition) {
	e := logEntry{Name: tr.Name, To: tr.To.String(), Reason: tr.Reason, At: tr.At.UnixMilli(), Generation: tr.Generation}
	member, err := json.Marshal(e)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZAddNX(ctx, logKey, redis.Z{Score: float64(e.At), Member: string(member)})
		p.ZRemRangeByRank(ctx, logKey, 0, -logKeep-1)
		return nil
	})
	if err != nil {
		s.log.Warn("cannot add to the breaker transition log", "breaker", tr.Name, "err", err)
	}
}

// Recent returns up to n of the fleet's latest transitions, newest first.
// Their From is the opposite of To.
func (s *Set) Recent(ctx context.Context, n int) ([]Transition, error) {
	members, err := s.rdb.ZRevRange(ctx, logKey, 0, int64(n-1)).Result()
	if err != nil {
		return nil, fmt.Errorf("breaker: transition log: %w", err)
	}
	out := make([]Transition, 0, len(members))
	for _, m := range members {
		var e logEntry
		if json.Unmarshal([]byte(m), &e) != nil {
			continue
		}
		tr := Transition{Name: e.Name, Reason: e.Reason, At: time.UnixMilli(e.At).UTC(), Generation: e.Generation, To: Closed, From: Open}
		if e.To == Open.String() {
			tr.To, tr.From = Open, Closed
		}
		out = append(out, tr)
	}
	return out, nil
}
