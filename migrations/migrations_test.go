package migrations_test

import (
	"context"
	"os"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/walhook/walhook/migrations"
	"github.com/walhook/walhook/test/pgtest"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg)) }

func TestApplyConcurrentAndIdempotent(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pg.NewDB(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	all, err := migrations.All()
	if err != nil || len(all) == 0 {
		t.Fatalf("All: %v %v", all, err)
	}
	var wg sync.WaitGroup
	results := make([][]int, 4)
	errs := make([]error, 4)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = migrations.Apply(ctx, pool, "walhook")
		}()
	}
	wg.Wait()
	total := 0
	for i := range results {
		if errs[i] != nil {
			t.Fatalf("apply %d: %v", i, errs[i])
		}
		total += len(results[i])
	}
	if total != len(all) {
		t.Fatalf("migrations applied %d times in all, want %d", total, len(all))
	}
	again, err := migrations.Apply(ctx, pool, "walhook")
	if err != nil || len(again) != 0 {
		t.Fatalf("second apply = %v, %v; want nothing", again, err)
	}
	// The contract columns exist and the state CHECK holds.
	_, err = pool.Exec(ctx, `INSERT INTO walhook.deliveries (webhook, event, model, object_key, commit_lsn, seq, committed_at, body, state)
		VALUES ('w','created','M','1','0/1',0,now(),'{}','bogus')`)
	if err == nil {
		t.Fatal("state CHECK accepted 'bogus'")
	}
	_, err = pool.Exec(ctx, `INSERT INTO walhook.deliveries (webhook, event, model, object_key, commit_lsn, seq, committed_at, body)
		VALUES ('w','created','M','1','0/1',0,now(),'{}')`)
	if err != nil {
		t.Fatal(err)
	}
	tag, err := pool.Exec(ctx, `INSERT INTO walhook.deliveries (webhook, event, model, object_key, commit_lsn, seq, committed_at, body)
		VALUES ('w','created','M','1','0/1',0,now(),'{}') ON CONFLICT DO NOTHING`)
	if err != nil || tag.RowsAffected() != 0 {
		t.Fatalf("duplicate change inserted: %v %v", tag, err)
	}
	// Another schema name works too (quoted).
	if _, err := migrations.Apply(ctx, pool, "hooks_2"); err != nil {
		t.Fatal(err)
	}
}
