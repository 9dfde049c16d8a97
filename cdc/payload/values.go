package payload

// This file converts PostgreSQL text-format column values, as sent by the
// pgoutput logical replication plugin, into JSON. The replication session is
// expected to run with TimeZone=UTC, DateStyle='ISO, YMD',
// IntervalStyle=postgres and bytea_output=hex; the converters rely on the
// output formats those settings produce and fall back to a JSON string for
// anything else.

// Built-in PostgreSQL type OIDs with a dedicated JSON rendering, plus the
// text-like ones that must not be sent to a TypeResolver.
const (
	vtBool        = 16
	vtBytea       = 17
	vtChar        = 18
	vtName        = 19
	vtInt8        = 20
	vtInt2        = 21
	vtInt4        = 23
	vtText        = 25
	vtOID         = 26
	OIDJSON       = 114
	vtXML         = 142
	vtBox         = 603
	vtCIDR        = 650
	vtFloat4      = 700
	vtFloat8      = 701
	vtMacaddr8    = 774
	vtMoney       = 790
	vtMacaddr     = 829
	vtInet        = 869
	vtBpchar      = 1042
	vtVarchar     = 1043
	vtDate        = 1082
	vtTime        = 1083
	vtTimestamp   = 1114
	vtTimestamptz = 1184
	vtInterval    = 1186
	vtTimetz      = 1266
	vtNumeric     = 1700
	vtUUID        = 2950
	OIDJSONB      = 3802
)

const (
	// maxDepth bounds how often AppendValue recurses through resolver
	// hops (domains over domains) and array elements, so that a resolver
	// that maps a type onto itself cannot recurse forever.
	maxDepth = 16
	// maxArrayDims bounds the nesting of array literals. PostgreSQL
	// allows at most 6 dimensions (MAXDIM); anything deeper is rendered as
	// text.
	maxArrayDims = 16
)

// TypeInfo tells AppendValue how to render a type OID that is not built in,
// such as an enum, a domain or an array of a custom type.
type TypeInfo struct {
	// BaseOID, when non-zero, makes AppendValue render the value as if it
	// were of this type. Use it for domains: a domain over int4 has
	// BaseOID 23. It takes precedence over ElemOID.
	BaseOID uint32
	// ElemOID, when non-zero, marks the type as an array whose elements
	// have this type OID; each element is rendered recursively.
	ElemOID uint32
	// Delim is the array element delimiter (pg_type.typdelim). Zero, or a
	// byte that cannot be a delimiter (brace, quote, backslash,
	// whitespace), means ','. Only box uses ';' among the built-in types.
	Delim byte
}

// TypeResolver returns rendering information for an OID that AppendValue
// does not handle itself. ok=false (or a zero TypeInfo) means the value is
// rendered as a JSON string. Enums need no entry: they render as strings.
type TypeResolver func(oid uint32) (info TypeInfo, ok bool)

// AppendValue appends to dst the JSON rendering of text, the text-format
// value of a column of type oid, and returns the extended slice. It does not
// allocate when dst has enough spare capacity (and resolve does not
// allocate).
//
// Rendering by type:
//   - bool: true or false.
//   - int2, int4, int8, oid, float4, float8, numeric: the digits verbatim as
//     a JSON number (no float conversion, so numeric precision is kept);
//     NaN, Infinity, -Infinity and anything else that is not a valid JSON
//     number become a JSON string.
//   - json, jsonb: embedded verbatim.
//   - bytea (hex format, `\x...`): a JSON string with the standard,
//     padded base64 encoding of the bytes.
//   - timestamptz: an ISO 8601 / RFC 3339 string, e.g.
//     "2024-01-02T03:04:05.123456Z" or "...+05:30"; infinity, -infinity
//     and BC dates are rendered as the text unchanged.
//   - timestamp: like timestamptz without a zone.
//   - arrays (built-in array types, and types for which resolve returns a
//     non-zero ElemOID): nested JSON arrays, unquoted NULL elements as null,
//     each element rendered by its element type's rule; a dimension
//     decoration such as "[0:1]=" is dropped.
//   - everything else, including date, time, timetz, interval, text types,
//     uuid, network types, xml, money and enums: the text as a JSON string.
//
// OIDs that AppendValue does not know are passed to resolve, when it is not
// nil, so that domains and arrays of custom types render by their base or
// element type. AppendValue never panics: a value that cannot be parsed as
// its type (a malformed array literal, bad bytea hex, ...) is rendered as its
// raw text in a JSON string. For json and jsonb the only check is for empty
// text; see appendJSONText.
func AppendValue(dst []byte, oid uint32, text []byte, resolve TypeResolver) []byte {
	return appendValue(dst, oid, text, resolve, 0)
}

// appendValue is AppendValue with a recursion depth counter.
func appendValue(dst []byte, oid uint32, text []byte, resolve TypeResolver, depth int) []byte {
	switch oid {
	case vtBool:
		if len(text) == 1 {
			switch text[0] {
			case 't':
				return append(dst, "true"...)
			case 'f':
				return append(dst, "false"...)
			}
		}
		return AppendJSONStringBytes(dst, text)
	case vtInt2, vtInt4, vtInt8, vtOID, vtFloat4, vtFloat8, vtNumeric:
		if isNumber(text) {
			return append(dst, text...)
		}
		return AppendJSONStringBytes(dst, text)
	case OIDJSON, OIDJSONB:
		return appendJSONText(dst, text)
	case vtBytea:
		return appendBytea(dst, text)
	case vtTimestamptz:
		return appendTimestamp(dst, text, true)
	case vtTimestamp:
		return appendTimestamp(dst, text, false)
	case vtDate, vtTime, vtTimetz, vtInterval,
		vtText, vtVarchar, vtBpchar, vtName, vtChar, vtUUID,
		vtInet, vtCIDR, vtMacaddr, vtMacaddr8, vtXML, vtMoney, vtBox:
		return AppendJSONStringBytes(dst, text)
	}
	if elem, delim, ok := builtinArrayElem(oid); ok {
		return appendArray(dst, text, elem, delim, resolve, depth)
	}
	if resolve != nil && depth < maxDepth {
		if info, ok := resolve(oid); ok {
			switch {
			case info.BaseOID != 0:
				return appendValue(dst, info.BaseOID, text, resolve, depth+1)
			case info.ElemOID != 0:
				return appendArray(dst, text, info.ElemOID, info.Delim, resolve, depth)
			}
		}
	}
	return AppendJSONStringBytes(dst, text)
}

// builtinArrayElem maps a built-in array type OID to its element type OID
// and delimiter.
func builtinArrayElem(oid uint32) (elem uint32, delim byte, ok bool) {
	switch oid {
	case 1000:
		return vtBool, ',', true
	case 1005:
		return vtInt2, ',', true
	case 1007:
		return vtInt4, ',', true
	case 1016:
		return vtInt8, ',', true
	case 1028:
		return vtOID, ',', true
	case 1021:
		return vtFloat4, ',', true
	case 1022:
		return vtFloat8, ',', true
	case 1231:
		return vtNumeric, ',', true
	case 1009:
		return vtText, ',', true
	case 1015:
		return vtVarchar, ',', true
	case 1014:
		return vtBpchar, ',', true
	case 1002:
		return vtChar, ',', true
	case 1003:
		return vtName, ',', true
	case 2951:
		return vtUUID, ',', true
	case 199:
		return OIDJSON, ',', true
	case 3807:
		return OIDJSONB, ',', true
	case 1001:
		return vtBytea, ',', true
	case 1185:
		return vtTimestamptz, ',', true
	case 1115:
		return vtTimestamp, ',', true
	case 1182:
		return vtDate, ',', true
	case 1183:
		return vtTime, ',', true
	case 1270:
		return vtTimetz, ',', true
	case 1187:
		return vtInterval, ',', true
	case 1041:
		return vtInet, ',', true
	case 651:
		return vtCIDR, ',', true
	case 1040:
		return vtMacaddr, ',', true
	case 775:
		return vtMacaddr8, ',', true
	case 1020:
		return vtBox, ';', true
	}
	return 0, 0, false
}

// appendJSONText embeds a json or jsonb value verbatim. PostgreSQL only ever
// sends syntactically valid JSON for these types, so the text is not
// validated (that would cost a full scan of every document); only empty
// text, which PostgreSQL never sends, is rendered as "" to keep the output
// well formed.
func appendJSONText(dst []byte, text []byte) []byte {
	if len(text) == 0 {
		return append(dst, '"', '"')
	}
	return append(dst, text...)
}

// isDigit reports whether c is an ASCII digit.
func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// isNumber reports whether b is a valid JSON number
// (-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?).
func isNumber(b []byte) bool {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	if i >= len(b) {
		return false
	}
	switch {
	case b[i] == '0':
		i++
	case '1' <= b[i] && b[i] <= '9':
		for i++; i < len(b) && isDigit(b[i]); i++ {
		}
	default:
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || !isDigit(b[i]) {
			return false
		}
		for i++; i < len(b) && isDigit(b[i]); i++ {
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return false
		}
		for i++; i < len(b) && isDigit(b[i]); i++ {
		}
	}
	return i == len(b)
}

// unhex returns the value of hex digit c, or 0xFF if c is not one.
func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10
	}
	return 0xFF
}

// base64Alphabet is the standard base64 alphabet (RFC 4648 section 4).
const base64Alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

// appendBytea renders a bytea in hex output format (`\x0a1b...`) as a JSON
// string holding the standard, padded base64 encoding of the bytes. It
// decodes the hex and encodes the base64 in one pass, three bytes at a time,
// without an intermediate buffer. Any other input is rendered as its raw
// text.
func appendBytea(dst []byte, text []byte) []byte {
	if len(text) < 2 || text[0] != '\\' || text[1] != 'x' || len(text)%2 != 0 {
		return AppendJSONStringBytes(dst, text)
	}
	hex := text[2:]
	for _, c := range hex {
		if unhex(c) == 0xFF {
			return AppendJSONStringBytes(dst, text)
		}
	}
	dst = append(dst, '"')
	n := len(hex) / 2 // number of decoded bytes
	byteAt := func(k int) uint32 {
		return uint32(unhex(hex[2*k])<<4 | unhex(hex[2*k+1]))
	}
	k := 0
	for ; k+3 <= n; k += 3 {
		v := byteAt(k)<<16 | byteAt(k+1)<<8 | byteAt(k+2)
		dst = append(dst, base64Alphabet[v>>18&0x3F], base64Alphabet[v>>12&0x3F], base64Alphabet[v>>6&0x3F], base64Alphabet[v&0x3F])
	}
	switch n - k {
	case 1:
		v := byteAt(k) << 16
		dst = append(dst, base64Alphabet[v>>18&0x3F], base64Alphabet[v>>12&0x3F], '=', '=')
	case 2:
		v := byteAt(k)<<16 | byteAt(k+1)<<8
		dst = append(dst, base64Alphabet[v>>18&0x3F], base64Alphabet[v>>12&0x3F], base64Alphabet[v>>6&0x3F], '=')
	}
	return append(dst, '"')
}

// hasDigits reports whether b[i:i+n] exists and consists of ASCII digits.
func hasDigits(b []byte, i, n int) bool {
	if i < 0 || i+n > len(b) {
		return false
	}
	for _, c := range b[i : i+n] {
		if !isDigit(c) {
			return false
		}
	}
	return true
}

// appendTimestamp renders a timestamp (withZone=false) or timestamptz
// (withZone=true) in ISO DateStyle output format as an ISO 8601 JSON string:
//
//	2024-01-02 03:04:05.123456+00    -> "2024-01-02T03:04:05.123456Z"
//	2024-01-02 03:04:05.22108+00     -> "2024-01-02T03:04:05.221080Z"
//	2024-01-02 03:04:05-08           -> "2024-01-02T03:04:05-08:00"
//	2024-01-02 03:04:05+05:30        -> "2024-01-02T03:04:05+05:30"
//	1900-01-01 00:00:00+05:53:28     -> "1900-01-01T00:00:00+05:53:28"
//	2024-01-02 03:04:05.5            -> "2024-01-02T03:04:05.500000" (timestamp)
//
// Like Python's isoformat (and so NetBox's REST API), a fraction is written
// with six digits (PostgreSQL drops trailing zeros), and left out when the
// microseconds are zero.
//
// Years may have more than four digits. Anything else, notably infinity,
// -infinity and BC dates (" BC" suffix), is rendered as the raw text.
func appendTimestamp(dst []byte, text []byte, withZone bool) []byte {
	// Date: YYYY[Y...]-MM-DD
	i := 0
	for i < len(text) && isDigit(text[i]) {
		i++
	}
	if i < 4 || !digitsSep(text, i, '-', '-', ' ') {
		return AppendJSONStringBytes(dst, text)
	}
	dateEnd := i + 6 // index of the space
	// Time: HH:MM:SS[.f...]
	i = dateEnd + 1
	if !digitsSep(text, i-1, ' ', ':', ':') || !hasDigits(text, i+6, 2) {
		return AppendJSONStringBytes(dst, text)
	}
	i += 8
	pad := 0 // zeros that make the fraction six digits
	if i < len(text) && text[i] == '.' {
		i++
		if i >= len(text) || !isDigit(text[i]) {
			return AppendJSONStringBytes(dst, text)
		}
		start := i
		for i < len(text) && isDigit(text[i]) {
			i++
		}
		pad = max(0, 6-(i-start))
	}
	timeEnd := i
	if !withZone {
		if i != len(text) {
			return AppendJSONStringBytes(dst, text)
		}
		dst = appendISODateTime(dst, text, dateEnd, timeEnd, pad)
		return append(dst, '"')
	}
	// Zone: ±HH[:MM[:SS]]
	if i >= len(text) || (text[i] != '+' && text[i] != '-') || !hasDigits(text, i+1, 2) {
		return AppendJSONStringBytes(dst, text)
	}
	sign, hh := text[i], text[i+1:i+3]
	var mm, ss []byte
	i += 3
	if i < len(text) {
		if text[i] != ':' || !hasDigits(text, i+1, 2) {
			return AppendJSONStringBytes(dst, text)
		}
		mm = text[i+1 : i+3]
		i += 3
	}
	if i < len(text) {
		if text[i] != ':' || !hasDigits(text, i+1, 2) {
			return AppendJSONStringBytes(dst, text)
		}
		ss = text[i+1 : i+3]
		i += 3
	}
	if i != len(text) {
		return AppendJSONStringBytes(dst, text)
	}
	dst = appendISODateTime(dst, text, dateEnd, timeEnd, pad)
	if allZero(hh) && allZero(mm) && allZero(ss) {
		dst = append(dst, 'Z')
		return append(dst, '"')
	}
	dst = append(dst, sign, hh[0], hh[1], ':')
	if mm != nil {
		dst = append(dst, mm[0], mm[1])
	} else {
		dst = append(dst, '0', '0')
	}
	if ss != nil && !allZero(ss) {
		dst = append(dst, ':', ss[0], ss[1])
	}
	return append(dst, '"')
}

// appendISODateTime writes the opening quote, the date text[:dateEnd], "T",
// the time text[dateEnd+1:timeEnd] and pad zeros that make its fraction six
// digits: the part of appendTimestamp's output before the zone.
func appendISODateTime(dst, text []byte, dateEnd, timeEnd, pad int) []byte {
	dst = append(dst, '"')
	dst = append(dst, text[:dateEnd]...)
	dst = append(dst, 'T')
	dst = append(dst, text[dateEnd+1:timeEnd]...)
	return append(dst, "000000"[:pad]...)
}

// digitsSep reports whether b[i:] starts with the pattern
// s1 D D s2 D D s3, where D is an ASCII digit.
func digitsSep(b []byte, i int, s1, s2, s3 byte) bool {
	return i+7 <= len(b) && b[i] == s1 && hasDigits(b, i+1, 2) &&
		b[i+3] == s2 && hasDigits(b, i+4, 2) && b[i+6] == s3
}

// allZero reports whether b consists only of '0' bytes (true if empty).
func allZero(b []byte) bool {
	for _, c := range b {
		if c != '0' {
			return false
		}
	}
	return true
}

// isSpace reports whether c is whitespace as PostgreSQL's array parser
// sees it (scanner_isspace).
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

// skipSpace returns the index of the first non-space byte at or after i.
func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// arrayParser holds the state shared by the levels of one array literal.
type arrayParser struct {
	text    []byte
	elem    uint32
	delim   byte
	resolve TypeResolver
	depth   int // AppendValue recursion depth of the array itself
}

// appendArray renders a PostgreSQL array literal (array_out format) as a
// JSON array, rendering each element with the rule for elem. A malformed
// literal is rendered as its raw text.
func appendArray(dst []byte, text []byte, elem uint32, delim byte, resolve TypeResolver, depth int) []byte {
	switch delim {
	case 0, '{', '}', '"', '\\', ' ', '\t', '\n', '\r', '\v', '\f':
		delim = ','
	}
	n := len(dst)
	p := arrayParser{text: text, elem: elem, delim: delim, resolve: resolve, depth: depth}
	i := skipSpace(text, 0)
	if i < len(text) && text[i] == '[' {
		var ok bool
		if i, ok = skipDims(text, i); !ok {
			return AppendJSONStringBytes(dst[:n], text)
		}
	}
	if i >= len(text) || text[i] != '{' {
		return AppendJSONStringBytes(dst[:n], text)
	}
	dst, i, ok := p.level(dst, i, 1)
	if !ok || skipSpace(text, i) != len(text) {
		return AppendJSONStringBytes(dst[:n], text)
	}
	return dst
}

// skipDims skips a dimension decoration such as "[0:1][1:3]=" starting at
// text[i] == '[' and returns the index after the '=' and any spaces.
func skipDims(text []byte, i int) (int, bool) {
	for i < len(text) && text[i] == '[' {
		i++
		digits := false
		for ; i < len(text) && text[i] != ']'; i++ {
			switch c := text[i]; {
			case isDigit(c):
				digits = true
			case c == ':' || c == '-' || c == '+' || isSpace(c):
			default:
				return 0, false
			}
		}
		if i >= len(text) || !digits {
			return 0, false
		}
		i = skipSpace(text, i+1) // skip ']'
	}
	if i >= len(text) || text[i] != '=' {
		return 0, false
	}
	return skipSpace(text, i+1), true
}

// level renders the array level whose '{' is at p.text[i] and returns the
// index after its matching '}'. dims is the nesting level of this '{'.
func (p *arrayParser) level(dst []byte, i int, dims int) ([]byte, int, bool) {
	text := p.text
	dst = append(dst, '[')
	i = skipSpace(text, i+1)
	if i < len(text) && text[i] == '}' {
		return append(dst, ']'), i + 1, true
	}
	const (
		kindUnset = iota
		kindArrays
		kindScalars
	)
	kind := kindUnset
	for first := true; ; first = false {
		i = skipSpace(text, i)
		if i >= len(text) {
			return dst, i, false
		}
		if !first {
			dst = append(dst, ',')
		}
		var ok bool
		if text[i] == '{' {
			if kind == kindScalars || dims >= maxArrayDims {
				return dst, i, false
			}
			kind = kindArrays
			dst, i, ok = p.level(dst, i, dims+1)
		} else {
			if kind == kindArrays {
				return dst, i, false
			}
			kind = kindScalars
			dst, i, ok = p.element(dst, i)
		}
		if !ok {
			return dst, i, false
		}
		i = skipSpace(text, i)
		if i >= len(text) {
			return dst, i, false
		}
		switch text[i] {
		case p.delim:
			i++
		case '}':
			return append(dst, ']'), i + 1, true
		default:
			return dst, i, false
		}
	}
}

// element renders the scalar element starting at p.text[i] (after leading
// whitespace) and returns the index just after it.
func (p *arrayParser) element(dst []byte, i int) ([]byte, int, bool) {
	text := p.text
	var start, end int // raw (still escaped) element bytes are text[start:end]
	escaped := false
	if text[i] == '"' {
		start = i + 1
		j := start
		for ; j < len(text) && text[j] != '"'; j++ {
			if text[j] == '\\' {
				escaped = true
				j++
			}
		}
		if j >= len(text) {
			return dst, j, false
		}
		end, i = j, j+1
	} else {
		start = i
		end = i // end of the last non-space (or escaped) byte
		j := i
	scan:
		for ; j < len(text); j++ {
			switch c := text[j]; {
			case c == p.delim || c == '}':
				break scan
			case c == '{' || c == '"':
				return dst, j, false
			case c == '\\':
				escaped = true
				j++
				if j >= len(text) {
					return dst, j, false
				}
				end = j + 1
			case !isSpace(c):
				end = j + 1
			}
		}
		if end == start {
			return dst, j, false // empty unquoted element
		}
		i = j
		if !escaped && end-start == 4 && isNull(text[start:end]) {
			return append(dst, "null"...), i, true
		}
	}
	if !escaped {
		return appendValue(dst, p.elem, text[start:end], p.resolve, p.depth+1), i, true
	}
	// The element contains backslash escapes. Unescape it into the spare
	// room at the end of dst, render it from there into the bytes after
	// it, then move the rendering down over the scratch copy. This keeps
	// the conversion free of allocations when dst has enough capacity.
	m := len(dst)
	for k := start; k < end; k++ {
		if text[k] == '\\' {
			k++
		}
		dst = append(dst, text[k])
	}
	raw := dst[m:]
	dst = appendValue(dst, p.elem, raw, p.resolve, p.depth+1)
	w := copy(dst[m:], dst[m+len(raw):])
	return dst[:m+w], i, true
}

// isNull reports whether b is "NULL", case-insensitively.
func isNull(b []byte) bool {
	return len(b) == 4 && b[0]|0x20 == 'n' && b[1]|0x20 == 'u' && b[2]|0x20 == 'l' && b[3]|0x20 == 'l'
}
