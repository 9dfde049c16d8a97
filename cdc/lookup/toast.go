package lookup

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/walhook/walhook/cdc/payload"
)

// readBack replaces the unchanged TOAST values ('u') of cs, all of table
// version rel, with the values read back by key: one query for the chunk. A
// row that is gone renders those columns as null, with a warning.
func (r *Runner) readBack(ctx context.Context, cn *conn, rel *payload.Relation, cs []*Change) error {
	for n, i := range rel.PKCols {
		if rel.KeyTypes[n] == "" {
			return fmt.Errorf("%s.%s: key column %s not found", rel.Schema, rel.Name, rel.Cols[i].Name)
		}
	}
	// The columns missing in any of the changes, and the distinct keys.
	var cols []int
	have := map[int]bool{}
	ks := newKeySet(len(rel.PKCols))
	keyOf := make([]int, len(cs))
	for n, c := range cs {
		keyOf[n] = -1
		for col, v := range c.Vals {
			if v.Kind == 'u' && !have[col] {
				have[col] = true
				cols = append(cols, col)
			}
		}
		ok := true
		for _, col := range rel.PKCols {
			ok = ok && c.Vals[col].Kind == 't'
		}
		if !ok {
			r.Log.Error().Str("table", rel.Schema+"."+rel.Name).
				Msg("unchanged TOAST value with no key to read it back: those columns render as null (set REPLICA IDENTITY FULL to carry them)")
			continue
		}
		keyOf[n] = ks.add(c.Vals, rel.PKCols)
	}
	results := make([][][]byte, ks.len())
	if ks.len() > 0 {
		err := cn.query(ctx, readBackSQL(rel, cols), ks.args(), func(vals [][]byte) {
			n, ok := ordinal(vals, len(results))
			if !ok || results[n] != nil {
				return
			}
			row := make([][]byte, len(cols))
			for i, v := range vals[1:] {
				if v != nil {
					row[i] = slices.Clone(v)
				}
			}
			results[n] = row
		})
		if err != nil {
			return fmt.Errorf("%s.%s: read back unchanged TOAST columns: %w", rel.Schema, rel.Name, err)
		}
	}
	gone := 0
	for n, c := range cs {
		var got [][]byte
		if keyOf[n] >= 0 {
			got = results[keyOf[n]]
		}
		if got == nil && keyOf[n] >= 0 {
			gone++
		}
		for j, col := range cols {
			if c.Vals[col].Kind != 'u' {
				continue
			}
			if j >= len(got) || got[j] == nil {
				c.Vals[col] = payload.TupleValue{Kind: 'n'}
			} else {
				c.Vals[col] = payload.TupleValue{Kind: 't', Data: got[j]}
			}
		}
	}
	if gone > 0 {
		r.Log.Warn().Str("table", rel.Schema+"."+rel.Name).Int("changes", gone).
			Msg("row with unchanged TOAST columns is gone; those columns render as null (set REPLICA IDENTITY FULL to carry them)")
	}
	return nil
}

// readBackSQL selects the columns cols of rel's rows by primary key:
//
//	SELECT k.n, t."notes" FROM unnest($1::text[]) WITH ORDINALITY AS k(k1, n)
//	JOIN "public"."item" AS t ON t."id" = k.k1::pg_catalog.int4
func readBackSQL(rel *payload.Relation, cols []int) string {
	var b strings.Builder
	b.WriteString("SELECT k.n")
	for _, c := range cols {
		b.WriteString(", t.")
		b.WriteString(pgx.Identifier{rel.Cols[c].Name}.Sanitize())
	}
	b.WriteString(" FROM ")
	payload.UnnestKeys(&b, len(rel.PKCols), "k", "k")
	b.WriteString(" JOIN ")
	b.WriteString(pgx.Identifier{rel.Schema, rel.Name}.Sanitize())
	b.WriteString(" AS t ON ")
	for n, c := range rel.PKCols {
		if n > 0 {
			b.WriteString(" AND ")
		}
		fmt.Fprintf(&b, "t.%s = k.k%d::%s", pgx.Identifier{rel.Cols[c].Name}.Sanitize(), n+1, rel.KeyTypes[n])
	}
	return b.String()
}
