package lookup

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"
	"github.com/walhook/walhook/cdc/payload"
	"github.com/walhook/walhook/internal/config"
)

// ref is where a looked-up value goes, and the key tuple it is looked up by.
type ref struct {
	p   *payload.LookupVal
	key int
}

// relation fills in field slot, relation rl of rel, of the changes cs (and
// of their old rows): one query for the distinct foreign keys of the chunk.
func (r *Runner) relation(ctx context.Context, cn *conn, rel *payload.Relation, slot int, rl *payload.RelLookup, cs []*Change) error {
	ks := newKeySet(len(rl.FK))
	var refs []ref
	collect := func(vals payload.Row, keysOnly bool, dst *payload.LookupVal) {
		for _, c := range rl.FK {
			if keysOnly && !rel.Cols[c].Key {
				return // not rendered
			}
			if vals[c].Kind != 't' {
				*dst = payload.LookupVal{Present: true, JSON: payload.JSONNull}
				return
			}
		}
		refs = append(refs, ref{dst, ks.add(vals, rl.FK)})
	}
	for _, c := range cs {
		collect(c.Vals, c.KeysOnly, &c.Extra[slot])
		if c.OldExtra != nil && c.Old != nil {
			collect(c.Old, c.OldType != 'O', &c.OldExtra[slot])
		}
	}
	if ks.len() == 0 {
		return nil
	}
	results := make([][]byte, ks.len())
	err := cn.query(ctx, rl.SQL, ks.args(), func(vals [][]byte) {
		if n, ok := ordinal(vals, len(results)); ok && results[n] == nil {
			results[n] = rl.Render(nil, vals[1:], r.Resolve)
		}
	})
	if err != nil {
		if rel.Model.OnLookupError != config.LookupErrorOmit {
			return fmt.Errorf("model %s: relation %s: %w", rel.Model.Model, rl.Key, err)
		}
		r.failed(&rl.LogLimit, rel, "relation", rl.Key, len(refs), err)
		return nil
	}
	r.Deleted.fill(ctx, cn, rl, ks, results, r.Resolve)
	for _, f := range refs {
		if j := results[f.key]; j != nil {
			*f.p = payload.LookupVal{Present: true, JSON: j}
		} else {
			*f.p = payload.LookupVal{Present: true, JSON: payload.JSONNull} // row not found
		}
	}
	return nil
}

// computed fills in field slot, computed field cl of rel, of the changes
// cs: one query for the distinct argument tuples of the chunk.
func (r *Runner) computed(ctx context.Context, cn *conn, rel *payload.Relation, slot int, cl *payload.CompLookup, cs []*Change) error {
	ks := newKeySet(len(cl.Args))
	var refs []ref
outer:
	for _, c := range cs {
		if c.KeysOnly {
			for _, a := range cl.Args {
				if !rel.Cols[a].Key {
					continue outer // an argument the deleted row does not carry
				}
			}
		}
		refs = append(refs, ref{&c.Extra[slot], ks.add(c.Vals, cl.Args)})
	}
	if len(refs) == 0 {
		return nil
	}
	results := make([][]byte, max(ks.len(), 1))
	err := cn.query(ctx, cl.SQL, ks.args(), func(vals [][]byte) {
		n, ok := ordinal(vals, len(results))
		switch {
		case !ok:
		case vals[1] == nil:
			results[n] = payload.JSONNull
		default:
			results[n] = append([]byte(nil), vals[1]...)
		}
	})
	if err != nil {
		if rel.Model.OnLookupError != config.LookupErrorOmit {
			return fmt.Errorf("model %s: computed field %s: %w", rel.Model.Model, cl.Name, err)
		}
		r.failed(&cl.LogLimit, rel, "computed field", cl.Name, len(refs), err)
		return nil
	}
	for _, f := range refs {
		k := f.key
		if len(cl.Args) == 0 {
			k = 0
		}
		if j := results[k]; j != nil {
			*f.p = payload.LookupVal{Present: true, JSON: j}
		} else {
			*f.p = payload.LookupVal{Present: true, JSON: payload.JSONNull}
		}
	}
	return nil
}

// failed logs a failed lookup of a model with on_lookup_error: omit, at
// most once a minute per field.
func (r *Runner) failed(l *payload.LogLimit, rel *payload.Relation, what, name string, changes int, err error) {
	ok, suppressed := l.Allow()
	if !ok {
		return
	}
	ev := withTimeout(r.Log.Warn().Err(err).Str("model", rel.Model.Model).Str(what, name).Int("changes", changes), err)
	if suppressed > 0 {
		ev = ev.Int("failures_not_logged", suppressed)
	}
	ev.Msg(what + " lookup failed: these changes are sent without the field")
}

// withTimeout adds the statement timeout to the log line of a query that
// hit it.
func withTimeout(ev *zerolog.Event, err error) *zerolog.Event {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == pgerrcode.QueryCanceled {
		ev = ev.Dur("statement_timeout_ms", payload.LookupTimeout)
	}
	return ev
}
