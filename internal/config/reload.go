package config

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
)

// Changes is what a reloaded configuration changes against the running one
// (Compare). Names never carry a secret.
type Changes struct {
	// Restart names the keys that differ and cannot change while walhook
	// runs ("database.slot"): a reload that has any is refused whole.
	Restart []string
	// Webhooks added, removed and changed (any setting), by name.
	WebhooksAdded, WebhooksRemoved, WebhooksChanged []string
	// Models whose rendering changed, by model name; TablesAdded and
	// TablesRemoved are the captured tables ("schema.table") that come and
	// go (the publication follows them).
	ModelsChanged              []string
	TablesAdded, TablesRemoved []string
	// Dispatch is true when the dispatch section changed.
	Dispatch bool
	// LogLevel is the new log level when it changed ("" when not).
	LogLevel string
}

// None reports whether the new configuration changes nothing walhook uses.
func (c Changes) None() bool {
	return len(c.Restart)+len(c.WebhooksAdded)+len(c.WebhooksRemoved)+len(c.WebhooksChanged)+
		len(c.ModelsChanged)+len(c.TablesAdded)+len(c.TablesRemoved) == 0 && !c.Dispatch && c.LogLevel == ""
}

// Rendering reports whether capture renders differently: models, or the
// webhooks (their list, filters, templates, formats).
func (c Changes) Rendering() bool {
	return len(c.WebhooksAdded)+len(c.WebhooksRemoved)+len(c.WebhooksChanged)+
		len(c.ModelsChanged)+len(c.TablesAdded)+len(c.TablesRemoved) > 0
}

// Sending reports whether dispatch sends differently: the webhooks or the
// dispatch settings.
func (c Changes) Sending() bool {
	return len(c.WebhooksAdded)+len(c.WebhooksRemoved)+len(c.WebhooksChanged) > 0 || c.Dispatch
}

// RestartError is a reload refused because keys that need a restart
// changed.
type RestartError struct {
	File string
	Keys []string
}

func (e *RestartError) Error() string {
	return fmt.Sprintf("%s: %s changed, which walhook cannot apply while it runs: restart walhook to change %s, or put the old value back (nothing in this reload was applied)",
		e.File, strings.Join(e.Keys, ", "), map[bool]string{true: "it", false: "them"}[len(e.Keys) == 1])
}

// Compare says what next changes against cur. Positions in the file (line
// numbers) are not changes.
func Compare(cur, next *Config) Changes {
	var ch Changes
	restart := func(key string, a, b any) {
		if !reflect.DeepEqual(a, b) {
			ch.Restart = append(ch.Restart, key)
		}
	}
	restart("database.dsn", cur.Database.DSN, next.Database.DSN)
	restart("database.outbox_dsn", cur.Database.OutboxDSN, next.Database.OutboxDSN)
	restart("database.schema", cur.Database.Schema, next.Database.Schema)
	restart("database.slot", cur.Database.Slot, next.Database.Slot)
	restart("database.publication", cur.Database.Publication, next.Database.Publication)
	restart("database.slot_failover", cur.Database.SlotFailover, next.Database.SlotFailover)
	restart("http.listen", cur.HTTP.ListenAddr(), next.HTTP.ListenAddr())
	restart("http.token", cur.HTTP.Token, next.HTTP.Token)
	restart("log.format", cur.Log.Format, next.Log.Format)
	restart("tracing.otlp_endpoint", cur.Tracing.OTLPEndpoint, next.Tracing.OTLPEndpoint)

	oldHooks := map[string]Webhook{}
	for _, w := range cur.Webhooks {
		oldHooks[w.Name] = w
	}
	for _, w := range next.Webhooks {
		o, ok := oldHooks[w.Name]
		switch {
		case !ok:
			ch.WebhooksAdded = append(ch.WebhooksAdded, w.Name)
		case !SameWebhook(o, w):
			ch.WebhooksChanged = append(ch.WebhooksChanged, w.Name)
		}
		delete(oldHooks, w.Name)
	}
	for _, w := range cur.Webhooks {
		if _, gone := oldHooks[w.Name]; gone {
			ch.WebhooksRemoved = append(ch.WebhooksRemoved, w.Name)
		}
	}

	oldModels := map[string]Model{}
	for _, m := range cur.Models {
		oldModels[m.QualifiedTable()] = m
	}
	for _, m := range next.Models {
		o, ok := oldModels[m.QualifiedTable()]
		switch {
		case !ok:
			ch.TablesAdded = append(ch.TablesAdded, m.QualifiedTable())
		case !sameModel(o, m):
			ch.ModelsChanged = append(ch.ModelsChanged, m.Model)
		}
		delete(oldModels, m.QualifiedTable())
	}
	for _, m := range cur.Models {
		if _, gone := oldModels[m.QualifiedTable()]; gone {
			ch.TablesRemoved = append(ch.TablesRemoved, m.QualifiedTable())
		}
	}
	ch.Dispatch = cur.Dispatch != next.Dispatch
	if cur.Log.Level != next.Log.Level {
		ch.LogLevel = next.Log.Level
	}
	return ch
}

// SameWebhook compares two webhooks' settings, not their lines.
func SameWebhook(a, b Webhook) bool {
	a.Line, b.Line = 0, 0
	return reflect.DeepEqual(a, b)
}

// sameModel compares two models' settings, not their lines.
func sameModel(a, b Model) bool {
	return reflect.DeepEqual(modelSansLines(a), modelSansLines(b))
}

func modelSansLines(m Model) Model {
	m.Line = 0
	m.Relations = mapValues(m.Relations, func(r Relation) Relation { r.Line = 0; return r })
	m.Computed = mapValues(m.Computed, func(c Computed) Computed { c.Line = 0; return c })
	if m.Snapshot != nil {
		s := *m.Snapshot
		s.Computed = mapValues(s.Computed, func(c Computed) Computed { c.Line = 0; return c })
		m.Snapshot = &s
	}
	return m
}

// mapValues returns a copy of m with f applied to every value.
func mapValues[V any](m map[string]V, f func(V) V) map[string]V {
	if m == nil {
		return nil
	}
	out := make(map[string]V, len(m))
	for k, v := range m {
		out[k] = f(v)
	}
	return out
}

// Tables returns the captured tables ("schema.table"), sorted.
func (c *Config) Tables() []string {
	var ts []string
	for _, m := range c.Models {
		ts = append(ts, m.QualifiedTable())
	}
	slices.Sort(ts)
	return ts
}
