// Package payload renders a row change of a described table into webhook
// JSON. It takes a row (text values as pgoutput or a query gives them) and a
// Relation (the table's columns, its model's configuration and webhooks, its
// lookup plan) and knows nothing of the replication stream or the outbox:
// capture (package cdc) and backfill both call it.
//
// The files:
//   - values.go, jsonenc.go: PostgreSQL text values and strings to JSON
//     (AppendValue, AppendJSONString), without reflection or allocations.
//   - relation.go: Relation and NewRelation (a table description plus its
//     model: renames, exclusions, choices, url template, object_key columns)
//     and UnknownColumns, the check of the columns a model names.
//   - render.go: Renderer, Change, Row; the NetBox v2 body and object_key.
//   - format.go: the netbox-v4 format (snapshots, object_type).
//   - template.go: per-webhook specs (body_template, conditions, format,
//     coalesce), the Templater and the payload templates and conditions see.
//   - conditions.go: NetBox-style conditions evaluated on that payload.
//   - lookup.go: relations and computed fields: their plans (SQL checked
//     against the catalog), CheckLookups, and rendering a looked-up row.
//     Running the queries at the change's snapshot is capture's (cdc).
//   - coalesce.go: the Coalescer folds one transaction's changes per object
//     (coalesce: transaction), as NetBox's enqueue_event does.
package payload
