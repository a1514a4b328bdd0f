package queue

import (
	"encoding/hex"
	"hash/fnv"
	"testing"
)

// TestRouteTagIsFNV1a: routeTag stays the FNV-1a hash it has always been,
// so the keys of mail already queued keep their names.
func TestRouteTagIsFNV1a(t *testing.T) {
	for _, r := range []string{"", "crm", "app:contoso:box1@contoso.com", "ü-route", "a\x00b"} {
		h := fnv.New32a()
		h.Write([]byte(r))
		if want := hex.EncodeToString(h.Sum(nil)); routeTag(r) != want {
			t.Errorf("routeTag(%q) = %s, want %s", r, routeTag(r), want)
		}
	}
}
