package payload

import (
	"encoding/json"
	"strings"
	"testing"
)

// OIDs used by testResolver.
const (
	testEnum          = 90001 // enum: ok with a zero TypeInfo
	testDomainInt4    = 90002 // domain over int4
	testEnumArray     = 90003 // array of testEnum
	testDomainDomain  = 90004 // domain over testDomainInt4
	testDomainLoop    = 90005 // broken domain over itself
	testDomainInt4Arr = 90006 // domain over int4[]
	testSemiArray     = 90007 // ';'-delimited array of testDomainInt4
	testArrayLoop     = 90008 // broken array whose element type is itself
	testUnknown       = 90009 // resolver returns ok=false
	testDomainTstz    = 90010 // domain over timestamptz
	testDefaultDelim  = 90011 // array of int4 with Delim 0
)

// testResolver is a TypeResolver for the test OIDs above.
func testResolver(oid uint32) (TypeInfo, bool) {
	switch oid {
	case testEnum:
		return TypeInfo{}, true
	case testDomainInt4:
		return TypeInfo{BaseOID: 23}, true
	case testEnumArray:
		return TypeInfo{ElemOID: testEnum, Delim: ','}, true
	case testDomainDomain:
		return TypeInfo{BaseOID: testDomainInt4}, true
	case testDomainLoop:
		return TypeInfo{BaseOID: testDomainLoop}, true
	case testDomainInt4Arr:
		return TypeInfo{BaseOID: 1007}, true
	case testSemiArray:
		return TypeInfo{ElemOID: testDomainInt4, Delim: ';'}, true
	case testArrayLoop:
		return TypeInfo{ElemOID: testArrayLoop, Delim: ','}, true
	case testDomainTstz:
		return TypeInfo{BaseOID: 1184}, true
	case testDefaultDelim:
		return TypeInfo{ElemOID: 23}, true
	}
	return TypeInfo{}, false
}

type valueCase struct {
	name string
	oid  uint32
	in   string
	want string
}

var valueCases = []valueCase{
	// bool
	{"bool true", 16, "t", `true`},
	{"bool false", 16, "f", `false`},
	{"bool unexpected text", 16, "true", `"true"`},
	{"bool empty", 16, "", `""`},

	// numbers
	{"int4", 23, "42", `42`},
	{"int4 negative", 23, "-42", `-42`},
	{"int4 zero", 23, "0", `0`},
	{"int2 min", 21, "-32768", `-32768`},
	{"int8 max", 20, "9223372036854775807", `9223372036854775807`},
	{"int8 min", 20, "-9223372036854775808", `-9223372036854775808`},
	{"oid max", 26, "4294967295", `4294967295`},
	{"float4", 700, "1.5", `1.5`},
	{"float4 exponent", 700, "1.17549435e-38", `1.17549435e-38`},
	{"float8 exponent plus", 701, "1e+100", `1e+100`},
	{"float8 negative exponent", 701, "-1.2345e-07", `-1.2345e-07`},
	{"float8 negative zero", 701, "-0", `-0`},
	{"float8 NaN", 701, "NaN", `"NaN"`},
	{"float8 Infinity", 701, "Infinity", `"Infinity"`},
	{"float8 -Infinity", 701, "-Infinity", `"-Infinity"`},
	{"float4 -Infinity", 700, "-Infinity", `"-Infinity"`},
	{"numeric 40 digits", 1700, "1234567890123456789012345678901234567890", `1234567890123456789012345678901234567890`},
	{"numeric 40 digits with scale", 1700, "-1234567890123456789012345678901234567890.0123456789012345678901234567890123456789",
		`-1234567890123456789012345678901234567890.0123456789012345678901234567890123456789`},
	{"numeric trailing zeros kept", 1700, "1.10000", `1.10000`},
	{"numeric tiny", 1700, "0.000000000000000000001", `0.000000000000000000001`},
	{"numeric NaN", 1700, "NaN", `"NaN"`},
	{"numeric Infinity", 1700, "Infinity", `"Infinity"`},
	{"numeric -Infinity", 1700, "-Infinity", `"-Infinity"`},
	{"number with exponent", 1700, "1e5", `1e5`},
	{"number with capital exponent", 701, "1E-5", `1E-5`},
	{"leading zero is not JSON", 23, "007", `"007"`},
	{"leading plus is not JSON", 23, "+1", `"+1"`},
	{"leading dot is not JSON", 1700, ".5", `".5"`},
	{"trailing dot is not JSON", 1700, "1.", `"1."`},
	{"dangling exponent", 701, "1e", `"1e"`},
	{"dangling exponent sign", 701, "1e+", `"1e+"`},
	{"lone minus", 23, "-", `"-"`},
	{"double minus", 23, "--1", `"--1"`},
	{"number with spaces", 23, " 1", `" 1"`},
	{"number empty", 23, "", `""`},
	{"hex is not JSON", 20, "0x10", `"0x10"`},

	// json, jsonb
	{"json object", 114, `{"a": [1, 2, {"b": null}]}`, `{"a": [1, 2, {"b": null}]}`},
	{"json whitespace kept", 114, " {\"a\":1}\n", " {\"a\":1}\n"},
	{"jsonb string", 3802, `"str"`, `"str"`},
	{"jsonb null", 3802, `null`, `null`},
	{"jsonb number", 3802, `1.50`, `1.50`},
	{"jsonb unicode", 3802, `{"k": "日本 \u00e9"}`, `{"k": "日本 \u00e9"}`},
	{"json empty", 114, "", `""`},

	// bytea
	{"bytea empty", 17, `\x`, `""`},
	{"bytea one byte", 17, `\x00`, `"AA=="`},
	{"bytea two bytes", 17, `\x0102`, `"AQI="`},
	{"bytea three bytes", 17, `\x616263`, `"YWJj"`},
	{"bytea four bytes", 17, `\xdeadbeef`, `"3q2+7w=="`},
	{"bytea uppercase hex", 17, `\xDEADBEEF`, `"3q2+7w=="`},
	{"bytea high bytes", 17, `\xfbffbf`, `"+/+/"`},
	{"bytea odd length", 17, `\x0`, `"\\x0"`},
	{"bytea bad hex", 17, `\xzz`, `"\\xzz"`},
	{"bytea escape format", 17, `\000abc`, `"\\000abc"`},
	{"bytea no prefix", 17, `abc`, `"abc"`},
	{"bytea empty text", 17, ``, `""`},

	// timestamptz
	{"timestamptz micros UTC", 1184, "2024-01-02 03:04:05.123456+00", `"2024-01-02T03:04:05.123456Z"`},
	{"timestamptz whole seconds UTC", 1184, "2024-01-02 03:04:05+00", `"2024-01-02T03:04:05Z"`},
	{"timestamptz millis", 1184, "2024-01-02 03:04:05.123+00", `"2024-01-02T03:04:05.123000Z"`},
	{"timestamptz five fraction digits", 1184, "2024-01-02 03:04:05.22108+00", `"2024-01-02T03:04:05.221080Z"`},
	{"timestamptz negative hour offset", 1184, "2024-01-02 03:04:05-08", `"2024-01-02T03:04:05-08:00"`},
	{"timestamptz half-hour offset", 1184, "2024-01-02 03:04:05.5+05:30", `"2024-01-02T03:04:05.500000+05:30"`},
	{"timestamptz negative minutes offset", 1184, "2024-01-02 03:04:05-09:30", `"2024-01-02T03:04:05-09:30"`},
	{"timestamptz seconds offset", 1184, "1900-01-01 00:00:00+05:53:28", `"1900-01-01T00:00:00+05:53:28"`},
	{"timestamptz zero seconds offset", 1184, "2024-01-02 03:04:05+05:30:00", `"2024-01-02T03:04:05+05:30"`},
	{"timestamptz zero full offset", 1184, "2024-01-02 03:04:05+00:00:00", `"2024-01-02T03:04:05Z"`},
	{"timestamptz zero offset with minutes", 1184, "2024-01-02 03:04:05+00:00", `"2024-01-02T03:04:05Z"`},
	{"timestamptz year above 9999", 1184, "12345-06-07 08:09:10+00", `"12345-06-07T08:09:10Z"`},
	{"timestamptz BC", 1184, "0044-03-15 12:00:00+00 BC", `"0044-03-15 12:00:00+00 BC"`},
	{"timestamptz infinity", 1184, "infinity", `"infinity"`},
	{"timestamptz -infinity", 1184, "-infinity", `"-infinity"`},
	{"timestamptz without zone", 1184, "2024-01-02 03:04:05", `"2024-01-02 03:04:05"`},
	{"timestamptz already ISO", 1184, "2024-01-02T03:04:05Z", `"2024-01-02T03:04:05Z"`},
	{"timestamptz empty fraction", 1184, "2024-01-02 03:04:05.+00", `"2024-01-02 03:04:05.+00"`},
	{"timestamptz one-digit offset", 1184, "2024-01-02 03:04:05+0", `"2024-01-02 03:04:05+0"`},
	{"timestamptz short year", 1184, "24-01-02 03:04:05+00", `"24-01-02 03:04:05+00"`},
	{"timestamptz trailing junk", 1184, "2024-01-02 03:04:05+00:00:00:00", `"2024-01-02 03:04:05+00:00:00:00"`},
	{"timestamptz empty", 1184, "", `""`},

	// timestamp
	{"timestamp millis", 1114, "2024-01-02 03:04:05.123", `"2024-01-02T03:04:05.123000"`},
	{"timestamp whole seconds", 1114, "2024-01-02 03:04:05", `"2024-01-02T03:04:05"`},
	{"timestamp micros", 1114, "1999-12-31 23:59:59.999999", `"1999-12-31T23:59:59.999999"`},
	{"timestamp year above 9999", 1114, "294276-12-31 23:59:59", `"294276-12-31T23:59:59"`},
	{"timestamp with zone is malformed", 1114, "2024-01-02 03:04:05+00", `"2024-01-02 03:04:05+00"`},
	{"timestamp BC", 1114, "4713-01-01 00:00:00 BC", `"4713-01-01 00:00:00 BC"`},
	{"timestamp infinity", 1114, "infinity", `"infinity"`},
	{"timestamp -infinity", 1114, "-infinity", `"-infinity"`},

	// date, time, timetz, interval: strings
	{"date", 1082, "2024-01-02", `"2024-01-02"`},
	{"date infinity", 1082, "-infinity", `"-infinity"`},
	{"time", 1083, "03:04:05.123", `"03:04:05.123"`},
	{"timetz", 1266, "03:04:05+05:30", `"03:04:05+05:30"`},
	{"interval", 1186, "1 year 2 mons 3 days 04:05:06.5", `"1 year 2 mons 3 days 04:05:06.5"`},
	{"interval negative", 1186, "-00:00:01", `"-00:00:01"`},

	// text-like and other types: strings
	{"text", 25, "hello", `"hello"`},
	{"text empty", 25, "", `""`},
	{"text unicode", 25, "héllo ✓ 日本語 😀", `"héllo ✓ 日本語 😀"`},
	{"text control chars", 25, "a\nb\tc\x00\x1f", `"a\nb\tc\u0000\u001f"`},
	{"text quotes and backslashes", 25, `say "hi" \o/`, `"say \"hi\" \\o/"`},
	{"text html not escaped", 25, "<b>&</b>", `"<b>&</b>"`},
	{"text line separator", 25, "a\u2028b", `"a\u2028b"`},
	{"text invalid UTF-8", 25, "a\xffb\xc3", `"a\ufffdb\ufffd"`},
	{"text that looks like a number", 25, "42", `"42"`},
	{"text that looks like an array", 25, "{1,2}", `"{1,2}"`},
	{"varchar", 1043, "v", `"v"`},
	{"bpchar padding kept", 1042, "ab   ", `"ab   "`},
	{"name", 19, "pg_class", `"pg_class"`},
	{"char", 18, "x", `"x"`},
	{"uuid", 2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`},
	{"inet", 869, "192.168.0.1/24", `"192.168.0.1/24"`},
	{"cidr", 650, "10.0.0.0/8", `"10.0.0.0/8"`},
	{"macaddr", 829, "08:00:2b:01:02:03", `"08:00:2b:01:02:03"`},
	{"macaddr8", 774, "08:00:2b:01:02:03:04:05", `"08:00:2b:01:02:03:04:05"`},
	{"xml", 142, `<a href="x">&amp;</a>`, `"<a href=\"x\">&amp;</a>"`},
	{"money", 790, "$1,234.56", `"$1,234.56"`},
	{"point", 600, "(1,2)", `"(1,2)"`},
	{"unknown oid", 99999, "whatever", `"whatever"`},
	{"oid zero", 0, "x", `"x"`},

	// arrays of numbers and bools
	{"int4[]", 1007, "{1,2,3}", `[1,2,3]`},
	{"int4[] with NULL", 1007, "{1,NULL,-3}", `[1,null,-3]`},
	{"int4[] lowercase null", 1007, "{null,Null}", `[null,null]`},
	{"int4[] empty", 1007, "{}", `[]`},
	{"int4[] empty with spaces", 1007, "{ }", `[]`},
	{"int4[] single", 1007, "{7}", `[7]`},
	{"int4[] 2-D", 1007, "{{1,2},{3,4}}", `[[1,2],[3,4]]`},
	{"int4[] 3-D", 1007, "{{{1},{2}},{{3},{4}}}", `[[[1],[2]],[[3],[4]]]`},
	{"int4[] 2-D with NULL", 1007, "{{1,NULL},{NULL,4}}", `[[1,null],[null,4]]`},
	{"int4[] dimension decoration", 1007, "[0:1]={1,2}", `[1,2]`},
	{"int4[] 2-D dimension decoration", 1007, "[1:2][-1:0]={{1,2},{3,4}}", `[[1,2],[3,4]]`},
	{"int4[] dimension decoration with spaces", 1007, " [0:1] = {1,2}", `[1,2]`},
	{"int4[] whitespace", 1007, " { 1 , 2 ,\tNULL } ", `[1,2,null]`},
	{"int4[] quoted numbers", 1007, `{"1","-2"}`, `[1,-2]`},
	{"int4[] non-numeric element", 1007, "{abc,1}", `["abc",1]`},
	{"int2[]", 1005, "{-1,2}", `[-1,2]`},
	{"int8[]", 1016, "{9223372036854775807}", `[9223372036854775807]`},
	{"oid[]", 1028, "{1,4294967295}", `[1,4294967295]`},
	{"float4[]", 1021, "{1.5,-0.25}", `[1.5,-0.25]`},
	{"float8[] special values", 1022, "{1.5,NaN,Infinity,-Infinity,1e+100}", `[1.5,"NaN","Infinity","-Infinity",1e+100]`},
	{"numeric[]", 1231, "{1.10,-2.5,NaN,1234567890123456789012345678901234567890}", `[1.10,-2.5,"NaN",1234567890123456789012345678901234567890]`},
	{"bool[]", 1000, "{t,f,NULL}", `[true,false,null]`},

	// arrays of strings
	{"text[] quoting", 1009, `{"a b","c\"d",NULL,"NULL"}`, `["a b","c\"d",null,"NULL"]`},
	{"text[] unquoted", 1009, `{plain,words}`, `["plain","words"]`},
	{"text[] unquoted lowercase null", 1009, `{null,"null"}`, `[null,"null"]`},
	{"text[] escaped NULL is a string", 1009, `{\NULL}`, `["NULL"]`},
	{"text[] backslash", 1009, `{"back\\slash"}`, `["back\\slash"]`},
	{"text[] escaped delimiter unquoted", 1009, `{a\,b,c}`, `["a,b","c"]`},
	{"text[] escaped trailing space kept", 1009, `{a\ ,b}`, `["a ","b"]`},
	{"text[] empty strings", 1009, `{"",""}`, `["",""]`},
	{"text[] braces and commas", 1009, `{"{x}","a,b"}`, `["{x}","a,b"]`},
	{"text[] inner whitespace kept", 1009, `{  a b  ,"  c  "}`, `["a b","  c  "]`},
	{"text[] unicode", 1009, `{héllo,"wörld ✓",😀}`, `["héllo","wörld ✓","😀"]`},
	{"text[] control chars", 1009, "{\"a\nb\",\"\x01\"}", `["a\nb","\u0001"]`},
	{"text[] invalid UTF-8", 1009, "{\xff,\"\xfe\"}", `["\ufffd","\ufffd"]`},
	{"text[] 2-D", 1009, `{{a,b},{"c d",NULL}}`, `[["a","b"],["c d",null]]`},
	{"varchar[]", 1015, `{x,"y z"}`, `["x","y z"]`},
	{"bpchar[]", 1014, `{"a  ",b}`, `["a  ","b"]`},
	{"char[]", 1002, `{a,"\\","\""}`, `["a","\\","\""]`},
	{"name[]", 1003, `{pg_class,"Mixed Case"}`, `["pg_class","Mixed Case"]`},
	{"uuid[]", 2951, `{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,NULL}`, `["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",null]`},
	{"inet[]", 1041, `{192.168.0.1,::1/128}`, `["192.168.0.1","::1/128"]`},
	{"cidr[]", 651, `{10.0.0.0/8}`, `["10.0.0.0/8"]`},
	{"macaddr[]", 1040, `{08:00:2b:01:02:03}`, `["08:00:2b:01:02:03"]`},
	{"macaddr8[]", 775, `{08:00:2b:01:02:03:04:05}`, `["08:00:2b:01:02:03:04:05"]`},
	{"box[] semicolon delimiter", 1020, `{(1,1),(0,0);(3,3),(2,2)}`, `["(1,1),(0,0)","(3,3),(2,2)"]`},

	// arrays of json, bytea, date/time types
	{"json[]", 199, `{"{\"a\": 1}","[1, 2]",NULL,"\"s\""}`, `[{"a": 1},[1, 2],null,"s"]`},
	{"jsonb[] nested escapes", 3807, `{"{\"a\": {\"b\": [1, \"x\\\\y\"]}}"}`, `[{"a": {"b": [1, "x\\y"]}}]`},
	{"jsonb[] scalars", 3807, `{1,true,"null",NULL}`, `[1,true,null,null]`},
	{"bytea[]", 1001, `{"\\x0102",NULL,"\\x","\\xdeadbeef"}`, `["AQI=",null,"","3q2+7w=="]`},
	{"bytea[] bad element", 1001, `{"\\xzz"}`, `["\\xzz"]`},
	{"timestamptz[]", 1185, `{"2024-01-02 03:04:05+00","2024-01-02 03:04:05.5-08",infinity,NULL}`,
		`["2024-01-02T03:04:05Z","2024-01-02T03:04:05.500000-08:00","infinity",null]`},
	{"timestamptz[] BC", 1185, `{"0044-03-15 12:00:00+00 BC"}`, `["0044-03-15 12:00:00+00 BC"]`},
	{"timestamp[]", 1115, `{"2024-01-02 03:04:05.123",-infinity}`, `["2024-01-02T03:04:05.123000","-infinity"]`},
	{"date[]", 1182, `{2024-01-02,infinity}`, `["2024-01-02","infinity"]`},
	{"time[]", 1183, `{03:04:05,"12:00:00.5"}`, `["03:04:05","12:00:00.5"]`},
	{"timetz[]", 1270, `{03:04:05+05:30}`, `["03:04:05+05:30"]`},
	{"interval[]", 1187, `{"1 day","-00:00:01"}`, `["1 day","-00:00:01"]`},

	// malformed arrays: the raw text as a string
	{"array empty text", 1007, ``, `""`},
	{"array unterminated", 1007, `{1,2`, `"{1,2"`},
	{"array no braces", 1007, `1,2`, `"1,2"`},
	{"array empty element", 1007, `{1,,2}`, `"{1,,2}"`},
	{"array trailing delimiter", 1007, `{1,}`, `"{1,}"`},
	{"array mixed dimensions", 1007, `{{1},2}`, `"{{1},2}"`},
	{"array mixed dimensions scalar first", 1007, `{1,{2}}`, `"{1,{2}}"`},
	{"array trailing junk", 1007, `{1}x`, `"{1}x"`},
	{"array extra closing brace", 1007, `{1,2}}`, `"{1,2}}"`},
	{"array unterminated quote", 1009, `{"a}`, `"{\"a}"`},
	{"array quote inside unquoted", 1009, `{a"b"}`, `"{a\"b\"}"`},
	{"array text after quoted", 1009, `{"a"b}`, `"{\"a\"b}"`},
	{"array dangling backslash", 1009, `{\}`, `"{\\}"`},
	{"array decoration without equals", 1007, `[0:1]{1}`, `"[0:1]{1}"`},
	{"array bad decoration", 1007, `[a]={1}`, `"[a]={1}"`},
	{"array empty decoration", 1007, `[]={1}`, `"[]={1}"`},
	{"array decoration only", 1007, `[0:1]=`, `"[0:1]="`},
	{"array unterminated decoration", 1007, `[0:1`, `"[0:1"`},
	{"array wrong delimiter for box", 1020, `{(1,1),(0,0),(3,3),(2,2)}`, `["(1,1),(0,0),(3,3),(2,2)"]`},
	{"array wrong delimiter for int4", 1007, `{1;2}`, `["1;2"]`},

	// types resolved through the TypeResolver
	{"enum", testEnum, "happy", `"happy"`},
	{"resolver miss", testUnknown, "x", `"x"`},
	{"domain over int4", testDomainInt4, "42", `42`},
	{"domain over int4 bad value", testDomainInt4, "NaN", `"NaN"`},
	{"domain over domain", testDomainDomain, "-7", `-7`},
	{"domain over itself", testDomainLoop, "5", `"5"`},
	{"domain over int4[]", testDomainInt4Arr, "{1,2}", `[1,2]`},
	{"domain over timestamptz", testDomainTstz, "2024-01-02 03:04:05+00", `"2024-01-02T03:04:05Z"`},
	{"enum array", testEnumArray, `{happy,sad,NULL,"NULL"}`, `["happy","sad",null,"NULL"]`},
	{"enum array 2-D", testEnumArray, `{{a},{b}}`, `[["a"],["b"]]`},
	{"enum array malformed", testEnumArray, `{happy`, `"{happy"`},
	{"semicolon array of domain", testSemiArray, `{1;2;NULL}`, `[1,2,null]`},
	{"array with default delimiter", testDefaultDelim, `{1,2}`, `[1,2]`},
	{"array of itself", testArrayLoop, `{a,"{b,c}"}`, `["a",["b","c"]]`},
}

func TestAppendValue(t *testing.T) {
	for _, tt := range valueCases {
		t.Run(tt.name, func(t *testing.T) {
			got := string(AppendValue(nil, tt.oid, []byte(tt.in), testResolver))
			if got != tt.want {
				t.Errorf("AppendValue(%d, %q)\n got %s\nwant %s", tt.oid, tt.in, got, tt.want)
			}
			if !json.Valid([]byte(got)) {
				t.Errorf("output %s is not valid JSON", got)
			}
		})
	}
}

// TestAppendValuePrefixAndCapacity renders every case after a prefix, with
// destination slices of various capacities, so that the in-place scratch
// handling of escaped array elements is exercised both with and without
// reallocation, and checks that nothing before the value is overwritten.
func TestAppendValuePrefixAndCapacity(t *testing.T) {
	const prefix = `{"k":`
	for _, tt := range valueCases {
		for _, extra := range []int{0, 1, 3, 8, 4096} {
			dst := make([]byte, len(prefix), len(prefix)+extra)
			copy(dst, prefix)
			got := string(AppendValue(dst, tt.oid, []byte(tt.in), testResolver))
			if want := prefix + tt.want; got != want {
				t.Errorf("%s (extra cap %d):\n got %s\nwant %s", tt.name, extra, got, want)
			}
		}
	}
}

func TestAppendValueNilResolver(t *testing.T) {
	tests := []valueCase{
		{"domain without resolver", testDomainInt4, "42", `"42"`},
		{"array without resolver", testEnumArray, "{a,b}", `"{a,b}"`},
		{"built-in array without resolver", 1007, "{1,2}", `[1,2]`},
		{"int4 without resolver", 23, "1", `1`},
	}
	for _, tt := range tests {
		if got := string(AppendValue(nil, tt.oid, []byte(tt.in), nil)); got != tt.want {
			t.Errorf("%s: got %s, want %s", tt.name, got, tt.want)
		}
	}
}

// TestAppendValueResolverNotCalledForBuiltins checks that built-in types
// never reach the resolver.
func TestAppendValueResolverNotCalledForBuiltins(t *testing.T) {
	resolve := func(oid uint32) (TypeInfo, bool) {
		t.Errorf("resolver called for built-in OID %d", oid)
		return TypeInfo{}, false
	}
	for _, oid := range fuzzOIDs {
		if oid >= 90000 {
			continue
		}
		AppendValue(nil, oid, []byte("{x}"), resolve)
	}
}

func TestAppendValueDeepNesting(t *testing.T) {
	for _, depth := range []int{6, maxArrayDims, maxArrayDims + 1, 10000} {
		in := strings.Repeat("{", depth) + "1" + strings.Repeat("}", depth)
		got := AppendValue(nil, 1007, []byte(in), nil)
		var want string
		if depth <= maxArrayDims {
			want = strings.Repeat("[", depth) + "1" + strings.Repeat("]", depth)
		} else {
			want = string(AppendJSONString(nil, in))
		}
		if string(got) != want {
			t.Errorf("depth %d: got %.80s..., want %.80s...", depth, got, want)
		}
		if !json.Valid(got) {
			t.Errorf("depth %d: invalid JSON", depth)
		}
	}
}

func TestAppendValueNoAllocs(t *testing.T) {
	inputs := make([][]byte, len(valueCases))
	for i, tt := range valueCases {
		inputs[i] = []byte(tt.in)
	}
	dst := make([]byte, 0, 8192)
	allocs := testing.AllocsPerRun(100, func() {
		dst = dst[:0]
		for i, tt := range valueCases {
			dst = AppendValue(dst, tt.oid, inputs[i], testResolver)
		}
	})
	if allocs != 0 {
		t.Errorf("AppendValue allocates: %v allocs/run over all cases", allocs)
	}
}

// fuzzOIDs are the type OIDs FuzzAppendValue chooses from.
var fuzzOIDs = []uint32{
	16, 17, 18, 19, 20, 21, 23, 25, 26, 114, 142, 650, 700, 701, 774, 790, 829, 869,
	1042, 1043, 1082, 1083, 1114, 1184, 1186, 1266, 1700, 2950, 3802,
	1000, 1005, 1007, 1016, 1028, 1021, 1022, 1231, 1009, 1015, 1014, 1002, 1003,
	2951, 199, 3807, 1001, 1185, 1115, 1182, 1183, 1270, 1187, 1041, 651, 1040, 775, 1020,
	testEnum, testDomainInt4, testEnumArray, testDomainDomain, testDomainLoop,
	testDomainInt4Arr, testSemiArray, testArrayLoop, testUnknown, testDomainTstz,
	testDefaultDelim, 99999,
}

func FuzzAppendValue(f *testing.F) {
	for _, tt := range valueCases {
		for i, oid := range fuzzOIDs {
			if oid == tt.oid {
				f.Add(uint8(i), []byte(tt.in))
			}
		}
	}
	f.Fuzz(func(t *testing.T, pick uint8, text []byte) {
		oid := fuzzOIDs[int(pick)%len(fuzzOIDs)]
		in := append([]byte(nil), text...)
		out := AppendValue(nil, oid, text, testResolver)
		if string(in) != string(text) {
			t.Fatalf("input modified")
		}
		switch oid {
		case 199, 3807: // json[], jsonb[]: elements are embedded verbatim
		case 114, 3802:
			if json.Valid(text) && !json.Valid(out) {
				t.Fatalf("oid %d %q: invalid JSON %s", oid, text, out)
			}
		default:
			if !json.Valid(out) {
				t.Fatalf("oid %d %q: invalid JSON %s", oid, text, out)
			}
		}
		// Appending after existing bytes, with little spare capacity,
		// must give the same bytes and leave the prefix alone.
		dst := append(make([]byte, 0, 3), "ab"...)
		out2 := AppendValue(dst, oid, text, testResolver)
		if string(out2) != "ab"+string(out) {
			t.Fatalf("oid %d %q: with prefix got %s, want ab%s", oid, text, out2, out)
		}
	})
}

// BenchmarkAppendValue renders a typical row: an int, a text, a
// timestamptz, a numeric and a text array.
func BenchmarkAppendValue(b *testing.B) {
	row := []struct {
		oid  uint32
		text []byte
	}{
		{23, []byte("123456")},
		{25, []byte("hello, world: a typical short text value")},
		{1184, []byte("2024-01-02 03:04:05.123456+00")},
		{1700, []byte("12345.6789")},
		{1009, []byte(`{alpha,"beta gamma",NULL,"d\"e"}`)},
	}
	dst := make([]byte, 0, 1024)
	var n int64
	for _, c := range row {
		n += int64(len(c.text))
	}
	b.SetBytes(n)
	b.ReportAllocs()
	for b.Loop() {
		dst = dst[:0]
		for _, c := range row {
			dst = AppendValue(dst, c.oid, c.text, nil)
		}
	}
}
