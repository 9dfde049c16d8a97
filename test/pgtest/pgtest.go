// Package pgtest gives test packages a throwaway PostgreSQL cluster
// (internal/pgcluster) and each test a database of its own: Main for
// TestMain, Cluster.NewDB per test.
package pgtest

import (
	"context"

	"github.com/walhook/walhook/internal/pgcluster"
)

// Cluster is a running throwaway PostgreSQL (see pgcluster.Cluster) with the
// test helpers.
type Cluster struct{ *pgcluster.Cluster }

// Options tune Start.
type Options = pgcluster.Options

// Start initializes and starts a throwaway cluster (see pgcluster.Start).
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	c, err := pgcluster.Start(ctx, opts)
	if err != nil {
		return nil, err
	}
	return &Cluster{c}, nil
}
