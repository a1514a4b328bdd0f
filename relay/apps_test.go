package relay

import "testing"

// TestMaySend: sender rules match whole addresses and whole domains, case
// aside, and a character whose lower case is shorter cannot shift the
// domain compared.
func TestMaySend(t *testing.T) {
	app := &App{Senders: []string{"@contoso.com", "Billing@Fabrikam.example"}}
	for _, tc := range []struct {
		from string
		ok   bool
	}{
		{"anyone@contoso.com", true},
		{"Anyone@CONTOSO.com", true},
		{"billing@fabrikam.example", true},
		{"other@fabrikam.example", false},
		{"anyone@sub.contoso.com", false},
		{"anyone@xcontoso.com", false},
		{"\u212A@xxcontoso.com", false}, // KELVIN SIGN: 3 bytes, "k" in lower case
		{"\u212A@contoso.com", true},
		{"no-at-sign", false},
	} {
		if got := app.maySend(tc.from); got != tc.ok {
			t.Errorf("maySend(%q) = %v, want %v", tc.from, got, tc.ok)
		}
	}
	if validAddress("\xff@contoso.com") {
		t.Error("an address that is not UTF-8 was accepted")
	}
}
