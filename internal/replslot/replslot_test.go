package replslot

import (
	"context"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/walhook/walhook/test/pgtest"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg)) }

func TestReadHolderCapacity(t *testing.T) {
	ctx := context.Background()
	dsn := pg.NewDB(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	slot := "replslot_test"

	if _, found, err := Read(ctx, conn, slot); err != nil || found {
		t.Fatalf("missing slot: found %v, err %v", found, err)
	}
	u, err := Capacity(ctx, conn, slot)
	if err != nil || u.Exists || u.MaxSlots == 0 {
		t.Fatalf("Capacity before: %+v, %v", u, err)
	}

	if _, err := conn.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot); err != nil {
		t.Fatal(err)
	}
	defer conn.Exec(context.Background(), "SELECT pg_drop_replication_slot($1)", slot)
	s, found, err := Read(ctx, conn, slot)
	if err != nil || !found {
		t.Fatalf("Read: found %v, err %v", found, err)
	}
	var db string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		t.Fatal(err)
	}
	if s.Plugin != "pgoutput" || s.Database != db || s.Active || s.ActivePID != nil || !s.HasConfirmed || s.Confirmed == 0 ||
		s.LagBytes == nil || *s.LagBytes < 0 || s.RetainedBytes == nil || s.WALStatus == "" {
		t.Fatalf("Read = %+v", s)
	}
	u, err = Capacity(ctx, conn, slot)
	if err != nil || !u.Exists || u.Active || u.Used < 1 {
		t.Fatalf("Capacity after: %+v, %v", u, err)
	}

	var pid int32
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "SET application_name = 'replslot-test'"); err != nil {
		t.Fatal(err)
	}
	cl, err := Holder(ctx, conn, pid)
	if err != nil || cl.ApplicationName != "replslot-test" || cl.PID != pid {
		t.Fatalf("Holder = %+v, %v", cl, err)
	}
}
