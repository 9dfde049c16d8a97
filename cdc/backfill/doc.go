// Package backfill enqueues a delivery for every existing row of a model (or
// those matching a condition), page by page, resumable, and ordered against
// the live changes capture enqueues (see the note "Backfill ordering" in its source).
// It reads the rows itself and renders them with cdc.RowRenderer, exactly as
// capture renders changes, and writes them with enqueue.InsertDeliveries; it
// uses no capture internals.
package backfill
