package payload

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"text/template"

	"github.com/walhook/walhook/internal/config"
)

// HookSpec is what a webhook changes in the default rendering: a body
// template, conditions, or both.
type HookSpec struct {
	name     string
	Tmpl     *template.Template
	Cond     *config.Condition
	CondLog  LogLimit
	Format   string          // FormatNetbox or FormatNetboxV4
	Coalesce bool            // coalesce: transaction
	hook     *config.Webhook // for the object_type of format netbox-v4
}

// ObjectType is the object_type of a model's changes for this webhook.
func (sp *HookSpec) ObjectType(m *config.Model) string { return sp.hook.ObjectTypeFor(m) }

// HookSet is the webhooks that take one event of one model.
type HookSet struct {
	Names   []string
	Specs   []*HookSpec // parallel to names; nil: default body, no conditions
	Special bool        // some spec is not nil: the payload is decoded per change
}

// Add appends a webhook to a hook set.
func (hs *HookSet) Add(name string, sp *HookSpec) {
	hs.Names = append(hs.Names, name)
	hs.Specs = append(hs.Specs, sp)
	if sp != nil {
		hs.Special = true
	}
}

// EventIndex maps an event to its index in relation.hooks.
func EventIndex(event string) int {
	switch event {
	case EventCreated:
		return 0
	case EventUpdated:
		return 1
	}
	return 2
}

// Templater renders body templates. The payload given to a template is the
// default body decoded into maps, lists and scalars (integers as int64,
// other numbers as json.Number) with "timestamp" and "old" added. Its json
// function writes objects of the payload exactly as they were rendered (key
// order included); other maps get sorted keys.
type Templater struct {
	raw map[uintptr][]byte // decoded object -> its JSON text, for the payload being rendered
	out bytes.Buffer
}

// NewTemplater returns a Templater; one serves one goroutine.
func NewTemplater() *Templater { return &Templater{raw: map[uintptr][]byte{}} }

// parse compiles a webhook's body template with the json function.
func (t *Templater) parse(name, text string) (*template.Template, error) {
	return template.New(name).Funcs(template.FuncMap{"json": t.jsonFunc}).Parse(text)
}

// Execute runs a webhook's body template on payload and returns the body.
func (t *Templater) Execute(tmpl *template.Template, payload map[string]any) (string, error) {
	t.out.Reset()
	if err := tmpl.Execute(&t.out, payload); err != nil {
		return "", err
	}
	return t.out.String(), nil
}

func (t *Templater) jsonFunc(v any) (string, error) {
	b, err := t.appendJSON(nil, v, 0)
	return string(b), err
}

func (t *Templater) appendJSON(dst []byte, v any, depth int) ([]byte, error) {
	if depth > 100 {
		return nil, errors.New("json: value nested too deeply")
	}
	switch x := v.(type) {
	case nil:
		return append(dst, "null"...), nil
	case string:
		return AppendJSONString(dst, x), nil
	case bool:
		return strconv.AppendBool(dst, x), nil
	case int64:
		return strconv.AppendInt(dst, x, 10), nil
	case json.Number:
		return append(dst, x...), nil
	case map[string]any:
		if raw, ok := t.raw[reflect.ValueOf(x).Pointer()]; ok {
			return append(dst, raw...), nil
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		dst = append(dst, '{')
		for i, k := range keys {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = AppendJSONString(dst, k)
			dst = append(dst, ':')
			var err error
			if dst, err = t.appendJSON(dst, x[k], depth+1); err != nil {
				return nil, err
			}
		}
		return append(dst, '}'), nil
	case []any:
		dst = append(dst, '[')
		for i, e := range x {
			if i > 0 {
				dst = append(dst, ',')
			}
			var err error
			if dst, err = t.appendJSON(dst, e, depth+1); err != nil {
				return nil, err
			}
		}
		return append(dst, ']'), nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("json: %w", err)
	}
	return append(dst, b...), nil
}

// decode turns rendered JSON into template and condition values, recording
// the text of every object for the json function.
func (t *Templater) decode(raw []byte) (any, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return nil, errors.New("empty JSON value")
	}
	switch raw[0] {
	case '{':
		var m map[string]json.RawMessage
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, err
		}
		out := make(map[string]any, len(m))
		for k, v := range m {
			x, err := t.decode(v)
			if err != nil {
				return nil, err
			}
			out[k] = x
		}
		t.raw[reflect.ValueOf(out).Pointer()] = raw
		return out, nil
	case '[':
		var l []json.RawMessage
		if err := json.Unmarshal(raw, &l); err != nil {
			return nil, err
		}
		out := make([]any, len(l))
		for i, v := range l {
			x, err := t.decode(v)
			if err != nil {
				return nil, err
			}
			out[i] = x
		}
		return out, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if n, ok := v.(json.Number); ok {
		if i, err := strconv.ParseInt(string(n), 10, 64); err == nil {
			return i, nil
		}
	}
	return v, nil
}

// Payload decodes a change's default body for its templates and conditions:
// event, model, signal_received_timestamp (also as timestamp), data, and old
// (the row before an UPDATE when known, else null).
func (t *Templater) Payload(body string, old []byte) (map[string]any, error) {
	clear(t.raw)
	v, err := t.decode([]byte(body))
	if err != nil {
		return nil, fmt.Errorf("decode rendered body: %w", err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, errors.New("decode rendered body: not an object")
	}
	m["timestamp"] = m["signal_received_timestamp"]
	m["old"] = nil
	if old != nil {
		if m["old"], err = t.decode(old); err != nil {
			return nil, fmt.Errorf("decode rendered old row: %w", err)
		}
	}
	return m, nil
}

// HookSpecs compiles the body templates and conditions of the webhooks that
// have them, and describes the webhooks with format netbox-v4 or coalesce:
// transaction.
func HookSpecs(cfg *config.Config, t *Templater) (map[string]*HookSpec, error) {
	specs := map[string]*HookSpec{}
	for i := range cfg.Webhooks {
		w := &cfg.Webhooks[i]
		cond := w.Condition
		if cond == nil && w.Conditions != nil { // a Config not made by config.Parse
			var err error
			if cond, err = config.ParseConditions(w.Conditions); err != nil {
				return nil, fmt.Errorf("webhook %s: conditions: %w", w.Name, err)
			}
		}
		v4, coal := w.Format == FormatNetboxV4, w.Coalesce == config.CoalesceTransaction
		if w.BodyTemplate == "" && cond == nil && !v4 && !coal {
			continue
		}
		sp := &HookSpec{name: w.Name, Cond: cond, Format: w.Format, Coalesce: coal, hook: w}
		if w.BodyTemplate != "" {
			tmpl, err := t.parse(w.Name, w.BodyTemplate)
			if err != nil {
				return nil, fmt.Errorf("webhook %s: body_template: %w", w.Name, err)
			}
			sp.Tmpl = tmpl
		}
		specs[w.Name] = sp
	}
	return specs, nil
}
