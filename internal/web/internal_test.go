package web

import (
	"testing"
)

func TestSafeNext(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/", "/"},
		{"/?state=failed&webhook=a", "/?state=failed&webhook=a"},
		{"/deliveries/3", "/deliveries/3"},
		{"", "/"},
		{"//evil.example/", "/"},
		{"/\\evil.example", "/"},
		{"https://evil.example/", "/"},
		{"javascript:alert(1)", "/"},
		{"deliveries/3", "/"},
	} {
		if got := safeNext(tc.in); got != tc.want {
			t.Errorf("safeNext(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestCut(t *testing.T) {
	if got := cut("héllo", 2); got != "h…" {
		t.Errorf("cut at a rune boundary = %q", got)
	}
}

func TestLoopbackHost(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1:9187": true, "localhost": true, "LOCALHOST:1": true, "[::1]:9187": true, "127.1.2.3": true,
		"evil.example:9187": false, "10.0.0.1:9187": false, "localhost.evil.example": false, "": false,
	} {
		if got := loopbackHost(host); got != want {
			t.Errorf("loopbackHost(%q) = %v", host, got)
		}
	}
}
