package config

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// suggest returns a " (did you mean ...?)" hint for a name that is not one
// of names, or lists them, after known ("known keys: a, b") when none is
// close.
func suggest(name string, names []string, known string) string {
	if c := closest(name, names); c != "" {
		return fmt.Sprintf(" (did you mean %q?)", c)
	}
	return " (" + known + ": " + strings.Join(names, ", ") + ")"
}

// closest returns the candidate that s most likely misspells, or "": the same
// name up to case, "_" and "-", or one at a small edit distance.
func closest(s string, candidates []string) string {
	norm := func(x string) string {
		return strings.NewReplacer("_", "", "-", "").Replace(strings.ToLower(x))
	}
	for _, c := range candidates {
		if norm(c) == norm(s) {
			return c
		}
	}
	limit := 2
	switch n := utf8.RuneCountInString(s); {
	case n <= 2:
		return ""
	case n <= 4:
		limit = 1
	}
	best, bestD := "", limit+1
	for _, c := range candidates {
		if d := editDistance(strings.ToLower(s), strings.ToLower(c)); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, in runes.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}
