package relay

import (
	"context"
	"errors"
	"net"
	"testing"

	"github.com/redis/go-redis/v9"
)

func TestFailoverHookReloadsAfterNetworkErrorsOnly(t *testing.T) {
	reloads := 0
	h := &failoverHook{reload: func() { reloads++ }}
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}
	results := []error{nil, redis.Nil, errors.New("ERR wrong number of arguments"), refused, refused, refused}
	for _, want := range results {
		process := h.ProcessHook(func(context.Context, redis.Cmder) error { return want })
		if got := process(context.Background(), redis.NewCmd(context.Background(), "GET", "k")); !errors.Is(got, want) {
			t.Fatalf("the hook changed the error %v into %v", want, got)
		}
	}
	// Three network errors within a second: one reload.
	if reloads != 1 {
		t.Fatalf("%d reloads, want 1", reloads)
	}
	pipeline := h.ProcessPipelineHook(func(context.Context, []redis.Cmder) error { return refused })
	h.last = h.last.Add(-failoverReloadEvery)
	_ = pipeline(context.Background(), nil)
	if reloads != 2 {
		t.Fatalf("%d reloads after a failed pipeline a second later, want 2", reloads)
	}
}

func TestFollowFailoverOnlyHooksClusterClients(t *testing.T) {
	single := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer single.Close()
	if got := followFailover(single); got != single {
		t.Fatalf("a single-node client was replaced")
	}
}
