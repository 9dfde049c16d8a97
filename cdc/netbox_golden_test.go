package cdc_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/walhook/walhook/cdc/payload"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/test/cdctest"
)

// NetBox fidelity: examples/netbox.yaml, unchanged, on a subset of NetBox's
// v4.2 demo data (testdata/netbox-demo, see extract.sh there). The expected
// "data" objects in testdata/netbox-demo/expected were written by hand from
// NetBox v4.2.5's serializers (dcim/api/serializers_/sites.py, devices.py,
// device_components.py, netbox/api/serializers/, netbox/api/fields.py), as
// its webhooks send them: serialized without a request, so URLs are
// relative, and nested objects in their brief forms.

// netboxDemo prepares a capture with examples/netbox.yaml on the demo
// subset; with v4 it adds a webhook "v4" of format netbox-v4.
func netboxDemo(t *testing.T, v4 bool) *bundle {
	return netboxDemoEdit(t, v4, nil)
}

// netboxDemoEdit is netboxDemo with edit applied to the example's text.
func netboxDemoEdit(t *testing.T, v4 bool, edit func(string) string) *bundle {
	t.Helper()
	schema, err := os.ReadFile("testdata/netbox-demo/netbox-demo.sql")
	if err != nil {
		t.Fatal(err)
	}
	b := setup(t, string(schema)+`
		ALTER TABLE dcim_device REPLICA IDENTITY FULL;
		ALTER TABLE dcim_interface REPLICA IDENTITY FULL;`, "  - table: dcim_site")
	text, err := os.ReadFile("../examples/netbox.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		text = []byte(edit(string(text)))
	}
	if v4 { // a netbox-v4 webhook besides the example's own
		text = []byte(strings.Replace(string(text), "\nhttp:", `
  - name: v4
    url: http://127.0.0.1:1/v4
    format: netbox-v4
`+"\nhttp:", 1))
	}
	env := map[string]string{"DATABASE_URL": b.DSN}
	cfg, err := config.Parse("examples/netbox.yaml", text, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	cfg.Database.Slot, cfg.Database.Publication = cdctest.Slot(b.DSN), cdctest.Slot(b.DSN)
	b.Cfg = cfg
	return b
}

// jsonDiff compares two decoded JSON values key by key and returns the
// top-level keys of want that got does not match, and the keys got has that
// want lacks.
func jsonDiff(got, want map[string]any) (mismatch, extra []string) {
	for k, w := range want {
		g, ok := got[k]
		if !ok || !reflect.DeepEqual(g, w) {
			mismatch = append(mismatch, k)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			extra = append(extra, k)
		}
	}
	slices.Sort(mismatch)
	slices.Sort(extra)
	return mismatch, extra
}

func TestNetBoxGolden(t *testing.T) {
	t.Parallel()
	b := netboxDemo(t, true)
	b.Start()
	// Changes like the ones NetBox makes when these objects are edited
	// (each object in its own transaction, as NetBox's API does).
	for _, sql := range []string{
		`UPDATE dcim_site SET description = 'Akron branch office', latitude = 41.081400, longitude = -81.519000,
			last_updated = '2025-01-02 03:04:05.22108+00' WHERE id = 2`,
		`UPDATE ipam_ipaddress SET address = '10.255.0.1/32' WHERE id = 3`,
		`UPDATE dcim_device SET serial = 'FGL2231', asset_tag = 'DM-0001', primary_ip4_id = 1, primary_ip6_id = NULL, oob_ip_id = 3 WHERE id = 1`,
		`UPDATE dcim_device SET description = '48-port patch panel', face = '', position = NULL WHERE id = 74`,
		`UPDATE dcim_device SET description = 'ToR switch, VC master' WHERE id = 98`,
		`UPDATE dcim_interface SET mode = 'access', untagged_vlan_id = 1, description = 'uplink to sw01' WHERE id = 3`,
		`UPDATE dcim_interface SET description = 'LAG to sw01' WHERE id = 833`,
		`UPDATE dcim_interface SET description = 'WAN to Level3' WHERE id = 1`,
		// Objects that refer to others come after them: related values are
		// read when a change is rendered, after its commit.
		`UPDATE ipam_ipaddress SET address = '192.0.2.1/32', nat_inside_id = 1 WHERE id = 2`,
		`UPDATE ipam_ipaddress SET status = 'dhcp', assigned_object_type_id = 39, assigned_object_id = 4, dns_name = 'rtr01.example.net' WHERE id = 1`,
		`UPDATE ipam_vlan SET description = 'Voice VLAN' WHERE id = 2`,
		`UPDATE ipam_prefix SET description = 'Akron data' WHERE id = 8`,
	} {
		b.Exec(sql)
	}
	b.WaitRows(2 * 12) // 12 changes, to the netbox and the v4 webhook
	got := map[string]map[string]any{}
	for _, d := range b.Deliveries("webhook = 'netbox'") {
		if d.Event != payload.EventUpdated {
			t.Errorf("%s %s: event %s", d.Model, d.Key, d.Event)
		}
		var body struct{ Data map[string]any }
		if err := json.Unmarshal([]byte(d.Raw), &body); err != nil {
			t.Fatal(err)
		}
		got[strings.ToLower(d.Model)+"-"+d.Key] = body.Data
	}
	files, _ := filepath.Glob("testdata/netbox-demo/expected/*.json")
	if len(files) == 0 {
		t.Fatal("no expected payloads")
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var want map[string]any
			if err := json.Unmarshal(raw, &want); err != nil {
				t.Fatal(err)
			}
			g, ok := got[name]
			if !ok {
				t.Fatalf("no delivery for %s", name)
			}
			mismatch, extra := jsonDiff(g, want)
			t.Logf("%s: %d/%d fields match NetBox 4.2", name, len(want)-len(mismatch), len(want))
			for _, k := range mismatch {
				gj, _ := json.Marshal(g[k])
				wj, _ := json.Marshal(want[k])
				_, has := g[k]
				t.Errorf("%s: got %s (present %v)\n  want %s", k, gj, has, wj)
			}
			if len(extra) > 0 {
				t.Errorf("fields NetBox does not send: %s", fmt.Sprint(extra))
			}
		})
	}
	// The netbox-v4 body: NetBox 4.0-4.4's keys, data as above, snapshots
	// as NetBox's serialize_object (testdata/netbox-demo/expected/snapshots).
	for _, d := range b.Deliveries("webhook = 'v4'") {
		name := strings.ToLower(d.Model) + "-" + d.Key
		t.Run("v4-"+name, func(t *testing.T) {
			var body map[string]any
			if err := json.Unmarshal([]byte(d.Raw), &body); err != nil {
				t.Fatal(err)
			}
			var keys []string
			for k := range body {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			if fmt.Sprint(keys) != "[data event model object_type request_id snapshots timestamp username]" {
				t.Errorf("keys %v", keys)
			}
			if body["model"] != strings.ToLower(d.Model) || !strings.HasSuffix(fmt.Sprint(body["object_type"]), "."+strings.ToLower(d.Model)) ||
				body["username"] != nil || body["request_id"] != nil || body["event"] != "updated" {
				t.Errorf("envelope %v %v %v %v %v", body["event"], body["model"], body["object_type"], body["username"], body["request_id"])
			}
			if !reflect.DeepEqual(body["data"], got[name]) {
				t.Errorf("data differs from the netbox webhook's")
			}
			sn, _ := body["snapshots"].(map[string]any)
			pre, _ := sn["prechange"].(map[string]any)
			post, _ := sn["postchange"].(map[string]any)
			switch d.Model {
			case "Site": // default replica identity: PostgreSQL logs no old row
				if sn["prechange"] != nil {
					t.Errorf("site prechange %v", sn["prechange"])
				}
			case "Device":
				if d.Key == "1" && (pre == nil || pre["serial"] != "" || pre["asset_tag"] != nil || pre["primary_ip4"] != nil || post["serial"] != "FGL2231") {
					t.Errorf("device 1 prechange %v", pre)
				}
			case "Interface":
				if d.Key == "3" && (pre == nil || pre["mode"] != nil || pre["untagged_vlan"] != nil || pre["description"] != "") {
					t.Errorf("interface 3 prechange %v", pre)
				}
			}
			raw, err := os.ReadFile("testdata/netbox-demo/expected/snapshots/" + name + ".json")
			if os.IsNotExist(err) {
				return
			} else if err != nil {
				t.Fatal(err)
			}
			var want map[string]any
			if err := json.Unmarshal(raw, &want); err != nil {
				t.Fatal(err)
			}
			mismatch, extra := jsonDiff(post, want)
			t.Logf("%s postchange: %d/%d fields match NetBox 4.2's serialize_object", name, len(want)-len(mismatch), len(want))
			for _, k := range mismatch {
				gj, _ := json.Marshal(post[k])
				wj, _ := json.Marshal(want[k])
				t.Errorf("postchange %s: got %s\n  want %s", k, gj, wj)
			}
			if len(extra) > 0 {
				t.Errorf("postchange has keys serialize_object does not: %v", extra)
			}
		})
	}
}

// NetBox keeps counter caches (interface_count, ...) with QuerySet.update(),
// which sends no webhook; examples/netbox.yaml lists them in ignore_changes,
// so the UPDATEs that maintain them send nothing either.
func TestNetBoxCounterUpdatesSendNothing(t *testing.T) {
	t.Parallel()
	t.Run("replica identity full", func(t *testing.T) { testCounterUpdates(t, true) })
	// Without FULL only the UPDATEs that follow a change of the device in
	// the same transaction can be recognised.
	t.Run("replica identity default", func(t *testing.T) { testCounterUpdates(t, false) })
}

func testCounterUpdates(t *testing.T, full bool) {
	b := netboxDemo(t, false)
	later := 0 // Device updated sent for the interface added later
	if !full {
		b.Exec(`ALTER TABLE dcim_device REPLICA IDENTITY DEFAULT`)
		later = 1
	}
	b.Start()
	const counts = `console_port_count, console_server_port_count, power_port_count, power_outlet_count, interface_count,
		front_port_count, rear_port_count, device_bay_count, module_bay_count, inventory_item_count`
	newInterface := func(id int, name string) string {
		return fmt.Sprintf(`INSERT INTO dcim_interface (id, custom_field_data, name, label, description, mark_connected, enabled, _name, type, mgmt_only, device_id)
			VALUES (%d, '{}', '%s', '', '', false, true, '%s', '1000base-t', false, 500);
			UPDATE dcim_device SET interface_count = interface_count + 1 WHERE id = 500;`, id, name, name)
	}
	count := func(model, event string) int {
		return b.Count(fmt.Sprintf("webhook = 'netbox' AND model = '%s' AND event = '%s'", model, event))
	}
	steps := []struct {
		name                                     string
		sql                                      string
		deviceCreated, deviceUpdated, ifsCreated int
	}{
		{"a device created with two interfaces (one transaction, as NetBox does)", `BEGIN;
			INSERT INTO dcim_device (id, custom_field_data, name, serial, status, comments, role_id, device_type_id, site_id, description, ` + counts + `)
			VALUES (500, '{}', 'new-sw01', '', 'active', '', 1, 6, 2, '', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);` +
			newInterface(5001, "Gi0/1") + newInterface(5002, "Gi0/2") + `COMMIT`, 1, 0, 2},
		{"an interface added later", newInterface(5003, "Gi0/3"), 1, later, 3},
		{"a real change of the device", `UPDATE dcim_device SET serial = 'X1' WHERE id = 500`, 1, later + 1, 3},
		{"a real change with a counter", `UPDATE dcim_device SET serial = 'X2', interface_count = 0 WHERE id = 500`, 1, later + 2, 3},
		{"a change, then counters, in one transaction", `BEGIN; UPDATE dcim_device SET serial = 'X3' WHERE id = 500;
			UPDATE dcim_device SET interface_count = interface_count + 1 WHERE id = 500;
			UPDATE dcim_device SET interface_count = interface_count + 1 WHERE id = 500; COMMIT`, 1, later + 3, 3},
	}
	for i, st := range steps {
		b.Exec(st.sql)
		// A change that is always sent, committed after: once it is in the
		// outbox, so is anything from st.sql.
		b.Exec(`UPDATE dcim_site SET description = description || '.' WHERE id = 2`)
		b.WaitRows(st.deviceCreated + st.deviceUpdated + st.ifsCreated + i + 1)
		if got := count("Device", "created"); got != st.deviceCreated {
			t.Errorf("%s: %d Device created, want %d", st.name, got, st.deviceCreated)
		}
		if got := count("Device", "updated"); got != st.deviceUpdated {
			t.Errorf("%s: %d Device updated, want %d", st.name, got, st.deviceUpdated)
		}
		if got := count("Interface", "created"); got != st.ifsCreated {
			t.Errorf("%s: %d Interface created, want %d", st.name, got, st.ifsCreated)
		}
	}
}

// A relation to a row deleted in the same transaction renders from the
// row's old image (REPLICA IDENTITY FULL), as NetBox serializes an object
// before it deletes it: deleting a device deletes its interfaces first, and
// their "device" is the device as it was, not null.
func TestNetBoxCascadedDeleteKeepsRelations(t *testing.T) {
	t.Parallel()
	t.Run("device deletes sent", func(t *testing.T) { testCascadedDelete(t, nil) })
	// The device's own delete goes to no webhook: its image is kept all the same.
	t.Run("device deletes not sent", func(t *testing.T) {
		testCascadedDelete(t, func(s string) string {
			return strings.Replace(s, "  - name: netbox\n", "  - name: netbox\n    models: [Interface]\n", 1)
		})
	})
}

func testCascadedDelete(t *testing.T, edit func(string) string) {
	b := netboxDemoEdit(t, false, edit)
	b.Start()
	devices := 1
	if edit != nil {
		devices = 0
	}
	b.Exec(`BEGIN; DELETE FROM dcim_interface WHERE device_id = 1; DELETE FROM dcim_device WHERE id = 1; COMMIT`)
	b.WaitRows(14 + devices)
	want := map[string]any{"id": 1.0, "url": "/api/dcim/devices/1/", "display": "dmi01-akron-rtr01", "name": "dmi01-akron-rtr01", "description": ""}
	n := 0
	for _, d := range b.Deliveries("webhook = 'netbox' AND model = 'Interface'") {
		n++
		var body struct{ Data map[string]any }
		if err := json.Unmarshal([]byte(d.Raw), &body); err != nil {
			t.Fatal(err)
		}
		if d.Event != payload.EventDeleted || !reflect.DeepEqual(body.Data["device"], want) {
			t.Errorf("interface %s %s: device %v, want %v", d.Key, d.Event, body.Data["device"], want)
		}
		if d.Key == "3" {
			lag, _ := body.Data["lag"].(map[string]any)
			if lag == nil || lag["id"] != 833.0 || lag["display"] != "Po1" {
				t.Errorf("interface 3: lag %v, want Po1 (deleted in the same transaction)", body.Data["lag"])
			}
		}
	}
	if n != 14 {
		t.Errorf("%d interface deletes, want 14", n)
	}
	// A relation to a row deleted by an earlier transaction renders as null:
	// the images are the transaction's own.
	b.Exec(`DELETE FROM dcim_interface WHERE id = 834`)
	b.Exec(`DELETE FROM dcim_interface WHERE id = 170`)
	b.WaitRows(16 + devices)
	if ds := b.Deliveries("object_key = '170'"); len(ds) != 1 || !strings.Contains(ds[0].Raw, `"lag":null`) {
		t.Errorf("interface 170: %v", ds)
	}
}
