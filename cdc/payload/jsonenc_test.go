package payload

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestAppendJSONString(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"empty", "", `""`},
		{"plain", "hello world", `"hello world"`},
		{"quote and backslash", `a"b\c`, `"a\"b\\c"`},
		{"named control escapes", "\n\r\t\b\f", `"\n\r\t\b\f"`},
		{"other control chars", "\x00\x01\x1f", `"\u0000\u0001\u001f"`},
		{"DEL is not escaped", "\x7f", "\"\x7f\""},
		{"html not escaped", "<a href='x'>&amp;</a>", `"<a href='x'>&amp;</a>"`},
		{"slash not escaped", "a/b", `"a/b"`},
		{"unicode", "héllo wörld ✓ 日本語 😀", `"héllo wörld ✓ 日本語 😀"`},
		{"line and paragraph separators", "a\u2028b\u2029c", `"a\u2028b\u2029c"`},
		{"U+FFFD passes through", "\uFFFD", "\"\uFFFD\""},
		{"invalid byte", "a\xffb", `"a\ufffdb"`},
		{"lone continuation", "\x80", `"\ufffd"`},
		{"truncated 3-byte sequence", "\xe2\x82", `"\ufffd\ufffd"`},
		{"truncated 4-byte sequence at end", "ok\xf0\x9f\x98", `"ok\ufffd\ufffd\ufffd"`},
		{"overlong 2-byte", "\xc0\xaf", `"\ufffd\ufffd"`},
		{"overlong 3-byte", "\xe0\x80\xaf", `"\ufffd\ufffd\ufffd"`},
		{"surrogate", "\xed\xa0\x80", `"\ufffd\ufffd\ufffd"`},
		{"above U+10FFFF", "\xf4\x90\x80\x80", `"\ufffd\ufffd\ufffd\ufffd"`},
		{"max code point", "\U0010FFFF", "\"\U0010FFFF\""},
		{"mixed", "x\"\x01é\xff\u2028", `"x\"\u0001é\ufffd\u2028"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(AppendJSONString(nil, tt.in))
			if got != tt.want {
				t.Errorf("AppendJSONString(%q) = %s, want %s", tt.in, got, tt.want)
			}
			if gotB := string(AppendJSONStringBytes(nil, []byte(tt.in))); gotB != tt.want {
				t.Errorf("AppendJSONStringBytes(%q) = %s, want %s", tt.in, gotB, tt.want)
			}
			if !json.Valid([]byte(got)) {
				t.Errorf("output %s is not valid JSON", got)
			}
			// The unmarshaled value must equal what encoding/json makes
			// of the input (invalid bytes become U+FFFD).
			var back string
			if err := json.Unmarshal([]byte(got), &back); err != nil {
				t.Fatalf("unmarshal %s: %v", got, err)
			}
			if want := replaceInvalid(tt.in); back != want {
				t.Errorf("round trip = %q, want %q", back, want)
			}
		})
	}
}

func TestAppendJSONStringAppends(t *testing.T) {
	dst := []byte("prefix:")
	dst = AppendJSONString(dst, "a")
	dst = AppendJSONStringBytes(dst, []byte("b"))
	if got, want := string(dst), `prefix:"a""b"`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

// TestAppendJSONStringMatchesStdlib checks that the output decodes to the
// same string as encoding/json's encoding of the same input.
func TestAppendJSONStringMatchesStdlib(t *testing.T) {
	var all strings.Builder
	for c := 0; c < 256; c++ {
		all.WriteByte(byte(c))
	}
	for _, s := range []string{all.String(), "\xf0\x9f\x98\x80\xf0\x9f", "é\xe9"} {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		var a, b string
		if err := json.Unmarshal(AppendJSONString(nil, s), &a); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(want, &b); err != nil {
			t.Fatal(err)
		}
		if a != b {
			t.Errorf("decoded %q, encoding/json gives %q", a, b)
		}
	}
}

func TestAppendJSONStringNoAllocs(t *testing.T) {
	dst := make([]byte, 0, 256)
	s := "hello \"world\"\n\u2028é\xff"
	b := []byte(s)
	allocs := testing.AllocsPerRun(100, func() {
		dst = AppendJSONString(dst[:0], s)
		dst = AppendJSONStringBytes(dst[:0], b)
	})
	if allocs != 0 {
		t.Errorf("got %v allocs/op, want 0", allocs)
	}
}

func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "abc", `"\`, "\x00\x1f\x7f", "é✓😀", "\u2028\u2029", "\xff\xfe", "\xed\xa0\x80", "<&>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := AppendJSONString(nil, s)
		if string(AppendJSONStringBytes(nil, []byte(s))) != string(out) {
			t.Fatalf("string and []byte variants differ for %q", s)
		}
		if !json.Valid(out) {
			t.Fatalf("invalid JSON %s for %q", out, s)
		}
		var back string
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatalf("unmarshal %s: %v", out, err)
		}
		if utf8.ValidString(s) {
			if back != s {
				t.Fatalf("round trip of %q gave %q", s, back)
			}
		} else if want := replaceInvalid(s); back != want {
			t.Fatalf("round trip of invalid %q gave %q, want %q", s, back, want)
		}
	})
}

// replaceInvalid replaces each byte of invalid UTF-8 in s with U+FFFD, as
// ranging over a string (and encoding/json) does.
func replaceInvalid(s string) string {
	var b strings.Builder
	for _, r := range s {
		b.WriteRune(r)
	}
	return b.String()
}
