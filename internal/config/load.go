package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/template"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/walhook/walhook/dispatch/sign"
	"github.com/walhook/walhook/internal/clienttls"
)

// Problem is one thing wrong with a configuration, at a line of its file.
type Problem struct {
	File string
	Line int
	Msg  string
}

func (p Problem) String() string {
	switch {
	case p.File != "" && p.Line > 0:
		return fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.Msg)
	case p.File != "":
		return fmt.Sprintf("%s: %s", p.File, p.Msg)
	case p.Line > 0:
		return fmt.Sprintf("line %d: %s", p.Line, p.Msg)
	}
	return p.Msg
}

// Error lists every problem found in a configuration. Callers exit 2 on it.
type Error struct{ Problems []Problem }

func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Load reads, expands and validates the configuration at path. The returned
// error is an *Error when the file was read but is invalid.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, b, os.LookupEnv)
}

// Parse parses and validates configuration bytes; file names them in errors
// and lookup resolves ${VAR} references (nil means os.LookupEnv). It returns
// either a valid *Config or an *Error listing every problem found, sorted by
// line: syntax, unknown keys, values of the wrong type, unset variables and
// invalid settings are all reported in one go.
func Parse(file string, data []byte, lookup func(string) (string, bool)) (*Config, error) {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	p := &parser{
		file:     file,
		data:     data,
		lines:    map[string]int{},
		bad:      map[string]bool{},
		nulls:    map[string]bool{},
		badNodes: map[*yaml.Node]bool{},
		keysSeen: map[*yaml.Node]bool{},
		merging:  map[*yaml.Node]bool{},
		blocks:   map[string]bool{},
	}
	c, ok := p.parse(lookup)
	if !ok || len(p.problems) > 0 {
		if len(p.problems) == 0 { // cannot happen; never return an empty *Error
			p.add(0, "invalid configuration")
		}
		sort.SliceStable(p.problems, func(i, j int) bool { return p.problems[i].Line < p.problems[j].Line })
		return nil, &Error{Problems: p.problems}
	}
	return c, nil
}

func (p *parser) parse(lookup func(string) (string, bool)) (*Config, bool) {
	dec := yaml.NewDecoder(bytes.NewReader(p.data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil && !errors.Is(err, io.EOF) {
		p.addSyntaxError(err)
		return nil, false
	}
	if len(root.Content) == 0 || isNull(root.Content[0]) {
		p.add(0, "the file is empty: it needs at least database.dsn, models and webhooks")
		return nil, false
	}
	var next yaml.Node
	if err := dec.Decode(&next); err != nil && !errors.Is(err, io.EOF) {
		p.addSyntaxError(err)
	} else if err == nil && len(next.Content) > 0 && !isNull(next.Content[0]) {
		p.add(next.Line, "only one YAML document is allowed: remove this '---' and what follows, or merge it into the first document")
	}
	doc := root.Content[0]
	if doc.Kind != yaml.MappingNode {
		p.add(doc.Line, "the configuration must be a mapping of keys (database, models, webhooks, ...), not %s", kindName(doc))
		return nil, false
	}
	p.expand(doc, lookup)
	p.walk(doc, reflect.TypeOf(Config{}), "")
	if p.steps >= maxWalk {
		return nil, false // Decode would expand the same aliases
	}
	var c Config
	if err := doc.Decode(&c); err != nil {
		// walk has already reported (and neutralised) what it could
		// recognise; anything left (e.g. a repeated key inside
		// conditions, which walk does not descend into) comes here.
		p.addYAMLError(err)
	}
	c.File = p.file
	sum := sha256.Sum256(p.data)
	c.Hash = hex.EncodeToString(sum[:])
	p.defaults(&c)
	p.validate(&c)
	return &c, true
}

type parser struct {
	file     string
	data     []byte
	problems []Problem
	lines    map[string]int  // path ("webhooks[0].url") -> line
	bad      map[string]bool // paths whose value was reported as unusable
	nulls    map[string]bool // paths given as null (same as absent)
	badNodes map[*yaml.Node]bool
	keysSeen map[*yaml.Node]bool // unknown keys already reported
	merging  map[*yaml.Node]bool // merge sources being walked (cycle guard)
	blocks   map[string]bool     // paths of block scalars (| or >): content starts a line below
	steps    int
}

func (p *parser) add(line int, format string, args ...any) {
	p.problems = append(p.problems, Problem{File: p.file, Line: line, Msg: fmt.Sprintf(format, args...)})
}

// at reports a problem about the value at path, at its line, unless the value
// (or one containing it) was already reported as unusable: one mistake gives
// one message, not a cascade.
func (p *parser) at(path, format string, args ...any) {
	for q := path; ; {
		if p.bad[q] {
			return
		}
		i := strings.LastIndexAny(q, ".[")
		if i < 0 {
			break
		}
		q = q[:i]
	}
	p.add(p.line(path), format, args...)
}

// given reports whether path was written in the file with a non-null value.
func (p *parser) given(path string) bool {
	_, ok := p.lines[path]
	return ok && !p.nulls[path]
}

var yamlLineRE = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

func (p *parser) addYAMLError(err error) {
	var msgs []string
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = te.Errors
	} else {
		msgs = []string{err.Error()}
	}
	for _, m := range msgs {
		if g := yamlLineRE.FindStringSubmatch(m); g != nil {
			n, _ := strconv.Atoi(g[1])
			p.add(n, "%s", strings.TrimPrefix(g[2], "yaml: "))
		} else {
			p.add(0, "%s", strings.TrimPrefix(m, "yaml: "))
		}
	}
}

// parserErrors are the problems reported by yaml.v3's parser (as opposed to
// its scanner). For those, yaml.v3 prints the 0-based line of the mark (and
// no line at all for the first line), so the line must be shifted by one.
var parserErrors = map[string]string{
	"did not find expected key":              " (in a mapping: check the indentation of its keys)",
	"did not find expected '-' indicator":    " (in a list: check the indentation of its items)",
	"did not find expected ',' or ']'":       " (in a [...] list: is a ']' missing? quote values that contain { } [ ] or ',', e.g. \"${VAR}\")",
	"did not find expected ',' or '}'":       " (in a {...} mapping: is a '}' missing? quote values that contain { } [ ] or ',')",
	"did not find expected node content":     "",
	"found undefined tag handle":             "",
	"did not find expected <document start>": "",
	"did not find expected <stream-start>":   "",
	"found duplicate %YAML directive":        "",
	"found incompatible YAML document":       "",
	"found duplicate %TAG directive":         "",
}

var anchorRE = regexp.MustCompile(`^unknown anchor '(.*)' referenced$`)

// addSyntaxError reports a YAML syntax error with the line it is on.
func (p *parser) addSyntaxError(err error) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if g := yamlLineRE.FindStringSubmatch(msg); g != nil {
		line, _ = strconv.Atoi(g[1])
		msg = g[2]
	}
	if hint, ok := parserErrors[msg]; ok {
		line++
		msg += hint
	} else if g := anchorRE.FindStringSubmatch(msg); g != nil {
		line = lineOf(p.data, bytes.Index(p.data, []byte("*"+g[1])))
		msg = fmt.Sprintf("alias *%s refers to no anchor &%s defined before it", g[1], g[1])
	} else if line == 0 {
		// Reader errors (bad UTF-8, control characters) carry no line.
		line = lineOf(p.data, badRuneOffset(p.data))
	}
	p.add(line, "invalid YAML: %s", msg)
}

// lineOf returns the 1-based line of byte offset off in data (0 if off < 0).
func lineOf(data []byte, off int) int {
	if off < 0 || off > len(data) {
		return 0
	}
	return bytes.Count(data[:off], []byte("\n")) + 1
}

// badRuneOffset returns the offset of the first byte YAML does not accept
// (invalid UTF-8 or a control character), or -1.
func badRuneOffset(data []byte) int {
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			return i
		case r == '\t' || r == '\n' || r == '\r' || r == 0x85:
		case r < 0x20 || (r >= 0x7f && r < 0xa0) || (r >= 0xd800 && r <= 0xdfff) || r == 0xfffe || r == 0xffff:
			return i
		}
		i += size
	}
	return -1
}

// line returns the line of path, or of its nearest parent that has one.
func (p *parser) line(path string) int {
	for path != "" {
		if l, ok := p.lines[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return 0
}

var envRE = regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}`)

// expand replaces ${VAR} and ${VAR:-default} in every scalar; "$$" is a
// literal "$". An unset variable without a default is a problem: a missing
// secret must not silently turn into an unsigned webhook. An unquoted value
// takes the YAML type of its expansion (so "concurrency: ${N}" is a number);
// a quoted one stays a string, and one that expands to nothing is "".
func (p *parser) expand(n *yaml.Node, lookup func(string) (string, bool)) {
	if n.Kind == yaml.ScalarNode && strings.Contains(n.Value, "$") {
		var b strings.Builder
		last, changed := 0, false
		for _, m := range envRE.FindAllStringSubmatchIndex(n.Value, -1) {
			b.WriteString(n.Value[last:m[0]])
			last, changed = m[1], true
			if n.Value[m[0]:m[1]] == "$$" {
				b.WriteByte('$')
				continue
			}
			name := n.Value[m[2]:m[3]]
			hasDef := m[4] >= 0
			if v, ok := lookup(name); ok && (v != "" || !hasDef) {
				b.WriteString(v)
			} else if hasDef {
				b.WriteString(n.Value[m[6]:m[7]])
			} else {
				line := n.Line
				if n.Style&yaml.LiteralStyle != 0 { // content starts on the next line
					line += 1 + strings.Count(n.Value[:m[0]], "\n")
				}
				p.add(line, "environment variable %s is not set (use ${%s:-default} for an optional value)", name, name)
				p.badNodes[n] = true
			}
		}
		if changed {
			b.WriteString(n.Value[last:])
			n.Value = b.String()
			const literal = yaml.DoubleQuotedStyle | yaml.SingleQuotedStyle | yaml.LiteralStyle | yaml.FoldedStyle | yaml.TaggedStyle
			if n.Style&literal == 0 && (n.Tag == "" || n.Tag == "!!str") {
				n.Tag = "" // let the expanded text resolve to its own type (numbers, booleans)
				if n.Value == "" {
					n.Tag = "!!str" // an empty expansion is an empty string, not null
				} else {
					n.Tag = n.ShortTag()
				}
			}
		}
	}
	for _, c := range n.Content {
		p.expand(c, lookup)
	}
}

var durationType = reflect.TypeOf(Duration(0))

// maxWalk bounds the nodes walked, aliases included, so that a document
// that multiplies nodes through aliases cannot make loading hang.
const maxWalk = 200000

// walk records the line of every path, reports keys that are not part of the
// schema and values of the wrong kind or type, with their lines, so that all
// of them are listed at once. A value it reports is replaced in the tree by
// the zero value of its type, so that Decode neither reports it again nor
// drops it from a list (which would shift the indices of later items).
func (p *parser) walk(n *yaml.Node, t reflect.Type, path string) {
	if p.steps++; p.steps == maxWalk {
		p.add(n.Line, "the configuration is too large or expands too many aliases")
	}
	if p.steps >= maxWalk {
		return
	}
	orig := n
	if n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			return
		}
		n = n.Alias
	}
	if path != "" {
		if _, ok := p.lines[path]; !ok {
			p.lines[path] = orig.Line
		}
	}
	if p.badNodes[n] { // an unset variable, already reported
		p.bad[path] = true
		*orig = zeroNode(t, orig)
		return
	}
	if isNull(n) {
		p.nulls[path] = true
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == durationType:
		if n.Kind != yaml.ScalarNode {
			p.wrongKind(orig, n, t, path)
		} else if _, err := ParseDuration(n.Value); err != nil {
			p.badValue(orig, t, path, "%s: %v", path, err)
		}
	case t.Kind() == reflect.Interface:
		p.recordLines(n, path)
	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			p.wrongKind(orig, n, t, path)
			return
		}
		var names []string
		fields := map[string]reflect.Type{}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if tag == "" || tag == "-" {
				continue
			}
			fields[tag] = f.Type
			names = append(names, tag)
		}
		p.dedupe(n, path)
		p.walkFields(n, fields, names, path, false)
	case t.Kind() == reflect.Map:
		if n.Kind != yaml.MappingNode {
			p.wrongKind(orig, n, t, path)
			return
		}
		p.dedupe(n, path)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p.lines[join(path, k.Value)] = k.Line
			p.walk(v, t.Elem(), join(path, k.Value))
		}
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			p.wrongKind(orig, n, t, path)
			return
		}
		et := t.Elem()
		for i, c := range n.Content {
			if e := c; isNull(resolve(e)) && et.Kind() != reflect.Pointer && et.Kind() != reflect.Interface {
				// Decode would silently drop a null item; keep it as
				// an empty one so later indices (and lines) stay right.
				*c = zeroNode(et, c)
			}
			p.walk(c, et, fmt.Sprintf("%s[%d]", path, i))
		}
	default: // scalars: string, bool, int
		if n.Kind != yaml.ScalarNode {
			p.wrongKind(orig, n, t, path)
			return
		}
		if n.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
			p.blocks[path] = true
		}
		if err := n.Decode(reflect.New(t).Interface()); err != nil {
			switch t.Kind() {
			case reflect.Bool:
				p.badValue(orig, t, path, "%s: %q is not true or false", path, n.Value)
			case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
				p.badValue(orig, t, path, "%s: %q is not a whole number", path, n.Value)
			default:
				p.badValue(orig, t, path, "%s: %s", path, strings.TrimPrefix(yamlLineRE.ReplaceAllString(strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:\n  "), "$2"), "yaml: "))
			}
		}
	}
}

// recordLines records the lines of the parts of a free-form value (such as
// conditions), so that problems found in it later point at their own line.
func (p *parser) recordLines(n *yaml.Node, path string) {
	if p.steps++; p.steps >= maxWalk {
		return
	}
	n = resolve(n)
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			kp := join(path, k.Value)
			if _, ok := p.lines[kp]; !ok {
				p.lines[kp] = k.Line
			}
			p.recordLines(v, kp)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			ip := fmt.Sprintf("%s[%d]", path, i)
			if _, ok := p.lines[ip]; !ok {
				p.lines[ip] = c.Line
			}
			p.recordLines(c, ip)
		}
	}
}

// dedupe reports keys written twice in mapping n and removes the repeats:
// yaml.v3 would otherwise discard the whole mapping (and, in a list, shift
// the items after it).
func (p *parser) dedupe(n *yaml.Node, path string) {
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); {
		k := n.Content[i]
		if prev, dup := seen[k.Value]; dup && prev.Kind == k.Kind {
			p.add(k.Line, "%s: key %q is repeated (first at line %d): remove one", or(path, "the top level"), k.Value, prev.Line)
			n.Content = append(n.Content[:i:i], n.Content[i+2:]...)
			continue
		}
		seen[k.Value] = k
		i += 2
	}
}

// walkFields checks the keys of mapping n against a struct's fields; merged
// is true for a mapping merged in with "<<", whose keys do not override
// those written in the mapping itself.
func (p *parser) walkFields(n *yaml.Node, fields map[string]reflect.Type, names []string, path string, merged bool) {
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if isMerge(k) {
			merges = append(merges, v)
			continue
		}
		ft, ok := fields[k.Value]
		if !ok {
			if !p.keysSeen[k] { // a key reached again through an alias is reported once
				p.keysSeen[k] = true
				where := path
				if where == "" {
					where = "the top level"
				}
				p.add(k.Line, "unknown key %q in %s%s", k.Value, where, suggest(k.Value, names))
			}
			continue
		}
		kp := join(path, k.Value)
		if merged {
			if _, done := p.lines[kp]; done {
				continue
			}
		}
		p.lines[kp] = k.Line
		p.walk(v, ft, kp)
	}
	for _, v := range merges {
		srcs := []*yaml.Node{v}
		if r := resolve(v); r.Kind == yaml.SequenceNode {
			srcs = r.Content
		}
		for _, s := range srcs {
			m := resolve(s)
			if m.Kind != yaml.MappingNode {
				p.add(s.Line, "%s: a merge (<<) needs a mapping or a list of mappings, not %s", or(path, "the top level"), kindName(m))
				*v = yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: v.Line, Column: v.Column}
				break
			}
			if p.merging[m] {
				p.add(s.Line, "%s: a merge (<<) includes the mapping it is in", or(path, "the top level"))
				*v = yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: v.Line, Column: v.Column}
				break
			}
			p.merging[m] = true
			p.walkFields(m, fields, names, path, true)
			delete(p.merging, m)
		}
	}
}

// wrongKind reports a mapping, list or scalar where another kind is needed.
func (p *parser) wrongKind(orig, n *yaml.Node, t reflect.Type, path string) {
	p.badValue(orig, t, path, "%s: expected %s, got %s", or(path, "the top level"), kindWanted(t), kindName(n))
}

// badValue reports the value at path and replaces it by its zero value.
func (p *parser) badValue(orig *yaml.Node, t reflect.Type, path, format string, args ...any) {
	p.add(orig.Line, format, args...)
	p.bad[path] = true
	*orig = zeroNode(t, orig)
}

// zeroNode returns a node that decodes to the zero value of t, at the
// position of at.
func zeroNode(t reflect.Type, at *yaml.Node) yaml.Node {
	n := yaml.Node{Kind: yaml.ScalarNode, Line: at.Line, Column: at.Column}
	switch {
	case t == durationType:
		n.Tag, n.Value = "!!str", "0s"
	case t.Kind() == reflect.Struct || t.Kind() == reflect.Map:
		n.Kind, n.Tag = yaml.MappingNode, "!!map"
	case t.Kind() == reflect.Slice:
		n.Kind, n.Tag = yaml.SequenceNode, "!!seq"
	case t.Kind() == reflect.String:
		n.Tag = "!!str"
	case t.Kind() == reflect.Bool:
		n.Tag, n.Value = "!!bool", "false"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Float64:
		n.Tag, n.Value = "!!int", "0"
	default: // pointers, interfaces
		n.Tag, n.Value = "!!null", "null"
	}
	return n
}

func resolve(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		return n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// isMerge matches yaml.v3's test for a "<<" merge key.
func isMerge(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && k.Value == "<<" && (k.Tag == "" || k.Tag == "!" || k.ShortTag() == "!!merge")
}

func kindName(n *yaml.Node) string {
	switch resolve(n).Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return "a scalar"
	}
	return "an alias"
}

func kindWanted(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == durationType:
		return "a duration"
	case t.Kind() == reflect.Struct || t.Kind() == reflect.Map:
		return "a mapping"
	case t.Kind() == reflect.Slice:
		return "a list"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64:
		return "a whole number"
	}
	return "a string"
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// suggest returns a " (did you mean ...?)" hint for an unknown key, or the
// list of known keys when none is close.
func suggest(key string, names []string) string {
	if c := closest(key, names); c != "" {
		return fmt.Sprintf(" (did you mean %q?)", c)
	}
	return " (known keys: " + strings.Join(names, ", ") + ")"
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

// UnmarshalYAML parses durations such as "10s" or "7d".
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseDuration(n.Value)
	if err != nil {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %v", n.Line, err)}}
	}
	*d = Duration(v)
	return nil
}

func (p *parser) defaults(c *Config) {
	applyDefaults(c, p.given, p.line)
}

// ApplyDefaults fills in every setting c leaves out, as Load does: Load
// calls it, and a Config built in code (tests, embedding) must call it
// before handing c to capture or dispatch. It is idempotent. A number or
// duration that is 0 counts as left out here (Load, which sees the file,
// keeps a written 0 and reports it).
func (c *Config) ApplyDefaults() {
	applyDefaults(c, func(string) bool { return false }, func(string) int { return 0 })
}

// applyDefaults is the one place defaults are set. given reports whether
// the file wrote a setting (so a written 0 is kept and reported); line
// gives a setting's line in the file (0 when unknown).
func applyDefaults(c *Config, given func(path string) bool, line func(path string) int) {
	db := &c.Database
	db.Schema = or(db.Schema, DefaultSchema)
	db.Slot = or(db.Slot, DefaultSlot)
	db.Publication = or(db.Publication, DefaultPublication)
	db.FailoverLine = line("database.slot_failover")
	for i := range c.Models {
		m := &c.Models[i]
		path := fmt.Sprintf("models[%d]", i)
		m.Line = line(path)
		m.Schema, m.Name = SplitTable(m.Table)
		m.Model = or(m.Model, m.Name)
		m.OnLookupError = or(m.OnLookupError, LookupErrorRetry)
		for key, r := range m.Relations {
			r.Line = line(path + ".relations." + key)
			r.FK = FKColumns(key)
			r.Schema, r.Name = SplitTable(r.Table)
			if r.Field == "" && len(r.FK) == 1 {
				r.Field = or(strings.TrimSuffix(r.FK[0], "_id"), r.FK[0])
			}
			m.Relations[key] = r
		}
		m.ComputedOrder = computedOrder(m.Computed, path+".computed.", line)
		if sn := m.Snapshot; sn != nil {
			sn.ComputedOrder = computedOrder(sn.Computed, path+".snapshot.computed.", line)
		}
	}
	// A duration or number written as 0 stays 0 (and is reported as not
	// positive); only an absent or null one takes the default.
	for i := range c.Webhooks {
		w := &c.Webhooks[i]
		path := fmt.Sprintf("webhooks[%d]", i)
		w.Line = line(path)
		w.HTTPMethod = strings.ToUpper(or(w.HTTPMethod, DefaultHTTPMethod))
		w.ContentType = or(w.ContentType, sign.DefaultContentType)
		w.Format = or(w.Format, FormatNetbox)
		w.Signature = or(w.Signature, sign.SchemeNetbox)
		w.Coalesce = or(w.Coalesce, CoalesceNone)
		if w.Timeout == 0 && !given(path+".timeout") {
			w.Timeout = Duration(DefaultTimeout)
		}
		if w.Retry.MaxAttempts == 0 && !given(path+".retry.max_attempts") {
			w.Retry.MaxAttempts = DefaultMaxAttempts
		}
		if w.Retry.InitialInterval == 0 && !given(path+".retry.initial_interval") {
			w.Retry.InitialInterval = Duration(DefaultInitialInterval)
		}
		if w.Retry.MaxInterval == 0 && !given(path+".retry.max_interval") {
			w.Retry.MaxInterval = Duration(DefaultMaxInterval)
		}
	}
	d := &c.Dispatch
	if d.Concurrency == 0 && !given("dispatch.concurrency") {
		d.Concurrency = DefaultConcurrency
	}
	if d.PollInterval == 0 && !given("dispatch.poll_interval") {
		d.PollInterval = Duration(DefaultPollInterval)
	}
	if d.Retention == 0 && !given("dispatch.retention") {
		d.Retention = Duration(DefaultRetention)
	}
	if d.FailedRetention == 0 && !given("dispatch.failed_retention") {
		d.FailedRetention = Duration(DefaultFailedRetention)
	}
	enabled := 0
	for _, w := range c.Webhooks {
		if w.IsEnabled() {
			enabled++
		}
	}
	for i := range c.Webhooks {
		w := &c.Webhooks[i]
		if w.Concurrency == 0 && !given(fmt.Sprintf("webhooks[%d].concurrency", i)) {
			w.Concurrency = DefaultWebhookConcurrency(d.Concurrency, enabled)
		}
	}
	c.Log.Level = or(c.Log.Level, "info")
	c.Log.Format = or(c.Log.Format, "json")
}

// computedOrder sets the line of each computed field and returns their
// names in the file's order (by name when the lines are unknown).
func computedOrder(computed map[string]Computed, prefix string, line func(string) int) []string {
	if len(computed) == 0 {
		return nil
	}
	order := make([]string, 0, len(computed))
	for name, c := range computed {
		c.Line = line(prefix + name)
		computed[name] = c
		order = append(order, name)
	}
	sort.Slice(order, func(a, b int) bool {
		la, lb := computed[order[a]].Line, computed[order[b]].Line
		if la != lb {
			return la < lb
		}
		return order[a] < order[b]
	})
	return order
}

// DefaultWebhookConcurrency is a webhook's cap on requests in flight when
// its configuration sets none: all of dispatch.concurrency for a single
// enabled webhook, else half of it (at least 1), so that a receiver that
// hangs holds at most half of the slots and the other webhooks keep theirs.
func DefaultWebhookConcurrency(total, enabledWebhooks int) int {
	if enabledWebhooks <= 1 {
		return max(total, 1)
	}
	return max(total/2, 1)
}

// SplitTable splits "schema.table" (a bare name means public).
func SplitTable(t string) (schema, name string) {
	t = strings.TrimSpace(t)
	if s, n, ok := strings.Cut(t, "."); ok {
		return s, n
	}
	return "public", t
}

// orList joins values as "a, b or c".
func orList(values []string) string {
	if len(values) < 2 {
		return strings.Join(values, "")
	}
	return strings.Join(values[:len(values)-1], ", ") + " or " + values[len(values)-1]
}

func or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func (p *parser) validate(c *Config) {
	db := c.Database
	if strings.TrimSpace(db.DSN) == "" {
		p.at("database.dsn", "database.dsn is required (e.g. postgres://walhook@localhost:5432/app)")
	}
	for _, f := range []struct{ key, v string }{{"schema", db.Schema}, {"slot", db.Slot}, {"publication", db.Publication}} {
		if !ValidIdentifier(f.v) {
			p.at("database."+f.key, "database.%s %q is not a valid name: use lower-case letters, digits and _ (at most 63, not starting with a digit)", f.key, f.v)
		}
	}
	if len(c.Models) == 0 {
		p.at("models", "models: at least one table must be configured")
	}
	tables, models := map[string]int{}, map[string]bool{}
	for i, m := range c.Models {
		path := fmt.Sprintf("models[%d]", i)
		if m.Name == "" || m.Schema == "" || strings.Count(m.Table, ".") > 1 {
			p.at(path+".table", "models[%d].table %q: give a table as name or schema.name", i, m.Table)
			continue
		}
		if prev, dup := tables[m.QualifiedTable()]; dup {
			p.at(path+".table", "table %s is configured twice (also at line %d)", m.QualifiedTable(), prev)
		}
		tables[m.QualifiedTable()] = p.line(path + ".table")
		if models[m.Model] {
			p.at(path+".model", "model name %q is used twice", m.Model)
		}
		models[m.Model] = true
		p.validateLookups(m, path)
		if !slices.Contains([]string{LookupErrorRetry, LookupErrorOmit}, m.OnLookupError) {
			p.at(path+".on_lookup_error", "model %s: on_lookup_error %q must be %s or %s", m.Model, m.OnLookupError, LookupErrorRetry, LookupErrorOmit)
		}
	}
	modelNames := slices.Sorted(maps.Keys(models))
	names := map[string]bool{}
	for i, w := range c.Webhooks {
		path := fmt.Sprintf("webhooks[%d]", i)
		if w.Name == "" {
			p.at(path+".name", "webhooks[%d] needs a name", i)
		} else if names[w.Name] {
			p.at(path+".name", "duplicate webhook name %q", w.Name)
		}
		names[w.Name] = true
		if u, err := url.Parse(w.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			p.at(path+".url", "webhook %q: url %q is not an http(s) URL", w.Name, RedactURL(w.URL))
		}
		for j, m := range w.Models {
			if !models[m] {
				hint := " (models are: " + strings.Join(modelNames, ", ") + ")"
				if s := closest(m, modelNames); s != "" {
					hint = fmt.Sprintf(" (did you mean %q?)", s)
				}
				p.at(fmt.Sprintf("%s.models[%d]", path, j), "webhook %q names unknown model %q%s", w.Name, m, hint)
			}
		}
		for j, e := range w.Events {
			if !slices.Contains(Events, e) {
				hint := ""
				if s := closest(e, Events); s != "" {
					hint = fmt.Sprintf(", did you mean %q?", s)
				}
				p.at(fmt.Sprintf("%s.events[%d]", path, j), "webhook %q: unknown event %q (use created, updated, deleted%s)", w.Name, e, hint)
			}
		}
		if !slices.Contains([]string{"POST", "PUT", "PATCH"}, w.HTTPMethod) {
			p.at(path+".http_method", "webhook %q: http_method %q must be POST, PUT or PATCH", w.Name, w.HTTPMethod)
		}
		if w.Timeout <= 0 {
			p.at(path+".timeout", "webhook %q: timeout must be positive", w.Name)
		}
		if w.Retry.MaxAttempts <= 0 {
			p.at(path+".retry.max_attempts", "webhook %q: retry.max_attempts must be positive", w.Name)
		}
		if w.Retry.InitialInterval <= 0 {
			p.at(path+".retry.initial_interval", "webhook %q: retry.initial_interval must be positive", w.Name)
		}
		if w.Retry.MaxInterval <= 0 {
			p.at(path+".retry.max_interval", "webhook %q: retry.max_interval must be positive", w.Name)
		} else if w.Retry.MaxInterval < w.Retry.InitialInterval {
			p.at(path+".retry.max_interval", "webhook %q: retry.max_interval is shorter than initial_interval", w.Name)
		}
		for _, k := range slices.Sorted(maps.Keys(w.Headers)) {
			switch {
			case !sign.ValidName(k):
				p.at(path+".headers."+k, "webhook %q: %q is not a valid header name (RFC 9110: letters, digits and !#$%%&'*+-.^_`|~ only)", w.Name, k)
			case sign.Reserved(k):
				p.at(path+".headers."+k, "webhook %q: header %s is set by walhook on every request and cannot be configured", w.Name, k)
			case !sign.ValidValue(w.Headers[k]):
				p.at(path+".headers."+k, "webhook %q: the value of header %s contains a line break or a control character", w.Name, k)
			}
		}
		if !slices.Contains(Formats(), w.Format) {
			p.at(path+".format", "webhook %q: format %q must be %s", w.Name, w.Format, orList(Formats()))
		}
		if !slices.Contains(sign.Schemes(), w.Signature) {
			p.at(path+".signature", "webhook %q: signature %q must be %s", w.Name, w.Signature, orList(sign.Schemes()))
		}
		if !slices.Contains(CoalesceModes(), w.Coalesce) {
			p.at(path+".coalesce", "webhook %q: coalesce %q must be %s", w.Name, w.Coalesce, orList(CoalesceModes()))
		}
		p.validateSigning(c, w, path)
		p.validateTLS(&c.Webhooks[i], path)
		if w.BodyTemplate != "" {
			if _, err := template.New(w.Name).Funcs(template.FuncMap{"json": func(any) string { return "" }}).Parse(w.BodyTemplate); err != nil {
				p.templateError(path+".body_template", w.Name, err)
			}
		}
		if w.Conditions != nil && !p.bad[path+".conditions"] {
			cond, err := ParseConditions(w.Conditions)
			var ce *ConditionError
			switch {
			case errors.As(err, &ce):
				at := path + ".conditions"
				if ce.Path != "" && !isString(w.Conditions) {
					at += "." + ce.Path
				}
				p.add(p.line(at), "webhook %q: conditions: %s", w.Name, ce.Error())
			case err != nil:
				p.at(path+".conditions", "webhook %q: conditions: %v", w.Name, err)
			default:
				c.Webhooks[i].Condition = cond
			}
		}
	}
	if len(c.Webhooks) == 0 {
		p.at("webhooks", "webhooks: at least one webhook must be configured")
	}
	d := c.Dispatch
	if d.Concurrency <= 0 {
		p.at("dispatch.concurrency", "dispatch.concurrency must be positive")
	}
	if d.PollInterval <= 0 {
		p.at("dispatch.poll_interval", "dispatch.poll_interval must be positive")
	}
	if d.Retention <= 0 {
		p.at("dispatch.retention", "dispatch.retention must be positive")
	}
	if d.FailedRetention <= 0 {
		p.at("dispatch.failed_retention", "dispatch.failed_retention must be positive")
	}
	for i := range c.Webhooks {
		w := &c.Webhooks[i]
		path := fmt.Sprintf("webhooks[%d]", i)
		if w.Concurrency <= 0 {
			p.at(path+".concurrency", "webhook %q: concurrency must be positive", w.Name)
		} else if d.Concurrency > 0 && w.Concurrency > d.Concurrency {
			p.at(path+".concurrency", "webhook %q: concurrency %d is more than dispatch.concurrency (%d), which caps all webhooks together", w.Name, w.Concurrency, d.Concurrency)
		}
		if w.RateLimit != "" {
			r, err := ParseRate(w.RateLimit)
			if err != nil {
				p.at(path+".rate_limit", "webhook %q: %v", w.Name, err)
			}
			w.Rate = r
		}
	}
	if l := c.HTTP.ListenAddr(); l != "" {
		host, _, err := net.SplitHostPort(l)
		if err != nil {
			p.at("http.listen", "http.listen %q: %v", l, err)
		} else if !isLoopback(host) && c.HTTP.Token == "" {
			p.at("http.listen", "http.listen %q is not a loopback address: set http.token (e.g. token: ${WALHOOK_HTTP_TOKEN}) so the status page and retry actions are protected", l)
		}
	}
	if e := c.Tracing.OTLPEndpoint; e != "" {
		if u, err := url.Parse(e); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			p.at("tracing.otlp_endpoint", "tracing.otlp_endpoint %q is not an http(s) URL: give the collector's OTLP/HTTP address, e.g. http://localhost:4318", RedactURL(e))
		}
	}
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.Log.Level) {
		p.at("log.level", "log.level %q must be debug, info, warn or error", c.Log.Level)
	}
	if !slices.Contains([]string{"json", "console"}, c.Log.Format) {
		p.at("log.format", "log.format %q must be json or console", c.Log.Format)
	}
}

var templateLineRE = regexp.MustCompile(`^template: [^:]*:(\d+):(?:\d+:)? ?(.*)$`)

// templateError reports a body_template parse error at the line of the file
// it is on.
func (p *parser) templateError(path, name string, err error) {
	line, msg := p.line(path), err.Error()
	if g := templateLineRE.FindStringSubmatch(msg); g != nil && line > 0 {
		n, _ := strconv.Atoi(g[1])
		line += n - 1
		if p.blocks[path] {
			line++
		}
		msg = g[2]
	}
	p.add(line, "webhook %q: body_template: %s", name, msg)
}

// validateLookups checks a model's relations and computed fields as far as
// that is possible without the database (checkTables does the rest).
func (p *parser) validateLookups(m Model, path string) {
	fields := map[string]string{} // output key -> what defines it
	keys := slices.Sorted(maps.Keys(m.Relations))
	sort.SliceStable(keys, func(a, b int) bool { return m.Relations[keys[a]].Line < m.Relations[keys[b]].Line })
	for _, key := range keys {
		r, rp := m.Relations[key], path+".relations."+key
		fk := FKColumns(key)
		for _, c := range fk {
			if c == "" {
				p.at(rp, "relation %q: the key must name the foreign-key column (or columns, separated by commas)", key)
			}
		}
		if r.Table == "" {
			p.at(rp, "relation %s needs a table", key)
		}
		if len(r.Columns) == 0 {
			p.at(rp, "relation %s needs columns", key)
		}
		if r.Field == "" {
			p.at(rp, "relation %q (a composite key) needs a field: the key the nested object renders under", key)
		} else if prev, dup := fields[r.Field]; dup {
			p.at(rp, "relation %s renders as %q, which %s also uses", key, r.Field, prev)
		} else {
			fields[r.Field] = "relation " + key
		}
		if len(r.Key) > 0 && len(r.Key) != len(fk) {
			p.at(rp+".key", "relation %s: key names %d columns for %d foreign-key columns", key, len(r.Key), len(fk))
		}
		seen := map[string]bool{}
		if r.URL != "" {
			seen["url"] = true
		}
		for j, col := range r.Columns {
			rc, err := ParseRelationColumn(col)
			if err != nil {
				p.at(fmt.Sprintf("%s.columns[%d]", rp, j), "relation %s: %v", key, err)
				continue
			}
			if seen[rc.As] {
				p.at(fmt.Sprintf("%s.columns[%d]", rp, j), "relation %s: key %q is rendered twice in the nested object", key, rc.As)
			}
			seen[rc.As] = true
		}
	}
	checkComputed := func(name string, c Computed, cp string) {
		if strings.TrimSpace(c.SQL) == "" {
			p.at(cp, "computed field %s needs sql", name)
		}
		for j, a := range c.Args {
			if strings.TrimSpace(a) == "" {
				p.at(fmt.Sprintf("%s.args[%d]", cp, j), "computed field %s: args are column names of %s", name, m.QualifiedTable())
			}
		}
	}
	for _, name := range m.ComputedOrder {
		c, cp := m.Computed[name], path+".computed."+name
		checkComputed(name, c, cp)
		if prev, dup := fields[name]; dup {
			p.at(cp, "computed field %s has the name of %s", name, prev)
		}
		fields[name] = "computed field " + name
	}
	if sn := m.Snapshot; sn != nil {
		for _, name := range sn.ComputedOrder {
			checkComputed(name, sn.Computed[name], path+".snapshot.computed."+name)
		}
	}
}

func isString(v any) bool {
	_, ok := v.(string)
	return ok
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// validateSigning checks a webhook's secrets against its signature scheme
// and the object_type that format netbox-v4 needs.
func (p *parser) validateSigning(c *Config, w Webhook, path string) {
	if w.Secret != "" && len(w.Secrets) > 0 {
		p.at(path+".secrets", "webhook %q: give either secret or secrets, not both", w.Name)
	}
	for j, s := range w.Secrets {
		if s == "" {
			p.at(fmt.Sprintf("%s.secrets[%d]", path, j), "webhook %q: secrets[%d] is empty", w.Name, j)
		}
	}
	secrets := w.SigningSecrets()
	for _, k := range slices.Sorted(maps.Keys(w.Headers)) {
		if sign.StandardHeader(k) {
			p.at(path+".headers."+k, "webhook %q: header %s is set by walhook (Standard Webhooks) and cannot be configured", w.Name, k)
		}
	}
	switch w.Signature {
	case sign.SchemeNetbox:
		if len(secrets) > 1 {
			p.at(path+".secrets", "webhook %q: X-Hook-Signature carries one signature: several secrets need signature: standard-webhooks (or both)", w.Name)
		}
	case sign.SchemeStandard, sign.SchemeBoth:
		if len(secrets) == 0 {
			p.at(path+".signature", "webhook %q: signature %s needs a secret (secret: whsec_<base64>, e.g. from: echo whsec_$(openssl rand -base64 32))", w.Name, w.Signature)
		}
		for j, s := range secrets {
			at, key := path+".secret", "secret"
			if len(w.Secrets) > 0 {
				at, key = fmt.Sprintf("%s.secrets[%d]", path, j), fmt.Sprintf("secrets[%d]", j)
			}
			if err := sign.CheckStandardSecret(s); err != nil {
				p.at(at, "webhook %q: %s (signature %s): %v", w.Name, key, w.Signature, err)
			}
		}
	}
	if w.Format == FormatNetboxV4 {
		for _, m := range c.Models {
			if len(w.Models) > 0 && !slices.Contains(w.Models, m.Model) {
				continue
			}
			if w.ObjectTypeFor(&m) == "" {
				p.at(path+".format", "webhook %q: format netbox-v4 needs object_type (e.g. object_type: dcim.site) on the webhook or on model %s", w.Name, m.Model)
				break
			}
		}
	}
}

// validateTLS checks a webhook's tls settings and reads its certificate
// files once, so that a missing or malformed file stops walhook at start
// (run and check alike) with the line that names it. Relative paths are
// made relative to the configuration file's directory.
func (p *parser) validateTLS(w *Webhook, path string) {
	t := &w.TLS
	if !t.IsSet() {
		return
	}
	path += ".tls"
	if u, err := url.Parse(w.URL); err == nil && u.Scheme == "http" {
		p.at(path, "webhook %q: tls applies to https URLs only: use an https:// url or remove tls", w.Name)
		return
	}
	ok := true
	if _, err := clienttls.ParseVersion(t.MinVersion); err != nil {
		p.at(path+".min_version", "webhook %q: tls.%v", w.Name, err)
		ok = false
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		at, missing := path+".cert_file", "key_file"
		if t.CertFile == "" {
			at, missing = path+".key_file", "cert_file"
		}
		p.at(at, "webhook %q: tls.cert_file and tls.key_file go together: add tls.%s", w.Name, missing)
		ok = false
	}
	if t.CAOnly && t.CAFile == "" {
		p.at(path+".ca_only", "webhook %q: tls.ca_only needs tls.ca_file (the only CAs then trusted)", w.Name)
		ok = false
	}
	if t.InsecureSkipVerify && (t.CAFile != "" || t.ServerName != "") {
		p.at(path+".insecure_skip_verify", "webhook %q: tls.insecure_skip_verify turns off the certificate check that ca_file and server_name are for: remove one or the other", w.Name)
		ok = false
	}
	if p.file != "" {
		dir := filepath.Dir(p.file)
		for _, f := range []*string{&t.CAFile, &t.CertFile, &t.KeyFile} {
			if *f != "" && !filepath.IsAbs(*f) {
				*f = filepath.Join(dir, *f)
			}
		}
	}
	if !ok {
		return
	}
	if _, err := clienttls.New(t.Options()); err != nil {
		var fe *clienttls.FileError
		if errors.As(err, &fe) {
			p.at(path+"."+fe.Key, "webhook %q: tls.%v", w.Name, err)
		} else {
			p.at(path, "webhook %q: tls: %v", w.Name, err)
		}
	}
}
