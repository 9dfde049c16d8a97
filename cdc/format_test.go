package cdc_test

import (
	"regexp"
	"strings"
	"testing"
)

var (
	isoTimeRE  = regexp.MustCompile(`"timestamp":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00"`)
	unixTimeRE = regexp.MustCompile(`"signal_received_timestamp":\d+\.\d{6}`)
)

// golden replaces the commit times of a body by placeholders.
func golden(body string) string {
	body = isoTimeRE.ReplaceAllString(body, `"timestamp":"T"`)
	return unixTimeRE.ReplaceAllString(body, `"signal_received_timestamp":T`)
}

const formatSchema = `
CREATE TABLE region (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE site (id int PRIMARY KEY, name text NOT NULL, status text, region_id int REFERENCES region, comments text);
ALTER TABLE site REPLICA IDENTITY FULL;
CREATE TABLE device (id int PRIMARY KEY, name text NOT NULL, site_id int);
INSERT INTO region VALUES (7, 'Ohio');`

const formatModels = `
  - table: site
    model: Site
    object_type: dcim.site
    exclude: [comments]
    url: /api/dcim/sites/{id}/
    choices:
      status: {active: Active}
    relations:
      region_id: {table: region, columns: [id, name]}
    computed:
      device_count: {sql: "SELECT count(*) FROM device WHERE site_id = $1", args: [id]}
  - table: device
    model: Device
    rename: {site_id: site}`

func TestFormatsGolden(t *testing.T) {
	t.Parallel()
	b := setup(t, formatSchema, formatModels)
	b.Reconfigure(formatModels, `
  - name: n
    url: http://127.0.0.1:1/n
  - name: v
    url: http://127.0.0.1:1/v
    format: netbox-v4
    object_type: dcim.device
    models: [Device]
  - name: vs
    url: http://127.0.0.1:1/vs
    format: netbox-v4
    models: [Site]`)
	b.Start()
	b.Exec(`INSERT INTO site VALUES (1, 'ams1', 'planned', 7, 'note')`)
	b.Exec(`UPDATE site SET status = 'active', comments = 'x' WHERE id = 1`)
	b.Exec(`DELETE FROM site WHERE id = 1`)
	// The site's device_count is read when capture renders it: let capture
	// render the site's changes before a device exists (the count reflects
	// the database when capture reads it, later than the change if it lags).
	b.WaitRows(6)
	b.Exec(`INSERT INTO device VALUES (5, 'r1', 1)`)
	b.Exec(`UPDATE device SET name = 'r2' WHERE id = 5`)
	b.Exec(`DELETE FROM device WHERE id = 5`)
	b.WaitRows(12)
	want := []string{
		// Site, REPLICA IDENTITY FULL: complete snapshots as NetBox's serialize_object:
		// foreign keys raw, choice values raw, no url.
		`n created {"event":"created","signal_received_timestamp":T,"model":"Site","data":{"id":1,"url":"/api/dcim/sites/1/","name":"ams1","status":{"value":"planned","label":"planned"},"region":{"id":7,"name":"Ohio"},"device_count":0}}`,
		`vs created {"event":"created","timestamp":"T","object_type":"dcim.site","model":"site","username":null,"request_id":null,"data":{"id":1,"url":"/api/dcim/sites/1/","name":"ams1","status":{"value":"planned","label":"planned"},"region":{"id":7,"name":"Ohio"},"device_count":0},"snapshots":{"prechange":null,"postchange":{"id":1,"name":"ams1","status":"planned","region":7}}}`,
		`n updated {"event":"updated","signal_received_timestamp":T,"model":"Site","data":{"id":1,"url":"/api/dcim/sites/1/","name":"ams1","status":{"value":"active","label":"Active"},"region":{"id":7,"name":"Ohio"},"device_count":0}}`,
		`vs updated {"event":"updated","timestamp":"T","object_type":"dcim.site","model":"site","username":null,"request_id":null,"data":{"id":1,"url":"/api/dcim/sites/1/","name":"ams1","status":{"value":"active","label":"Active"},"region":{"id":7,"name":"Ohio"},"device_count":0},"snapshots":{"prechange":{"id":1,"name":"ams1","status":"planned","region":7},"postchange":{"id":1,"name":"ams1","status":"active","region":7}}}`,
		`n deleted {"event":"deleted","signal_received_timestamp":T,"model":"Site","data":{"id":1,"url":"/api/dcim/sites/1/","name":"ams1","status":{"value":"active","label":"Active"},"region":{"id":7,"name":"Ohio"},"device_count":0}}`,
		`vs deleted {"event":"deleted","timestamp":"T","object_type":"dcim.site","model":"site","username":null,"request_id":null,"data":{"id":1,"url":"/api/dcim/sites/1/","name":"ams1","status":{"value":"active","label":"Active"},"region":{"id":7,"name":"Ohio"},"device_count":0},"snapshots":{"prechange":{"id":1,"name":"ams1","status":"active","region":7},"postchange":null}}`,
		// Device, default identity: no prechange for updates, keys only for deletes.
		`n created {"event":"created","signal_received_timestamp":T,"model":"Device","data":{"id":5,"name":"r1","site":1}}`,
		`v created {"event":"created","timestamp":"T","object_type":"dcim.device","model":"device","username":null,"request_id":null,"data":{"id":5,"name":"r1","site":1},"snapshots":{"prechange":null,"postchange":{"id":5,"name":"r1","site":1}}}`,
		`n updated {"event":"updated","signal_received_timestamp":T,"model":"Device","data":{"id":5,"name":"r2","site":1}}`,
		`v updated {"event":"updated","timestamp":"T","object_type":"dcim.device","model":"device","username":null,"request_id":null,"data":{"id":5,"name":"r2","site":1},"snapshots":{"prechange":null,"postchange":{"id":5,"name":"r2","site":1}}}`,
		`n deleted {"event":"deleted","signal_received_timestamp":T,"model":"Device","data":{"id":5}}`,
		`v deleted {"event":"deleted","timestamp":"T","object_type":"dcim.device","model":"device","username":null,"request_id":null,"data":{"id":5},"snapshots":{"prechange":{"id":5},"postchange":null}}`,
	}
	got := b.Deliveries("true")
	var lines []string
	for _, d := range got {
		lines = append(lines, d.Webhook+" "+d.Event+" "+golden(d.Raw))
	}
	// deliveries orders by commit_lsn, seq, webhook.
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("bodies:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	for _, d := range got {
		if ts, ok := d.Body["timestamp"].(string); ok && !isoTimeRE.MatchString(`"timestamp":"`+ts+`"`) {
			t.Errorf("timestamp %q", ts)
		}
	}
}
