package sim

import (
	"slices"
	"time"

	"github.com/emersion/go-smtp"
)

const (
	// defaultRecipientQuota is Exchange Online's recipient rate limit: a
	// mailbox may send to 10,000 recipients in a rolling 24 hours.
	defaultRecipientQuota = 10000
	// quotaWindow is the quota's rolling window.
	quotaWindow = 24 * time.Hour
)

// errQuotaExceeded is Exchange's reply at the end of DATA once the
// mailbox's recipient quota is spent.
var errQuotaExceeded = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 0},
	Message: "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message. 0.35250:0A000000, 1.36674:0A000000, 1.61250:00000000[EndDiagnosticData]"}

// quotaEntry is one sent message's recipients.
type quotaEntry struct {
	at time.Time
	n  int
}

// takeQuota counts n recipients sent by m now, or reports false, counting
// nothing, when they would take m over its quota in the rolling window.
// Entries leave from the front, oldest first, while the clock only moves
// on; after it went back, every entry is checked.
func (s *Sim) takeQuota(m *mailbox, n int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	limit := s.quota
	if limit <= 0 {
		limit = defaultRecipientQuota
	}
	now := s.now()
	if m.unordered {
		keep := m.sent[:0]
		m.used = 0
		for _, e := range m.sent {
			if now.Sub(e.at) < quotaWindow {
				keep = append(keep, e)
				m.used += e.n
			}
		}
		m.sent = keep
		m.unordered = !slices.IsSortedFunc(keep, func(a, b quotaEntry) int { return a.at.Compare(b.at) })
	} else {
		i := 0
		for i < len(m.sent) && now.Sub(m.sent[i].at) >= quotaWindow {
			m.used -= m.sent[i].n
			i++
		}
		m.sent = m.sent[i:]
	}
	if m.used+n > limit {
		return false
	}
	if k := len(m.sent); k > 0 && now.Before(m.sent[k-1].at) {
		m.unordered = true
	}
	m.sent = append(m.sent, quotaEntry{at: now, n: n})
	m.used += n
	return true
}
