// Package preflight is what `walhook check` runs against the databases:
// Preflight checks, without changing anything, what `walhook run` needs from
// the source database (server settings, the role, every configured table,
// the publication and the slot) and from the outbox database, and says for
// each problem the SQL or setting that fixes it. The start-up table checks,
// the publication's settings and the slot queries it shares with capture are
// imported from cdc and internal/replslot; the outbox's statements stay in
// internal/outbox.
package preflight
