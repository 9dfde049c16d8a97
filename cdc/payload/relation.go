package payload

import (
	"maps"
	"regexp"
	"slices"

	"github.com/walhook/walhook/cdc/catalog"
	"github.com/walhook/walhook/internal/config"
)

// Column is one column of a captured table as the stream last described it.
type Column struct {
	Name    string // source column name
	outName string // key in "data" (after rename)
	OID     uint32
	Key     bool // part of the replica identity (pgoutput flag 1)
	pk      bool // part of the primary key (object_key)
	exclude bool
	choices config.Choices
	rel     int  // 1 + index of the relation lookup rendered in this column's place; 0: none
	hidden  bool // a further column of a composite foreign key (rendered by the first)
	// In snapshots (format netbox-v4): left out, and the key when renamed.
	snapExclude bool
	snapName    string
}

// Relation is a captured table: the stream's description plus the model
// config it renders with. It is replaced whenever a Relation message arrives
// (after DDL), so each change renders with the schema of its own commit.
type Relation struct {
	ID       uint32
	Schema   string
	Name     string
	Identity catalog.ReplicaIdentity
	Cols     []Column
	Model    *config.Model
	PKCols   []int    // indexes into cols forming object_key
	KeyTypes []string // type names of PKCols for casts ("" when the catalog lacks the column)
	urlParts []urlPart
	Plan     *LookupPlan // relations and computed fields; nil when none
	Hooks    [3]HookSet  // webhooks per event (eventIndex), sent one event per change
	Coal     [3]HookSet  // webhooks with coalesce: transaction, per coalesced event
	Coalesce bool        // some webhook of the model coalesces (any event)
}

// SetPlan attaches the model's lookups: each relation renders in place of
// its first foreign-key column and hides the others.
func (r *Relation) SetPlan(p *LookupPlan) {
	for i := range r.Cols {
		r.Cols[i].rel, r.Cols[i].hidden = 0, false
	}
	if p == nil || len(p.Rels)+len(p.Comps) == 0 {
		r.Plan = nil
		return
	}
	r.Plan = p
	for n, rl := range p.Rels {
		for j, c := range rl.FK {
			if j == 0 {
				r.Cols[c].rel = n + 1
			} else {
				r.Cols[c].hidden = true
			}
		}
	}
}

type urlPart struct {
	lit string
	col int // -1 for a literal part
}

// NewRelation builds a relation from a table description, without its
// generated columns (pgoutput does not send them). The object key is the
// table's primary key (t.PrimaryKey, from the catalog); when it has none,
// or when the replica identity is an index without it, the replica identity
// columns are used, and failing that every column.
func NewRelation(t *catalog.Table, model *config.Model) *Relation {
	r := &Relation{ID: t.OID, Schema: t.Schema, Name: t.Name, Identity: t.Identity, Model: model}
	excluded := map[string]bool{}
	for _, e := range model.Exclude {
		excluded[e] = true
	}
	isPK := map[string]bool{}
	for _, k := range t.PrimaryKey {
		isPK[k] = true
	}
	snapExcluded, snapRename := excluded, map[string]string(nil)
	if sn := model.Snapshot; sn != nil {
		snapExcluded, snapRename = map[string]bool{}, sn.Rename
		for _, e := range sn.Exclude {
			snapExcluded[e] = true
		}
	}
	var types []string
	for _, c := range t.Columns {
		if c.Generated {
			continue
		}
		types = append(types, c.TypeName)
		r.Cols = append(r.Cols, Column{
			Name: c.Name, outName: dataName(model, c.Name), OID: c.TypeOID, Key: c.Key,
			pk: isPK[c.Name], exclude: excluded[c.Name], choices: model.Choices[c.Name],
			snapExclude: snapExcluded[c.Name], snapName: snapRename[c.Name],
		})
	}
	for i, c := range r.Cols {
		if c.pk {
			r.PKCols = append(r.PKCols, i)
		}
	}
	if r.Identity == catalog.IdentityIndex {
		// REPLICA IDENTITY USING INDEX: a DELETE carries only the index's
		// columns. The object key must be built from columns every event
		// carries: the primary key when the index holds it, else the
		// index's columns.
		for _, i := range r.PKCols {
			if !r.Cols[i].Key {
				r.PKCols = nil
				break
			}
		}
	}
	if len(r.PKCols) == 0 {
		for i, c := range r.Cols {
			if c.Key && r.Identity != catalog.IdentityFull {
				r.PKCols = append(r.PKCols, i)
			}
		}
	}
	if len(r.PKCols) == 0 {
		for i := range r.Cols {
			r.PKCols = append(r.PKCols, i)
		}
	}
	for _, i := range r.PKCols {
		r.KeyTypes = append(r.KeyTypes, types[i])
	}
	r.urlParts = parseURLTemplate(model.URL, r.Cols)
	return r
}

// dataName is the key of column col in "data": its rename, if the model
// has one.
func dataName(m *config.Model, col string) string {
	if rn := m.Rename[col]; rn != "" {
		return rn
	}
	return col
}

// parseURLTemplate splits "/api/dcim/sites/{id}/" into literal and column parts.
func parseURLTemplate(tmpl string, cols []Column) []urlPart {
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
			if c.Name == name {
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

// placeholderRE matches the {column} placeholders of a url template.
var placeholderRE = regexp.MustCompile(`\{([^{}]+)\}`)

// ColumnRef is a column a model option names.
type ColumnRef struct {
	Option string // exclude, rename, ignore_changes, choices or url
	Column string
}

// UnknownColumns checks the columns model m names in exclude, rename,
// ignore_changes, choices and its url placeholders against the table's
// columns: it returns those the table lacks, in that order, and how many
// names it checked.
func UnknownColumns(m *config.Model, columns []string) (unknown []ColumnRef, checked int) {
	has := func(col, option string) {
		checked++
		if !slices.Contains(columns, col) {
			unknown = append(unknown, ColumnRef{Option: option, Column: col})
		}
	}
	for _, c := range m.Exclude {
		has(c, "exclude")
	}
	for _, c := range slices.Sorted(maps.Keys(m.Rename)) {
		has(c, "rename")
	}
	for _, c := range m.IgnoreChanges {
		has(c, "ignore_changes")
	}
	for _, c := range slices.Sorted(maps.Keys(m.Choices)) {
		has(c, "choices")
	}
	for _, g := range placeholderRE.FindAllStringSubmatch(m.URL, -1) {
		has(g[1], "url")
	}
	return unknown, checked
}
