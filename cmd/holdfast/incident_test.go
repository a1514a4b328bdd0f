package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
)

// incidentFigures are what BenchmarkIncident reports.
type incidentFigures struct {
	// wasted counts the upstream requests wasted between the expiry of
	// the secret and the rotation: failed token requests plus rejected
	// SMTP AUTH attempts (the growth of the simulator's TokenErrors and
	// SMTPAuthFailures over that span). Once the secret has expired every
	// token request fails, so every token request of the span counts,
	// the probes' included. An SMTP AUTH with a token issued before the
	// expiry still succeeds and delivers mail (the relays had not noticed,
	// and had no reason to), so only rejected ones count.
	wasted int
	// probes is the token requests made under the open breaker once every
	// replica had stopped: the probes.
	probes int
	// held is how many messages were held at the rotation.
	held int
	// toClosed runs from the rotation (the secret rotated at Entra and its
	// file rewritten) to the breaker shown closed by both replicas, and
	// toSettled to the last time it was shown closed (later when it
	// opened again, see reopens). toFirst and toDrained run from the
	// rotation to the first and to the last delivery of the backlog.
	toClosed, toSettled, toFirst, toDrained time.Duration
	// reopens counts the times the breaker opened again after the
	// rotation had closed it.
	reopens int
}

// runIncident runs the scenario of TestIncident and returns its figures.
// Its phases:
//
//  1. Messages are submitted over SMTP across 10 mailboxes, to both
//     replicas, while delivery runs, at most 50 waiting at any time.
//  2. Once 300 are delivered, with up to 50 more in flight, the simulator
//     expires the secret (AADSTS7000222 from then on). Connections
//     authenticated before, and tokens issued before, keep working until
//     they are replaced, as in Exchange Online.
//  3. Submission goes on slowly; the first token request fails and opens
//     the breaker. The rest of the 1,000 messages are submitted during an
//     outage of 8 s, several probe intervals, plus a random part of the
//     relays' 1 s secret file re-read interval, so that the rotation
//     falls anywhere in it.
//  4. The secret is rotated at Entra and in the file the relays read; the
//     breaker closes without a restart and the backlog drains.
func runIncident(tb testing.TB) incidentFigures {
	tb.Helper()
	const (
		total       = 1000
		expireAfter = 300              // delivered messages
		backlog     = 50               // most messages accepted but not yet delivered in phase 1
		outage      = 8 * time.Second  // from the breaker opening to the rotation, at least
		feedStop    = 7 * time.Second  // from the breaker opening to the last submission
		drainWithin = 20 * time.Second // from the rotation to every message delivered
	)
	ctx := tb.Context()
	f := startIncFleet(tb, incFleetOptions{mailboxes: 10})
	defer f.close()
	smp := f.startSampler()
	polls := f.pollBreaker(incCred)
	sub := f.startSubmitter(4, func(n int) string { return f.mailboxes[n%len(f.mailboxes)] })

	// Phase 1: steady delivery.
	next, delivered := 0, 0
	deadline := time.Now().Add(10 * time.Second)
	for next < expireAfter {
		if next-delivered < backlog {
			sub.submit(next)
			next++
			continue
		}
		if time.Now().After(deadline) {
			tb.Fatalf("only %d of %d messages delivered within 10s", delivered, next)
		}
		time.Sleep(10 * time.Millisecond)
		delivered = f.delivered()
	}

	// Phase 2: the secret expires with mail in flight.
	atExpiry := f.counters()
	tExpiry := time.Now()
	f.sim.ExpireSecret(incTenant, incClientID)
	if atExpiry.TokenErrors != 0 || atExpiry.SMTPAuthFailures != 0 {
		tb.Errorf("failures before the secret expired: %+v", atExpiry)
	}

	// Phase 3: one message per mailbox every 2.5 s until the breaker
	// opens (the first one should open it), then the rest evenly.
	slow := time.NewTicker(2500 * time.Millisecond / time.Duration(len(f.mailboxes)))
	defer slow.Stop()
	deadline = time.Now().Add(5 * time.Second)
	var since time.Time
	for {
		for _, p := range polls {
			if o, ok := p.first(tExpiry, isOpen); ok && since.IsZero() {
				since = o.st.Since
			}
		}
		if !since.IsZero() {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the credential breaker did not open within 5s of mail needing a token")
		}
		sub.submit(next)
		next++
		<-slow.C
	}
	if since.Before(tExpiry) {
		tb.Fatalf("the breaker opened at %v, before the expiry at %v", since, tExpiry)
	}
	tb.Logf("secret expired after %d deliveries; breaker open %v later", expireAfter, since.Sub(tExpiry).Round(time.Millisecond))
	start, remaining := time.Now(), total-next
	step := time.Until(since.Add(feedStop)) / time.Duration(max(remaining, 1))
	var heldEarly map[string]int
	for i := 0; next < total; i, next = i+1, next+1 {
		incSleepUntil(start.Add(time.Duration(i) * step))
		sub.submit(next)
		if heldEarly == nil && time.Now().After(since.Add(incPropagation)) {
			heldEarly = f.heldSnapshot(ctx, "early in the outage")
		}
	}
	sub.close()
	subs := sub.results(tb, total)
	incSleepUntil(since.Add(outage + rand.N(incReload)))
	heldLate := f.heldSnapshot(ctx, "at the rotation")
	deliveredAtRotation := f.delivered()
	atRotation := f.counters()

	// Phase 4: the rotation. Each relay re-reads the file within 5 s; the
	// first to see it asks for a probe, which closes the breaker. A relay
	// that has not re-read it yet still has the old secret: its token
	// requests fail (AADSTS7000215) until it does, which defers their
	// messages by backoff_base (incBackoff) or, at 3 failures, opens the
	// breaker again until its next probe. The test counts that (reopens)
	// and bounds it, but allows it.
	f.sim.RotateSecret(incTenant, incClientID, incRotated)
	incWriteFile(tb, f.secretFile, incRotated+"\n")
	tRotation := time.Now()
	closedAt := make([]time.Time, len(polls))
	incWait(tb, 5*time.Second, "the breaker closed on both relays within 5 s of the rotation", func() bool {
		for i, p := range polls {
			if o, ok := p.first(tRotation, isClosed); ok {
				closedAt[i] = o.at
			}
		}
		return !slices.ContainsFunc(closedAt, time.Time.IsZero)
	})
	f.waitDelivered(total, drainWithin)
	time.Sleep(500 * time.Millisecond) // room for a duplicate to show
	smp.stop()
	f.checkRunning()
	received := f.sim.Received()
	counters := f.sim.Counters()
	for _, p := range polls {
		p.checkErrors(tb)
	}

	// The breaker opened at the first failure, and both endpoints said so
	// within 1 s, with the reason.
	for _, p := range polls {
		o, ok := p.first(tExpiry, isOpen)
		if !ok {
			tb.Errorf("relay-%d: the endpoint never showed the breaker open", p.relay+1)
			continue
		}
		if lag := o.at.Sub(since); lag > time.Second {
			tb.Errorf("relay-%d: the endpoint showed the breaker open %v after it opened, want within 1s", p.relay+1, lag)
		}
		if !o.st.Since.Equal(since) || o.st.Kind != "credential" || !strings.Contains(o.st.Reason, "AADSTS7000222") {
			tb.Errorf("relay-%d: open breaker shown as %+v, want kind credential, since %v and the AADSTS7000222 reason", p.relay+1, o.st, since)
		}
		if o.st.Failures > 3 {
			tb.Errorf("relay-%d: the breaker opened after %d failures, want at most 3", p.relay+1, o.st.Failures)
		}
		for _, x := range p.between(o.at, tRotation) {
			if !isOpen(x.st) || !strings.Contains(x.st.Reason, "AADSTS7000222") {
				tb.Errorf("relay-%d: during the outage the breaker showed %s (%s)", p.relay+1, x.st.State, x.st.Reason)
				break
			}
		}
	}

	// Upstream traffic from the expiry to the rotation.
	samples := append(smp.between(tExpiry, tRotation), incSample{at: tRotation, c: atRotation})
	quiet := since.Add(incPropagation) // every replica has stopped by then
	k := slices.IndexFunc(samples, func(s incSample) bool { return !s.at.Before(quiet) })
	if k <= 0 {
		tb.Fatalf("no counter samples around %v", quiet)
	}
	// Until every replica saw the breaker open: the failure that opened
	// it, and those of a replica whose view was up to 500 ms old. The
	// breaker opens at the first AADSTS7000222, so at most the threshold
	// of 3 fail fleet-wide.
	if n := samples[k].c.TokenErrors - atExpiry.TokenErrors; n < 1 || n > 3 {
		tb.Errorf("%d failed token requests between the expiry and %v after the breaker opened, want 1 to 3", n, incPropagation)
	}
	// Then until the rotation: no SMTP AUTH, and at most one token
	// request (a probe) per probe interval across both replicas.
	probes := checkProbes(tb, samples[k:], since, func(c sim.ClientCounters) int { return c.TokenRequests })
	if probes == 0 {
		tb.Errorf("no probe during an outage of %v (open_interval %v)", outage, incOpenInterval)
	}
	if n := counters.Clients[incClientID].SMTPAuthFailures; n != 0 {
		tb.Errorf("%d SMTP AUTH attempts rejected: the relays must not AUTH with a token that cannot work", n)
	}
	// No SMTP AUTH at all once every replica has seen the breaker open.
	if n := atRotation.SMTPAuthAttempts - samples[k].c.SMTPAuthAttempts; n != 0 {
		tb.Errorf("%d SMTP AUTH attempts under the open breaker, before the rotation, want none", n)
	}

	// Both relays kept accepting mail during the outage: every submission
	// got 250 (see results), and each relay took some after the breaker
	// opened.
	during := make([]int, len(f.relays))
	for _, s := range subs {
		if s.at.After(since) && s.at.Before(tRotation) {
			during[s.relay]++
		}
	}
	for i, n := range during {
		if n == 0 {
			tb.Errorf("relay-%d accepted no mail during the outage", i+1)
		}
	}

	// Held mail spent no attempt, and everything undelivered was held.
	if len(heldEarly) == 0 {
		tb.Errorf("no mail held early in the outage")
	}
	for what, h := range map[string]map[string]int{"early in the outage": heldEarly, "at the rotation": heldLate} {
		for id, a := range h {
			if a != 0 {
				tb.Errorf("%s: held message %s has spent %d attempts", what, id, a)
			}
		}
	}
	if len(heldLate) != total-deliveredAtRotation {
		tb.Errorf("%d messages held at the rotation, want the %d undelivered", len(heldLate), total-deliveredAtRotation)
	}
	for id := range heldEarly {
		if _, ok := heldLate[id]; !ok {
			tb.Errorf("message %s held early in the outage left the hold before the rotation", id)
		}
	}

	// The rotation, without a restart (checkRunning), closed the breaker
	// on both relays within 5 s (checked above). Each relay saw the
	// rewritten file within its 1 s re-read interval, or earlier when it
	// probed or saw the breaker close; the first successful probe closed
	// the breaker within a probe tick of a relay seeing it. A relay that
	// still had the old secret could open the breaker again; the test
	// counts that (reopens) and bounds how long it lasts.
	var fig incidentFigures
	var lastSeen, firstClose time.Time
	for _, r := range f.relays {
		seen := r.logEntries("credential file changed; the next token request uses it")
		if len(seen) != 1 {
			tb.Errorf("%s logged the changed secret file %d times, want once", r.name, len(seen))
			continue
		}
		if d := seen[0].Time.Sub(tRotation); d > incReload+500*time.Millisecond {
			tb.Errorf("%s saw the rewritten secret file %v after the rotation, want within %v", r.name, d.Round(time.Millisecond), incReload)
		}
		if seen[0].Time.After(lastSeen) {
			lastSeen = seen[0].Time
		}
		for _, e := range r.logEntries("breaker transition") {
			if e.Breaker == incCred && e.To == "closed" && e.Time.After(tRotation) && (firstClose.IsZero() || e.Time.Before(firstClose)) {
				firstClose = e.Time
			}
		}
	}
	final, _ := polls[0].last()
	switch {
	case firstClose.IsZero() || lastSeen.IsZero():
		tb.Errorf("no relay logged the breaker closing after the rotation")
	case !isClosed(final.st):
		tb.Errorf("the breaker ended %s (%s), want closed", final.st.State, final.st.Reason)
	case firstClose.Sub(lastSeen) > incProbeTick+time.Second:
		tb.Errorf("the breaker first closed %v after the last relay saw the new secret, want within %v",
			firstClose.Sub(lastSeen).Round(time.Millisecond), incProbeTick+time.Second)
	case final.st.Since.Sub(lastSeen) > incOpenInterval+incProbeTick+1500*time.Millisecond:
		tb.Errorf("the breaker closed for good %v after the last relay saw the new secret, want within %v",
			final.st.Since.Sub(lastSeen).Round(time.Millisecond), incOpenInterval+incProbeTick+1500*time.Millisecond)
	}
	fig.toClosed = firstClose.Sub(tRotation)
	fig.toSettled = final.st.Since.Sub(tRotation)
	// Each transition bumps the generation: open at the rotation, then
	// closed, and open and closed again for each reopening.
	if atRot, ok := polls[0].first(tRotation.Add(-time.Second), isOpen); ok && isClosed(final.st) {
		fig.reopens = int(final.st.Generation-atRot.st.Generation-1) / 2
	}

	// Every message delivered exactly once, and nothing else (no bounce).
	seen := map[string]int{}
	for _, r := range received {
		seen[r.MessageID]++
	}
	for n := range total {
		if c := seen[incMessageID(n)]; c != 1 {
			tb.Errorf("message %d delivered %d times, want once", n, c)
		}
		delete(seen, incMessageID(n))
	}
	for id, c := range seen {
		tb.Errorf("Exchange received %d unexpected messages %s", c, id)
	}
	f.checkEmpty(ctx)

	// One attempt each, at the mailbox's pace: no 60 s window of a
	// mailbox's deliveries holds more than messages_per_minute, and no
	// more than 3 connections at once.
	done := map[string][]time.Time{}
	fig.toFirst = drainWithin
	for n, s := range subs {
		m, err := f.q.Get(ctx, s.queueID)
		if err != nil {
			tb.Errorf("message %d: %v", n, err)
			continue
		}
		if m.State != queue.Delivered || m.Attempts != 1 {
			tb.Errorf("message %d: %s after %d attempts, want delivered after 1", n, m.State, m.Attempts)
		}
		done[s.from] = append(done[s.from], m.Done)
		if d := m.Done.Sub(tRotation); d > 0 {
			fig.toFirst = min(fig.toFirst, d)
			fig.toDrained = max(fig.toDrained, d)
		}
	}
	f.checkMailboxLimits(done, counters)
	var after []time.Duration // delivery times of the backlog, from the rotation
	for _, times := range done {
		for _, d := range times {
			if d.After(tRotation) {
				after = append(after, d.Sub(tRotation))
			}
		}
	}
	slices.Sort(after)
	if n := len(after); n > 0 {
		tb.Logf("backlog of %d delivered from the rotation: first %v, half %v, 90%% %v, all %v", n,
			after[0].Round(time.Millisecond), after[n/2].Round(time.Millisecond),
			after[n*9/10].Round(time.Millisecond), after[n-1].Round(time.Millisecond))
	}

	fig.wasted = atRotation.TokenErrors - atExpiry.TokenErrors + atRotation.SMTPAuthFailures - atExpiry.SMTPAuthFailures
	fig.probes = probes
	fig.held = len(heldLate)
	tb.Logf("wasted upstream requests %d (probes %d); %d held; from the rotation: closed %v, first delivery %v, drained %v; reopened %d times, settled closed %v",
		fig.wasted, fig.probes, fig.held, fig.toClosed.Round(time.Millisecond), fig.toFirst.Round(time.Millisecond),
		fig.toDrained.Round(time.Millisecond), fig.reopens, fig.toSettled.Round(time.Millisecond))
	return fig
}

// checkProbes checks the samples taken under an open breaker once every
// replica had stopped: no SMTP AUTH attempt, and the requests counted by
// count (token requests, or failed ones) at most one per probe interval.
// It returns how many it counted. A request is placed in time by the
// sample that first counted it, so it happened in (previous sample,
// sample].
func checkProbes(tb testing.TB, samples []incSample, since time.Time, count func(sim.ClientCounters) int) int {
	tb.Helper()
	var at []int // indexes of the samples that counted a request, once per request
	for i := 1; i < len(samples); i++ {
		prev, cur := samples[i-1], samples[i]
		if d := cur.c.SMTPAuthAttempts - prev.c.SMTPAuthAttempts; d != 0 {
			tb.Errorf("%d SMTP AUTH attempts under the open breaker, %v after it opened", d, cur.at.Sub(since).Round(time.Millisecond))
		}
		d := count(cur.c) - count(prev.c)
		if d > 1 {
			tb.Errorf("%d token requests within %v under the open breaker", d, cur.at.Sub(prev.at).Round(time.Millisecond))
		}
		for range d {
			at = append(at, i)
		}
	}
	for j := 1; j < len(at); j++ {
		// Certainly closer than the interval: from the sample before the
		// earlier request to the sample that counted the later one.
		if a, b := samples[at[j-1]-1], samples[at[j]]; b.at.Sub(a.at) < incOpenInterval {
			tb.Errorf("token requests %v and %v after the breaker opened: two within one probe interval (%v)",
				samples[at[j-1]].at.Sub(since).Round(time.Millisecond), b.at.Sub(since).Round(time.Millisecond), incOpenInterval)
		}
	}
	return len(at)
}

// checkEmpty fails the test unless every message is delivered.
func (f *incFleet) checkEmpty(ctx context.Context) {
	f.tb.Helper()
	st, err := f.q.Stats(ctx)
	if err != nil {
		f.tb.Fatal(err)
	}
	if w := st.Total; w.Ready+w.Scheduled+w.Leased+w.Held+w.Dead != 0 {
		f.tb.Errorf("the queue still holds mail: %+v", w)
	}
}

// checkMailboxLimits checks each mailbox's deliveries (their times, from
// the queue) against messages_per_minute over every 60 s window, and its
// concurrent connections against Exchange's 3. At this test's scale (at
// most 100 messages per mailbox, messages_per_minute 6000) the rate
// cannot bind; the check keeps the limit honest if either grows.
func (f *incFleet) checkMailboxLimits(done map[string][]time.Time, counters sim.Counters) {
	f.tb.Helper()
	for _, mbx := range f.mailboxes {
		times := done[mbx]
		slices.SortFunc(times, time.Time.Compare)
		for i, j := 0, 0; j < len(times); j++ {
			for times[j].Sub(times[i]) >= time.Minute {
				i++
			}
			if j-i+1 > incPerMinute {
				f.tb.Errorf("%s: %d deliveries within a minute, over messages_per_minute %d", mbx, j-i+1, incPerMinute)
				break
			}
		}
		if c := counters.Mailboxes[mbx].MaxConcurrentSMTP; c < 1 || c > 3 {
			f.tb.Errorf("%s: at most %d concurrent SMTP connections, want 1 to 3", mbx, c)
		}
	}
}

// TestIncident: two relay processes share one Redis. 1,000 messages go
// through them; mid-way the client secret expires. The credential breaker
// opens at the first failure, both relays say so on /v1/breakers within
// 1 s, keep accepting mail and hold it without spending attempts, and
// Entra and Exchange see nothing but one probe per interval. Rewriting the
// secret file closes the breaker with no restart, and every message is
// delivered exactly once, within the mailboxes' limits.
func TestIncident(t *testing.T) {
	runIncident(t)
}

// BenchmarkIncident reports the figures of the incident (see
// incidentFigures): the upstream requests wasted between the expiry and
// the rotation, and the time from the rotation to the first delivery and
// to the backlog drained. Run it with -benchtime 1x: one iteration is one
// whole incident, about 20 s.
func BenchmarkIncident(b *testing.B) {
	var sum incidentFigures
	for range b.N {
		fig := runIncident(b)
		sum.wasted += fig.wasted
		sum.probes += fig.probes
		sum.held += fig.held
		sum.reopens += fig.reopens
		sum.toClosed += fig.toClosed
		sum.toSettled += fig.toSettled
		sum.toFirst += fig.toFirst
		sum.toDrained += fig.toDrained
	}
	n := float64(b.N)
	ms := func(d time.Duration) float64 { return float64(d.Milliseconds()) / n }
	b.ReportMetric(float64(sum.wasted)/n, "wasted-reqs")
	b.ReportMetric(float64(sum.probes)/n, "probes")
	b.ReportMetric(float64(sum.held)/n, "held-msgs")
	b.ReportMetric(ms(sum.toClosed), "ms-to-closed")
	b.ReportMetric(ms(sum.toFirst), "ms-to-first-delivery")
	b.ReportMetric(ms(sum.toDrained), "ms-to-drained")
	b.ReportMetric(float64(sum.reopens)/n, "reopens")
	b.ReportMetric(ms(sum.toSettled), "ms-to-settled")
}

// TestIncidentRevokedGrant: one of five mailboxes sends with a delegated
// grant, which is revoked mid-way. Only that mailbox's breaker opens (both
// relays show it on /v1/breakers with AADSTS50173 within 1 s) and only
// its mail is held, without spending attempts; the other mailboxes keep
// flowing and the credential's breaker stays closed. A new grant and a
// probe release the held mail; every message is delivered exactly once.
func TestIncidentRevokedGrant(t *testing.T) {
	const (
		total = 100
		first = 40 // delivered before the revocation
		gap   = 100 * time.Millisecond
	)
	ctx := t.Context()
	f := startIncFleet(t, incFleetOptions{mailboxes: 5, grants: true})
	delegated := f.mailboxes[0]
	isDelegated := func(n int) bool { return n%len(f.mailboxes) == 0 }
	mbxName := "mbx:" + delegated
	mbxRoute := "mbx:contoso:" + delegated
	register := func(relay int) {
		t.Helper()
		rt := f.sim.IssueRefreshToken(incTenant, incClientID, delegated)
		code, err := f.do(relay, "PUT", "/v1/mailboxes/"+delegated, incAppToken, fmt.Sprintf(`{"refresh_token": %q}`, rt), nil)
		if err != nil || code != http.StatusOK {
			t.Fatalf("PUT /v1/mailboxes/%s: %d %v", delegated, code, err)
		}
	}
	register(0)
	smp := f.startSampler()
	credPolls := f.pollBreaker(incCred)
	mbxPolls := f.pollBreaker(mbxName)
	sub := f.startSubmitter(4, func(n int) string { return f.mailboxes[n%len(f.mailboxes)] })

	// Before the revocation, everything flows, the delegated mailbox's
	// mail with its grant.
	for n := range first {
		sub.submit(n)
		time.Sleep(gap / 4)
	}
	incWait(t, 15*time.Second, "the first messages delivered", func() bool { return f.delivered() >= first })
	for _, r := range f.sim.Received() {
		if r.Delegated != (r.Mailbox == delegated) || r.Mailbox != r.From {
			t.Errorf("%s from %s sent as %s, delegated %v", r.MessageID, r.From, r.Mailbox, r.Delegated)
		}
	}
	atRevoke := f.counters()
	tRevoke := time.Now()
	f.sim.RevokeMailboxGrants(delegated)

	// The other mailboxes keep sending; the delegated one pauses, so that
	// its next message needs a token, then sends too.
	next := first
	var later []int
	for ; time.Since(tRevoke) < incQuiet; next++ {
		if isDelegated(next) {
			later = append(later, next)
		} else {
			sub.submit(next)
		}
		time.Sleep(gap)
	}
	for ; next < total; next++ {
		later = append(later, next)
	}
	for _, n := range later {
		sub.submit(n)
		time.Sleep(gap)
	}
	sub.close()
	subs := sub.results(t, total)
	var since time.Time
	incWait(t, 10*time.Second, "the mailbox breaker open", func() bool {
		for _, p := range mbxPolls {
			if o, ok := p.first(tRevoke, isOpen); ok {
				since = o.st.Since
				return true
			}
		}
		return false
	})
	others := 0
	for n := range total {
		if !isDelegated(n) {
			others++
		}
	}
	incWait(t, 15*time.Second, "the other mailboxes' mail delivered", func() bool {
		n := 0
		for _, r := range f.sim.Received() {
			if r.Mailbox != delegated {
				n++
			}
		}
		return n == others
	})
	incSleepUntil(since.Add(incPropagation + incOpenInterval))
	held := f.heldSnapshot(ctx, "after the revocation")
	deliveredDelegated := 0
	for _, r := range f.sim.Received() {
		if r.Mailbox == delegated {
			deliveredDelegated++
		}
	}
	atRecovery := f.counters()

	// Recovery: a new grant through the other relay, and a probe asked
	// for by an operator.
	register(1)
	var st struct {
		State string `json:"state"`
	}
	if code, err := f.do(0, "POST", "/v1/breakers/"+mbxName+"/probe", incAdminToken, "", &st); err != nil || code != http.StatusAccepted || st.State != "open" {
		t.Fatalf("POST /v1/breakers/%s/probe: %d %v %+v, want 202 and the breaker open", mbxName, code, err, st)
	}
	tRecover := time.Now()
	incWait(t, 5*time.Second, "the mailbox breaker closed on both relays", func() bool {
		for _, p := range mbxPolls {
			if _, ok := p.first(tRecover, isClosed); !ok {
				return false
			}
		}
		return true
	})
	f.waitDelivered(total, 15*time.Second)
	time.Sleep(500 * time.Millisecond) // room for a duplicate to show
	smp.stop()
	f.checkRunning()
	for _, p := range append(credPolls, mbxPolls...) {
		p.checkErrors(t)
	}

	// Only the mailbox's breaker opened, on both endpoints within 1 s,
	// with the reason; the credential's never did.
	for _, p := range mbxPolls {
		o, ok := p.first(tRevoke, isOpen)
		if !ok {
			t.Errorf("relay-%d: the endpoint never showed %s open", p.relay+1, mbxName)
			continue
		}
		if lag := o.at.Sub(since); lag > time.Second {
			t.Errorf("relay-%d: the endpoint showed %s open %v after it opened, want within 1s", p.relay+1, mbxName, lag)
		}
		if o.st.Kind != "mailbox" || !strings.Contains(o.st.Reason, "AADSTS50173") || !slices.Contains(o.st.Routes, mbxRoute) {
			t.Errorf("relay-%d: open breaker shown as %+v, want kind mailbox, route %s and the AADSTS50173 reason", p.relay+1, o.st, mbxRoute)
		}
		for _, x := range p.between(o.at, tRecover) {
			if !isOpen(x.st) {
				t.Errorf("relay-%d: before the new grant %s showed %s", p.relay+1, mbxName, x.st.State)
				break
			}
		}
	}
	for _, p := range credPolls {
		for _, o := range p.between(time.Time{}, time.Now()) {
			if !isClosed(o.st) {
				t.Errorf("relay-%d: %s shown %s (%s): one mailbox's grant is not the credential's problem", p.relay+1, incCred, o.st.State, o.st.Reason)
				break
			}
		}
	}

	// Only the mailbox's mail was held, without attempts; the other
	// mailboxes' went out while it was held.
	for id, a := range held {
		m, err := f.q.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if m.Route != mbxRoute || a != 0 {
			t.Errorf("held message %s of route %s with %d attempts; want only %s held, with none", id, m.Route, a, mbxRoute)
		}
	}
	if want := total/len(f.mailboxes) - deliveredDelegated; len(held) != want {
		t.Errorf("%d messages held, want the %d undelivered of %s", len(held), want, delegated)
	}
	flowing := 0 // other mailboxes' messages submitted while the breaker was open
	for n, s := range subs {
		m, err := f.q.Get(ctx, s.queueID)
		if err != nil {
			t.Errorf("message %d: %v", n, err)
			continue
		}
		if m.State != queue.Delivered || m.Attempts != 1 {
			t.Errorf("message %d: %s after %d attempts, want delivered after 1", n, m.State, m.Attempts)
		}
		if isDelegated(n) {
			continue
		}
		if m.Done.After(tRecover) {
			t.Errorf("message %d of %s delivered after the recovery: held with the revoked mailbox", n, s.from)
		}
		if s.at.After(since) {
			flowing++
		}
	}
	if flowing == 0 {
		t.Errorf("no mail of the other mailboxes was submitted while %s was open", mbxName)
	}

	// Under the open mailbox breaker, once both relays had stopped: no
	// failed token request but a probe per interval. (SMTP AUTH goes on
	// for the other mailboxes, and the simulator does not count it per
	// mailbox.)
	samples := append(smp.between(tRevoke, tRecover), incSample{at: tRecover, c: atRecovery})
	k := slices.IndexFunc(samples, func(s incSample) bool { return !s.at.Before(since.Add(incPropagation)) })
	if k <= 0 {
		t.Fatalf("no counter samples around %v", since.Add(incPropagation))
	}
	samples = samples[k:]
	var failures []incSample
	for _, s := range samples {
		s.c.SMTPAuthAttempts = 0 // see above
		failures = append(failures, s)
	}
	checkProbes(t, failures, since, func(c sim.ClientCounters) int { return c.TokenErrors })
	if t.Failed() {
		// Which relay asked Entra, and why: the relays' logs, printed
		// as they stop, are long.
		f.logTokenTrail(since)
	}
	t.Logf("failed token requests from the revocation until %v after the breaker opened: %d", incPropagation,
		samples[0].c.TokenErrors-atRevoke.TokenErrors)
	if n := f.sim.Counters().Clients[incClientID].SMTPAuthFailures; n != 0 {
		t.Errorf("%d SMTP AUTH attempts rejected", n)
	}

	// Every message delivered exactly once.
	seen := map[string]int{}
	for _, r := range f.sim.Received() {
		seen[r.MessageID]++
	}
	for n := range total {
		if c := seen[incMessageID(n)]; c != 1 {
			t.Errorf("message %d delivered %d times, want once", n, c)
		}
	}
	if len(seen) != total {
		t.Errorf("Exchange received %d distinct messages, want %d", len(seen), total)
	}
	f.checkEmpty(ctx)
	done := map[string][]time.Time{}
	for _, s := range subs {
		if m, err := f.q.Get(ctx, s.queueID); err == nil {
			done[s.from] = append(done[s.from], m.Done)
		}
	}
	f.checkMailboxLimits(done, f.sim.Counters())
}
