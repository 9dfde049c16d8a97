// Package cdc captures committed row changes from PostgreSQL logical
// replication (pgoutput) and enqueues one delivery per matching webhook into
// walhook's outbox, exactly once: a source transaction's delivery rows and
// the capture checkpoint are committed in one outbox transaction, and only
// LSNs whose rows are committed are confirmed to the server. Rendering a
// change is package payload's; cdc decides what to render, when, and with
// which looked-up values.
//
// The files:
//   - capture.go: Capture (New, Prepare, Run), its options and counters.
//   - setup.go: the server, publication and slot checks and setup, and the
//     start-up table checks.
//   - identity.go: which source and slot the checkpoint belongs to; gaps and
//     collisions after a slot was created again.
//   - stream.go: the replication connection: receive, decode, render, hand
//     to the writer, confirm.
//   - decode.go: pgoutput messages and tuples, bounds-checked.
//   - lookup.go: running a chunk's relation, computed-field and unchanged
//     TOAST queries at the transaction's snapshot, holding capture on errors.
//   - coalesce.go: flushing the coalesced events of a transaction.
//   - ignore.go: ignore_changes within a transaction without FULL identity.
//   - writer.go: Delivery, the grouped outbox writer, InsertDeliveries.
//   - rows.go: ReadTable and RowRenderer, which render rows read from a
//     table exactly as capture renders its changes (for cdc/backfill).
package cdc
