package source

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/walhook/walhook/cdc/catalog"
	"github.com/walhook/walhook/cdc/payload"
	"github.com/walhook/walhook/internal/config"
)

// CheckTables verifies every configured table against the catalog and
// returns a *config.Error listing all problems, with the model's line.
func CheckTables(ctx context.Context, conn Queryer, cfg *config.Config) error {
	var probs []config.Problem
	add := func(line int, format string, args ...any) {
		probs = append(probs, config.Problem{File: cfg.File, Line: line, Msg: fmt.Sprintf(format, args...)})
	}
	configured, err := ModelsByOID(ctx, conn, cfg)
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

// ModelsByOID maps the OIDs of the configured tables that exist to their
// models.
func ModelsByOID(ctx context.Context, q catalog.Queryer, cfg *config.Config) (map[uint32]*config.Model, error) {
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
func partitionProblem(ctx context.Context, conn Queryer, ti *catalog.Table, configured map[uint32]*config.Model) (string, error) {
	num, err := ServerVersionNum(ctx, conn)
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

// Queryer runs queries and statements: a pool, a connection or a
// transaction.
