// Package cdc captures committed row changes from PostgreSQL logical
// replication (pgoutput) and enqueues one delivery per matching webhook into
// walhook's outbox, exactly once: a source transaction's delivery rows and
// the capture checkpoint are committed in one outbox transaction, and only
// LSNs whose rows are committed are confirmed to the server.
//
// The pieces: setup.go prepares the publication and slot and checks the
// configured tables; stream.go owns the replication connection; decode.go
// turns pgoutput messages into changes; render.go renders payloads;
// writer.go writes outbox rows in grouped transactions.
package cdc
