package cdc

import (
	"github.com/walhook/walhook/cdc/catalog"
	"github.com/walhook/walhook/cdc/payload"
)

// maxTxnImages bounds the objects whose last image a transaction keeps for
// ignore_changes (see txnImages).
var maxTxnImages = 10000

// txnImages keeps, for models with ignore_changes on tables without REPLICA
// IDENTITY FULL, the last row image of each object the current transaction
// inserted or updated. PostgreSQL logs no old row for their UPDATEs, but an
// UPDATE of an object changed earlier in the same transaction can be
// compared with that image: creating a NetBox device with its interfaces
// (one transaction) updates the device's interface_count once per
// interface, and those UPDATEs send nothing. An UPDATE in a later
// transaction still needs FULL to be recognised.
type txnImages struct {
	lsn    uint64
	rows   map[imageKey]payload.Row
	warned bool
}

// imageKey is an object: model and object_key.
type imageKey struct{ model, key string }

// tracks reports whether rel's changes are kept.
func (t *txnImages) tracks(rel *payload.Relation) bool {
	return rel.Model != nil && len(rel.Model.IgnoreChanges) > 0 && rel.Identity != catalog.IdentityFull
}

func (t *txnImages) at(lsn uint64) {
	if t.lsn != lsn {
		clear(t.rows)
		t.lsn, t.warned = lsn, false
	}
}

// get returns the image kept for the object of vals in transaction lsn.
func (t *txnImages) get(lsn uint64, rel *payload.Relation, vals payload.Row) payload.Row {
	t.at(lsn)
	prev := t.rows[imageKey{rel.Model.Model, payload.ObjectKey(rel, vals)}]
	if len(prev) != len(vals) {
		return nil // the table changed in between
	}
	return prev
}

// put keeps vals (copied) as the object's last image; deleted drops it. It
// reports false when the transaction has more objects than are kept.
func (t *txnImages) put(lsn uint64, rel *payload.Relation, vals payload.Row, deleted bool) bool {
	t.at(lsn)
	k := imageKey{rel.Model.Model, payload.ObjectKey(rel, vals)}
	if deleted {
		delete(t.rows, k)
		return true
	}
	if _, ok := t.rows[k]; !ok && len(t.rows) >= maxTxnImages {
		return false
	}
	if t.rows == nil {
		t.rows = map[imageKey]payload.Row{}
	}
	t.rows[k] = payload.CopyRow(vals)
	return true
}
