package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"holdfast/breaker"
	"holdfast/cmd/o365sim/sim"
	"holdfast/relay/upstream"
)

// TestRotationPastRefusingMailboxes: three relays, each with its own
// secret file and the default breaker intervals, send for 30 mailboxes.
// The app lacks its permission on two of them (SMTP AUTH as them gets
// 535 5.7.3, as a bad token does) and two have SMTP AUTH disabled (535
// 5.7.139): their mail is held on their own breakers. The secret expires
// and the credential's breaker opens, holding the mail of every mailbox;
// then the secret is rotated at Entra and the new one reaches relay 1's
// file first, the others' rotationStagger apart. Relay 1 closes the
// breaker and, the other two still on the old secret, alone delivers
// the held mail. As the credential's breaker closes the open mailbox
// breakers are probed, and the two mailboxes without the permission
// refuse relay 1's token and the new one it asks for, which the
// simulator, within the same second, issues the same. Relay 1 keeps that
// token for half its life. The refusal is theirs, not the token's: the
// healthy mailboxes' held mail is delivered within drainWithin of the
// first file change, rather than waiting as throttled for a verdict on
// the token while relay 1 holds it, and no message is delivered twice.
func TestRotationPastRefusingMailboxes(t *testing.T) {
	if testing.Short() {
		t.Skip("a fleet test of about a minute")
	}
	const (
		mailboxes      = 30
		before, outage = 2 * mailboxes, 2 * mailboxes
		// rotationStagger separates the changes of the three files.
		rotationStagger = 20 * time.Second
		// drainWithin bounds the first file change to the delivery of the
		// last held message of a healthy mailbox.
		drainWithin = 10 * time.Second
		during      = 40 // submitted from the rotation on, one every 0.5 s
		// tokenLifetime is the lifetime of the tokens issued from the
		// rotation on: a relay keeps a token for half of it, so the
		// token relay 1 holds as the breaker closes is the one it uses
		// for the rest of the test.
		tokenLifetime = 2 * time.Minute
	)
	denied := []string{"box7@contoso.com", "box19@contoso.com"}
	disabled := []string{"box11@contoso.com", "box23@contoso.com"}
	var sendAs []string
	for i := 1; i <= mailboxes; i++ {
		if box := fmt.Sprintf("box%d@contoso.com", i); !slices.Contains(denied, box) {
			sendAs = append(sendAs, box)
		}
	}
	healthy := func(box string) bool { return !slices.Contains(denied, box) && !slices.Contains(disabled, box) }
	// The default open interval, not the harness's short one: an open
	// mailbox breaker is probed again 30 s on.
	defaults := func(_ int, config string) string {
		return strings.Replace(config, fmt.Sprintf("open_interval: %s\n  max_interval: %s", incOpenInterval, incMaxInterval),
			"open_interval: 30s\n  max_interval: 5m", 1)
	}
	f := startIncFleet(t, incFleetOptions{mailboxes: mailboxes, relays: 3, ownSecrets: true, sendAs: sendAs, edit: defaults,
		mailboxSetup: func(boxes []sim.Mailbox) {
			for i := range boxes {
				boxes[i].SMTPAuthDisabled = slices.Contains(disabled, boxes[i].Address)
			}
		}})
	set := breaker.New(f.redis.Client(t), breaker.Options{})
	polls := f.pollBreaker(incCred)
	from := func(n int) string { return f.mailboxes[n%len(f.mailboxes)] }
	sub := f.startSubmitter(4, from)
	healthyUpTo := func(n int) int {
		c := 0
		for i := range n {
			if healthy(from(i)) {
				c++
			}
		}
		return c
	}
	deliveredHealthy := func() int {
		c := 0
		for _, r := range f.sim.Received() {
			if healthy(r.Mailbox) {
				c++
			}
		}
		return c
	}

	// Before: each broken mailbox's mail in turn, until its breaker
	// opens, then, once the relays' connections have closed, a share of
	// the healthy mailboxes' mail, whose AUTHs succeed: a refusal at one
	// mailbox and then one at another, with no success between, would
	// be the credential's.
	var healthyBefore []int
	for n := range before {
		if healthy(from(n)) {
			healthyBefore = append(healthyBefore, n)
		}
	}
	broken := append(slices.Clone(denied), disabled...)
	for i, box := range broken {
		for n := range before {
			if from(n) == box {
				sub.submit(n)
			}
		}
		incWait(t, 20*time.Second, box+"'s breaker open", func() bool {
			st, err := set.Status(t.Context(), "mbx:"+box)
			return err == nil && st.State == breaker.Open
		})
		time.Sleep(incQuiet)
		share := healthyBefore[i*len(healthyBefore)/len(broken) : (i+1)*len(healthyBefore)/len(broken)]
		for _, n := range share {
			sub.submit(n)
		}
		want := healthyUpTo(share[len(share)-1] + 1)
		incWait(t, 10*time.Second, "the healthy mailboxes' mail delivered", func() bool { return deliveredHealthy() == want })
	}
	if st, err := set.Status(t.Context(), incCred); err != nil || st.State != breaker.Closed {
		t.Fatalf("credential breaker %+v (%v) before the expiry, want closed", st, err)
	}

	// The outage.
	tExpiry := time.Now()
	f.sim.ExpireSecret(incTenant, incClientID)
	time.Sleep(incQuiet)
	order := make([]int, 0, outage)
	for n := before; n < before+outage; n++ {
		order = append(order, n)
	}
	for _, n := range order {
		sub.submit(n)
		time.Sleep(20 * time.Millisecond)
	}
	incWait(t, 10*time.Second, "the credential's breaker open", func() bool {
		for _, p := range polls {
			if _, ok := p.first(tExpiry, isOpen); ok {
				return true
			}
		}
		return false
	})
	time.Sleep(incPropagation)
	heldHealthy := healthyUpTo(before+outage) - deliveredHealthy()
	t.Logf("healthy mailboxes' mail held by the credential's breaker: %d", heldHealthy)

	// Tokens issued from now on live tokenLifetime: a relay keeps one
	// for half of it.
	f.sim.SetTokenLifetime(tokenLifetime)
	f.sim.RotateSecret(incTenant, incClientID, incRotated)
	feed := make(chan struct{})
	go func() {
		defer close(feed)
		for i := range during {
			sub.submit(before + outage + i)
			time.Sleep(500 * time.Millisecond)
		}
	}()

	relay1 := f.relays[0]
	incWriteFile(t, f.secretFiles[0], incRotated+"\n")
	t0 := time.Now()

	// The healthy mailboxes' held mail: every message 0…before+outage-1
	// of a healthy mailbox.
	var drained time.Duration
	deadline := t0.Add(rotationStagger*time.Duration(len(f.secretFiles)-1) + 5*time.Second)
	next := 1
	for {
		if next < len(f.secretFiles) && !time.Now().Before(t0.Add(time.Duration(next)*rotationStagger)) {
			incWriteFile(t, f.secretFiles[next], incRotated+"\n")
			next++
		}
		if drained == 0 {
			got, last := 0, time.Time{}
			for _, r := range f.sim.Received() {
				var n int
				if _, err := fmt.Sscanf(r.MessageID, "<incident-%d@holdfast.test>", &n); err != nil || n >= before+outage || !healthy(r.Mailbox) {
					continue
				}
				got++
				if r.Started.After(last) {
					last = r.Started
				}
			}
			if got == healthyUpTo(before+outage) {
				drained = last.Sub(t0)
			}
		}
		if next == len(f.secretFiles) && (drained > 0 || time.Now().After(deadline)) {
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	<-feed
	sub.close()
	sub.results(t, before+outage+during)

	// What relay 1 waited on as throttled after the first file change.
	waits := map[string]int{}
	for _, line := range relay1.logLines("delivery failed") {
		var l struct {
			Time  time.Time `json:"time"`
			Class string    `json:"class"`
			Err   string    `json:"err"`
		}
		if json.Unmarshal([]byte(line), &l) != nil || l.Class != upstream.Throttled.String() || l.Time.Before(t0) {
			continue
		}
		text := strings.TrimPrefix(l.Err, "throttled: ")
		if i := strings.Index(text, ": "); i > 0 && !strings.Contains(text[:i], "cred:") {
			text = text[:i]
		}
		waits[fmt.Sprintf("+%2ds %s", int(l.Time.Sub(t0).Seconds()), text)]++
	}
	keys := make([]string, 0, len(waits))
	for k := range waits {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "  %3d× %s\n", waits[k], k)
	}
	t.Logf("relay-1's sends deferred as throttled after the first file change, by second:\n%s", b.String())

	// The premise: relay 1 probed a mailbox without the permission after
	// the first file change, and Exchange refused its token there.
	refusals := 0
	for _, line := range relay1.logLines("breaker probed") {
		var l struct {
			Time    time.Time `json:"time"`
			Breaker string    `json:"breaker"`
			OK      bool      `json:"ok"`
			Err     string    `json:"err"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && !l.Time.Before(t0) && !l.OK &&
			slices.Contains(denied, strings.TrimPrefix(l.Breaker, "mbx:")) && strings.Contains(l.Err, "5.7.3") {
			refusals++
		}
	}
	if refusals == 0 {
		t.Error("relay-1 had no 535 5.7.3 probing a mailbox without the permission after the first file change: the test proves nothing")
	}

	if drained == 0 {
		t.Fatalf("the healthy mailboxes' held mail was not all delivered within %v of the first file change (%d of %d)",
			time.Since(t0).Round(time.Millisecond), deliveredHealthy(), healthyUpTo(before+outage))
	}
	t.Logf("first file change to the healthy mailboxes' held mail delivered: %v", drained.Round(time.Millisecond))
	if drained > drainWithin {
		t.Errorf("the healthy mailboxes' held mail delivered %v after the first file change, want within %v",
			drained.Round(time.Millisecond), drainWithin)
	}
	total := before + outage + during
	incWait(t, 15*time.Second, "every healthy mailbox's mail delivered", func() bool { return deliveredHealthy() == healthyUpTo(total) })
	seen := map[string]int{}
	for _, r := range f.sim.Received() {
		seen[r.MessageID]++
		if !healthy(r.Mailbox) {
			t.Errorf("%s of %s delivered: the app may not send as it, or SMTP AUTH is disabled", r.MessageID, r.Mailbox)
		}
	}
	for id, c := range seen {
		if c != 1 {
			t.Errorf("%s delivered %d times, want once", id, c)
		}
	}
	for _, p := range polls {
		p.checkErrors(t)
		p.checkClosedForGood(t, t0)
	}
}
