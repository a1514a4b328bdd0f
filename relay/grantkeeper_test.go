package relay

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"holdfast/auth"
	"holdfast/breaker"
	"holdfast/cmd/o365sim/sim"
)

// keeperGrants is a grant store whose redemptions answer what refuse says.
type keeperGrants struct {
	now    func() time.Time
	refuse map[string]error // by mailbox

	mu       sync.Mutex
	list     []auth.Grant
	redeemed []string
}

func (f *keeperGrants) List(context.Context) ([]auth.Grant, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]auth.Grant(nil), f.list...), nil
}

func (f *keeperGrants) Get(_ context.Context, mailbox string) (auth.Grant, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, g := range f.list {
		if g.Mailbox == mailbox {
			return g, nil
		}
	}
	return auth.Grant{}, auth.ErrNoGrant
}

func (f *keeperGrants) Redeem(_ context.Context, _ *auth.Credential, mailbox string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.redeemed = append(f.redeemed, mailbox)
	err := f.refuse[mailbox]
	for i := range f.list {
		if f.list[i].Mailbox != mailbox {
			continue
		}
		if err != nil {
			f.list[i].LastError = err.Error()
		} else {
			f.list[i].Redeemed, f.list[i].LastError = f.now(), ""
		}
	}
	return err
}

func (f *keeperGrants) takeRedeemed() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.redeemed
	f.redeemed = nil
	return r
}

// TestGrantKeeperPass: a pass redeems the grants unused for redeemAfter
// and those refused last time, tries a refused credential once, and
// counts each grant's state; a refusal is logged once, not at every pass.
func TestGrantKeeperPass(t *testing.T) {
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	revoked := &auth.TokenError{HTTPStatus: 400, Code: auth.CodeInvalidGrant, AADSTS: "AADSTS50173", Description: "revoked"}
	expired := &auth.TokenError{HTTPStatus: 401, Code: auth.CodeInvalidClient, AADSTS: auth.AADSTSSecretExpired, Description: "secret expired"}
	f := &keeperGrants{
		now: func() time.Time { return now },
		list: []auth.Grant{
			{Mailbox: "fresh@contoso.com", Credential: "contoso", Updated: now.Add(-day)},
			{Mailbox: "idle@contoso.com", Credential: "contoso", Updated: now.Add(-40 * day)},
			{Mailbox: "revoked@contoso.com", Credential: "contoso", Updated: now.Add(-31 * day)},
			{Mailbox: "first@fabrikam.com", Credential: "fabrikam", Updated: now.Add(-70 * day)},
			{Mailbox: "second@fabrikam.com", Credential: "fabrikam", Updated: now.Add(-80 * day), Redeemed: now.Add(-65 * day)},
			{Mailbox: "orphan@contoso.com", Credential: "gone", Updated: now.Add(-40 * day)},
		},
		refuse: map[string]error{"revoked@contoso.com": revoked, "first@fabrikam.com": expired, "second@fabrikam.com": expired},
	}
	var logs bytes.Buffer
	creds := map[string]*auth.Credential{"contoso": {}, "fabrikam": {}}
	k := newGrantKeeper(f, creds, 30*day, time.Hour, slog.New(slog.NewTextHandler(&logs, nil)))
	k.now = f.now
	if n := testutil.CollectAndCount(k); n != 0 {
		t.Fatalf("%d samples before the first pass, want none", n)
	}

	k.pass(t.Context())
	want := []string{"idle@contoso.com", "revoked@contoso.com", "first@fabrikam.com"}
	if got := f.takeRedeemed(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("first pass redeemed %v, want %v (fabrikam tried once, the orphan never)", got, want)
	}
	counts := func() map[string]float64 {
		k.mu.Lock()
		defer k.mu.Unlock()
		m := map[string]float64{}
		for state, n := range k.counts {
			m[state] = float64(n)
		}
		return m
	}
	// first@fabrikam carries the credential's refusal as its last error:
	// failing; second@fabrikam was not tried and lapses in 25 days.
	wantCounts := map[string]float64{grantOK: 2, grantLapsing: 1, grantFailing: 3}
	if got := counts(); !equalCounts(got, wantCounts) {
		t.Fatalf("counts %v, want %v", got, wantCounts)
	}
	for _, m := range []string{"revoked@contoso.com", "orphan@contoso.com", "first@fabrikam.com", "second@fabrikam.com"} {
		if n := strings.Count(logs.String(), "mailbox="+m); n != 1 {
			t.Errorf("%s named in %d log lines, want 1:\n%s", m, n, logs.String())
		}
	}
	if !strings.Contains(logs.String(), "cannot redeem the credential's delegated grants now") {
		t.Errorf("no line says fabrikam's grants wait:\n%s", logs.String())
	}

	// Fabrikam's secret is rotated and the revoked mailbox grants again:
	// the next pass retries the refused grants and finds all well.
	delete(f.refuse, "first@fabrikam.com")
	delete(f.refuse, "second@fabrikam.com")
	delete(f.refuse, "revoked@contoso.com")
	logs.Reset()
	k.pass(t.Context())
	want = []string{"revoked@contoso.com", "first@fabrikam.com", "second@fabrikam.com"}
	if got := f.takeRedeemed(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("second pass redeemed %v, want %v", got, want)
	}
	wantCounts = map[string]float64{grantOK: 5, grantLapsing: 0, grantFailing: 1}
	if got := counts(); !equalCounts(got, wantCounts) {
		t.Fatalf("counts %v, want %v", got, wantCounts)
	}
	if strings.Contains(logs.String(), "mailbox=") {
		t.Errorf("the second pass logged a grant again:\n%s", logs.String())
	}
}

func equalCounts(a, b map[string]float64) bool {
	for k, v := range b {
		if a[k] != v {
			return false
		}
	}
	return len(a) == len(b)
}

// TestGrantKeptFromLapsing: a delegated mailbox that sends nothing for
// 120 days (the simulator's clock moved on in two steps of 60) keeps its
// grant, because the relay redeems it meanwhile; its mail then goes out
// at once. Revoked, the grant is counted failing and logged once; granted
// again, it is counted ok.
func TestGrantKeptFromLapsing(t *testing.T) {
	clock := &aheadClock{}
	e := newExchangeEnvSim(t, 1, func(c *sim.Config) { c.Now = clock.now }, func(o *Options) {
		o.Exchange.grantKeepEvery = 100 * time.Millisecond
		o.Exchange.grantRedeemAfter = time.Nanosecond
	})
	ctx := t.Context()
	const alice = "alice@contoso.com"
	if err := e.relays[0].exchange.grants.Put(ctx, alice, "contoso", e.sim.IssueRefreshToken(simTenant, simClientID, alice)); err != nil {
		t.Fatal(err)
	}
	redemptions := func() int { return e.sim.Counters().Mailboxes[alice].RefreshTokenRedemptions }
	for range 2 {
		clock.advance(60 * 24 * time.Hour)
		n := redemptions()
		waitFor(t, 5*time.Second, "a redemption of alice's grant", func() bool { return redemptions() > n })
	}
	grants := func(state string) float64 {
		return e.metricSum(t, 0, "holdfast_grants", map[string]string{"state": state})
	}
	if ok, failing := grants(grantOK), grants(grantFailing); ok != 1 || failing != 0 {
		t.Errorf("holdfast_grants ok %v failing %v, want 1 and 0", ok, failing)
	}
	ids := e.submitN(t, alice, 0, 3)
	waitFor(t, 10*time.Second, "alice's mail delivered", func() bool { return e.allDelivered(t, ids) })
	if distinct, _ := e.receivedOnce(t); distinct != len(ids) {
		t.Errorf("%d distinct messages received, want %d", distinct, len(ids))
	}
	if st := e.breakerStatus(t, mailboxBreaker(alice)); st.State != breaker.Closed || st.Failures != 0 {
		t.Errorf("alice's breaker %s with %d failures (%q), want closed with none", st.State, st.Failures, st.Reason)
	}

	e.sim.RevokeMailboxGrants(alice)
	waitFor(t, 5*time.Second, "the revoked grant counted failing", func() bool { return grants(grantFailing) == 1 })
	if g, err := e.relays[0].exchange.grants.Get(ctx, alice); err != nil || !strings.Contains(g.LastError, "AADSTS50173") {
		t.Errorf("grant %+v, %v: want AADSTS50173 as its last error", g, err)
	}
	time.Sleep(500 * time.Millisecond) // a few more passes
	if n := strings.Count(e.logs.String(), "a delegated grant is refused"); n != 1 {
		t.Errorf("%d log lines for the revoked grant, want 1", n)
	}
	if err := e.relays[0].exchange.grants.Put(ctx, alice, "contoso", e.sim.IssueRefreshToken(simTenant, simClientID, alice)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the new grant counted ok", func() bool { return grants(grantOK) == 1 && grants(grantFailing) == 0 })
}

// TestGrantKeeperLeavesOpenBreakerToProbe: a revoked grant, whose last
// redemption was refused, is redeemed again at every pass while its
// breakers are closed, but not while its mailbox's breaker or its
// credential's is open: under an open breaker the fleet's only token
// request is the breaker's probe, one per interval. A pass that
// redeemed it would ask Entra a second time within the probe's interval.
func TestGrantKeeperLeavesOpenBreakerToProbe(t *testing.T) {
	e := newExchangeEnv(t, 1, func(o *Options) { o.Exchange.grantKeepEvery = 100 * time.Millisecond })
	ctx := t.Context()
	const alice = "alice@contoso.com"
	r := e.relays[0]
	if err := r.exchange.grants.Put(ctx, alice, "contoso", e.sim.IssueRefreshToken(simTenant, simClientID, alice)); err != nil {
		t.Fatal(err)
	}
	e.sim.RevokeMailboxGrants(alice)
	// The refusal a send would have had.
	if err := r.exchange.grants.Redeem(ctx, r.exchange.creds["contoso"], alice); err == nil {
		t.Fatal("the revoked grant was redeemed")
	}
	refused := func() int { return e.sim.Counters().Clients[simClientID].TokenErrors }
	redeemedAgain := func(what string) {
		t.Helper()
		n := refused()
		waitFor(t, 5*time.Second, "the refused grant redeemed again "+what, func() bool { return refused() > n })
	}
	redeemedAgain("with its breakers closed")

	for _, name := range []string{mailboxBreaker(alice), credentialBreaker("contoso")} {
		if err := r.gate.set.Trip(ctx, name, "test"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond) // a pass under way ends
		n := refused()
		time.Sleep(time.Second) // ten passes
		if d := refused() - n; d != 0 {
			t.Errorf("%d token requests for the grant under the open breaker %s, want none", d, name)
		}
		if err := r.gate.set.Reset(ctx, name); err != nil {
			t.Fatal(err)
		}
		redeemedAgain("once " + name + " closed")
	}
}

// TestGrantRegisteredProbesAtOnce: a mailbox's grant is revoked, its
// breaker opens and holds its mail; the application registers a new
// grant on another relay. The breaker's probe runs at once, as after a
// changed secret file, and the held mail goes within seconds, not at the
// probe the open interval (30 s) had scheduled.
func TestGrantRegisteredProbesAtOnce(t *testing.T) {
	e := newExchangeEnv(t, 2, nil)
	const alice = "alice@contoso.com"
	put := func(relay int) {
		t.Helper()
		body := strings.NewReader(fmt.Sprintf(`{"refresh_token": %q}`, e.sim.IssueRefreshToken(simTenant, simClientID, alice)))
		req, _ := http.NewRequest("PUT", "http://"+e.relays[relay].HTTPAddr()+"/v1/mailboxes/"+alice, body)
		req.Header.Set("Authorization", "Bearer "+crmToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("PUT: %d", resp.StatusCode)
		}
	}
	put(0)
	e.sim.RevokeMailboxGrants(alice)
	ids := e.submitN(t, alice, 0, 3)
	waitFor(t, 15*time.Second, "alice's breaker open", func() bool { return e.breakerStatus(t, mailboxBreaker(alice)).State == breaker.Open })
	start := time.Now()
	put(1)
	waitFor(t, 10*time.Second, "alice's held mail delivered", func() bool { return e.allDelivered(t, ids) })
	t.Logf("delivered %v after the grant was registered again", time.Since(start).Round(time.Millisecond))
}
