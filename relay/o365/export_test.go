package o365

// SetAfterTransaction makes f run after each transaction's last reply
// (or failure) and before the send looks at its cancellation, until the
// test ends: a test cancels there to reach a reply that came as the
// send was cancelled.
func SetAfterTransaction(t interface{ Cleanup(func()) }, f func()) {
	afterTransaction = f
	t.Cleanup(func() { afterTransaction = nil })
}

// LostSlots is how many of the sender's slots, with a connection or none
// yet, are taken for lost and not given up yet.
func (s *SMTPSender) LostSlots() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for c := range s.live {
		if c.lost {
			n++
		}
	}
	return n
}
