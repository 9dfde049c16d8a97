package config

import (
	"fmt"
	"maps"
	"net"
	"net/url"
	"slices"
	"sort"
	"strings"
)

// validate reports every setting of c that cannot work, one section at a
// time, and compiles what capture and dispatch use from the webhooks
// (conditions, rate limits, TLS file paths made absolute).
func (p *parser) validate(c *Config) {
	p.validateDatabase(c.Database)
	models := p.validateModels(c.Models)
	p.validateWebhooks(c, models)
	p.validateDispatch(c.Dispatch)
	for i := range c.Webhooks {
		p.validateWebhookLimits(&c.Webhooks[i], fmt.Sprintf("webhooks[%d]", i), c.Dispatch.Concurrency)
	}
	p.validateHTTP(c.HTTP)
	p.validateTracing(c.Tracing)
	p.validateLog(c.Log)
}

func (p *parser) validateDatabase(db Database) {
	if strings.TrimSpace(db.DSN) == "" {
		p.at("database.dsn", "database.dsn is required (e.g. postgres://walhook@localhost:5432/app)")
	}
	for _, f := range []struct{ key, v string }{{"schema", db.Schema}, {"slot", db.Slot}, {"publication", db.Publication}} {
		if !ValidIdentifier(f.v) {
			p.at("database."+f.key, "database.%s %q is not a valid name: use lower-case letters, digits and _ (at most 63, not starting with a digit)", f.key, f.v)
		}
	}
}

// validateModels checks the models and returns their names, sorted.
func (p *parser) validateModels(ms []Model) []string {
	if len(ms) == 0 {
		p.at("models", "models: at least one table must be configured")
	}
	tables, models := map[string]int{}, map[string]bool{}
	for i, m := range ms {
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
		if !slices.Contains(LookupErrorModes(), m.OnLookupError) {
			p.at(path+".on_lookup_error", "model %s: on_lookup_error %q must be %s", m.Model, m.OnLookupError, orList(LookupErrorModes()))
		}
	}
	return slices.Sorted(maps.Keys(models))
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

func (p *parser) validateDispatch(d Dispatch) {
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
}

func (p *parser) validateHTTP(h HTTP) {
	l := h.ListenAddr()
	if l == "" {
		return
	}
	host, _, err := net.SplitHostPort(l)
	if err != nil {
		p.at("http.listen", "http.listen %q: %v", l, err)
	} else if !isLoopback(host) && h.Token == "" {
		p.at("http.listen", "http.listen %q is not a loopback address: set http.token (e.g. token: ${WALHOOK_HTTP_TOKEN}) so the status page and retry actions are protected", l)
	}
}

func (p *parser) validateTracing(t Tracing) {
	if e := t.OTLPEndpoint; e != "" && !isHTTPURL(e) {
		p.at("tracing.otlp_endpoint", "tracing.otlp_endpoint %q is not an http(s) URL: give the collector's OTLP/HTTP address, e.g. http://localhost:4318", RedactURL(e))
	}
}

func (p *parser) validateLog(l Log) {
	if !slices.Contains(LogLevels(), l.Level) {
		p.at("log.level", "log.level %q must be %s", l.Level, orList(LogLevels()))
	}
	if !slices.Contains(LogFormats(), l.Format) {
		p.at("log.format", "log.format %q must be %s", l.Format, orList(LogFormats()))
	}
}

// orList joins values as "a, b or c".
func orList(values []string) string {
	if len(values) < 2 {
		return strings.Join(values, "")
	}
	return strings.Join(values[:len(values)-1], ", ") + " or " + values[len(values)-1]
}

// isHTTPURL reports whether s is an absolute http or https URL with a host.
func isHTTPURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
