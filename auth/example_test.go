package auth_test

import (
	"fmt"

	"holdfast/auth"
)

func ExampleNewXOAUTH2Client() {
	c := auth.NewXOAUTH2Client("sales@contoso.com", "eyJ0eXAi.token")
	mech, ir, err := c.Start()
	fmt.Println(mech, err)
	fmt.Printf("%q\n", ir)
	// Output:
	// XOAUTH2 <nil>
	// "user=sales@contoso.com\x01auth=Bearer eyJ0eXAi.token\x01\x01"
}

func ExampleTokenError() {
	err := &auth.TokenError{
		HTTPStatus:  401,
		Code:        auth.CodeInvalidClient,
		AADSTS:      auth.AADSTSSecretExpired,
		Description: "The provided client secret keys for app '3f1b8a52' are expired.",
	}
	fmt.Println(err, err.SecretExpired())
	// Output:
	// token endpoint: 401 invalid_client AADSTS7000222: The provided client secret keys for app '3f1b8a52' are expired. true
}
