package config

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/walhook/walhook/dispatch/sign"
)

// Defaults of settings a file leaves out. ApplyDefaults fills them in, but
// for DefaultListen, which HTTP.ListenAddr applies (an empty http.listen
// turns the server off).
const (
	DefaultSchema          = "walhook"
	DefaultSlot            = "walhook"
	DefaultPublication     = "walhook"
	DefaultHTTPMethod      = "POST"
	DefaultTimeout         = 10 * time.Second
	DefaultMaxAttempts     = 8
	DefaultInitialInterval = 5 * time.Second
	DefaultMaxInterval     = time.Hour
	DefaultConcurrency     = 16
	DefaultPollInterval    = time.Second
	DefaultRetention       = 7 * 24 * time.Hour
	DefaultFailedRetention = 30 * 24 * time.Hour
	DefaultListen          = "127.0.0.1:9187"
	DefaultLogLevel        = "info"
	DefaultLogFormat       = LogFormatJSON
)

// defaults fills in what the file leaves out, keeping what it wrote.
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
	c.Log.Level = or(c.Log.Level, DefaultLogLevel)
	c.Log.Format = or(c.Log.Format, DefaultLogFormat)
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

func or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
