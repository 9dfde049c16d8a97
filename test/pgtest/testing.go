package pgtest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// Main starts one cluster for a test package, stores it in *c, runs the
// tests, removes the cluster and, when the tests passed, fails the package
// if they left goroutines running (goleak). Use it from TestMain:
//
//	var pg *pgtest.Cluster
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg)) }
//
// Fuzzing workers (which only run fuzz targets) get no cluster.
func Main(m *testing.M, c **Cluster) int {
	for _, a := range os.Args {
		if strings.HasPrefix(a, "-test.fuzzworker") {
			return m.Run()
		}
	}
	cl, err := Start(context.Background(), Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	*c = cl
	code := m.Run()
	cl.Close()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines left behind:", err)
			code = 1
		}
	}
	return code
}

// NewDB creates a database of the test's own and returns its DSN.
func (c *Cluster) NewDB(t testing.TB) string {
	t.Helper()
	dsn, err := c.CreateDB(context.Background(), t.Name())
	if err != nil {
		t.Fatal(err)
	}
	return dsn
}
