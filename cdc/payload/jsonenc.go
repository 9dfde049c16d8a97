package payload

import "unicode/utf8"

// hexDigits is the lowercase hex alphabet used for \u00XX escapes.
const hexDigits = "0123456789abcdef"

// safeASCII[c] is true for ASCII bytes that can be copied into a JSON
// string literal as they are: everything from 0x20 to 0x7F except '"' and
// '\\'. '<', '>' and '&' are deliberately not escaped. Bytes >= 0x80 are
// false so that the slow path validates the UTF-8 sequence they start.
var safeASCII = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// AppendJSONString appends s to dst as a JSON string literal, including the
// surrounding quotes, and returns the extended slice.
//
// It escapes '"', '\\' and control characters (below U+0020, as \n, \r, \t,
// \b, \f or \u00XX), escapes U+2028 and U+2029 as \u2028 and \u2029 (so the
// output is also valid JavaScript), and replaces each byte of invalid UTF-8
// with \ufffd, exactly as encoding/json does. Unlike encoding/json it does
// not escape '<', '>' or '&'.
//
// It does not allocate when dst has enough spare capacity.
func AppendJSONString(dst []byte, s string) []byte {
	return appendString(dst, s)
}

// AppendJSONStringBytes is AppendJSONString for a []byte input; it avoids
// the allocation a string conversion would cost.
func AppendJSONStringBytes(dst []byte, s []byte) []byte {
	return appendString(dst, s)
}

// appendString implements AppendJSONString for both string and []byte.
func appendString[T string | []byte](dst []byte, s T) []byte {
	dst = append(dst, '"')
	start := 0 // start of the pending run of bytes that need no escaping
	for i := 0; i < len(s); {
		c := s[i]
		if safeASCII[c] {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := decodeRune(s, i)
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// decodeRune decodes the UTF-8 sequence starting at s[i], which must be a
// byte >= 0x80. It follows utf8.DecodeRune exactly: on an invalid or
// truncated sequence (including overlong forms, surrogates and code points
// above U+10FFFF) it returns (utf8.RuneError, 1).
func decodeRune[T string | []byte](s T, i int) (rune, int) {
	n := len(s) - i
	c0 := s[i]
	switch {
	case c0 < 0xC2: // continuation byte or overlong 2-byte lead
		return utf8.RuneError, 1
	case c0 < 0xE0:
		if n < 2 || s[i+1]&0xC0 != 0x80 {
			return utf8.RuneError, 1
		}
		return rune(c0&0x1F)<<6 | rune(s[i+1]&0x3F), 2
	case c0 < 0xF0:
		if n < 3 {
			return utf8.RuneError, 1
		}
		lo, hi := byte(0x80), byte(0xBF)
		switch c0 {
		case 0xE0:
			lo = 0xA0 // reject overlong
		case 0xED:
			hi = 0x9F // reject surrogates
		}
		c1, c2 := s[i+1], s[i+2]
		if c1 < lo || c1 > hi || c2&0xC0 != 0x80 {
			return utf8.RuneError, 1
		}
		return rune(c0&0x0F)<<12 | rune(c1&0x3F)<<6 | rune(c2&0x3F), 3
	case c0 < 0xF5:
		if n < 4 {
			return utf8.RuneError, 1
		}
		lo, hi := byte(0x80), byte(0xBF)
		switch c0 {
		case 0xF0:
			lo = 0x90 // reject overlong
		case 0xF4:
			hi = 0x8F // reject > U+10FFFF
		}
		c1, c2, c3 := s[i+1], s[i+2], s[i+3]
		if c1 < lo || c1 > hi || c2&0xC0 != 0x80 || c3&0xC0 != 0x80 {
			return utf8.RuneError, 1
		}
		return rune(c0&0x07)<<18 | rune(c1&0x3F)<<12 | rune(c2&0x3F)<<6 | rune(c3&0x3F), 4
	default:
		return utf8.RuneError, 1
	}
}
