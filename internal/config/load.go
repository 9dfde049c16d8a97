package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"

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
// and lookup resolves ${VAR} references.
func Parse(file string, data []byte, lookup func(string) (string, bool)) (*Config, error) {
	p := &parser{file: file, lines: map[string]int{}}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		p.addYAMLError(err)
		return nil, &Error{Problems: p.problems}
	}
	if len(root.Content) == 0 {
		p.add(0, "the file is empty: it needs at least database.dsn, models and webhooks")
		return nil, &Error{Problems: p.problems}
	}
	doc := root.Content[0]
	p.expand(doc, lookup)
	p.walk(doc, reflect.TypeOf(Config{}), "")
	var c Config
	if err := doc.Decode(&c); err != nil {
		p.addYAMLError(err)
	}
	c.File = file
	if len(p.problems) == 0 {
		p.defaults(&c)
		p.validate(&c)
	}
	if len(p.problems) > 0 {
		sort.SliceStable(p.problems, func(i, j int) bool { return p.problems[i].Line < p.problems[j].Line })
		return nil, &Error{Problems: p.problems}
	}
	return &c, nil
}

type parser struct {
	file     string
	problems []Problem
	lines    map[string]int // path ("webhooks[0].url") -> line
}

func (p *parser) add(line int, format string, args ...any) {
	p.problems = append(p.problems, Problem{File: p.file, Line: line, Msg: fmt.Sprintf(format, args...)})
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
// secret must not silently turn into an unsigned webhook.
func (p *parser) expand(n *yaml.Node, lookup func(string) (string, bool)) {
	if n.Kind == yaml.ScalarNode && strings.Contains(n.Value, "$") {
		changed := false
		n.Value = envRE.ReplaceAllStringFunc(n.Value, func(m string) string {
			changed = true
			if m == "$$" {
				return "$"
			}
			g := envRE.FindStringSubmatch(m)
			if v, ok := lookup(g[1]); ok && (v != "" || g[2] == "") {
				return v
			}
			if g[2] != "" {
				return g[3]
			}
			p.add(n.Line, "environment variable %s is not set (use ${%s:-default} for an optional value)", g[1], g[1])
			return ""
		})
		if changed && n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle|yaml.LiteralStyle|yaml.FoldedStyle) == 0 && (n.Tag == "" || n.Tag == "!!str") {
			n.Tag = "" // let the expanded text resolve to its own type (numbers, booleans)
			n.Tag = n.ShortTag()
		}
	}
	for _, c := range n.Content {
		p.expand(c, lookup)
	}
}

var durationType = reflect.TypeOf(Duration(0))

// walk records the line of every path and reports keys that are not part of
// the schema, with their lines, so that all of them are listed at once.
func (p *parser) walk(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if path != "" {
		if _, ok := p.lines[path]; !ok {
			p.lines[path] = n.Line
		}
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == durationType {
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return // Decode reports the type error
		}
		fields := map[string]reflect.Type{}
		var names []string
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if tag == "" || tag == "-" {
				continue
			}
			fields[tag] = f.Type
			names = append(names, tag)
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Value == "<<" {
				continue
			}
			ft, ok := fields[k.Value]
			if !ok {
				where := path
				if where == "" {
					where = "the top level"
				}
				p.add(k.Line, "unknown key %q in %s%s", k.Value, where, suggest(k.Value, names))
				continue
			}
			p.lines[join(path, k.Value)] = k.Line
			p.walk(v, ft, join(path, k.Value))
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p.lines[join(path, k.Value)] = k.Line
			p.walk(v, t.Elem(), join(path, k.Value))
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return
		}
		for i, c := range n.Content {
			p.walk(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
		}
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func suggest(key string, names []string) string {
	for _, n := range names {
		if strings.EqualFold(n, key) || strings.ReplaceAll(n, "_", "") == strings.ReplaceAll(strings.ToLower(key), "-", "") {
			return fmt.Sprintf(" (did you mean %q?)", n)
		}
	}
	return " (known keys: " + strings.Join(names, ", ") + ")"
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
	db := &c.Database
	db.Schema = or(db.Schema, "walhook")
	db.Slot = or(db.Slot, "walhook")
	db.Publication = or(db.Publication, "walhook")
	for i := range c.Models {
		m := &c.Models[i]
		m.Line = p.line(fmt.Sprintf("models[%d]", i))
		m.Schema, m.Name = SplitTable(m.Table)
		m.Model = or(m.Model, m.Name)
	}
	for i := range c.Webhooks {
		w := &c.Webhooks[i]
		w.Line = p.line(fmt.Sprintf("webhooks[%d]", i))
		w.HTTPMethod = strings.ToUpper(or(w.HTTPMethod, "POST"))
		w.ContentType = or(w.ContentType, "application/json")
		w.Format = or(w.Format, "netbox")
		w.Signature = or(w.Signature, "netbox")
		w.Coalesce = or(w.Coalesce, "none")
		if w.Timeout == 0 {
			w.Timeout = Duration(10e9)
		}
		if w.Retry.MaxAttempts == 0 && p.lines[fmt.Sprintf("webhooks[%d].retry.max_attempts", i)] == 0 {
			w.Retry.MaxAttempts = 8
		}
		if w.Retry.InitialInterval == 0 && p.lines[fmt.Sprintf("webhooks[%d].retry.initial_interval", i)] == 0 {
			w.Retry.InitialInterval = Duration(5e9)
		}
		if w.Retry.MaxInterval == 0 && p.lines[fmt.Sprintf("webhooks[%d].retry.max_interval", i)] == 0 {
			w.Retry.MaxInterval = Duration(3600e9)
		}
	}
	d := &c.Dispatch
	if d.Concurrency == 0 && p.lines["dispatch.concurrency"] == 0 {
		d.Concurrency = 16
	}
	if d.PollInterval == 0 && p.lines["dispatch.poll_interval"] == 0 {
		d.PollInterval = Duration(1e9)
	}
	if d.Retention == 0 && p.lines["dispatch.retention"] == 0 {
		d.Retention = Duration(168 * 3600e9)
	}
	c.Log.Level = or(c.Log.Level, "info")
	c.Log.Format = or(c.Log.Format, "json")
}

// SplitTable splits "schema.table" (a bare name means public).
func SplitTable(t string) (schema, name string) {
	t = strings.TrimSpace(t)
	if s, n, ok := strings.Cut(t, "."); ok {
		return s, n
	}
	return "public", t
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
		p.add(p.line("database"), "database.dsn is required (e.g. postgres://walhook@localhost:5432/app)")
	}
	for _, f := range []struct{ key, v string }{{"schema", db.Schema}, {"slot", db.Slot}, {"publication", db.Publication}} {
		if !ValidIdentifier(f.v) {
			p.add(p.line("database."+f.key), "database.%s %q is not a valid name: use lower-case letters, digits and _ (at most 63, not starting with a digit)", f.key, f.v)
		}
	}
	if len(c.Models) == 0 {
		p.add(p.line("models"), "models: at least one table must be configured")
	}
	tables, models := map[string]int{}, map[string]bool{}
	for i, m := range c.Models {
		path := fmt.Sprintf("models[%d]", i)
		if m.Name == "" || m.Schema == "" || strings.Count(m.Table, ".") > 1 {
			p.add(p.line(path+".table"), "models[%d].table %q: give a table as name or schema.name", i, m.Table)
			continue
		}
		if prev, dup := tables[m.QualifiedTable()]; dup {
			p.add(p.line(path+".table"), "table %s is configured twice (also at line %d)", m.QualifiedTable(), prev)
		}
		tables[m.QualifiedTable()] = p.line(path + ".table")
		if models[m.Model] {
			p.add(p.line(path+".model"), "model name %q is used twice", m.Model)
		}
		models[m.Model] = true
		for col, r := range m.Relations {
			rp := path + ".relations." + col
			if r.Table == "" {
				p.add(p.line(rp), "relation %s needs a table", col)
			}
			if len(r.Columns) == 0 {
				p.add(p.line(rp), "relation %s needs columns", col)
			}
		}
		for name, cp := range m.Computed {
			if strings.TrimSpace(cp.SQL) == "" {
				p.add(p.line(path+".computed."+name), "computed field %s needs sql", name)
			}
		}
	}
	names := map[string]bool{}
	for i, w := range c.Webhooks {
		path := fmt.Sprintf("webhooks[%d]", i)
		if w.Name == "" {
			p.add(p.line(path), "webhooks[%d] needs a name", i)
		} else if names[w.Name] {
			p.add(p.line(path+".name"), "duplicate webhook name %q", w.Name)
		}
		names[w.Name] = true
		if u, err := url.Parse(w.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			p.add(p.line(path+".url"), "webhook %q: url %q is not an http(s) URL", w.Name, RedactURL(w.URL))
		}
		for j, m := range w.Models {
			if !models[m] {
				p.add(p.line(fmt.Sprintf("%s.models[%d]", path, j)), "webhook %q names unknown model %q (models are: %s)", w.Name, m, strings.Join(sortedKeys(models), ", "))
			}
		}
		for j, e := range w.Events {
			if !contains(Events, e) {
				p.add(p.line(fmt.Sprintf("%s.events[%d]", path, j)), "webhook %q: unknown event %q (use created, updated, deleted)", w.Name, e)
			}
		}
		if !contains([]string{"POST", "PUT", "PATCH"}, w.HTTPMethod) {
			p.add(p.line(path+".http_method"), "webhook %q: http_method %q must be POST, PUT or PATCH", w.Name, w.HTTPMethod)
		}
		if w.Timeout <= 0 {
			p.add(p.line(path+".timeout"), "webhook %q: timeout must be positive", w.Name)
		}
		if w.Retry.MaxAttempts <= 0 {
			p.add(p.line(path+".retry.max_attempts"), "webhook %q: retry.max_attempts must be positive", w.Name)
		}
		if w.Retry.InitialInterval <= 0 {
			p.add(p.line(path+".retry.initial_interval"), "webhook %q: retry.initial_interval must be positive", w.Name)
		}
		if w.Retry.MaxInterval <= 0 {
			p.add(p.line(path+".retry.max_interval"), "webhook %q: retry.max_interval must be positive", w.Name)
		} else if w.Retry.MaxInterval < w.Retry.InitialInterval {
			p.add(p.line(path+".retry.max_interval"), "webhook %q: retry.max_interval is shorter than initial_interval", w.Name)
		}
		for k := range w.Headers {
			if strings.ContainsAny(k, " :\r\n") || k == "" {
				p.add(p.line(path+".headers."+k), "webhook %q: %q is not a valid header name", w.Name, k)
			}
		}
		if !contains([]string{"netbox", "netbox-v4"}, w.Format) {
			p.add(p.line(path+".format"), "webhook %q: format %q must be netbox or netbox-v4", w.Name, w.Format)
		}
		if !contains([]string{"netbox", "standard-webhooks", "both"}, w.Signature) {
			p.add(p.line(path+".signature"), "webhook %q: signature %q must be netbox, standard-webhooks or both", w.Name, w.Signature)
		}
		if !contains([]string{"none", "transaction"}, w.Coalesce) {
			p.add(p.line(path+".coalesce"), "webhook %q: coalesce %q must be none or transaction", w.Name, w.Coalesce)
		}
		if w.BodyTemplate != "" {
			if _, err := template.New(w.Name).Funcs(template.FuncMap{"json": func(any) string { return "" }}).Parse(w.BodyTemplate); err != nil {
				p.add(p.line(path+".body_template"), "webhook %q: body_template: %v", w.Name, err)
			}
		}
	}
	if len(c.Webhooks) == 0 {
		p.add(p.line("webhooks"), "webhooks: at least one webhook must be configured")
	}
	d := c.Dispatch
	if d.Concurrency <= 0 {
		p.add(p.line("dispatch.concurrency"), "dispatch.concurrency must be positive")
	}
	if d.PollInterval <= 0 {
		p.add(p.line("dispatch.poll_interval"), "dispatch.poll_interval must be positive")
	}
	if d.Retention <= 0 {
		p.add(p.line("dispatch.retention"), "dispatch.retention must be positive")
	}
	if l := c.HTTP.ListenAddr(); l != "" {
		host, _, err := net.SplitHostPort(l)
		if err != nil {
			p.add(p.line("http.listen"), "http.listen %q: %v", l, err)
		} else if !isLoopback(host) && c.HTTP.Token == "" {
			p.add(p.line("http.listen"), "http.listen %q is not a loopback address: set http.token (e.g. token: ${WALHOOK_HTTP_TOKEN}) so the status page and retry actions are protected", l)
		}
	}
	if !contains([]string{"debug", "info", "warn", "error"}, c.Log.Level) {
		p.add(p.line("log.level"), "log.level %q must be debug, info, warn or error", c.Log.Level)
	}
	if !contains([]string{"json", "console"}, c.Log.Format) {
		p.add(p.line("log.format"), "log.format %q must be json or console", c.Log.Format)
	}
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
