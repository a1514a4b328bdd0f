package auth

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-sasl"
)

// XOAUTH2 is the SASL mechanism name used by Exchange Online and Gmail for
// OAuth 2.0 bearer tokens.
const XOAUTH2 = "XOAUTH2"

// maxChallengeInError bounds how much of an unexpected server challenge is
// quoted in an error.
const maxChallengeInError = 200

// ErrXOAUTH2Rejected is returned by the XOAUTH2 client when the server sends
// a second challenge after the empty response to the first one.
var ErrXOAUTH2Rejected = errors.New("xoauth2: server sent another challenge")

type xoauth2Client struct {
	user       string
	token      string
	challenged bool
}

var _ sasl.Client = (*xoauth2Client)(nil)

// NewXOAUTH2Client returns a SASL client for the XOAUTH2 mechanism. The
// initial response is "user=" + user + "\x01auth=Bearer " + token + "\x01\x01".
//
// Exchange Online rejects a bad token with a direct 535. Google-style servers
// first send a 334 challenge carrying a base64 JSON error; the client answers
// it with an empty response, after which the server sends its final error
// reply. A further challenge makes Next return an error, so the exchange is
// aborted. Next never returns (nil, nil), which go-smtp would take as success.
func NewXOAUTH2Client(user, token string) sasl.Client {
	return &xoauth2Client{user: user, token: token}
}

func (c *xoauth2Client) Start() (mech string, ir []byte, err error) {
	if c.user == "" {
		return "", nil, errors.New("xoauth2: empty user")
	}
	if c.token == "" {
		return "", nil, errors.New("xoauth2: empty token")
	}
	if strings.ContainsAny(c.user, "\x01\r\n") {
		return "", nil, errors.New("xoauth2: user contains a control character")
	}
	if strings.ContainsAny(c.token, "\x01\r\n ") {
		return "", nil, errors.New("xoauth2: token contains a control character or space")
	}
	ir = []byte("user=" + c.user + "\x01auth=Bearer " + c.token + "\x01\x01")
	return XOAUTH2, ir, nil
}

func (c *xoauth2Client) Next(challenge []byte) ([]byte, error) {
	if !c.challenged {
		// The challenge is the server's error detail (Google sends JSON
		// with status, schemes and scope). RFC 7628 asks for an empty
		// response, after which the server sends the final failure.
		c.challenged = true
		return []byte{}, nil
	}
	return nil, fmt.Errorf("%w: %q", ErrXOAUTH2Rejected, truncate(string(challenge), maxChallengeInError))
}

// truncate shortens s to at most n bytes, cut on a rune boundary, marking
// the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
