package cdc

import (
	"github.com/walhook/walhook/internal/config"
)

// tableDesc describes one version of a table as pgoutput's Relation message
// does: its columns in attnum order, without dropped and generated ones.
type tableDesc struct {
	id       uint32 // the table's OID
	schema   string
	name     string
	identity uint8 // replica identity: 'd' default, 'f' full, 'i' index, 'n' nothing
	cols     []colDesc
}

// colDesc is a column of a tableDesc.
type colDesc struct {
	name string
	oid  uint32 // type OID
	key  bool   // part of the replica identity
}

// column is one column of a captured table as the stream last described it.
type column struct {
	name    string // source column name
	outName string // key in "data" (after rename)
	oid     uint32
	key     bool // part of the replica identity (pgoutput flag 1)
	pk      bool // part of the primary key (object_key)
	exclude bool
	choices config.Choices
	rel     int  // 1 + index of the relation lookup rendered in this column's place; 0: none
	hidden  bool // a further column of a composite foreign key (rendered by the first)
	// In snapshots (format netbox-v4): left out, and the key when renamed.
	snapExclude bool
	snapName    string
}

// relation is a captured table: the stream's description plus the model
// config it renders with. It is replaced whenever a Relation message arrives
// (after DDL), so each change renders with the schema of its own commit.
type relation struct {
	id       uint32
	schema   string
	name     string
	identity uint8 // 'd' default, 'f' full, 'i' index, 'n' nothing
	cols     []column
	model    *config.Model
	pkCols   []int    // indexes into cols forming object_key
	keyTypes []string // SQL type names of pkCols, for reading rows back (set on first use)
	urlParts []urlPart
	plan     *lookupPlan // relations and computed fields; nil when none
	hooks    [3]hookSet  // webhooks per event (eventIndex), sent one event per change
	coal     [3]hookSet  // webhooks with coalesce: transaction, per coalesced event
	coalesce bool        // some webhook of the model coalesces (any event)
}

// setPlan attaches the model's lookups: each relation renders in place of
// its first foreign-key column and hides the others.
func (r *relation) setPlan(p *lookupPlan) {
	for i := range r.cols {
		r.cols[i].rel, r.cols[i].hidden = 0, false
	}
	if p == nil || len(p.rels)+len(p.comps) == 0 {
		r.plan = nil
		return
	}
	r.plan = p
	for n, rl := range p.rels {
		for j, c := range rl.fk {
			if j == 0 {
				r.cols[c].rel = n + 1
			} else {
				r.cols[c].hidden = true
			}
		}
	}
}

type urlPart struct {
	lit string
	col int // -1 for a literal part
}

// newRelation builds a relation from a table description. pkNames are the
// table's primary-key columns (from the catalog); when empty, or when the
// replica identity is an index without them, the replica identity columns
// are used, and failing that every column.
func newRelation(t *tableDesc, model *config.Model, pkNames []string) *relation {
	r := &relation{id: t.id, schema: t.schema, name: t.name, identity: t.identity, model: model}
	excluded := map[string]bool{}
	for _, e := range model.Exclude {
		excluded[e] = true
	}
	isPK := map[string]bool{}
	for _, k := range pkNames {
		isPK[k] = true
	}
	snapExcluded, snapRename := excluded, map[string]string(nil)
	if sn := model.Snapshot; sn != nil {
		snapExcluded, snapRename = map[string]bool{}, sn.Rename
		for _, e := range sn.Exclude {
			snapExcluded[e] = true
		}
	}
	for _, c := range t.cols {
		out := c.name
		if rn, ok := model.Rename[c.name]; ok && rn != "" {
			out = rn
		}
		r.cols = append(r.cols, column{
			name: c.name, outName: out, oid: c.oid, key: c.key,
			pk: isPK[c.name], exclude: excluded[c.name], choices: model.Choices[c.name],
			snapExclude: snapExcluded[c.name], snapName: snapRename[c.name],
		})
	}
	for i, c := range r.cols {
		if c.pk {
			r.pkCols = append(r.pkCols, i)
		}
	}
	if r.identity == 'i' {
		// REPLICA IDENTITY USING INDEX: a DELETE carries only the index's
		// columns. The object key must be built from columns every event
		// carries: the primary key when the index holds it, else the
		// index's columns.
		for _, i := range r.pkCols {
			if !r.cols[i].key {
				r.pkCols = nil
				break
			}
		}
	}
	if len(r.pkCols) == 0 {
		for i, c := range r.cols {
			if c.key && r.identity != 'f' {
				r.pkCols = append(r.pkCols, i)
			}
		}
	}
	if len(r.pkCols) == 0 {
		for i := range r.cols {
			r.pkCols = append(r.pkCols, i)
		}
	}
	r.urlParts = parseURLTemplate(model.URL, r.cols)
	return r
}

// parseURLTemplate splits "/api/dcim/sites/{id}/" into literal and column parts.
func parseURLTemplate(tmpl string, cols []column) []urlPart {
	if tmpl == "" {
		return nil
	}
	var parts []urlPart
	for tmpl != "" {
		open := indexByte(tmpl, '{')
		if open < 0 {
			parts = append(parts, urlPart{lit: tmpl, col: -1})
			break
		}
		end := indexByte(tmpl[open:], '}')
		if end < 0 {
			parts = append(parts, urlPart{lit: tmpl, col: -1})
			break
		}
		if open > 0 {
			parts = append(parts, urlPart{lit: tmpl[:open], col: -1})
		}
		name := tmpl[open+1 : open+end]
		col := -1
		for i, c := range cols {
			if c.name == name {
				col = i
			}
		}
		if col < 0 {
			parts = append(parts, urlPart{lit: tmpl[open : open+end+1], col: -1})
		} else {
			parts = append(parts, urlPart{col: col})
		}
		tmpl = tmpl[open+end+1:]
	}
	return parts
}

func indexByte(s string, b byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == b {
			return i
		}
	}
	return -1
}
