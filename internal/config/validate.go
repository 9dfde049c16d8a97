package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/walhook/walhook/dispatch/sign"
	"github.com/walhook/walhook/internal/clienttls"
)

// orList joins values as "a, b or c".
func orList(values []string) string {
	if len(values) < 2 {
		return strings.Join(values, "")
	}
	return strings.Join(values[:len(values)-1], ", ") + " or " + values[len(values)-1]
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
