// Package cdc captures committed row changes from PostgreSQL logical
// replication (pgoutput) and enqueues one delivery per matching webhook into
// walhook's outbox, exactly once: a source transaction's delivery rows and
// the capture checkpoint are committed in one outbox transaction, and only
// LSNs whose rows are committed are confirmed to the server.
//
// Capture (New, Prepare, Run) checks the server and the configured tables,
// sets up the publication and the replication slot (package source), and
// streams: the stream receives and decodes pgoutput messages, renders the
// changes and hands them to the outbox writer (package enqueue); it confirms
// only what the writer committed.
// RowRenderer renders rows read from a table exactly as capture renders its
// changes (for package backfill).
//
// cdc decides what to render, when, and with which looked-up values; the
// rendering itself is package payload's, a table's description from the
// catalog package catalog's, and the queries that complete a chunk of
// changes (relations, computed fields, unchanged TOAST values) package
// lookup's.
package cdc
