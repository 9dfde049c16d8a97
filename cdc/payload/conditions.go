package payload

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"

	"github.com/walhook/walhook/internal/config"
)

// EvalCondition evaluates a compiled ConditionSet against a payload (the
// decoded default body plus "timestamp" and "old") the way NetBox does:
//   - attr is a dotted path; a path through a list maps over its items
//     ("data.tags.slug" is the list of the tags' slugs). When its first
//     segment is not a key of the payload the path is taken inside "data",
//     so NetBox conditions written against the object ("status.value") work
//     unchanged.
//   - eq compares values (numbers by value); gt, gte, lt, lte compare
//     numbers; in tests membership in the condition's list; contains tests a
//     substring of a string, an item of a list or a key of an object; regex
//     matches at the start of a string (Python's re.match).
//   - and/or short-circuit; an empty set matches (nil c).
//
// A path that does not exist, or a value of the wrong type for the operator,
// is an error (NetBox raises InvalidCondition): the caller sends nothing.
func EvalCondition(c *config.Condition, payload map[string]any) (bool, error) {
	if c == nil {
		return true, nil
	}
	if c.Logic != "" {
		for _, it := range c.Items {
			ok, err := EvalCondition(it, payload)
			if err != nil {
				return false, err
			}
			if c.Logic == "or" && ok {
				return true, nil
			}
			if c.Logic == "and" && !ok {
				return false, nil
			}
		}
		return c.Logic == "and", nil
	}
	v, err := condLookup(payload, c.Path)
	if err != nil {
		return false, fmt.Errorf("attr %q: %w", c.Attr, err)
	}
	ok, err := condApply(c, v)
	if err != nil {
		return false, fmt.Errorf("attr %q, op %s: %w", c.Attr, c.Op, err)
	}
	return ok != c.Negate, nil
}

func condLookup(payload map[string]any, path []string) (any, error) {
	var cur any = payload
	if _, ok := payload[path[0]]; !ok {
		cur = payload["data"]
	}
	for _, seg := range path {
		next, err := condStep(cur, seg)
		if err != nil {
			return nil, err
		}
		cur = next
	}
	return cur, nil
}

// condStep is NetBox's _get: a list maps the key over its items.
func condStep(obj any, key string) (any, error) {
	switch o := obj.(type) {
	case map[string]any:
		v, ok := o[key]
		if !ok {
			return nil, fmt.Errorf("no key %q", key)
		}
		return v, nil
	case []any:
		out := make([]any, len(o))
		for i, it := range o {
			v, err := condStep(it, key)
			if err != nil {
				return nil, err
			}
			out[i] = v
		}
		return out, nil
	case nil:
		return nil, fmt.Errorf("no key %q (the value is null)", key)
	}
	return nil, fmt.Errorf("no key %q (the value is %s, not an object)", key, condTypeName(obj))
}

func condApply(c *config.Condition, v any) (bool, error) {
	switch c.Op {
	case config.OpEq:
		return condEqual(v, c.Value), nil
	case config.OpGt, config.OpGte, config.OpLt, config.OpLte:
		cmp, err := condCompare(v, c.Value)
		if err != nil {
			return false, err
		}
		switch c.Op {
		case config.OpGt:
			return cmp > 0, nil
		case config.OpGte:
			return cmp >= 0, nil
		case config.OpLt:
			return cmp < 0, nil
		}
		return cmp <= 0, nil
	case config.OpIn:
		list, _ := c.Value.([]any)
		for _, e := range list {
			if condEqual(v, e) {
				return true, nil
			}
		}
		return false, nil
	case config.OpContains:
		switch x := v.(type) {
		case string:
			s, ok := c.Value.(string)
			if !ok {
				return false, fmt.Errorf("a string can only contain a string, not %s", condTypeName(c.Value))
			}
			return strings.Contains(x, s), nil
		case []any:
			for _, e := range x {
				if condEqual(e, c.Value) {
					return true, nil
				}
			}
			return false, nil
		case map[string]any:
			s, ok := c.Value.(string)
			if !ok {
				return false, nil
			}
			_, has := x[s]
			return has, nil
		}
		return false, fmt.Errorf("contains needs a string, list or object, got %s", condTypeName(v))
	case config.OpRegex:
		s, ok := v.(string)
		if !ok {
			return false, fmt.Errorf("regex needs a string, got %s", condTypeName(v))
		}
		return c.Regexp.MatchString(s), nil
	}
	return false, fmt.Errorf("unknown op %q", c.Op)
}

// condEqual is Python's ==: numbers compare by value (1 == 1.0), lists and
// objects element by element, booleans only with booleans.
func condEqual(a, b any) bool {
	if na, ok := condNumber(a); ok {
		nb, ok := condNumber(b)
		return ok && na.Cmp(nb) == 0
	}
	switch x := a.(type) {
	case nil:
		return b == nil
	case string:
		y, ok := b.(string)
		return ok && x == y
	case bool:
		y, ok := b.(bool)
		return ok && x == y
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !condEqual(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || !condEqual(v, w) {
				return false
			}
		}
		return true
	}
	return false
}

func condCompare(a, b any) (int, error) {
	na, ok := condNumber(a)
	if !ok {
		return 0, fmt.Errorf("cannot compare %s with a number", condTypeName(a))
	}
	nb, ok := condNumber(b)
	if !ok {
		return 0, fmt.Errorf("cannot compare with %s", condTypeName(b))
	}
	return na.Cmp(nb), nil
}

// condNumber returns v as an exact number when it is one.
func condNumber(v any) (*big.Rat, bool) {
	var s string
	switch x := v.(type) {
	case json.Number:
		s = string(x)
	case int64:
		return new(big.Rat).SetInt64(x), true
	case int:
		return new(big.Rat).SetInt64(int64(x)), true
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return nil, false
		}
		s = strconv.FormatFloat(x, 'g', -1, 64)
	default:
		return nil, false
	}
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		// Keep exponents small: big.Rat would build 10^exp exactly.
		if e, err := strconv.Atoi(strings.TrimPrefix(s[i+1:], "+")); err != nil || e > 400 || e < -400 {
			f, err := strconv.ParseFloat(s, 64)
			if math.IsInf(f, 0) || (err != nil && !errors.Is(err, strconv.ErrRange)) {
				return nil, false
			}
			return new(big.Rat).SetFloat64(f), true
		}
	}
	r, ok := new(big.Rat).SetString(s)
	return r, ok
}

func condTypeName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	case json.Number, int64, int, float64:
		return "a number"
	}
	return fmt.Sprintf("%T", v)
}
