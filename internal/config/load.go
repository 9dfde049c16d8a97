package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
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
