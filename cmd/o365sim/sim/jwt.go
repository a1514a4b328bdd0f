package sim

import (
	"crypto"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

var b64 = base64.RawURLEncoding

// accessClaims are the claims of the access tokens the simulator issues.
// App-only tokens carry roles; delegated tokens carry scp and upn.
type accessClaims struct {
	Aud   string   `json:"aud"`
	Iss   string   `json:"iss"`
	Iat   int64    `json:"iat"`
	Nbf   int64    `json:"nbf"`
	Exp   int64    `json:"exp"`
	AppID string   `json:"appid"`
	Tid   string   `json:"tid"`
	Oid   string   `json:"oid,omitempty"`
	Idtyp string   `json:"idtyp"`
	Roles []string `json:"roles,omitempty"`
	Scp   string   `json:"scp,omitempty"`
	UPN   string   `json:"upn,omitempty"`
	// Rh is Entra's opaque revalidation claim; here, for app-only tokens,
	// the app's token epoch (see Sim.RevokeAppTokens).
	Rh  string `json:"rh,omitempty"`
	Ver string `json:"ver"`
}

func (c *accessClaims) delegated() bool { return c.Idtyp == "user" }

// signHS256 returns a compact JWS of claims, signed with key.
func signHS256(key []byte, claims any) (string, error) {
	head := b64.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	body, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	input := head + "." + b64.EncodeToString(body)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(input))
	return input + "." + b64.EncodeToString(mac.Sum(nil)), nil
}

// jws is a decoded compact JWS whose signature is not yet checked.
type jws struct {
	header map[string]any
	claims []byte
	input  []byte // header.payload, the signed bytes
	sig    []byte
}

var errMalformedJWT = errors.New("malformed JWT")

func parseJWS(tok string) (*jws, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, errMalformedJWT
	}
	head, err := b64.DecodeString(parts[0])
	if err != nil {
		return nil, errMalformedJWT
	}
	claims, err := b64.DecodeString(parts[1])
	if err != nil {
		return nil, errMalformedJWT
	}
	sig, err := b64.DecodeString(parts[2])
	if err != nil {
		return nil, errMalformedJWT
	}
	j := &jws{claims: claims, input: []byte(parts[0] + "." + parts[1]), sig: sig}
	if err := json.Unmarshal(head, &j.header); err != nil {
		return nil, errMalformedJWT
	}
	if !json.Valid(claims) {
		return nil, errMalformedJWT
	}
	return j, nil
}

func (j *jws) headerString(name string) string {
	v, _ := j.header[name].(string)
	return v
}

// verifyHS256 checks an HS256 signature made with key and decodes the
// claims into v.
func verifyHS256(key []byte, tok string, v any) error {
	j, err := parseJWS(tok)
	if err != nil {
		return err
	}
	if j.headerString("alg") != "HS256" {
		return fmt.Errorf("unexpected alg %q", j.headerString("alg"))
	}
	mac := hmac.New(sha256.New, key)
	mac.Write(j.input)
	if !hmac.Equal(mac.Sum(nil), j.sig) {
		return errors.New("bad signature")
	}
	return json.Unmarshal(j.claims, v)
}

// verifyRSA checks a PS256 or RS256 signature by pub.
func (j *jws) verifyRSA(pub *rsa.PublicKey) error {
	sum := sha256.Sum256(j.input)
	switch alg := j.headerString("alg"); alg {
	case "PS256":
		return rsa.VerifyPSS(pub, crypto.SHA256, sum[:], j.sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto})
	case "RS256":
		return rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], j.sig)
	default:
		return fmt.Errorf("unsupported alg %q", alg)
	}
}

// assertionClaims are the claims of a client assertion (private_key_jwt).
// aud may be a string or an array; times are NumericDate.
type assertionClaims struct {
	Aud audience `json:"aud"`
	Iss string   `json:"iss"`
	Sub string   `json:"sub"`
	Jti string   `json:"jti"`
	Exp *float64 `json:"exp"`
	Nbf *float64 `json:"nbf"`
	Iat *float64 `json:"iat"`
}

type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*a = audience{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*a = many
	return nil
}
