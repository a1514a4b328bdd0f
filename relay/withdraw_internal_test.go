package relay

import (
	"context"
	"fmt"
	"net"
	"testing"

	"holdfast/queue"
)

// TestMayHaveReachedRedis: only a store that may have stored its message
// is withdrawn.
func TestMayHaveReachedRedis(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"timeout waiting for the reply", fmt.Errorf("enqueue: %w", context.DeadlineExceeded), true},
		{"connection reset", fmt.Errorf("enqueue: %w", &net.OpError{Op: "read", Err: fmt.Errorf("reset")}), true},
		{"no connection", fmt.Errorf("enqueue: %w", &net.OpError{Op: "dial", Err: fmt.Errorf("refused")}), false},
		{"ran past its deadline", fmt.Errorf("enqueue x: %w", queue.ErrPastDeadline), false},
		{"withdrawn before it ran", fmt.Errorf("enqueue x: %w", queue.ErrWithdrawn), false},
	} {
		if got := mayHaveReachedRedis(tc.err); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
