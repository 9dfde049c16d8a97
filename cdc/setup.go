package cdc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/walhook/walhook/cdc/catalog"
	"github.com/walhook/walhook/cdc/payload"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/replslot"
)

// FatalError is an error that retrying cannot fix (configuration, privileges,
// server settings); Run returns it instead of reconnecting.
type FatalError struct{ Err error }

func (e *FatalError) Error() string { return e.Err.Error() }
func (e *FatalError) Unwrap() error { return e.Err }

func fatalf(format string, args ...any) error {
	return &FatalError{Err: fmt.Errorf(format, args...)}
}

// IsFatal reports whether err cannot be fixed by retrying.
func IsFatal(err error) bool {
	var fe *FatalError
	var ce *config.Error
	return errors.As(err, &fe) || errors.As(err, &ce)
}

// CheckTables verifies every configured table against the catalog and
// returns a *config.Error listing all problems, with the model's line.
func CheckTables(ctx context.Context, conn queryer, cfg *config.Config) error {
	var probs []config.Problem
	add := func(line int, format string, args ...any) {
		probs = append(probs, config.Problem{File: cfg.File, Line: line, Msg: fmt.Sprintf(format, args...)})
	}
	configured, err := modelsByOID(ctx, conn, cfg)
	if err != nil {
		return err
	}
	for i := range cfg.Models {
		m := &cfg.Models[i]
		ti, err := catalog.ReadTable(ctx, conn, m.Schema, m.Name)
		if err != nil {
			return fmt.Errorf("look up table %s: %w", m.QualifiedTable(), err)
		}
		qt := pgx.Identifier{m.Schema, m.Name}.Sanitize()
		if ti == nil {
			add(m.Line, "table %s does not exist in the source database (model %s)", m.QualifiedTable(), m.Model)
			continue
		}
		if msg, err := partitionProblem(ctx, conn, ti, configured); err != nil {
			return fmt.Errorf("look up table %s: %w", m.QualifiedTable(), err)
		} else if msg != "" {
			add(m.Line, "table %s %s", m.QualifiedTable(), msg)
		}
		if ti.Identity == catalog.IdentityNothing || (len(ti.PrimaryKey) == 0 && ti.Identity == catalog.IdentityDefault) {
			add(m.Line, "table %s has no primary key or replica identity: publishing it would make the application's UPDATE and DELETE on it fail; run: ALTER TABLE %s REPLICA IDENTITY FULL;", m.QualifiedTable(), qt)
		}
		unknown, _ := payload.UnknownColumns(m, ti.ColumnNames())
		for _, u := range unknown {
			add(m.Line, "model %s: %s names unknown column %q of %s (columns: %s)", m.Model, u.Option, u.Column, m.QualifiedTable(), strings.Join(ti.ColumnNames(), ", "))
		}
		if len(m.Relations) > 0 || len(m.Computed) > 0 || m.Snapshot != nil {
			probs = append(probs, payload.CheckLookups(ctx, conn, cfg, m, ti)...)
		}
	}
	if len(probs) > 0 {
		return &config.Error{Problems: probs}
	}
	return nil
}

// modelsByOID maps the OIDs of the configured tables that exist to their
// models.
func modelsByOID(ctx context.Context, q catalog.Queryer, cfg *config.Config) (map[uint32]*config.Model, error) {
	byOID := map[uint32]*config.Model{}
	for i := range cfg.Models {
		m := &cfg.Models[i]
		t, err := catalog.Find(ctx, q, m.Schema, m.Name)
		if err != nil {
			return nil, fmt.Errorf("look up table %s: %w", m.QualifiedTable(), err)
		}
		if t != nil {
			byOID[t.OID] = m
		}
	}
	return byOID, nil
}

// partitionProblem says why a partitioned table or a partition cannot be
// captured as configured: before PostgreSQL 13 a publication cannot carry a
// partitioned table; a partition whose partitioned table is captured too
// would have its changes published under the partitioned table's name.
func partitionProblem(ctx context.Context, conn queryer, ti *catalog.Table, configured map[uint32]*config.Model) (string, error) {
	num, err := serverVersionNum(ctx, conn)
	if err != nil {
		return "", err
	}
	if ti.Kind == 'p' && num < ViaRootVersion {
		return "is partitioned, and PostgreSQL before 13 cannot publish a partitioned table as one table: configure each partition as its own model (with the same model name), or upgrade to PostgreSQL 13 or newer", nil
	}
	if ti.Kind == 'p' || num < 120000 { // pg_partition_ancestors: 12+
		return "", nil
	}
	var ancestors []uint32
	err = conn.QueryRow(ctx, `SELECT coalesce(array_agg(a.relid::oid), '{}') FROM pg_class c, pg_partition_ancestors(c.oid) a
		WHERE c.oid = $1 AND c.relispartition AND a.relid::oid <> c.oid`, ti.OID).Scan(&ancestors)
	if err != nil {
		return "", fmt.Errorf("read partition ancestors: %w", err)
	}
	for _, a := range ancestors {
		if m := configured[a]; m != nil {
			return fmt.Sprintf("is a partition of %s, which model %s captures (with all its partitions, under its own name): remove this model", m.QualifiedTable(), m.Model), nil
		}
	}
	return "", nil
}

// queryer runs queries and statements: a pool, a connection or a
// transaction.
type queryer interface {
	catalog.Queryer
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// checkServer fails with the fix when the server cannot do logical
// replication for walhook.
func checkServer(ctx context.Context, conn queryer) error {
	var level string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
		return fmt.Errorf("read wal_level: %w", err)
	}
	if level != "logical" {
		return fatalf("wal_level is %q but walhook needs logical replication: run ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL", level)
	}
	var super, repl bool
	if err := conn.QueryRow(ctx, "SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user").Scan(&super, &repl); err != nil {
		return fmt.Errorf("read role attributes: %w", err)
	}
	if !super && !repl {
		var user string
		_ = conn.QueryRow(ctx, "SELECT current_user").Scan(&user)
		return fatalf("role %q may not use replication: run ALTER ROLE %s REPLICATION; as a superuser", user, pgx.Identifier{user}.Sanitize())
	}
	return nil
}

// PublishOps are the operations the publication publishes. TRUNCATE is
// included so that capture sees it and says loudly that it sends nothing
// for the removed rows (publishing it changes nothing for the application).
const PublishOps = "insert, update, delete, truncate"

// ViaRootVersion is the first server version (server_version_num) with
// publish_via_partition_root, and able to publish a partitioned table.
const ViaRootVersion = 130000

// PublicationWith is the WITH clause of walhook's publication on a server of
// version num: on 13+ publish_via_partition_root, so that the changes of a
// partitioned table arrive under its own name, not its partitions'.
func PublicationWith(num int) string {
	if num >= ViaRootVersion {
		return "publish = '" + PublishOps + "', publish_via_partition_root = true"
	}
	return "publish = '" + PublishOps + "'"
}

// serverVersionNum reads server_version_num.
func serverVersionNum(ctx context.Context, conn queryer) (int, error) {
	var num int
	if err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&num); err != nil {
		return 0, fmt.Errorf("read server_version_num: %w", err)
	}
	return num, nil
}

// ensurePublication creates the publication for exactly the configured
// tables, or alters it to match. It must run before the slot is created.
// warn is told about a difference walhook may not fix but can live with.
func ensurePublication(ctx context.Context, conn queryer, cfg *config.Config, warn func(string)) (changed bool, err error) {
	pub := cfg.Database.Publication
	var tables []string
	for _, m := range cfg.Models {
		tables = append(tables, pgx.Identifier{m.Schema, m.Name}.Sanitize())
	}
	list := strings.Join(tables, ", ")
	qpub := pgx.Identifier{pub}.Sanitize()
	num, err := serverVersionNum(ctx, conn)
	if err != nil {
		return false, err
	}
	with := PublicationWith(num)
	var ins, upd, del, trunc, viaRoot, allTables, mayAlter bool
	var owner, me string
	// pubviaroot exists from PostgreSQL 13: read it through to_jsonb.
	err = conn.QueryRow(ctx, `SELECT p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate,
			coalesce((to_jsonb(p) ->> 'pubviaroot')::bool, false), p.puballtables,
			pg_get_userbyid(p.pubowner), current_user::text,
			pg_has_role(p.pubowner, 'USAGE') OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
		FROM pg_publication p WHERE p.pubname = $1`, pub).Scan(&ins, &upd, &del, &trunc, &viaRoot, &allTables, &owner, &me, &mayAlter)
	if errors.Is(err, pgx.ErrNoRows) {
		_, err = conn.Exec(ctx, "CREATE PUBLICATION "+qpub+" FOR TABLE "+list+" WITH ("+with+")")
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == pgerrcode.InsufficientPrivilege {
			return false, fatalf("create publication %s: %v: the role must own the captured tables; as their owner or a superuser run: CREATE PUBLICATION %s FOR TABLE %s WITH (%s);", pub, err, qpub, list, with)
		}
		if err != nil {
			return false, fmt.Errorf("create publication %s: %w", pub, readOnlyHint(permissionHint(err),
				"CREATE PUBLICATION "+qpub+" FOR TABLE "+list+" WITH ("+with+");"))
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("read publication %s: %w", pub, err)
	}
	if allTables {
		return false, fatalf("publication %s is FOR ALL TABLES, which would publish the outbox too; walhook needs one of exactly the configured tables: DROP PUBLICATION %s; or set database.publication to another name", pub, qpub)
	}
	// notOwner explains a publication that must change but is not ours.
	notOwner := func(what string) error {
		return fatalf("publication %s is owned by role %s and %s, which role %s may not change: as %s or a superuser run ALTER PUBLICATION %s SET TABLE %s; ALTER PUBLICATION %s SET (%s); or hand it over with ALTER PUBLICATION %s OWNER TO %s;",
			pub, owner, what, me, owner, qpub, list, qpub, with, qpub, pgx.Identifier{me}.Sanitize())
	}
	rows, err := conn.Query(ctx, "SELECT schemaname::text || '.' || tablename::text FROM pg_publication_tables WHERE pubname = $1", pub)
	if err != nil {
		return false, fmt.Errorf("read publication %s tables: %w", pub, err)
	}
	have, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return false, fmt.Errorf("read publication %s tables: %w", pub, err)
	}
	var want []string
	for _, m := range cfg.Models {
		want = append(want, m.QualifiedTable())
	}
	sort.Strings(have)
	sort.Strings(want)
	// Options first: with publish_via_partition_root off, pg_publication_tables
	// lists a partitioned table's partitions instead of the table.
	if !ins || !upd || !del || !trunc || (num >= ViaRootVersion && !viaRoot) {
		if !mayAlter {
			// A publication made by a DBA for an older walhook lacks
			// truncate (and via-root): capture still works, but TRUNCATE
			// goes unseen. Refuse only what loses changes.
			partitioned := false
			if !viaRoot && num >= ViaRootVersion {
				if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_class WHERE oid = ANY ($1::text[]::regclass[]) AND relkind = 'p')", tables).Scan(&partitioned); err != nil {
					return false, fmt.Errorf("read publication %s tables: %w", pub, err)
				}
			}
			if !ins || !upd || !del || partitioned {
				return false, notOwner("is not WITH (" + with + ")")
			}
			if !trunc {
				warn(fmt.Sprintf("publication %s does not publish truncate, and role %s may not change it: a TRUNCATE of a captured table goes unseen (walhook cannot log it); as %s or a superuser run ALTER PUBLICATION %s SET (%s);", pub, me, owner, qpub, with))
			}
		} else {
			if _, err := conn.Exec(ctx, "ALTER PUBLICATION "+qpub+" SET ("+with+")"); err != nil {
				return false, fmt.Errorf("update publication %s options: %w", pub, readOnlyHint(permissionHint(err),
					"ALTER PUBLICATION "+qpub+" SET ("+with+");"))
			}
			changed = true
		}
		if rows, err = conn.Query(ctx, "SELECT schemaname::text || '.' || tablename::text FROM pg_publication_tables WHERE pubname = $1", pub); err == nil {
			have, err = pgx.CollectRows(rows, pgx.RowTo[string])
		}
		if err != nil {
			return false, fmt.Errorf("read publication %s tables: %w", pub, err)
		}
		sort.Strings(have)
	}
	if !slices.Equal(have, want) {
		if !mayAlter {
			return false, notOwner(fmt.Sprintf("publishes %s instead of the configured %s", strings.Join(have, ", "), strings.Join(want, ", ")))
		}
		if _, err := conn.Exec(ctx, "ALTER PUBLICATION "+qpub+" SET TABLE "+list); err != nil {
			return false, fmt.Errorf("update publication %s to the configured tables: %w", pub, readOnlyHint(permissionHint(err),
				"ALTER PUBLICATION "+qpub+" SET TABLE "+list+";"))
		}
		changed = true
	}
	return changed, nil
}

func permissionHint(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == pgerrcode.InsufficientPrivilege {
		return &FatalError{Err: fmt.Errorf("%w (the role needs to own the publication and the tables, or be superuser)", err)}
	}
	return err
}

// readOnlyHint turns the error of a statement a standby refuses into the
// fix: run it on the primary, whose WAL brings it to the standby.
func readOnlyHint(err error, stmt string) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == pgerrcode.ReadOnlySQLTransaction {
		return &FatalError{Err: fmt.Errorf("%w: the source database is a standby, where capture can decode (PostgreSQL 16+) but not create or change the publication; on the primary run: %s", err, stmt)}
	}
	return err
}

// inRecovery reports whether the server is a standby.
func inRecovery(ctx context.Context, conn queryer) (bool, error) {
	var r bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&r); err != nil {
		return false, fmt.Errorf("read pg_is_in_recovery: %w", err)
	}
	return r, nil
}

// slotResult says what ensureSlot did.
type slotResult struct {
	created bool
	// recreated, when not empty, says why an existing slot was dropped and
	// created again (changes before that point can no longer be decoded).
	recreated string
	// alterFailover, when set, is the failover setting an existing slot
	// must be altered to (ALTER_REPLICATION_SLOT, on a replication
	// connection).
	alterFailover *bool
}

// ensureSlot creates the permanent pgoutput slot when missing and checks an
// existing one. A slot that can no longer serve (invalidated, or older than
// the publication, which was missing) is dropped and created again. On
// PostgreSQL 17+ the slot is a failover slot unless database.slot_failover
// is false.
func ensureSlot(ctx context.Context, conn queryer, cfg *config.Config, publicationCreated bool) (slotResult, error) {
	slot := cfg.Database.Slot
	num, err := serverVersionNum(ctx, conn)
	if err != nil {
		return slotResult{}, err
	}
	failover, impossible := cfg.Database.WantFailover(num)
	standby, err := inRecovery(ctx, conn)
	if err != nil {
		return slotResult{}, err
	}
	if standby && failover {
		// A standby's own slot cannot be a failover slot.
		if cfg.Database.SlotFailover != nil {
			return slotResult{}, &config.Error{Problems: []config.Problem{{File: cfg.File, Line: cfg.Database.FailoverLine,
				Msg: "database.slot_failover: true, but the source is a standby, whose slots cannot be failover slots: remove the setting (capture from a standby keeps its own slot)"}}}
		}
		failover = false
	}
	if impossible {
		return slotResult{}, &config.Error{Problems: []config.Problem{{File: cfg.File, Line: cfg.Database.FailoverLine,
			Msg: fmt.Sprintf("database.slot_failover: true needs PostgreSQL 17 or newer (the server is %d.%d): remove the setting, or upgrade the server", num/10000, num%10000)}}}
	}
	st, found, err := replslot.Read(ctx, conn, slot)
	if err != nil {
		return slotResult{}, err
	}
	if !found {
		return createSlot(ctx, conn, slot, failover)
	}
	plugin, db := st.Plugin, st.Database
	var curDB string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&curDB); err != nil {
		return slotResult{}, err
	}
	if plugin != "pgoutput" || db != curDB {
		return slotResult{}, fatalf("replication slot %q exists but is not a pgoutput slot of database %s (plugin %q, database %q): choose another database.slot or drop it with SELECT pg_drop_replication_slot('%s');", slot, curDB, plugin, db, slot)
	}
	var why string
	switch {
	case st.Lost():
		why = "it was invalidated (" + InvalidationText(st.Invalidation) + ")"
	case publicationCreated:
		why = fmt.Sprintf("publication %q was missing and has been created again, and a slot cannot decode with a publication created after it", cfg.Database.Publication)
	default:
		if num >= config.FailoverVersion && st.Failover != failover && !standby {
			return slotResult{alterFailover: &failover}, nil
		}
		return slotResult{}, nil
	}
	if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slot); err != nil {
		return slotResult{}, fmt.Errorf("drop unusable replication slot %s (%s): %w", slot, why, err)
	}
	res, err := createSlot(ctx, conn, slot, failover)
	res.recreated = why
	return res, err
}

// InvalidationText explains a slot's invalidation reason (replslot.Slot's
// Invalidation) and what prevents it.
func InvalidationText(reason string) string {
	switch reason {
	case "wal_removed", "lost":
		return "wal_status = lost: it fell more than max_slot_wal_keep_size behind; raise max_slot_wal_keep_size, or alert on walhook_slot_retained_wal_bytes before it is reached"
	case "idle_timeout":
		return "idle_replication_slot_timeout: nothing streamed from it for that long; raise idle_replication_slot_timeout, or keep walhook running"
	case "rows_removed":
		return "rows_removed: the catalog rows it needed were vacuumed away (on a standby: set hot_standby_feedback = on and use a physical slot, primary_slot_name)"
	case "wal_level_insufficient":
		return "wal_level_insufficient: the primary's wal_level is below logical"
	case "conflicting":
		return "it conflicted with recovery on this standby: set hot_standby_feedback = on and primary_slot_name on the standby"
	}
	return reason
}

func createSlot(ctx context.Context, conn queryer, slot string, failover bool) (slotResult, error) {
	var err error
	if failover {
		// (name, plugin, temporary, twophase, failover): 17+.
		_, err = conn.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)", slot)
	} else {
		_, err = conn.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot)
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == pgerrcode.DuplicateObject { // created by another process just now
		return slotResult{}, nil
	}
	if err != nil {
		return slotResult{}, fmt.Errorf("create replication slot %s: %w", slot, permissionHint(err))
	}
	return slotResult{created: true}, nil
}

// QuoteLiteral quotes s as an SQL string literal, for the SQL walhook
// prints for people to run (never for SQL it runs: that takes parameters).
func QuoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
