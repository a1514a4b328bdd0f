package breaker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ProbeNow makes the next probe of an open breaker due at once, for a
// rotated secret or certificate, SIGHUP, or "holdfast breaker probe NAME".
// It reports whether the breaker was open. A breaker an operator holds
// (Hold) is not probed: it reports true and ErrHeld.
func (s *Set) ProbeNow(ctx context.Context, name string) (bool, error) {
	n, err := s.AskProbe(ctx, name)
	return n > 0 || errors.Is(err, ErrHeld), err
}

// AskProbe is ProbeNow for a caller that waits for the answer. It
// returns the request's number, counted per breaker, or 0 when the
// breaker is closed; 0 and ErrHeld when an operator holds it. The answer
// is the first probe result whose Status.Answered is at least that
// number: of a probe whose lease was granted after the request, not of
// one already under way when it was made.
func (s *Set) AskProbe(ctx context.Context, name string) (int64, error) {
	if err := validName(name); err != nil {
		return 0, err
	}
	return s.probeNow(ctx, name, "", 0)
}

// ProbeNowHere is ProbeNow for this replica's own probe loop: for
// probeHere, or until probeHere after another replica's live probe lease
// ends, no other replica takes the probe. A replica whose secret file
// just changed asks so, since the others may still have the old one.
func (s *Set) ProbeNowHere(ctx context.Context, name string) (bool, error) {
	if err := validName(name); err != nil {
		return false, err
	}
	n, err := s.probeNow(ctx, name, s.id, ms(s.o.Now().Add(probeHere)))
	return n > 0 || errors.Is(err, ErrHeld), err
}

// probeNow runs probeNowScript and returns the request's number.
func (s *Set) probeNow(ctx context.Context, name, by string, until int64) (int64, error) {
	r, err := probeNowScript.Run(ctx, s.rdb, []string{recordKey(name), spreadKey(name)}, by, until, probeHere.Milliseconds()).Int64Slice()
	if err == nil && len(r) != 2 {
		err = fmt.Errorf("reply %v", r)
	}
	if err != nil {
		return 0, fmt.Errorf("breaker %s: probe now: %w", name, err)
	}
	if r[0] == 2 {
		return 0, fmt.Errorf("breaker %s: %w", name, ErrHeld)
	}
	return r[1], nil
}

// AcquireProbe reports whether this caller is the fleet's single prober
// for the breaker: it is open, the probe is due (or was asked for with
// ProbeNow) and no other lease is live. The winner must call ProbeResult
// (or ReleaseProbe) within ProbeLease, or keep the lease with RenewProbe
// meanwhile: the lease of a prober that died lapses within ProbeLease,
// or at once for the same replica (Options.Replica) started again.
func (s *Set) AcquireProbe(ctx context.Context, name string) (bool, error) {
	if err := validName(name); err != nil {
		return false, err
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	now := s.o.Now()
	n, err := acquireScript.Run(ctx, s.rdb, []string{recordKey(name), spreadKey(name)},
		ms(now), ms(now.Add(s.o.ProbeLease)), token, s.id, s.o.Replica).Int()
	if err != nil {
		return false, fmt.Errorf("breaker %s: acquire probe: %w", name, err)
	}
	if n != 1 {
		return false, nil
	}
	s.mu.Lock()
	s.entry(name).token = token
	s.mu.Unlock()
	return true, nil
}

// RenewProbe keeps the probe lease this replica holds for another
// ProbeLease. It returns ErrLeaseLost when this replica does not hold it.
func (s *Set) RenewProbe(ctx context.Context, name string) error {
	token, err := s.leaseToken(name)
	if err != nil {
		return err
	}
	err = leaseScript.Run(ctx, s.rdb, []string{recordKey(name), spreadKey(name)}, token, "renew", ms(s.o.Now().Add(s.o.ProbeLease))).Err()
	return s.leaseErr(name, "renew probe", err)
}

// ReleaseProbe gives the probe lease this replica holds back with no
// result, due at once for any other replica: for a replica that found
// it cannot probe (its secret is older than the one that works). It
// returns ErrLeaseLost when this replica does not hold the lease.
func (s *Set) ReleaseProbe(ctx context.Context, name string) error {
	token, err := s.leaseToken(name)
	if err != nil {
		return err
	}
	err = leaseScript.Run(ctx, s.rdb, []string{recordKey(name), spreadKey(name)}, token, "release", 0).Err()
	if err == nil || strings.Contains(err.Error(), "lease lost") {
		s.mu.Lock()
		if e := s.brks[name]; e != nil && e.token == token {
			e.token = ""
		}
		s.mu.Unlock()
	}
	return s.leaseErr(name, "release probe", err)
}

// leaseToken is the token of the probe lease this replica holds.
func (s *Set) leaseToken(name string) (string, error) {
	if err := validName(name); err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.brks[name]; e != nil && e.token != "" {
		return e.token, nil
	}
	return "", fmt.Errorf("breaker %s: %w", name, ErrLeaseLost)
}

// leaseErr names a failed lease script's error, ErrLeaseLost included.
func (s *Set) leaseErr(name, what string, err error) error {
	switch {
	case err == nil:
		return nil
	case strings.Contains(err.Error(), "lease lost"):
		return fmt.Errorf("breaker %s: %w", name, ErrLeaseLost)
	}
	return fmt.Errorf("breaker %s: %s: %w", name, what, err)
}

// ProbeResult records the result of the probe this replica acquired: nil
// closes the breaker; an error keeps it open with the error's reason and
// doubles the open interval up to MaxInterval. It returns ErrLeaseLost
// when this replica does not hold the lease. After another error the
// result was not written, and can be tried again.
func (s *Set) ProbeResult(ctx context.Context, name string, probeErr error) error {
	return s.probeResult(ctx, name, probeErr, 0)
}

// ProbeRetry records a failed probe that is to be tried again after
// after, by this replica (others may take it probeHere later), without
// doubling the open interval: for a secret just rotated that Entra has
// not yet propagated. It returns ErrLeaseLost when this replica does not
// hold the lease.
func (s *Set) ProbeRetry(ctx context.Context, name string, probeErr error, after time.Duration) error {
	if probeErr == nil || after <= 0 {
		return fmt.Errorf("breaker %s: probe retry needs a failure and a positive delay", name)
	}
	return s.probeResult(ctx, name, probeErr, after)
}

func (s *Set) probeResult(ctx context.Context, name string, probeErr error, retry time.Duration) error {
	if err := validName(name); err != nil {
		return err
	}
	s.mu.Lock()
	e := s.entry(name)
	token := e.token
	e.token = ""
	s.mu.Unlock()
	if token == "" {
		return fmt.Errorf("breaker %s: %w", name, ErrLeaseLost)
	}
	success := "0"
	if probeErr == nil {
		success = "1"
	}
	now := s.o.Now()
	_, err := s.run(ctx, resultScript, name, token, ms(now), success, Reason(probeErr),
		s.o.MaxInterval.Milliseconds(), retry.Milliseconds(), s.id, ms(now.Add(retry+probeHere)))
	err = s.leaseErr(name, "probe result", err)
	if err != nil && !errors.Is(err, ErrLeaseLost) {
		// Not written (Redis away): the lease is still this replica's,
		// and the result can be written again while it lasts.
		s.mu.Lock()
		if e.token == "" {
			e.token = token
		}
		s.mu.Unlock()
	}
	return err
}
