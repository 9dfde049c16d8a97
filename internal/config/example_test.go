package config_test

import (
	"errors"
	"fmt"

	"github.com/walhook/walhook/internal/config"
)

func Example_parse() {
	yaml := []byte(`
database:
  dsn: ${DATABASE_URL}
models:
  - table: dcim_site
    model: Site
webhooks:
  - name: inventory
    url: https://hooks.example.com/netbox
    events: [created, deleted]
    secret: ${INVENTORY_SECRET:-}
dispatch:
  retention: 3d
`)
	env := map[string]string{"DATABASE_URL": "postgres://walhook@db:5432/app"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }

	cfg, err := config.Parse("walhook.yaml", yaml, lookup)
	if err != nil {
		fmt.Println(err)
		return
	}
	w := cfg.Webhooks[0]
	fmt.Println("dsn:", cfg.Database.DSN, "slot:", cfg.Database.Slot)
	fmt.Println("table:", cfg.Models[0].QualifiedTable(), "model:", cfg.Models[0].Model)
	fmt.Println("webhook:", w.Name, w.HTTPMethod, w.Timeout.D(), "attempts:", w.Retry.MaxAttempts)
	fmt.Println("wants Site updated:", w.Wants("Site", "updated"), "deleted:", w.Wants("Site", "deleted"))
	fmt.Println("retention:", cfg.Dispatch.Retention.D(), "listen:", cfg.HTTP.ListenAddr())

	// Every problem is reported at once, with its file:line.
	_, err = config.Parse("walhook.yaml", []byte(`
database:
  dsn: postgres://walhook@db:5432/app
  slot: my-slot
models:
  - table: dcim_site
webhooks:
  - name: inventory
    url: hooks.example.com
    timout: 5s
`), lookup)
	var cerr *config.Error
	if errors.As(err, &cerr) {
		fmt.Println(len(cerr.Problems), "problems:")
		fmt.Println(err)
	}
	// Output:
	// dsn: postgres://walhook@db:5432/app slot: walhook
	// table: public.dcim_site model: Site
	// webhook: inventory POST 10s attempts: 8
	// wants Site updated: false deleted: true
	// retention: 72h0m0s listen: 127.0.0.1:9187
	// 3 problems:
	// walhook.yaml:4: database.slot "my-slot" is not a valid name: use lower-case letters, digits and _ (at most 63, not starting with a digit)
	// walhook.yaml:9: webhook "inventory": url "hooks.example.com" is not an http(s) URL
	// walhook.yaml:10: unknown key "timout" in webhooks[0] (did you mean "timeout"?)
}
