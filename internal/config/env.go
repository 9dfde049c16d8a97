package config

import (
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

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
