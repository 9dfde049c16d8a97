package preflight

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/test/cdctest"
	"github.com/walhook/walhook/test/pgtest"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg)) }

// findCheck returns the check called name, failing the test without one.
func findCheck(t *testing.T, checks []Check, name string) Check {
	t.Helper()
	for _, c := range checks {
		if c.Name == name {
			return c
		}
	}
	var names []string
	for _, c := range checks {
		names = append(names, c.Name)
	}
	t.Fatalf("no check %q among %s", name, strings.Join(names, ", "))
	return Check{}
}

func wantCheck(t *testing.T, checks []Check, name string, status Status, detail, fix string) {
	t.Helper()
	c := findCheck(t, checks, name)
	if c.Status != status || !strings.Contains(c.Detail, detail) || !strings.Contains(c.Fix, fix) {
		t.Errorf("check %q = %s %q fix %q; want %s with detail containing %q and fix containing %q", name, c.Status, c.Detail, c.Fix, status, detail, fix)
	}
}

func noFailures(t *testing.T, checks []Check) {
	t.Helper()
	for _, c := range checks {
		if c.Status == Fail {
			t.Errorf("FAIL %s: %s (fix: %s)", c.Name, c.Detail, c.Fix)
		}
	}
}

func TestPreflightGoodSetupPasses(t *testing.T) {
	b := cdctest.Setup(t, pg, `CREATE TABLE site (id int PRIMARY KEY, name text, comments text); ALTER TABLE site REPLICA IDENTITY FULL`,
		"  - table: site\n    exclude: [comments]\n    url: /api/dcim/sites/{id}/")
	checks := Preflight(context.Background(), b.Cfg, b.Source, b.DB)
	noFailures(t, checks)
	for _, c := range checks {
		if c.Status == Warn {
			t.Errorf("WARN %s: %s", c.Name, c.Detail)
		}
	}
	wantCheck(t, checks, "wal_level", OK, "logical", "")
	wantCheck(t, checks, "replication privilege", OK, "superuser", "")
	wantCheck(t, checks, "table public.site", OK, "3 columns", "")
	wantCheck(t, checks, "SELECT on public.site", OK, "may read", "")
	wantCheck(t, checks, "replica identity public.site", OK, "FULL", "")
	wantCheck(t, checks, "columns of public.site", OK, "the 2 columns", "")
	wantCheck(t, checks, "publication walhook", OK, "walhook run creates it", "")
	wantCheck(t, checks, "slot "+b.Cfg.Database.Slot, OK, "walhook run creates it", "")
	wantCheck(t, checks, "outbox schema walhook", OK, "current", "")

	// After walhook has set up: the publication matches and the slot is in
	// use by walhook itself.
	b.Start()
	checks = Preflight(context.Background(), b.Cfg, b.Source, b.DB)
	noFailures(t, checks)
	wantCheck(t, checks, "publication walhook", OK, "exactly the 1 configured table (", "")
}

func TestPreflightReplicaIdentity(t *testing.T) {
	b := cdctest.Setup(t, pg, `
		CREATE TABLE nopk (a int, b text);
		CREATE TABLE pk (id int PRIMARY KEY, b text);
		CREATE TABLE nothing (id int PRIMARY KEY); ALTER TABLE nothing REPLICA IDENTITY NOTHING;
		CREATE TABLE full_nopk (a int); ALTER TABLE full_nopk REPLICA IDENTITY FULL;
		CREATE TABLE idx (id int NOT NULL, b text); CREATE UNIQUE INDEX idx_id ON idx (id); ALTER TABLE idx REPLICA IDENTITY USING INDEX idx_id`,
		"  - table: nopk\n  - table: pk\n  - table: nothing\n  - table: full_nopk\n  - table: idx")
	checks := Preflight(context.Background(), b.Cfg, b.Source, b.DB)
	for _, tc := range []struct {
		table  string
		status Status
		detail string
	}{
		{"nopk", Fail, "no primary key"},
		{"pk", Warn, "only the primary key (id)"},
		{"nothing", Fail, "NOTHING"},
		{"full_nopk", OK, "FULL"},
		{"idx", Warn, "USING INDEX"},
	} {
		fix := ""
		if tc.status != OK {
			fix = `ALTER TABLE "public"."` + tc.table + `" REPLICA IDENTITY FULL;`
		}
		wantCheck(t, checks, "replica identity public."+tc.table, tc.status, tc.detail, fix)
	}
}

func TestPreflightMissingTableAndColumns(t *testing.T) {
	b := cdctest.Setup(t, pg, `CREATE SCHEMA dcim; CREATE TABLE dcim.site (id int PRIMARY KEY, name text); CREATE TABLE device (id int PRIMARY KEY)`,
		"  - table: site\n  - table: device\n    exclude: [nope]\n    url: /d/{uuid}/")
	checks := Preflight(context.Background(), b.Cfg, b.Source, b.DB)
	wantCheck(t, checks, "table public.site", Fail, "found dcim.site", "test.yaml:")
	wantCheck(t, checks, "columns of public.device", Fail, `exclude names unknown column "nope"; url names unknown column "uuid"`, "test.yaml:")
}

func TestPreflightUnsupportedOptions(t *testing.T) {
	b := cdctest.Setup(t, pg, `CREATE TABLE site (id int PRIMARY KEY, region_id int); ALTER TABLE site REPLICA IDENTITY FULL`,
		"  - table: site\n    relations: {region_id: {table: region, columns: [id]}}")
	checks := Preflight(context.Background(), b.Cfg, b.Source, b.DB)
	wantCheck(t, checks, "configuration", Fail, "relation region_id: table public.region does not exist", "")
}

func TestPreflightAsRoleWithoutPrivileges(t *testing.T) {
	b := cdctest.Setup(t, pg, `CREATE TABLE s (id int PRIMARY KEY); CREATE TABLE u (id int PRIMARY KEY)`, "  - table: s\n  - table: u")
	role := b.Role("")
	ctx := context.Background()
	for _, q := range []string{
		"GRANT SELECT ON s TO " + role,
		"CREATE PUBLICATION walhook FOR TABLE s WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true)",
	} {
		if _, err := b.DB.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	pool := b.PoolAs(role)
	checks := Preflight(ctx, b.Cfg, pool, pool)
	q := `"` + role + `"`
	wantCheck(t, checks, "replication privilege", Fail, "neither REPLICATION nor superuser", "ALTER ROLE "+q+" REPLICATION;")
	wantCheck(t, checks, "SELECT on public.s", OK, "may read", "")
	wantCheck(t, checks, "SELECT on public.u", Fail, "may not read", `GRANT SELECT ON "public"."u" TO `+q+";")
	// The publication lacks u and belongs to postgres: say who owns it and
	// what to run.
	wantCheck(t, checks, "publication walhook", Fail, "lacks public.u) and is owned by role postgres",
		`ALTER PUBLICATION "walhook" SET TABLE "public"."s", "public"."u";`)
	wantCheck(t, checks, "publication walhook", Fail, "", `ALTER PUBLICATION "walhook" OWNER TO `+q+";")
	wantCheck(t, checks, "outbox schema walhook", Fail, "may not use it", `GRANT USAGE, CREATE ON SCHEMA "walhook" TO `+q+";")
}

func TestPreflightSlotStates(t *testing.T) {
	t.Run("in use by another client", func(t *testing.T) {
		b := cdctest.Setup(t, pg, `CREATE TABLE s (id int PRIMARY KEY)`, "  - table: s")
		ctx := context.Background()
		c, err := cdc.New(cdc.Options{Config: b.Cfg, Source: b.Source, Outbox: b.DB, Logger: zerolog.Nop()})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Prepare(ctx); err != nil {
			t.Fatal(err)
		}
		conn, err := pgconn.Connect(ctx, b.DSN+"&replication=database&application_name=other_tool")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if err := pglogrepl.StartReplication(ctx, conn, b.Cfg.Database.Slot, 0, pglogrepl.StartReplicationOptions{
			PluginArgs: []string{"proto_version '1'", "publication_names 'walhook'"},
		}); err != nil {
			t.Fatal(err)
		}
		var pid string
		if err := b.DB.QueryRow(ctx, "SELECT active_pid::text FROM pg_replication_slots WHERE slot_name = $1", b.Cfg.Database.Slot).Scan(&pid); err != nil {
			t.Fatal(err)
		}
		checks := Preflight(ctx, b.Cfg, b.Source, b.DB)
		wantCheck(t, checks, "slot "+b.Cfg.Database.Slot, Warn, "in use by pid "+pid+" (application_name other_tool", "SELECT pg_terminate_backend("+pid+");")
		wantCheck(t, checks, "max_wal_senders", OK, "being read already", "")
	})
	t.Run("exists without the publication", func(t *testing.T) {
		b := cdctest.Setup(t, pg, `CREATE TABLE s (id int PRIMARY KEY)`, "  - table: s")
		if _, err := b.DB.Exec(context.Background(), "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", b.Cfg.Database.Slot); err != nil {
			t.Fatal(err)
		}
		checks := Preflight(context.Background(), b.Cfg, b.Source, b.DB)
		wantCheck(t, checks, "slot "+b.Cfg.Database.Slot, Fail, "publication walhook does not", "SELECT pg_drop_replication_slot('"+b.Cfg.Database.Slot+"');")
		wantCheck(t, checks, "max_replication_slots", OK, "one of them walhook's slot", "")
	})
}

func TestStatusText(t *testing.T) {
	for s, want := range map[Status]string{OK: "OK", Warn: "WARN", Fail: "FAIL"} {
		b, _ := s.MarshalText()
		var back Status
		if string(b) != want || back.UnmarshalText(b) != nil || back != s {
			t.Errorf("%d: %s, back %d", s, b, back)
		}
	}
	var s Status
	if s.UnmarshalText([]byte("ok")) == nil {
		t.Error("lower-case ok accepted")
	}
}

// TestPartitionedTableCapturedAsRoot: check says a publication made before
// publish_via_partition_root is fine, and capture updates it (the capture
// half is cdc's test of this name).
func TestPartitionedTableCapturedAsRoot(t *testing.T) {
	b := cdctest.Setup(t, pg, `CREATE TABLE m (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
		CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu'); CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');`, `
  - table: m
    model: Metric`)
	// A publication made by an older walhook: without publish_via_partition_root.
	b.Exec(`CREATE PUBLICATION walhook FOR TABLE m WITH (publish = 'insert, update, delete')`)
	wantCheck(t, Preflight(context.Background(), b.Cfg, b.Source, b.DB), "publication walhook", OK, "publish_via_partition_root is off", "")
	b.Start()
	noFailures(t, Preflight(context.Background(), b.Cfg, b.Source, b.DB))
	wantCheck(t, Preflight(context.Background(), b.Cfg, b.Source, b.DB), "publication walhook", OK, "publishes exactly the 1 configured table (", "")
}

// TestRenamedTableKeepsCapturing: once a captured table was renamed while
// capture ran, check says the configured table does not exist (the capture
// half is cdc's test of this name).
func TestRenamedTableKeepsCapturing(t *testing.T) {
	b := cdctest.Setup(t, pg, `CREATE TABLE s (id int PRIMARY KEY)`, `
  - table: s
    model: S`)
	b.Start()
	b.Exec(`ALTER TABLE s RENAME TO s2`)
	b.Stop()
	wantCheck(t, Preflight(context.Background(), b.Cfg, b.Source, b.DB), "table public.s", Fail, "does not exist", "")
}

// TestOldPublicationOfAnotherOwnerStillWorks: check says what a publication
// a DBA made for an older walhook (no truncate), that walhook's role may not
// alter, costs (the capture half is cdc's test of this name).
func TestOldPublicationOfAnotherOwnerStillWorks(t *testing.T) {
	b := cdctest.Setup(t, pg, `CREATE TABLE s (id int PRIMARY KEY); CREATE PUBLICATION walhook FOR TABLE s WITH (publish = 'insert, update, delete')`, `
  - table: s`)
	role := b.Role("REPLICATION")
	b.Exec("GRANT SELECT ON s TO " + role)
	pool := b.PoolAs(role)
	c, err := cdc.New(cdc.Options{Config: b.Cfg, Source: pool, Outbox: b.DB, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Prepare(context.Background()); err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	wantCheck(t, Preflight(context.Background(), b.Cfg, pool, b.DB), "publication walhook", Warn, "TRUNCATE of a captured table goes unseen", "ALTER PUBLICATION")
}

func TestExampleDSN(t *testing.T) {
	for _, tc := range []struct {
		name, host, user, db string
		port                 uint16
		want                 string
	}{
		{"tcp", "db.example.net", "walhook", "app_walhook", 5432, "postgres://walhook@db.example.net:5432/app_walhook"},
		{"ipv6", "::1", "walhook", "app", 5433, "postgres://walhook@[::1]:5433/app"},
		{"unix socket", "/var/run/postgresql", "walhook", "app", 5432, "postgres://walhook@/app?host=%2Fvar%2Frun%2Fpostgresql"},
		{"unix socket, other port", "/tmp", "walhook", "app", 5433, "postgres://walhook@/app?host=%2Ftmp&port=5433"},
		{"odd names", "h", "we ird@", "my db", 5432, "postgres://we%20ird%40@h:5432/my%20db"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := exampleDSN(tc.host, tc.port, tc.user, tc.db)
			if got != tc.want {
				t.Errorf("exampleDSN = %q, want %q", got, tc.want)
			}
			// What the tip shows connects where it says.
			cc, err := pgconn.ParseConfig(got)
			if err != nil || cc.Host != tc.host || cc.Port != tc.port || cc.User != tc.user || cc.Database != tc.db {
				t.Errorf("pgconn.ParseConfig(%q) = %v (host %q port %d user %q database %q)", got, err, cc.Host, cc.Port, cc.User, cc.Database)
			}
		})
	}
}

func TestOutboxDatabaseName(t *testing.T) {
	for _, tc := range []struct{ db, want string }{
		{"netbox", "netbox_walhook"},
		{strings.Repeat("a", 60), strings.Repeat("a", 55) + "_walhook"},
		{strings.Repeat("a", 54) + "éé", strings.Repeat("a", 54) + "_walhook"}, // never half a rune
	} {
		if got := outboxDatabaseName(tc.db); got != tc.want || len(got) > 63 {
			t.Errorf("outboxDatabaseName(%q) = %q, want %q", tc.db, got, tc.want)
		}
	}
}
