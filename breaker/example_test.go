package breaker_test

import (
	"fmt"

	"holdfast/auth"
	"holdfast/breaker"
	"holdfast/relay/upstream"
)

func ExampleReason() {
	err := &upstream.Error{Class: upstream.Credential, Err: &auth.TokenError{
		HTTPStatus: 401, Code: "invalid_client", AADSTS: auth.AADSTSSecretExpired,
		Description: "The provided client secret keys for app '3f1b8a52' are expired.",
	}}
	fmt.Println(breaker.Counts(err), breaker.SecretExpired(err))
	fmt.Println(breaker.Reason(err))
	// Output:
	// true true
	// invalid_client AADSTS7000222: The provided client secret keys for app '3f1b8a52' are expired.
}
