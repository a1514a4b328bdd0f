package relay

import (
	"testing"
	"time"
)

// TestIngressOnlyReplica: a replica with delivery.sender: off, in a fleet
// whose other replicas deliver to Exchange, routes what it takes as they
// do (the app's mailbox, sender_mailboxes, a delegated grant), so that
// they deliver it.
func TestIngressOnlyReplica(t *testing.T) {
	e := newExchangeEnvSim(t, 1, nil, nil)
	ro := e.opts
	ro.Replica = "ingress-1"
	ro.Delivery.Sender = "off"
	if err := ro.Validate(); err != nil {
		t.Fatal(err)
	}
	e.relays = append(e.relays, runRelay(t, ro, e.log))
	const alice = "alice@contoso.com"
	if err := e.relays[0].exchange.grants.Put(t.Context(), alice, "contoso", e.sim.IssueRefreshToken(simTenant, simClientID, alice)); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"billing@contoso.com": "app:contoso:billing@contoso.com",
		"noreply@contoso.com": "app:contoso:noreply@contoso.com",
		alice:                 "mbx:contoso:" + alice,
	}
	var ids []string
	for from, route := range want {
		id := e.submit(t, 1, from, "someone@example.org", exchangeMessage(len(ids), from))
		if got := e.get(t, id).Route; got != route {
			t.Errorf("mail from %s taken by the ingress-only replica: route %q, want %q", from, got, route)
		}
		ids = append(ids, id)
	}
	waitFor(t, 10*time.Second, "the ingress-only replica's mail delivered", func() bool { return e.allDelivered(t, ids) })
	if distinct, _ := e.receivedOnce(t); distinct != len(ids) {
		t.Errorf("%d distinct messages received, want %d", distinct, len(ids))
	}
}
