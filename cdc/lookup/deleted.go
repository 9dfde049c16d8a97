package lookup

import (
	"context"

	"github.com/rs/zerolog"
	"github.com/walhook/walhook/cdc/payload"
	"github.com/walhook/walhook/internal/config"
)

// maxDeletedRows bounds the deleted rows a transaction keeps for the
// relations of its other changes.
const maxDeletedRows = 10000

// DeletedRows keeps the old images (REPLICA IDENTITY FULL) of the rows a
// source transaction deletes from tables that relations point at, so that a
// relation to a row deleted in the same transaction (a cascaded delete:
// interfaces, then their device) renders the row as it was, the way NetBox
// serializes an object before it deletes it, instead of null.
type DeletedRows struct {
	lsn     uint64                  // the transaction the rows belong to
	targets map[string]bool         // related tables of the configured relations
	rows    map[string][]deletedRow // table -> deleted rows
	n       int
	warned  bool
}

type deletedRow struct {
	rel  *payload.Relation
	vals payload.Row
}

// Wants reports whether some relation of cfg points at rel's table.
func (d *DeletedRows) Wants(cfg *config.Config, rel *payload.Relation) bool {
	if d.targets == nil {
		d.targets = map[string]bool{}
		for _, m := range cfg.Models {
			for _, r := range m.Relations {
				d.targets[r.Schema+"."+r.Name] = true
			}
		}
	}
	return d.targets[rel.Schema+"."+rel.Name]
}

// Keep records a deleted row of rel, when some relation points at its table
// and the row is complete. lsn identifies the transaction.
func (d *DeletedRows) Keep(cfg *config.Config, log zerolog.Logger, lsn uint64, rel *payload.Relation, vals payload.Row, keysOnly bool) {
	table := rel.Schema + "." + rel.Name
	if keysOnly || !d.Wants(cfg, rel) {
		return
	}
	if d.lsn != lsn {
		clear(d.rows)
		d.lsn, d.n, d.warned = lsn, 0, false
	}
	if d.n >= maxDeletedRows {
		if !d.warned {
			d.warned = true
			log.Warn().Str("table", table).Int("rows", maxDeletedRows).
				Msg("transaction deletes more related rows than are kept: relations to the rest of them render as null")
		}
		return
	}
	if d.rows == nil {
		d.rows = map[string][]deletedRow{}
	}
	d.rows[table] = append(d.rows[table], deletedRow{rel: rel, vals: payload.CopyRow(vals)})
	d.n++
}

// fill renders the keys of ks that the lookup of rl did not find
// (results[i] == nil) from the rows the transaction deleted.
func (d *DeletedRows) fill(ctx context.Context, cn *conn, rl *payload.RelLookup, ks *keySet, results [][]byte, resolve payload.TypeResolver) {
	if d == nil || len(d.rows[rl.Table]) == 0 || rl.ImageSQL == "" {
		return
	}
	rows := d.rows[rl.Table]
	// The rows by the values of the columns the foreign key refers to.
	byKey := map[string]int{}
	var buf []byte
	for n, row := range rows {
		cols := make([]int, len(rl.RefKey))
		ok := true
		for i, k := range rl.RefKey {
			cols[i] = -1
			for j, c := range row.rel.Cols {
				if c.Name == k {
					cols[i] = j
				}
			}
			ok = ok && cols[i] >= 0 && cols[i] < len(row.vals)
		}
		if ok {
			buf = appendKey(buf[:0], row.vals, cols)
			byKey[string(buf)] = n
		}
	}
	var args []*string
	var slots []int
	for i := range results {
		if results[i] != nil {
			continue
		}
		n, ok := byKey[ks.keys[i]]
		if !ok {
			continue
		}
		j := string(imageJSON(rows[n].rel, rows[n].vals))
		args = append(args, &j)
		slots = append(slots, i)
	}
	if len(args) == 0 {
		return
	}
	err := cn.query(ctx, rl.ImageSQL, []any{args}, func(vals [][]byte) {
		if n, ok := ordinal(vals, len(slots)); ok {
			results[slots[n]] = rl.Render(nil, vals[1:], resolve)
		}
	})
	if err != nil {
		cn.log.Warn().Err(err).Str("relation", rl.Key).Msg("relation to rows deleted in the same transaction: cannot render them from their old images; they render as null")
	}
}

// imageJSON is a row as a JSON object of its columns' text values (json and
// jsonb embedded), for json_populate_record.
func imageJSON(rel *payload.Relation, vals payload.Row) []byte {
	b := []byte{'{'}
	for i, c := range rel.Cols {
		if i >= len(vals) || vals[i].Kind == 'u' {
			continue
		}
		if len(b) > 1 {
			b = append(b, ',')
		}
		b = payload.AppendJSONString(b, c.Name)
		b = append(b, ':')
		switch {
		case vals[i].Kind != 't':
			b = append(b, "null"...)
		case c.OID == payload.OIDJSON || c.OID == payload.OIDJSONB:
			b = append(b, vals[i].Data...)
		default:
			b = payload.AppendJSONStringBytes(b, vals[i].Data)
		}
	}
	return append(b, '}')
}
