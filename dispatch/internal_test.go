package dispatch

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in     string
		want   time.Duration
		wantOK bool
	}{
		{"1", time.Second, true},
		{" 120 ", 2 * time.Minute, true},
		{"0", 0, true},
		{"-5", 0, false},
		{"", 0, false},
		{"soon", 0, false},
		{"Sat, 01 Mar 2025 12:00:30 GMT", 30 * time.Second, true},
		{"Sat, 01 Mar 2025 11:00:00 GMT", 0, true}, // in the past: now
		{"99999999999999999999", 0, false},
	}
	for _, tt := range tests {
		got, ok := parseRetryAfter(tt.in, now)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("parseRetryAfter(%q) = %s, %v; want %s, %v", tt.in, got, ok, tt.want, tt.wantOK)
		}
	}
}

func TestCleanText(t *testing.T) {
	tests := []struct {
		name, in string
		check    func(string) bool
	}{
		{"plain", "HTTP 500: boom", func(s string) bool { return s == "HTTP 500: boom" }},
		{"nul removed", "a\x00b", func(s string) bool { return s == "ab" }},
		{"invalid utf-8 replaced", "a\xffb", func(s string) bool { return s == "a\uFFFDb" }},
		{"cut at 4 KB on a rune boundary", strings.Repeat("é", 5000), func(s string) bool {
			return len(s) <= maxErrorBody && len(s) >= maxErrorBody-3 && utf8.ValidString(s)
		}},
	}
	for _, tt := range tests {
		if got := cleanText(tt.in); !tt.check(got) {
			t.Errorf("%s: cleanText = %q", tt.name, got)
		}
	}
}
