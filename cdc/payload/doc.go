// Package payload renders a row change of a described table into webhook
// JSON. It takes a row (text values as pgoutput or a query gives them) and a
// Relation (the table's columns, its model's configuration and webhooks, its
// lookup plan) and knows nothing of the replication stream or the outbox:
// capture (package cdc) and backfill both call it.
//
// It also plans a model's relations and computed fields (PlanLookups: the
// SQL, checked against the catalog, that package lookup runs at a change's
// snapshot) and checks them at start (CheckLookups).
package payload
