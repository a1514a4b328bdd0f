package breaker_test

import (
	"errors"
	"fmt"

	"holdfast/breaker"
)

// expired is how a classification reports an expired client secret.
type expired struct{}

func (expired) Error() string         { return "token endpoint: 401 invalid_client AADSTS7000222" }
func (expired) BreakerCounts() bool   { return true }
func (expired) BreakerOpensNow() bool { return true }
func (expired) BreakerReason() string {
	return "invalid_client AADSTS7000222: The provided client secret keys for app '3f1b8a52' are expired."
}

func ExampleReason() {
	var f breaker.Failure = expired{}
	err := fmt.Errorf("send: %w", f)
	fmt.Println(breaker.Counts(err), breaker.Counts(errors.New("connection refused")))
	fmt.Println(breaker.Reason(err))
	// Output:
	// true false
	// invalid_client AADSTS7000222: The provided client secret keys for app '3f1b8a52' are expired.
}
