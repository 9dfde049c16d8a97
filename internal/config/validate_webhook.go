package config

import (
	"errors"
	"fmt"
	"maps"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/template"

	"github.com/walhook/walhook/dispatch/sign"
	"github.com/walhook/walhook/internal/clienttls"
)

// validateWebhooks checks every webhook against the models (their names,
// sorted) and the other webhooks.
func (p *parser) validateWebhooks(c *Config, models []string) {
	names := map[string]bool{}
	for i := range c.Webhooks {
		w, path := &c.Webhooks[i], fmt.Sprintf("webhooks[%d]", i)
		if w.Name == "" {
			p.at(path+".name", "webhooks[%d] needs a name", i)
		} else if names[w.Name] {
			p.at(path+".name", "duplicate webhook name %q", w.Name)
		}
		names[w.Name] = true
		p.validateWebhook(c, w, path, models)
	}
	if len(c.Webhooks) == 0 {
		p.at("webhooks", "webhooks: at least one webhook must be configured")
	}
}

// validateWebhook checks one webhook's settings but its concurrency and
// rate limit (validateWebhookLimits), and compiles its conditions.
func (p *parser) validateWebhook(c *Config, w *Webhook, path string, models []string) {
	if !isHTTPURL(w.URL) {
		p.at(path+".url", "webhook %q: url %q is not an http(s) URL", w.Name, RedactURL(w.URL))
	}
	for j, m := range w.Models {
		if !slices.Contains(models, m) {
			p.at(fmt.Sprintf("%s.models[%d]", path, j), "webhook %q names unknown model %q%s", w.Name, m, suggest(m, models, "models are"))
		}
	}
	for j, e := range w.Events {
		if !slices.Contains(Events, e) {
			hint := ""
			if s := closest(e, Events); s != "" {
				hint = fmt.Sprintf(", did you mean %q?", s)
			}
			p.at(fmt.Sprintf("%s.events[%d]", path, j), "webhook %q: unknown event %q (use %s%s)", w.Name, e, strings.Join(Events, ", "), hint)
		}
	}
	if !slices.Contains(HTTPMethods(), w.HTTPMethod) {
		p.at(path+".http_method", "webhook %q: http_method %q must be %s", w.Name, w.HTTPMethod, orList(HTTPMethods()))
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
	p.validateSigning(c, *w, path)
	p.validateTLS(w, path)
	if w.BodyTemplate != "" {
		if _, err := template.New(w.Name).Funcs(template.FuncMap{"json": func(any) string { return "" }}).Parse(w.BodyTemplate); err != nil {
			p.templateError(path+".body_template", w.Name, err)
		}
	}
	p.compileConditions(w, path)
}

// validateWebhookLimits checks a webhook's concurrency against
// dispatch.concurrency (total), which caps all webhooks together, and
// parses its rate limit into w.Rate.
func (p *parser) validateWebhookLimits(w *Webhook, path string, total int) {
	if w.Concurrency <= 0 {
		p.at(path+".concurrency", "webhook %q: concurrency must be positive", w.Name)
	} else if total > 0 && w.Concurrency > total {
		p.at(path+".concurrency", "webhook %q: concurrency %d is more than dispatch.concurrency (%d), which caps all webhooks together", w.Name, w.Concurrency, total)
	}
	if w.RateLimit != "" {
		r, err := ParseRate(w.RateLimit)
		if err != nil {
			p.at(path+".rate_limit", "webhook %q: %v", w.Name, err)
		}
		w.Rate = r
	}
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

// compileConditions parses a webhook's conditions into w.Condition, or
// reports where they are wrong.
func (p *parser) compileConditions(w *Webhook, path string) {
	if w.Conditions == nil || p.bad[path+".conditions"] {
		return
	}
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
		w.Condition = cond
	}
}

func isString(v any) bool {
	_, ok := v.(string)
	return ok
}
