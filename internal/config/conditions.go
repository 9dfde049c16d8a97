package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Condition is a compiled webhook condition: NetBox's ConditionSet. A set has
// Logic "and" or "or" and Items; a leaf compares the value at Attr (a dotted
// path) with Value using Op. Values are normalised: numbers are json.Number,
// lists []any, plus string, bool and nil.
type Condition struct {
	Logic string       // "and" or "or" for a set, "" for a leaf
	Items []*Condition // the set's conditions

	Attr   string   // leaf: dotted path, e.g. "data.status.value"
	Path   []string // Attr split at the dots
	Op     string   // eq, gt, gte, lt, lte, in, contains, regex
	Value  any
	Negate bool
	Regexp *regexp.Regexp // compiled Value for op regex, anchored at the start
}

// Condition operators, as NetBox names them.
const (
	OpEq       = "eq"
	OpGt       = "gt"
	OpGte      = "gte"
	OpLt       = "lt"
	OpLte      = "lte"
	OpIn       = "in"
	OpContains = "contains"
	OpRegex    = "regex"
)

var condOps = []string{OpEq, OpGt, OpGte, OpLt, OpLte, OpIn, OpContains, OpRegex}

// condTypes lists the operators each kind of value allows (NetBox's
// Condition.TYPES).
var condTypes = map[string][]string{
	"string": {OpEq, OpContains, OpRegex},
	"bool":   {OpEq, OpContains},
	"number": {OpEq, OpGt, OpGte, OpLt, OpLte, OpContains},
	"list":   {OpEq, OpIn, OpContains},
	"null":   {OpEq},
}

// ConditionError is a problem in a condition set; Path locates it inside the
// set ("and[1].op"), for the line of the configuration file.
type ConditionError struct {
	Path string
	Msg  string
}

func (e *ConditionError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// ParseConditions compiles a condition set given as decoded YAML (maps, lists
// and scalars) or as a string holding NetBox's ConditionSet JSON. Accepted:
// {"and": [...]} or {"or": [...]} (items are conditions or nested sets) and,
// for convenience, a single condition {"attr": ..., "value": ...}. An empty
// value (null, "" or {}) returns nil: no conditions, everything matches.
func ParseConditions(v any) (*Condition, error) {
	if s, ok := v.(string); ok {
		if strings.TrimSpace(s) == "" {
			return nil, nil
		}
		dec := json.NewDecoder(strings.NewReader(s))
		dec.UseNumber()
		var j any
		if err := dec.Decode(&j); err != nil {
			return nil, &ConditionError{Msg: fmt.Sprintf("not valid ConditionSet JSON: %v", err)}
		}
		if dec.More() {
			return nil, &ConditionError{Msg: "not valid ConditionSet JSON: text after the value"}
		}
		v = j
	}
	if v == nil {
		return nil, nil
	}
	m, ok := asMap(v)
	if !ok {
		return nil, &ConditionError{Msg: fmt.Sprintf(`expected a condition set such as {"and": [{"attr": "data.status.value", "value": "active"}]}, got %s`, condKind(v))}
	}
	if len(m) == 0 {
		return nil, nil
	}
	return parseRule(m, "")
}

func parseRule(m map[string]any, path string) (*Condition, error) {
	for k := range m {
		if l := strings.ToLower(k); l == "and" || l == "or" {
			return parseSet(m, path)
		}
	}
	return parseLeaf(m, path)
}

func parseSet(m map[string]any, path string) (*Condition, error) {
	if len(m) != 1 {
		return nil, &ConditionError{Path: path, Msg: fmt.Sprintf(`a condition set has exactly one key, "and" or "or" (found %s)`, strings.Join(slices.Sorted(maps.Keys(m)), ", "))}
	}
	var logic string
	var items any
	for k, v := range m {
		logic, items = k, v
	}
	p := join(path, logic)
	list, ok := items.([]any)
	if !ok {
		return nil, &ConditionError{Path: p, Msg: fmt.Sprintf("expected a list of conditions, got %s", condKind(items))}
	}
	c := &Condition{Logic: strings.ToLower(logic)}
	for i, it := range list {
		ip := fmt.Sprintf("%s[%d]", p, i)
		im, ok := asMap(it)
		if !ok {
			return nil, &ConditionError{Path: ip, Msg: fmt.Sprintf(`expected a condition {"attr": ..., "value": ...} or a nested set, got %s`, condKind(it))}
		}
		sub, err := parseRule(im, ip)
		if err != nil {
			return nil, err
		}
		c.Items = append(c.Items, sub)
	}
	return c, nil
}

func parseLeaf(m map[string]any, path string) (*Condition, error) {
	c := &Condition{Op: OpEq}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		switch k {
		case "attr", "value", "op", "negate":
		default:
			return nil, &ConditionError{Path: join(path, k), Msg: fmt.Sprintf(`unknown key %q in a condition (keys: attr, value, op, negate; a set is {"and": [...]} or {"or": [...]})`, k)}
		}
	}
	attr, ok := m["attr"].(string)
	if !ok || strings.TrimSpace(attr) == "" {
		return nil, &ConditionError{Path: join(path, "attr"), Msg: `a condition needs "attr", the dotted path of the value to test, e.g. "data.status.value"`}
	}
	c.Attr = attr
	c.Path = strings.Split(attr, ".")
	for _, seg := range c.Path {
		if seg == "" {
			return nil, &ConditionError{Path: join(path, "attr"), Msg: fmt.Sprintf("attr %q has an empty path segment", attr)}
		}
	}
	if op, present := m["op"]; present {
		s, ok := op.(string)
		if !ok || !slices.Contains(condOps, strings.ToLower(s)) {
			return nil, &ConditionError{Path: join(path, "op"), Msg: fmt.Sprintf("op %v is not one of %s", op, strings.Join(condOps, ", "))}
		}
		c.Op = strings.ToLower(s)
	}
	if neg, present := m["negate"]; present {
		b, ok := neg.(bool)
		if !ok {
			return nil, &ConditionError{Path: join(path, "negate"), Msg: fmt.Sprintf("negate must be true or false, got %v", neg)}
		}
		c.Negate = b
	}
	raw, present := m["value"]
	if !present {
		return nil, &ConditionError{Path: path, Msg: fmt.Sprintf(`the condition on %q needs a "value"`, attr)}
	}
	val, kind, err := normValue(raw)
	if err != nil {
		return nil, &ConditionError{Path: join(path, "value"), Msg: err.Error()}
	}
	c.Value = val
	if !slices.Contains(condTypes[kind], c.Op) {
		return nil, &ConditionError{Path: join(path, "op"), Msg: fmt.Sprintf("op %s cannot be used with a %s value (a %s value allows %s)", c.Op, kind, kind, strings.Join(condTypes[kind], ", "))}
	}
	if c.Op == OpRegex {
		// NetBox uses Python's re.match: anchored at the start only.
		re, err := regexp.Compile(`^(?:` + val.(string) + `)`)
		if err != nil {
			return nil, &ConditionError{Path: join(path, "value"), Msg: fmt.Sprintf("invalid regular expression %q: %v", val, err)}
		}
		c.Regexp = re
	}
	return c, nil
}

// normValue converts a decoded YAML or JSON value into the condition value
// types and names its kind.
func normValue(v any) (any, string, error) {
	switch x := v.(type) {
	case nil:
		return nil, "null", nil
	case string:
		return x, "string", nil
	case bool:
		return x, "bool", nil
	case int:
		return json.Number(strconv.Itoa(x)), "number", nil
	case int64:
		return json.Number(strconv.FormatInt(x, 10)), "number", nil
	case uint64:
		return json.Number(strconv.FormatUint(x, 10)), "number", nil
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return nil, "", fmt.Errorf("value %v is not a finite number", x)
		}
		return json.Number(strconv.FormatFloat(x, 'g', -1, 64)), "number", nil
	case json.Number:
		if _, err := strconv.ParseFloat(string(x), 64); err != nil {
			return nil, "", fmt.Errorf("value %s is not a usable number", x)
		}
		return x, "number", nil
	case time.Time:
		return nil, "", fmt.Errorf("value %v is read as a YAML timestamp: quote it to compare it as a string", x.Format(time.RFC3339))
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			n, _, err := normValue(e)
			if err != nil {
				return nil, "", err
			}
			out[i] = n
		}
		return out, "list", nil
	}
	if m, ok := asMap(v); ok {
		out := make(map[string]any, len(m))
		for k, e := range m {
			n, _, err := normValue(e)
			if err != nil {
				return nil, "", err
			}
			out[k] = n
		}
		// NetBox does not allow a mapping as a value; a list may hold one.
		return out, "mapping", fmt.Errorf("value must be a string, number, boolean, list or null, not a mapping")
	}
	return nil, "", fmt.Errorf("value %v has an unsupported type", v)
}

// asMap accepts the mapping types YAML and JSON decoding produce.
func asMap(v any) (map[string]any, bool) {
	switch m := v.(type) {
	case map[string]any:
		return m, true
	case map[any]any:
		out := make(map[string]any, len(m))
		for k, e := range m {
			out[fmt.Sprint(k)] = e
		}
		return out, true
	}
	return nil, false
}

func condKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case []any:
		return "a list"
	case map[string]any, map[any]any:
		return "a mapping"
	}
	return "a number"
}

// String renders the condition as NetBox ConditionSet JSON (for logs).
func (c *Condition) String() string {
	if c == nil {
		return "{}"
	}
	var b bytes.Buffer
	c.write(&b)
	return b.String()
}

func (c *Condition) write(b *bytes.Buffer) {
	if c.Logic != "" {
		fmt.Fprintf(b, `{%q:[`, c.Logic)
		for i, it := range c.Items {
			if i > 0 {
				b.WriteByte(',')
			}
			it.write(b)
		}
		b.WriteString("]}")
		return
	}
	v, _ := json.Marshal(c.Value)
	fmt.Fprintf(b, `{"attr":%q,"op":%q,"value":%s,"negate":%t}`, c.Attr, c.Op, v, c.Negate)
}
