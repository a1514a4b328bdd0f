package relay

import (
	"sync"
	"time"
)

// logSampler lets one log line a key through per interval and says, on
// the next line it lets through, how many it held back: a flood of
// refusals from one address writes a line every interval, not one per
// refusal, while the metrics still count each. A nil sampler lets every
// line through.
type logSampler struct {
	every time.Duration
	now   func() time.Time

	mu   sync.Mutex
	keys map[string]*sampledKey
}

type sampledKey struct {
	last time.Time
	held int
}

// logSampleEvery is how often a key's line is written while it floods.
const logSampleEvery = 10 * time.Second

// maxSampledKeys bounds the sampler's memory; past it, it starts afresh.
const maxSampledKeys = 10000

func newLogSampler(every time.Duration) *logSampler {
	return &logSampler{every: every, now: time.Now, keys: map[string]*sampledKey{}}
}

// allow reports whether a line for key may be written now, and how many
// lines of the key were held back since the last one written.
func (s *logSampler) allow(key string) (ok bool, held int) {
	if s == nil {
		return true, 0
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.keys[key]
	if k == nil {
		if len(s.keys) >= maxSampledKeys {
			clear(s.keys)
		}
		s.keys[key] = &sampledKey{last: now}
		return true, 0
	}
	if now.Sub(k.last) < s.every {
		k.held++
		return false, 0
	}
	held, k.held, k.last = k.held, 0, now
	return true, held
}

// withHeld adds the count of lines held back to attrs, when there were
// any.
func withHeld(attrs []any, held int) []any {
	if held > 0 {
		attrs = append(attrs, "like_lines_held_back", held)
	}
	return attrs
}
