package config

import (
	"fmt"
	"reflect"
	"strings"

	"gopkg.in/yaml.v3"
)

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
			p.add(k.Line, "%s: key %q is repeated (first at line %d): remove one", where(path), k.Value, prev.Line)
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
				p.add(k.Line, "unknown key %q in %s%s", k.Value, where(path), suggest(k.Value, names, "known keys"))
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
				p.add(s.Line, "%s: a merge (<<) needs a mapping or a list of mappings, not %s", where(path), kindName(m))
				*v = yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: v.Line, Column: v.Column}
				break
			}
			if p.merging[m] {
				p.add(s.Line, "%s: a merge (<<) includes the mapping it is in", where(path))
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
	p.badValue(orig, t, path, "%s: expected %s, got %s", where(path), kindWanted(t), kindName(n))
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

// where names path in a message: the path, or "the top level".
func where(path string) string { return or(path, "the top level") }

// join appends key to path with a dot ("webhooks[0]" + "url").
func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}
