package main

import (
	"slices"
	"testing"
)

// TestNearest: the options one typing mistake from a word, ignoring
// case; not words farther off.
func TestNearest(t *testing.T) {
	words := []string{"stats", "show", "list", "flush", "drain", "purge", "requeue", "delete", "state"}
	for _, c := range []struct {
		word string
		want []string
	}{
		{"stat", []string{"stats", "state"}},
		{"STATS", []string{"stats"}}, // the word in other case, alone
		{"sohw", []string{"show"}},
		{"stauts", []string{"stats"}}, // a letter too many
		{"sattus", nil},
		{"dlete", []string{"delete"}},
		{"frobnicate", nil},
		{"", nil},
	} {
		if got := nearest(c.word, words); !slices.Equal(got, c.want) {
			t.Errorf("nearest(%q) = %q, want %q", c.word, got, c.want)
		}
	}
	routes := []string{"app:dev:app@example.com", "app:dev:billing@example.com", "app:web:app@example.org",
		"app:crm:bob@contoso.com", "app:crm:tom@contoso.com", "app:crm:ann@contoso.com"}
	for _, c := range []struct {
		route string
		want  []string
	}{
		{"app:dev:app@exmple.com", []string{"app:dev:app@example.com"}},
		{"app:web:ap@example.org", []string{"app:web:app@example.org"}},
		// Another mailbox of three letters is not a typo of this one.
		{"app:crm:joe@contoso.com", nil},
		{"app:crm:rob@contoso.com", []string{"app:crm:bob@contoso.com"}},
	} {
		if got := nearest(c.route, routes); !slices.Equal(got, c.want) {
			t.Errorf("nearest(%q) = %q, want %q", c.route, got, c.want)
		}
	}
	for _, c := range []struct {
		a, b string
		d    int
	}{{"", "", 0}, {"abc", "", 3}, {"kitten", "sitting", 3}, {"stat", "stats", 1}, {"sohw", "show", 1}, {"café", "cafe", 1}, {"ca", "abc", 3}, {"abcd", "badc", 2}} {
		if got := editDistance([]rune(c.a), []rune(c.b)); got != c.d || editDistance([]rune(c.b), []rune(c.a)) != c.d {
			t.Errorf("editDistance(%q, %q) = %d, want %d both ways", c.a, c.b, got, c.d)
		}
	}
}
