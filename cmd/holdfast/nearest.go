package main

import "strings"

// nearest returns the options one typing mistake from word, ignoring
// case (a letter added, left out, changed, or two swapped), or the one
// that differs only in case: the "did you mean" of a mistyped command or
// route.
func nearest(word string, options []string) []string {
	w := []rune(strings.ToLower(word))
	best := 1 // the farthest kept
	var out []string
	for _, o := range options {
		d := editDistance(w, []rune(strings.ToLower(o)))
		if d > best {
			continue
		}
		if d < best {
			best, out = d, nil
		}
		out = append(out, o)
	}
	return out
}

// editDistance is the number of single-character insertions, deletions,
// substitutions and swaps of neighbours that turn a into b, each
// character edited once at most (optimal string alignment).
func editDistance(a, b []rune) int {
	rows := [3][]int{make([]int, len(b)+1), make([]int, len(b)+1), make([]int, len(b)+1)}
	for j := range rows[1] {
		rows[1][j] = j
	}
	for i := 1; i <= len(a); i++ {
		before, prev, cur := rows[0], rows[1], rows[2]
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			sub := prev[j-1]
			if a[i-1] != b[j-1] {
				sub++
			}
			cur[j] = min(sub, prev[j]+1, cur[j-1]+1)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], before[j-2]+1)
			}
		}
		rows = [3][]int{prev, cur, before}
	}
	return rows[1][len(b)]
}
