package sim

import (
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"fmt"
)

// newGUID returns a random version 4 GUID in lower case.
func newGUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return formatGUID(b)
}

// guidFrom returns a GUID derived from name, stable across runs.
func guidFrom(name string) string {
	sum := sha256.Sum256([]byte(name))
	var b [16]byte
	copy(b[:], sum[:16])
	return formatGUID(b)
}

func formatGUID(b [16]byte) string {
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// newRefreshToken returns an opaque refresh token; Entra's start with "0.A".
func newRefreshToken() string {
	b := make([]byte, 48)
	_, _ = rand.Read(b)
	return "0.A" + b64.EncodeToString(b)
}

func sha1Sum(b []byte) []byte {
	s := sha1.Sum(b)
	return s[:]
}
