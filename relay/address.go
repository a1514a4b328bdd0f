package relay

import (
	"errors"
	"strings"
	"unicode/utf8"
)

// Address limits from RFC 5321 section 4.5.3.1.
const (
	maxLocalPart = 64
	maxDomain    = 255
	maxAddress   = 254
)

var errBadAddress = errors.New("malformed address")

// parseAddress checks that s is a plain mailbox, local@domain, and returns
// it unchanged. It refuses what could break a header or the SMTP dialogue
// upstream: control characters, spaces, angle brackets, commas, quoted
// local parts and source routes. UTF-8 is allowed (SMTPUTF8); invalid
// UTF-8 is not.
func parseAddress(s string) (string, error) {
	if len(s) == 0 || len(s) > maxAddress || !utf8.ValidString(s) {
		return "", errBadAddress
	}
	at := strings.LastIndexByte(s, '@')
	if at <= 0 || at == len(s)-1 {
		return "", errBadAddress
	}
	local, domain := s[:at], s[at+1:]
	if len(local) > maxLocalPart || len(domain) > maxDomain {
		return "", errBadAddress
	}
	for _, r := range local {
		if r < 0x21 || r == 0x7f || strings.ContainsRune(`"(),:;<>@[\]`, r) {
			return "", errBadAddress
		}
	}
	if local[0] == '.' || local[len(local)-1] == '.' || strings.Contains(local, "..") {
		return "", errBadAddress
	}
	for _, label := range strings.Split(domain, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return "", errBadAddress
		}
		for _, r := range label {
			if r < 0x80 && !(r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
				return "", errBadAddress
			}
		}
	}
	return s, nil
}
