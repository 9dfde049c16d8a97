package source

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
	"github.com/walhook/walhook/internal/config"
)

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

// EnsurePublication creates the publication for exactly the configured
// tables, or alters it to match. It must run before the slot is created.
// warn is told about a difference walhook may not fix but can live with.
func EnsurePublication(ctx context.Context, conn Queryer, cfg *config.Config, warn func(string)) (changed bool, err error) {
	pub := cfg.Database.Publication
	var tables []string
	for _, m := range cfg.Models {
		tables = append(tables, pgx.Identifier{m.Schema, m.Name}.Sanitize())
	}
	list := strings.Join(tables, ", ")
	qpub := pgx.Identifier{pub}.Sanitize()
	num, err := ServerVersionNum(ctx, conn)
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
			return false, Fatalf("create publication %s: %v: the role must own the captured tables; as their owner or a superuser run: CREATE PUBLICATION %s FOR TABLE %s WITH (%s);", pub, err, qpub, list, with)
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
		return false, Fatalf("publication %s is FOR ALL TABLES, which would publish the outbox too; walhook needs one of exactly the configured tables: DROP PUBLICATION %s; or set database.publication to another name", pub, qpub)
	}
	// notOwner explains a publication that must change but is not ours.
	notOwner := func(what string) error {
		return Fatalf("publication %s is owned by role %s and %s, which role %s may not change: as %s or a superuser run ALTER PUBLICATION %s SET TABLE %s; ALTER PUBLICATION %s SET (%s); or hand it over with ALTER PUBLICATION %s OWNER TO %s;",
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
