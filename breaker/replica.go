package breaker

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// announcePolls is how many of Watch's poll periods pass between two
// announcements of this replica's name (5 s by default). Each
// announcement lasts three periods, so that a replica killed leaves no
// trace after 15 s.
const announcePolls = 10

// sharedFor is how many announcements in a row must find no other
// process before a replica's name is no longer reported as shared: two
// processes that announce at almost the same moment may swap their
// order, and one of them then finds its own id once.
const sharedFor = 3

// announceScript writes ARGV[1], this process's id, under its replica
// name KEYS[1] for ARGV[2] ms and returns the id found there: its own,
// none, an earlier process's of the same replica, or, when two replicas
// run under one name, the other's.
var announceScript = flagged(`
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return old
`)

// announcer tells whether another process runs under this replica's
// name (Options.Replica). Relays that share a name take over each
// other's live probes and notices, as if each were the other started
// again.
//
// Each announcement finds the id of the process that announced last. The
// first may find an earlier process of this replica that was killed;
// every later one finds this process's own id, unless another one
// announced since: the two then alternate, and each finds the other at
// almost every announcement.
//
// An announcer belongs to one Watch call; ReplicaShared reads its
// finding.
type announcer struct {
	s      *Set
	period time.Duration
	last   time.Time // when it last tried to announce
	made   bool      // an announcement was made
	quiet  int       // announcements in a row that found no other process
	logged time.Time // when the shared name was last logged
}

func (s *Set) newAnnouncer() *announcer {
	return &announcer{s: s, period: announcePolls * s.o.Poll, quiet: sharedFor}
}

// due reports whether the next announcement is due: at once at first,
// then every period (after a failure too), timed by the monotonic clock
// (the breaker's own clock may stand still in tests).
func (a *announcer) due() bool {
	return a.s.o.Replica != "" && (a.last.IsZero() || time.Since(a.last) >= a.period)
}

// announce makes one announcement and updates Set.ReplicaShared.
func (a *announcer) announce(ctx context.Context) error {
	s := a.s
	a.last = time.Now()
	ttl := max(3*a.period.Milliseconds(), 1)
	old, err := announceScript.Run(ctx, s.rdb, []string{replicaKey(s.o.Replica)}, s.id, ttl).Text()
	if errors.Is(err, redis.Nil) {
		old, err = "", nil
	}
	if err != nil {
		return err
	}
	first := !a.made
	a.made = true
	if !first && old != "" && old != s.id {
		a.quiet = 0
	} else if a.quiet < sharedFor {
		a.quiet++
	}
	shared := a.quiet < sharedFor
	was := s.shared.Load()
	switch {
	case shared && (!was || time.Since(a.logged) >= time.Minute):
		a.logged = time.Now()
		s.log.Error("another relay runs under this relay's replica name: give each relay its own (option replica); until then they take over each other's probes and webhooks",
			"replica", s.o.Replica)
	case !shared && was:
		s.log.Info("no other relay runs under this relay's replica name now", "replica", s.o.Replica)
	}
	s.shared.Store(shared)
	return nil
}

// ReplicaShared reports whether, at one of this replica's latest three
// announcements (made by Watch every 10 polls' time, 5 s by default),
// another running process had announced the same Options.Replica since
// this replica's previous one.
func (s *Set) ReplicaShared() bool { return s.shared.Load() }
