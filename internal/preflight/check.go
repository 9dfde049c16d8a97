package preflight

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/cdc/catalog"
	"github.com/walhook/walhook/cdc/payload"
	"github.com/walhook/walhook/cdc/source"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/human"
	"github.com/walhook/walhook/internal/outbox"
	"github.com/walhook/walhook/internal/replslot"
	"github.com/walhook/walhook/migrations"
)

// Status is the outcome of one preflight check.
type Status int

// The outcomes of a check: OK, a warning that does not stop walhook, and a
// failure that must be fixed first.
const (
	OK Status = iota
	Warn
	Fail
)

func (s Status) String() string {
	switch s {
	case OK:
		return "OK"
	case Warn:
		return "WARN"
	case Fail:
		return "FAIL"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// MarshalText writes the status as OK, WARN or FAIL.
func (s Status) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads OK, WARN or FAIL.
func (s *Status) UnmarshalText(b []byte) error {
	switch string(b) {
	case "OK":
		*s = OK
	case "WARN":
		*s = Warn
	case "FAIL":
		*s = Fail
	default:
		return fmt.Errorf("unknown check status %q", b)
	}
	return nil
}

// Check is the result of one preflight check. Fix, for a Warn or Fail, is
// the SQL or setting that fixes it, ready to paste (comments start with --);
// for an OK check, a setting worth knowing about (a tip).
type Check struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// Preflight checks what `walhook run` needs from the source database
// (server settings, the role, every configured table, the publication and
// the slot) and from the outbox database (the outbox schema), without
// changing anything. A nil outbox skips the outbox checks. Query errors
// become failed checks; Preflight never stops early unless it cannot
// connect at all.
func Preflight(ctx context.Context, cfg *config.Config, source, outbox *pgxpool.Pool) []Check {
	p := &preflight{cfg: cfg}
	conn, err := source.Acquire(ctx)
	if err != nil {
		p.fail("source database", "cannot connect: "+err.Error(), "")
		return p.checks
	}
	defer conn.Release()
	p.conn = conn
	if p.server(ctx) {
		p.role()
		p.capacity(ctx)
		ok := p.tables(ctx)
		p.publication(ctx)
		p.slot(ctx)
		p.failover(ctx)
		p.supported(ctx, ok)
	}
	if outbox != nil {
		p.outbox(ctx, outbox)
	}
	p.outboxPlacement()
	return p.checks
}

type preflight struct {
	cfg    *config.Config
	conn   *pgxpool.Conn
	checks []Check

	user, db      string
	super, repl   bool
	canCreateInDB bool
	versionNum    int                        // server_version_num
	byTable       map[string]*preflightTable // by qualified table; nil entry: missing
	slotExists    bool
	pubMissing    bool // the publication does not exist
	inRecovery    bool // the source is a standby
}

type preflightTable struct {
	*catalog.Table
	owned bool // the role owns it (or is superuser)
}

func (p *preflight) add(name string, s Status, detail, fix string) {
	p.checks = append(p.checks, Check{Name: name, Status: s, Detail: detail, Fix: fix})
}
func (p *preflight) ok(name, detail string)        { p.add(name, OK, detail, "") }
func (p *preflight) warn(name, detail, fix string) { p.add(name, Warn, detail, fix) }
func (p *preflight) fail(name, detail, fix string) { p.add(name, Fail, detail, fix) }

func ident(parts ...string) string { return pgx.Identifier(parts).Sanitize() }

// server reads the settings and role attributes; false when that fails.
func (p *preflight) server(ctx context.Context) bool {
	var version, level string
	var versionNum int
	defer func() { p.versionNum = versionNum }()
	err := p.conn.QueryRow(ctx, `
		SELECT current_setting('server_version'), current_setting('server_version_num')::int,
		       current_setting('wal_level'), current_user, current_database(),
		       r.rolsuper, r.rolreplication, has_database_privilege(current_database(), 'CREATE')
		FROM pg_roles r WHERE r.rolname = current_user`).
		Scan(&version, &versionNum, &level, &p.user, &p.db, &p.super, &p.repl, &p.canCreateInDB)
	if err != nil {
		p.fail("source database", "cannot read server settings: "+err.Error(), "")
		return false
	}
	if versionNum < 100000 {
		p.fail("PostgreSQL version", fmt.Sprintf("PostgreSQL %s has no pgoutput logical replication", version), "-- upgrade to PostgreSQL 13 or newer (walhook is tested on 13 to 18)")
	} else if versionNum < 130000 {
		p.warn("PostgreSQL version", fmt.Sprintf("%s: walhook is tested on PostgreSQL 13 to 18; older versions have no publish_via_partition_root and are not tested", version), "-- upgrade to PostgreSQL 13 or newer")
	} else {
		p.ok("PostgreSQL version", version)
	}
	switch {
	case level == "logical":
		p.ok("wal_level", "logical")
	case p.walLevelPending(ctx):
		p.fail("wal_level", fmt.Sprintf("wal_level is %q; logical is set in the configuration but takes effect only when PostgreSQL restarts", level),
			"-- set; restart PostgreSQL (e.g. systemctl restart postgresql), then run walhook check again")
	default:
		p.fail("wal_level", fmt.Sprintf("wal_level is %q; walhook needs logical decoding", level),
			"ALTER SYSTEM SET wal_level = logical;  -- as a superuser, then restart PostgreSQL (ran it already? then only the restart is missing)")
	}
	return true
}

// walLevelPending reports whether a changed wal_level waits for a restart:
// pg_settings.pending_restart (set once the server has reloaded its
// configuration files), or for a superuser, wal_level = logical in the
// files themselves (pg_file_settings; ALTER SYSTEM without a reload).
func (p *preflight) walLevelPending(ctx context.Context) bool {
	var pending bool
	if err := p.conn.QueryRow(ctx, "SELECT pending_restart FROM pg_settings WHERE name = 'wal_level'").Scan(&pending); err == nil && pending {
		return true
	}
	if !p.super {
		return false
	}
	var inFile string
	err := p.conn.QueryRow(ctx, "SELECT setting FROM pg_file_settings WHERE name = 'wal_level' ORDER BY seqno DESC LIMIT 1").Scan(&inFile)
	return err == nil && inFile == "logical"
}

func (p *preflight) role() {
	name := "replication privilege"
	switch {
	case p.super:
		p.ok(name, fmt.Sprintf("role %s is a superuser", p.user))
	case p.repl:
		p.ok(name, fmt.Sprintf("role %s has REPLICATION", p.user))
	default:
		p.fail(name, fmt.Sprintf("role %s has neither REPLICATION nor superuser: it cannot create or read a replication slot", p.user),
			fmt.Sprintf("ALTER ROLE %s REPLICATION;  -- as a superuser", ident(p.user)))
	}
}

// capacity checks that a replication slot and a WAL sender are free.
func (p *preflight) capacity(ctx context.Context) {
	slot := p.cfg.Database.Slot
	u, err := replslot.Capacity(ctx, p.conn, slot)
	if err != nil {
		p.fail("replication slots", "cannot "+err.Error(), "")
		return
	}
	maxSlots, maxSenders, used, active, inactive := u.MaxSlots, u.MaxSenders, u.Used, u.Active, u.Inactive
	p.slotExists = u.Exists
	name := "max_replication_slots"
	switch {
	case p.slotExists:
		p.ok(name, fmt.Sprintf("%d of %d in use, one of them walhook's slot %s", used, maxSlots, slot))
	case used < maxSlots:
		p.ok(name, fmt.Sprintf("%d of %d in use: one is free for slot %s", used, maxSlots, slot))
	default:
		fix := fmt.Sprintf("ALTER SYSTEM SET max_replication_slots = %d;  -- as a superuser, then restart PostgreSQL", maxSlots+1)
		detail := fmt.Sprintf("all %d replication slots are in use: walhook cannot create slot %s", maxSlots, slot)
		if len(inactive) > 0 {
			detail += fmt.Sprintf(" (inactive: %s)", strings.Join(first(inactive, 5), ", "))
			fix += fmt.Sprintf("\n-- or drop a slot nobody uses any more: SELECT pg_drop_replication_slot(%s);", source.QuoteLiteral(inactive[0]))
		}
		p.fail(name, detail, fix)
	}

	name = "max_wal_senders"
	var senders int
	if err := p.conn.QueryRow(ctx, "SELECT count(*)::int FROM pg_stat_get_wal_senders()").Scan(&senders); err != nil {
		p.warn(name, fmt.Sprintf("max_wal_senders is %d; cannot count the WAL senders in use: %v", maxSenders, err), "")
		return
	}
	switch {
	case active:
		p.ok(name, fmt.Sprintf("%d of %d in use; slot %s is being read already, its reader's sender passes to walhook when it stops", senders, maxSenders, slot))
	case senders < maxSenders:
		p.ok(name, fmt.Sprintf("%d of %d in use", senders, maxSenders))
	default:
		p.fail(name, fmt.Sprintf("all %d WAL senders are in use: walhook's replication connection would be refused", maxSenders),
			fmt.Sprintf("ALTER SYSTEM SET max_wal_senders = %d;  -- as a superuser, then restart PostgreSQL", maxSenders+1))
	}
}

// identRune keeps the runes valid in a slot name and replaces the others.
func identRune(r rune) rune {
	if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' {
		return r
	}
	return '_'
}

func first(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], "...")
	}
	return s
}

// tables checks every configured table; it reports whether all of them
// passed, keyed by qualified name.
func (p *preflight) tables(ctx context.Context) map[string]bool {
	passed := map[string]bool{}
	p.byTable = map[string]*preflightTable{}
	for i := range p.cfg.Models {
		m := &p.cfg.Models[i]
		qt := m.QualifiedTable()
		at := fmt.Sprintf("models[%d] (model %s)", i, m.Model)
		if m.Line > 0 {
			at = fmt.Sprintf("%s:%d", p.cfg.File, m.Line)
		}
		name := "table " + qt
		ti, err := catalog.ReadTable(ctx, p.conn, m.Schema, m.Name)
		if err != nil {
			p.fail(name, "cannot look it up: "+err.Error(), "")
			continue
		}
		if ti == nil {
			p.byTable[qt] = nil
			detail := fmt.Sprintf("does not exist in database %s (model %s)", p.db, m.Model)
			var elsewhere []string
			rows, err := p.conn.Query(ctx, `SELECT n.nspname::text || '.' || c.relname::text FROM pg_class c
				JOIN pg_namespace n ON n.oid = c.relnamespace
				WHERE c.relname = $1 AND c.relkind IN ('r', 'p') ORDER BY 1`, m.Name)
			if err == nil {
				elsewhere, _ = pgx.CollectRows(rows, pgx.RowTo[string])
			}
			if len(elsewhere) > 0 {
				detail += fmt.Sprintf("; found %s", strings.Join(elsewhere, ", "))
			}
			p.fail(name, detail, fmt.Sprintf("-- create the table, or fix the table name at %s", at))
			continue
		}
		pt := &preflightTable{Table: ti}
		p.byTable[qt] = pt
		good := true
		p.ok(name, fmt.Sprintf("exists, %d columns", len(ti.Columns)))

		// Privileges: USAGE on the schema and SELECT on the table.
		var usage, sel bool
		var owner string
		err = p.conn.QueryRow(ctx, `SELECT has_schema_privilege(c.relnamespace, 'USAGE'), has_table_privilege(c.oid, 'SELECT'),
			pg_has_role(c.relowner, 'USAGE'), pg_get_userbyid(c.relowner)::text FROM pg_class c WHERE c.oid = $1`, ti.OID).
			Scan(&usage, &sel, &pt.owned, &owner)
		name = "SELECT on " + qt
		switch {
		case err != nil:
			p.fail(name, "cannot read privileges: "+err.Error(), "")
			good = false
		case usage && sel:
			p.ok(name, fmt.Sprintf("role %s may read it", p.user))
		default:
			var fix []string
			if !usage {
				fix = append(fix, fmt.Sprintf("GRANT USAGE ON SCHEMA %s TO %s;", ident(m.Schema), ident(p.user)))
			}
			if !sel {
				fix = append(fix, fmt.Sprintf("GRANT SELECT ON %s TO %s;", ident(m.Schema, m.Name), ident(p.user)))
			}
			fix[len(fix)-1] += fmt.Sprintf("  -- as %s (the owner) or a superuser", owner)
			p.fail(name, fmt.Sprintf("role %s may not read it (walhook reads rows back and looks up types)", p.user), strings.Join(fix, "\n"))
			good = false
		}

		// Replica identity: what UPDATE and DELETE carry, and whether the
		// application can still update the table once it is published.
		name = "replica identity " + qt
		full := fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL;", ident(m.Schema, m.Name))
		switch {
		case ti.Identity == catalog.IdentityFull:
			p.ok(name, "FULL: deleted rows carry every column")
		case ti.Identity == catalog.IdentityNothing:
			p.fail(name, "REPLICA IDENTITY NOTHING: once the table is published, the application's UPDATE and DELETE on it fail",
				full+"  -- as the owner")
			good = false
		case len(ti.PrimaryKey) == 0 && ti.Identity == catalog.IdentityDefault:
			p.fail(name, "no primary key and REPLICA IDENTITY DEFAULT: once the table is published, the application's UPDATE and DELETE on it fail",
				full+"  -- as the owner (or add a primary key)")
			good = false
		case ti.Identity == catalog.IdentityIndex:
			p.warn(name, "USING INDEX: deleted rows carry only the index's columns in \"data\", and unless the index holds the primary key, object_key (the per-object order) is built from the index's columns: a change of them starts a new object", full+"  -- optional: whole rows on delete, keyed by the primary key")
		default:
			p.warn(name, fmt.Sprintf("DEFAULT: deleted rows carry only the primary key (%s) in \"data\"", strings.Join(ti.PrimaryKey, ", ")),
				full+"  -- optional: whole rows on delete")
		}

		// Columns the model names.
		name = "columns of " + qt
		var probs []string
		unknown, refs := payload.UnknownColumns(m, ti.ColumnNames())
		for _, u := range unknown {
			probs = append(probs, fmt.Sprintf("%s names unknown column %q", u.Option, u.Column))
		}
		switch {
		case len(probs) > 0:
			p.fail(name, fmt.Sprintf("model %s: %s (columns: %s)", m.Model, strings.Join(probs, "; "), strings.Join(ti.ColumnNames(), ", ")),
				fmt.Sprintf("-- fix the column names of model %s at %s", m.Model, at))
			good = false
		case refs > 0:
			p.ok(name, fmt.Sprintf("the %d columns model %s names exist", refs, m.Model))
		}
		passed[qt] = good
	}
	return passed
}

// supported runs the start-up table checks of `walhook run` on the models
// that passed the checks above, so that anything else run would refuse
// (options this version does not support yet) is reported too.
func (p *preflight) supported(ctx context.Context, passed map[string]bool) {
	sub := *p.cfg
	sub.Models = nil
	for _, m := range p.cfg.Models {
		if passed[m.QualifiedTable()] {
			sub.Models = append(sub.Models, m)
		}
	}
	err := source.CheckTables(ctx, p.conn, &sub)
	var ce *config.Error
	switch {
	case errors.As(err, &ce):
		for _, pr := range ce.Problems {
			p.fail("configuration", pr.String(), "-- edit the configuration")
		}
	case err != nil:
		p.fail("configuration", "cannot check the tables: "+err.Error(), "")
	}
}

// publication compares the publication with the configured tables.
func (p *preflight) publication(ctx context.Context) {
	pub := p.cfg.Database.Publication
	name := "publication " + pub
	var want, wantQuoted []string
	for _, m := range p.cfg.Models {
		want = append(want, m.QualifiedTable())
		wantQuoted = append(wantQuoted, ident(m.Schema, m.Name))
	}
	list := strings.Join(wantQuoted, ", ")
	with := source.PublicationWith(p.versionNum)
	create := fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (%s);", ident(pub), list, with)

	var owner string
	var owned, all, ins, upd, del, trunc, viaRoot bool
	err := p.conn.QueryRow(ctx, `SELECT pg_get_userbyid(pubowner)::text, pg_has_role(pubowner, 'USAGE'), puballtables,
		pubinsert, pubupdate, pubdelete, pubtruncate, coalesce((to_jsonb(p) ->> 'pubviaroot')::bool, false)
		FROM pg_publication p WHERE pubname = $1`, pub).
		Scan(&owner, &owned, &all, &ins, &upd, &del, &trunc, &viaRoot)
	if errors.Is(err, pgx.ErrNoRows) {
		p.pubMissing = true
		var notOwned []string
		for _, m := range p.cfg.Models {
			if t := p.byTable[m.QualifiedTable()]; t != nil && !t.owned {
				notOwned = append(notOwned, m.QualifiedTable())
			}
		}
		var standby bool
		_ = p.conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&standby)
		switch {
		case standby:
			p.fail(name, "does not exist, and the source is a standby, where no publication can be created",
				"-- on the primary, as the tables' owner or a superuser (the standby replays it):\n"+create)
		case p.super || (p.canCreateInDB && len(notOwned) == 0):
			p.ok(name, fmt.Sprintf("does not exist yet; walhook run creates it for the %s", configuredTables(len(want))))
		case len(notOwned) > 0:
			p.fail(name, fmt.Sprintf("does not exist, and role %s may not create it: it does not own %s", p.user, strings.Join(notOwned, ", ")),
				"-- as the tables' owner or a superuser:\n"+create)
		default:
			p.fail(name, fmt.Sprintf("does not exist, and role %s may not create it (no CREATE on database %s)", p.user, p.db),
				fmt.Sprintf("GRANT CREATE ON DATABASE %s TO %s;  -- as a superuser\n-- or create it yourself, as the tables' owner or a superuser:\n%s", ident(p.db), ident(p.user), create))
		}
		return
	}
	if err != nil {
		p.fail(name, "cannot read pg_publication: "+err.Error(), "")
		return
	}
	if all {
		p.fail(name, "is FOR ALL TABLES; walhook needs a publication of exactly the configured tables",
			fmt.Sprintf("DROP PUBLICATION %s;  -- walhook then creates its own; or set database.publication to another name", ident(pub)))
		return
	}
	rows, err := p.conn.Query(ctx, "SELECT schemaname::text || '.' || tablename::text FROM pg_publication_tables WHERE pubname = $1", pub)
	if err != nil {
		p.fail(name, "cannot read pg_publication_tables: "+err.Error(), "")
		return
	}
	have, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		p.fail(name, "cannot read pg_publication_tables: "+err.Error(), "")
		return
	}
	sort.Strings(have)
	var add, drop []string
	for _, t := range want {
		if !slices.Contains(have, t) {
			add = append(add, t)
		}
	}
	for _, t := range have {
		if !slices.Contains(want, t) {
			drop = append(drop, t)
		}
	}
	rootOK := viaRoot || p.versionNum < source.ViaRootVersion
	optsOK := ins && upd && del && trunc && rootOK
	if len(add) == 0 && len(drop) == 0 && optsOK {
		p.ok(name, fmt.Sprintf("publishes exactly the %s (%s)", configuredTables(len(want)), source.PublishOps))
		return
	}
	var diff []string
	if len(add) > 0 {
		diff = append(diff, "lacks "+strings.Join(add, ", "))
	}
	if len(drop) > 0 {
		diff = append(diff, "also publishes "+strings.Join(drop, ", "))
	}
	if !(ins && upd && del && trunc) {
		diff = append(diff, fmt.Sprintf("publishes %s instead of %s", publishList(ins, upd, del, trunc), source.PublishOps))
	}
	if !rootOK {
		diff = append(diff, "publish_via_partition_root is off (a partitioned table's changes would arrive under its partitions' names)")
	}
	var fix []string
	if len(add) > 0 || len(drop) > 0 {
		fix = append(fix, fmt.Sprintf("ALTER PUBLICATION %s SET TABLE %s;", ident(pub), list))
	}
	if !optsOK {
		fix = append(fix, fmt.Sprintf("ALTER PUBLICATION %s SET (%s);", ident(pub), with))
	}
	var notOwned []string
	for _, t := range add {
		if ti := p.byTable[t]; ti != nil && !ti.owned {
			notOwned = append(notOwned, t)
		}
	}
	switch {
	case p.super || (owned && len(notOwned) == 0):
		p.ok(name, "differs from the configuration ("+strings.Join(diff, "; ")+"); walhook run updates it")
	case !owned && len(add) == 0 && len(drop) == 0 && ins && upd && del && (rootOK || !p.partitioned()):
		// Made for an older walhook: capture works, TRUNCATE goes unseen.
		fixAs := fmt.Sprintf("-- as role %s or a superuser:\n%s", owner, strings.Join(fix, "\n"))
		if trunc {
			p.ok(name, fmt.Sprintf("publishes exactly the %s (publish_via_partition_root is off, and no partitioned table is captured)", configuredTables(len(want))))
		} else {
			p.warn(name, fmt.Sprintf("does not publish truncate and is owned by role %s, which role %s may not alter: a TRUNCATE of a captured table goes unseen (walhook cannot log it)", owner, p.user), fixAs)
		}
	case !owned:
		p.fail(name, fmt.Sprintf("differs from the configuration (%s) and is owned by role %s: role %s may not alter it", strings.Join(diff, "; "), owner, p.user),
			fmt.Sprintf("-- as role %s or a superuser:\n%s\n-- or hand it over: ALTER PUBLICATION %s OWNER TO %s;", owner, strings.Join(fix, "\n"), ident(pub), ident(p.user)))
	default:
		p.fail(name, fmt.Sprintf("differs from the configuration (%s), and role %s may not add %s to it: it does not own them", strings.Join(diff, "; "), p.user, strings.Join(notOwned, ", ")),
			"-- as the tables' owner or a superuser:\n"+strings.Join(fix, "\n"))
	}
}

// configuredTables is "1 configured table" or "n configured tables".
func configuredTables(n int) string {
	if n == 1 {
		return "1 configured table"
	}
	return fmt.Sprintf("%d configured tables", n)
}

// partitioned reports whether a configured table is a partitioned table.
func (p *preflight) partitioned() bool {
	for _, t := range p.byTable {
		if t != nil && t.Kind == 'p' {
			return true
		}
	}
	return false
}

func publishList(ins, upd, del, trunc bool) string {
	var ops []string
	for _, o := range []struct {
		on   bool
		name string
	}{{ins, "insert"}, {upd, "update"}, {del, "delete"}, {trunc, "truncate"}} {
		if o.on {
			ops = append(ops, o.name)
		}
	}
	if len(ops) == 0 {
		return "nothing"
	}
	return strings.Join(ops, ", ")
}

// slot checks the replication slot: its plugin and database, whether WAL
// it needs was removed, and who reads it.
func (p *preflight) slot(ctx context.Context) {
	slot := p.cfg.Database.Slot
	name := "slot " + slot
	drop := fmt.Sprintf("SELECT pg_drop_replication_slot(%s);", source.QuoteLiteral(slot))
	st, found, err := replslot.Read(ctx, p.conn, slot)
	if err != nil {
		p.fail(name, "cannot "+err.Error(), "")
		return
	}
	if !found {
		p.ok(name, "does not exist yet; walhook run creates it (pgoutput)")
		return
	}
	plugin, db, walStatus, active, pid, lag := st.Plugin, st.Database, st.WALStatus, st.Active, st.ActivePID, st.LagBytes
	confirmed := ""
	if st.HasConfirmed {
		confirmed = st.Confirmed.String()
	}
	switch {
	case plugin != "pgoutput" || db != p.db:
		detail := fmt.Sprintf("exists but uses plugin %q, not pgoutput", plugin)
		if db != p.db {
			detail = fmt.Sprintf("exists but belongs to database %q, not %s: slots are cluster-wide, so each database needs its own database.slot", db, p.db)
		}
		p.fail(name, detail, fmt.Sprintf("-- set database.slot to another name (e.g. %s_%s), or if nothing uses this slot any more:\n%s",
			slot, strings.ToLower(strings.Map(identRune, p.db)), drop))
		return
	case st.Lost():
		p.fail(name, "was invalidated ("+source.InvalidationText(st.Invalidation)+"): the WAL it needed is gone and so are the changes since",
			drop+"  -- then walhook run creates a new slot and captures from then on")
		return
	case p.pubMissing:
		p.fail(name, fmt.Sprintf("exists but publication %s does not: a slot cannot decode with a publication created after it, so walhook run refuses it", p.cfg.Database.Publication),
			drop+"  -- then walhook run creates the publication and a new slot")
		return
	}
	pos := "confirmed " + confirmed
	if lag != nil {
		pos += fmt.Sprintf(", %s behind the server", human.Bytes(*lag))
	}
	if !active {
		detail := "pgoutput, not in use, " + pos
		if walStatus == "unreserved" {
			p.warn(name, detail+"; wal_status = unreserved: it is about to lose WAL to max_slot_wal_keep_size", "-- start walhook run soon, or raise max_slot_wal_keep_size")
			return
		}
		p.ok(name, detail)
		return
	}
	// In use: say by whom.
	holder := "another process"
	var app, addr string
	if pid != nil {
		holder = fmt.Sprintf("pid %d", *pid)
		// client_addr is hidden from roles without pg_read_all_stats.
		if cl, err := replslot.Holder(ctx, p.conn, *pid); err == nil {
			app, addr = cl.ApplicationName, cl.Addr
		}
		switch {
		case app != "" && addr != "":
			holder += fmt.Sprintf(" (application_name %s, from %s)", app, addr)
		case app != "":
			holder += fmt.Sprintf(" (application_name %s)", app)
		}
	}
	if app == "walhook" {
		p.ok(name, fmt.Sprintf("in use by a running walhook, %s; %s. Another walhook run on this config waits and takes over when it stops", holder, pos))
		return
	}
	kill := "-- if it is not a walhook of yours, stop it or end its connection"
	if pid != nil {
		kill += fmt.Sprintf(":\nSELECT pg_terminate_backend(%d);", *pid)
	}
	p.warn(name, fmt.Sprintf("in use by %s: another walhook or replication client holds it, so walhook run waits until it disconnects; %s", holder, pos), kill)
}

// outbox checks that the outbox schema exists and is current, or can be
// created.
func (p *preflight) outbox(ctx context.Context, pool *pgxpool.Pool) {
	schema := p.cfg.Database.Schema
	name := "outbox schema " + schema
	all, err := migrations.All()
	if err != nil {
		p.fail(name, err.Error(), "")
		return
	}
	latest := all[len(all)-1].Version
	store := outbox.New(pool, schema)
	acc, err := store.Access(ctx)
	if err != nil {
		p.fail(name, "cannot read the outbox database: "+err.Error(), "")
		return
	}
	exists, usage, canCreateSchema, canCreateInDB, user, db := acc.Exists, acc.Usage, acc.CanCreate, acc.CanCreateInDB, acc.User, acc.Database
	if !exists {
		if canCreateInDB {
			p.ok(name, fmt.Sprintf("does not exist yet; walhook run (or walhook migrate) creates it in database %s", db))
		} else {
			p.fail(name, fmt.Sprintf("does not exist, and role %s may not create schemas in database %s", user, db),
				fmt.Sprintf("GRANT CREATE ON DATABASE %s TO %s;  -- as a superuser\n-- or: CREATE SCHEMA %s AUTHORIZATION %s;", ident(db), ident(user), ident(schema), ident(user)))
		}
		return
	}
	if !usage {
		p.fail(name, fmt.Sprintf("exists, but role %s may not use it", user),
			fmt.Sprintf("GRANT USAGE, CREATE ON SCHEMA %s TO %s;\nGRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %s TO %s;  -- as the schema's owner", ident(schema), ident(user), ident(schema), ident(user)))
		return
	}
	current, err := store.MigrationVersion(ctx)
	if err != nil {
		p.fail(name, "cannot read the applied migrations: "+err.Error(),
			fmt.Sprintf("GRANT USAGE ON SCHEMA %s TO %s;\nGRANT SELECT ON %s TO %s;", ident(schema), ident(user), store.MigrationsTable(), ident(user)))
		return
	}
	if current < latest && !canCreateSchema {
		p.fail(name, fmt.Sprintf("exists, at migration %d of %d, and role %s may not create tables in it to apply the rest", current, latest, user),
			fmt.Sprintf("GRANT CREATE ON SCHEMA %s TO %s;  -- as its owner or a superuser (or run walhook migrate as the owner)", ident(schema), ident(user)))
		return
	}
	switch {
	case current > latest:
		p.warn(name, fmt.Sprintf("in database %s is at migration %d, newer than this walhook (%d)", db, current, latest), "-- upgrade walhook")
		return
	case current < latest:
		p.ok(name, fmt.Sprintf("exists in database %s, at migration %d of %d; walhook run (or walhook migrate) applies the rest", db, current, latest))
		return
	}
	// Current: can the role use the tables?
	missing, err := store.MissingPrivileges(ctx)
	if err != nil {
		p.fail(name, err.Error(), "")
		return
	}
	if len(missing) > 0 {
		p.fail(name, fmt.Sprintf("role %s may not read and write %s", user, strings.Join(missing, ", ")),
			fmt.Sprintf("GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO %s;  -- as their owner", strings.Join(missing, ", "), ident(user)))
		return
	}
	p.ok(name, fmt.Sprintf("exists in database %s and is current (migration %d)", db, current))
}

// failover says whether the slot can survive a failover to a standby
// (PostgreSQL 17+: a failover slot, synced by standbys that the primary
// names in synchronized_standby_slots), and prints the settings missing.
func (p *preflight) failover(ctx context.Context) {
	const name = "failover"
	const docs = "docs/operations.md#high-availability"
	want, impossible := p.cfg.Database.WantFailover(p.versionNum)
	var inRecovery bool
	var physical []string
	if err := p.conn.QueryRow(ctx, `SELECT pg_is_in_recovery(),
		coalesce((SELECT array_agg(slot_name::text ORDER BY slot_name) FROM pg_replication_slots WHERE slot_type = 'physical' AND active), '{}')`).
		Scan(&inRecovery, &physical); err != nil {
		p.fail(name, "cannot read the server's standbys: "+err.Error(), "")
		return
	}
	p.inRecovery = inRecovery
	st, err := replslot.ReadStandbys(ctx, p.conn)
	if err != nil {
		p.fail(name, "cannot "+err.Error(), "")
		return
	}
	standbys := fmt.Sprintf("%d streaming standby(s)", st.Streaming)
	switch {
	case impossible:
		p.fail(name, fmt.Sprintf("database.slot_failover is true, but PostgreSQL before 17 has no failover slots (the server is %d)", p.versionNum),
			"-- remove database.slot_failover from the configuration, or upgrade to PostgreSQL 17+")
		return
	case inRecovery:
		p.standby(ctx)
		return
	case !st.Supported:
		if st.Streaming > 0 {
			p.warn(name, standbys+", but PostgreSQL before 17 cannot sync the slot to them: after a failover the slot is missing and the changes until walhook runs again are not captured (walhook says so and counts the gap)",
				"-- upgrade to PostgreSQL 17+ for failover slots; until then, after a failover, walhook backfill resends current rows")
			return
		}
		p.ok(name, "no standby; failover slots need PostgreSQL 17+")
		return
	case !want:
		if st.Streaming > 0 {
			p.warn(name, standbys+", but database.slot_failover is false: the slot is not synced to them, so a failover loses the changes until walhook runs again",
				"-- remove database.slot_failover: false from the configuration ("+docs+")")
			return
		}
		p.ok(name, "database.slot_failover is false; no standby")
		return
	}
	slotState := "walhook run creates the slot as a failover slot"
	if sl, found, err := replslot.Read(ctx, p.conn, p.cfg.Database.Slot); err == nil && found {
		slotState = "the slot is a failover slot"
		if !sl.Failover {
			slotState = "walhook run makes the slot a failover slot (ALTER_REPLICATION_SLOT)"
		}
	}
	standbyFix := "-- on each standby (postgresql.conf), then reload it:\n" +
		"--   sync_replication_slots = on\n--   hot_standby_feedback = on\n" +
		"--   primary_slot_name = '<its physical slot>'\n--   primary_conninfo = '... dbname=" + p.db + "'  (slot sync needs a dbname)"
	if len(st.Names) == 0 {
		if st.Streaming == 0 {
			p.ok(name, slotState+"; no standby yet: to keep the slot through a failover, see "+docs)
			return
		}
		names := "<the standbys' physical slots>"
		if len(physical) > 0 {
			names = strings.Join(physical, ",")
		}
		p.warn(name, standbys+" but synchronized_standby_slots is empty: "+slotState+", but a standby may sync it ahead of what it has received, and walhook cannot hold confirmations for it",
			fmt.Sprintf("ALTER SYSTEM SET synchronized_standby_slots = %s;\nSELECT pg_reload_conf();\n%s", source.QuoteLiteral(names), standbyFix))
		return
	}
	if len(st.Missing) > 0 || len(st.Inactive) > 0 {
		var what []string
		if len(st.Missing) > 0 {
			what = append(what, "no physical slot "+strings.Join(st.Missing, ", "))
		}
		if len(st.Inactive) > 0 {
			what = append(what, "no standby connected to "+strings.Join(st.Inactive, ", "))
		}
		p.warn(name, "synchronized_standby_slots = "+strings.Join(st.Names, ",")+" but "+strings.Join(what, "; ")+": PostgreSQL sends walhook no changes until those standbys catch up",
			"-- start those standbys, or remove them: ALTER SYSTEM SET synchronized_standby_slots = '<connected standbys>'; SELECT pg_reload_conf();\n"+standbyFix)
		return
	}
	p.ok(name, fmt.Sprintf("%s; synchronized_standby_slots = %s (connected): the standbys keep a synced copy of the slot, and walhook confirms positions only once they have its outbox commits (each standby also needs sync_replication_slots = on, hot_standby_feedback = on)", slotState, strings.Join(st.Names, ",")))
}

// standby checks what capture from a hot standby needs (PostgreSQL 16+):
// a writable outbox elsewhere, hot_standby_feedback and a physical slot on
// the primary (or the catalog rows decoding needs are vacuumed away and the
// slot is invalidated), and the publication made on the primary.
func (p *preflight) standby(ctx context.Context) {
	const name = "standby source"
	if p.versionNum < 160000 {
		p.fail(name, "the source is a standby, and PostgreSQL before 16 cannot decode on a standby",
			"-- point database.dsn at the primary, or upgrade to PostgreSQL 16+")
		return
	}
	var feedback, primarySlot string
	if err := p.conn.QueryRow(ctx, `SELECT current_setting('hot_standby_feedback'), current_setting('primary_slot_name')`).Scan(&feedback, &primarySlot); err != nil {
		p.fail(name, "cannot read the standby's settings: "+err.Error(), "")
		return
	}
	var fixes []string
	var problems []string
	if !p.cfg.Database.SeparateOutbox() {
		p.fail(name, "the source is a standby (read-only), and the outbox is in the source database: capture cannot write it",
			"-- set database.outbox_dsn to a writable database (on the primary, or another server)")
		return
	}
	if feedback != "on" {
		problems = append(problems, "hot_standby_feedback is off")
		fixes = append(fixes, "ALTER SYSTEM SET hot_standby_feedback = on;  -- on this standby")
	}
	if primarySlot == "" {
		problems = append(problems, "primary_slot_name is empty")
		fixes = append(fixes, "-- on the primary: SELECT pg_create_physical_replication_slot('standby1');\n-- on this standby: ALTER SYSTEM SET primary_slot_name = 'standby1';")
	}
	if len(fixes) > 0 {
		p.warn(name, "the source is a standby, where capture decodes (16+), but "+strings.Join(problems, " and ")+
			": the primary may vacuum away catalog rows the slot needs, and PostgreSQL then invalidates it (rows_removed)",
			strings.Join(fixes, "\n")+"\nSELECT pg_reload_conf();")
		return
	}
	p.ok(name, "the source is a standby (decoding there takes it off the primary); the publication must be created on the primary; "+
		"creating the slot waits for the primary's next running-transactions record (up to 15 s; SELECT pg_log_standby_snapshot(); on the primary hurries it)")
}

// outboxPlacement says, when the outbox is in the source database, that the
// walsender decodes walhook's own outbox writes with the captured tables'
// (after a restart, everything since the slot's restart_lsn before the
// first new change), and shows the two lines that put the outbox in another
// database of the same server, whose records the walsender skips before
// decoding them. It is a tip: the default works.
func (p *preflight) outboxPlacement() {
	if p.cfg.Database.SeparateOutbox() || p.conn == nil || p.db == "" || p.inRecovery {
		return // a standby fails in standby() with its own fix
	}
	cc := p.conn.Conn().Config()
	other := outboxDatabaseName(p.db)
	p.add("outbox database", OK, fmt.Sprintf("in the source database %s, so the walsender decodes walhook's own outbox writes too "+
		"(after a restart, all of them from the slot's restart_lsn on, before new changes); "+
		"it skips the records of another database of the same server before decoding them: database.outbox_dsn (%s)", p.db, scalingDocs),
		fmt.Sprintf("# optional, after CREATE DATABASE %s OWNER %s;\ndatabase:\n  dsn: %s  # unchanged\n  outbox_dsn: %s  # dsn with another database",
			ident(other), ident(p.user), exampleDSN(cc.Host, cc.Port, cc.User, p.db), exampleDSN(cc.Host, cc.Port, cc.User, other)))
}

// outboxDatabaseName is the database the tip suggests for the outbox of
// database db: db_walhook, db shortened to fit PostgreSQL's 63 bytes.
func outboxDatabaseName(db string) string {
	for len(db)+len("_walhook") > 63 { // NAMEDATALEN - 1
		_, size := utf8.DecodeLastRuneInString(db)
		db = db[:len(db)-size]
	}
	return db + "_walhook"
}

// scalingDocs is where moving the outbox is described.
const scalingDocs = "docs/scaling.md#1-move-the-outbox-databaseoutbox_dsn"

// exampleDSN is a URL for database db on host (a directory: a Unix socket)
// and port as user, without a password.
func exampleDSN(host string, port uint16, user, db string) string {
	u := url.URL{Scheme: "postgres", User: url.User(user), Path: "/" + db}
	if strings.HasPrefix(host, "/") {
		q := url.Values{"host": {host}}
		if port != 5432 {
			q.Set("port", strconv.Itoa(int(port)))
		}
		u.RawQuery = q.Encode()
	} else {
		u.Host = net.JoinHostPort(host, strconv.Itoa(int(port)))
	}
	return u.String()
}
