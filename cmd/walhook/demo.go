package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/pgcluster"
	"github.com/walhook/walhook/internal/replslot"
)

const demoSecret = "demo-secret"

const demoSchema = `
CREATE TABLE dcim_site (
    id                bigserial PRIMARY KEY,
    name              text NOT NULL,
    slug              text NOT NULL UNIQUE,
    status            text NOT NULL DEFAULT 'active',
    latitude          numeric(8,6),
    tags              text[] NOT NULL DEFAULT '{}',
    custom_field_data jsonb NOT NULL DEFAULT '{}',
    created           timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE dcim_device (
    id      bigserial PRIMARY KEY,
    name    text NOT NULL,
    site_id bigint NOT NULL REFERENCES dcim_site(id),
    serial  text NOT NULL DEFAULT '',
    status  text NOT NULL DEFAULT 'active'
);
ALTER TABLE dcim_device REPLICA IDENTITY FULL;
`

// demoChanges are the scripted changes; each line is one transaction.
var demoChanges = []string{
	`INSERT INTO dcim_site (name, slug, latitude, tags, custom_field_data) VALUES ('Amsterdam 1', 'ams1', 52.370216, '{core,eu}', '{"rack_count": 12}')`,
	`INSERT INTO dcim_site (name, slug, status) VALUES ('Berlin 2', 'ber2', 'planned')`,
	`INSERT INTO dcim_device (name, site_id, serial) VALUES ('ams1-core-01', 1, 'SN-1001')`,
	`UPDATE dcim_site SET status = 'active', tags = '{edge}' WHERE slug = 'ber2'`,
	`DELETE FROM dcim_device WHERE name = 'ams1-core-01'`,
}

// demoExpected is how many webhooks the scripted changes produce.
const demoExpected = 5

const demoConfig = `
database:
  dsn: %s
models:
  - table: public.dcim_site
    model: Site
    url: /api/dcim/sites/{id}/
    rename: {custom_field_data: custom_fields}
    choices:
      status: {active: Active, planned: Planned, retired: Retired}
  - table: public.dcim_device
    model: Device
    exclude: [serial]
webhooks:
  - name: demo-receiver
    url: %s
    secret: %s
    retry: {max_attempts: 5, initial_interval: 1s, max_interval: 10s}
dispatch:
  concurrency: 1      # one at a time, so the demo prints in commit order
  poll_interval: 500ms
http:
  listen: ""
log:
  level: %s
  format: console
`

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, _ := newFlags("demo", stderr)
	once := fs.Bool("once", false, "exit after the scripted changes are delivered")
	verbose := fs.Bool("v", false, "show walhook's logs")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "walhook demo: starting a throwaway PostgreSQL (wal_level=logical)...")
	pg, err := pgcluster.Start(ctx, pgcluster.Options{})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer pg.Close()
	dsn, err := pg.CreateDB(ctx, "walhook_demo")
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, demoSchema); err != nil {
		return fmt.Errorf("demo: load sample schema: %w", err)
	}

	recv := &demoReceiver{out: stdout, got: make(chan struct{}, 100)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("demo: receiver: %w", err)
	}
	srv := &http.Server{Handler: recv, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	url := "http://" + ln.Addr().String() + "/webhook"
	fmt.Fprintf(stdout, "PostgreSQL on port %d, receiver at %s (verifies X-Hook-Signature with secret %q)\n\n", pg.Port, url, demoSecret)

	level := "warn"
	if *verbose {
		level = "info"
	}
	cfg, err := config.Parse("demo.yaml", []byte(fmt.Sprintf(demoConfig, dsn, url, demoSecret, level)), func(string) (string, bool) { return "", false })
	if err != nil {
		return fmt.Errorf("demo: built-in config: %w", err)
	}
	log := newLogger(cfg, stderr)
	if !*verbose {
		log = log.Level(zerolog.WarnLevel)
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- run(rctx, cfg, log, true, true, nil) }()

	// Wait until capture streams (the slot exists), then make changes.
	if err := waitForSlot(ctx, conn, cfg.Database.Slot, runErr); err != nil {
		return err
	}
	for _, q := range demoChanges {
		fmt.Fprintf(stdout, "SQL> %s\n", q)
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
	}
	fmt.Fprintln(stdout)
	timeout := time.After(60 * time.Second)
	for n := 0; ; {
		select {
		case <-recv.got:
			n++
			if *once && n >= demoExpected {
				cancel()
				if err := <-runErr; err != nil && !errors.Is(err, context.Canceled) {
					return fmt.Errorf("demo: %w", err)
				}
				if recv.bad > 0 {
					return fmt.Errorf("demo: %d webhooks failed signature verification", recv.bad)
				}
				fmt.Fprintf(stdout, "demo: all %d webhooks delivered and verified\n", n)
				return nil
			}
			if n == demoExpected && !*once {
				fmt.Fprintln(stdout, "All scripted changes delivered. Make your own changes with:")
				fmt.Fprintf(stdout, "  psql '%s'\nPress Ctrl-C to stop and remove everything.\n\n", dsn)
			}
		case err := <-runErr:
			if err == nil {
				fmt.Fprintln(stdout, "\ndemo: stopped, throwaway database removed")
				return nil
			}
			return fmt.Errorf("demo: %w", err)
		case <-timeout:
			if *once {
				cancel()
				if err := <-runErr; err != nil && !errors.Is(err, context.Canceled) {
					return fmt.Errorf("demo: webhooks did not all arrive within 60s: %w", err)
				}
				return errors.New("demo: webhooks did not all arrive within 60s")
			}
		}
	}
}

func waitForSlot(ctx context.Context, conn *pgx.Conn, slot string, runErr chan error) error {
	for i := 0; i < 600; i++ {
		if s, found, err := replslot.Read(ctx, conn, slot); err == nil && found && s.Active {
			return nil
		}
		select {
		case err := <-runErr:
			if err == nil {
				err = errors.New("walhook stopped")
			}
			return fmt.Errorf("demo: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return errors.New("demo: capture did not start within 60s")
}

// demoReceiver verifies each webhook's signature independently of walhook's
// signing code and prints it.
type demoReceiver struct {
	mu  sync.Mutex
	out io.Writer
	got chan struct{}
	bad int
}

func (d *demoReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	mac := hmac.New(sha512.New, []byte(demoSecret))
	mac.Write(body)
	want := hex.EncodeToString(mac.Sum(nil))
	ok := hmac.Equal([]byte(want), []byte(r.Header.Get("X-Hook-Signature")))
	var p struct {
		Event string `json:"event"`
		Model string `json:"model"`
	}
	_ = json.Unmarshal(body, &p)
	var pretty bytes.Buffer
	if json.Indent(&pretty, body, "  ", "  ") != nil {
		pretty.Write(body)
	}
	d.mu.Lock()
	verdict := "signature verified"
	if !ok {
		verdict = "SIGNATURE MISMATCH"
		d.bad++
	}
	fmt.Fprintf(d.out, "<- webhook %s %s (delivery %s, %s)\n  %s\n\n", p.Event, p.Model,
		r.Header.Get("X-Walhook-Delivery"), verdict, strings.TrimSpace(pretty.String()))
	d.mu.Unlock()
	if !ok {
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	w.WriteHeader(http.StatusNoContent)
	select {
	case d.got <- struct{}{}:
	default:
	}
}
