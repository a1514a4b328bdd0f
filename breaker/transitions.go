package breaker

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// logKeep is how many transitions the fleet's log keeps.
const logKeep = 100

// logEntry is a transition as the log stores it. From is left out: it is
// one replica's view. Every replica that sees a transition writes it, and
// the log holds it once: one entry per breaker, state and time (logScript).
// The reason can differ between them: an operator's trip of an open
// breaker replaces its record's reason, and a replica that reads the
// record for the first time after that finds the same opening with the
// new reason. The log keeps the first.
type logEntry struct {
	Name       string `json:"breaker"`
	To         string `json:"to"`
	Reason     string `json:"reason,omitempty"`
	At         int64  `json:"at"`
	Generation int64  `json:"generation"`
}

// logScript adds member ARGV[2] at score ARGV[1] (the transition's time)
// to the log KEYS[1], unless it holds an entry of the same breaker
// (ARGV[4]) and state (ARGV[5]) at that time, and keeps the newest
// ARGV[3]. It runs past maxmemory: the log is bounded, and the
// transitions of a breaker that held mail until Redis filled are the ones
// an operator looks for afterwards.
var logScript = flagged(`
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1])) do
  local ok, e = pcall(cjson.decode, m)
  if ok and type(e) == 'table' and e.breaker == ARGV[4] and e.to == ARGV[5] then return 0 end
end
redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[3]) - 1)
return 1`)

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
	if err := logScript.Run(ctx, s.rdb, []string{logKey}, e.At, member, logKeep, e.Name, e.To).Err(); err != nil {
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
