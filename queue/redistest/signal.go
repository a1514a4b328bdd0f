package redistest

import (
	"syscall"
	"testing"
)

// Pause stops the server with SIGSTOP: it keeps its connections and its
// port but answers nothing, like a hung Redis. Resume lets it go on.
func (s *Server) Pause(t testing.TB) {
	t.Helper()
	s.signal(t, syscall.SIGSTOP)
}

// Resume continues a server stopped by Pause.
func (s *Server) Resume(t testing.TB) {
	t.Helper()
	s.signal(t, syscall.SIGCONT)
}

func (s *Server) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if p == nil {
		t.Fatalf("redistest: send %v: redis-server on %s is not running", sig, s.Addr())
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("redistest: send %v to redis-server on %s: %v", sig, s.Addr(), err)
	}
}
