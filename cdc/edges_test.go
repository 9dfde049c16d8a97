package cdc

import (
	"strings"
	"testing"
)

// TestHostileOutputSettings: settings of the database that change the text
// form of values (set with ALTER DATABASE, as a DBA might) change nothing in
// the payloads, neither in the captured row nor in a relation lookup.
func TestHostileOutputSettings(t *testing.T) {
	const schema = `CREATE TABLE region (id int PRIMARY KEY, weight float8, created timestamptz, span interval, raw bytea, price money);
		CREATE TABLE site (id int PRIMARY KEY, region_id int REFERENCES region, f8 float8, f4 float4, ts timestamptz, tsn timestamp, d date, iv interval, by bytea, m money);
		INSERT INTO region VALUES (1, 0.30000000000000004, '2024-01-02 03:04:05.5+00', '1 day 02:00:00', '\xdead', 12.5);`
	const wantData = `{"id":1,"region":{"id":1,"weight":0.30000000000000004,"created":"2024-01-02T03:04:05.5Z","span":"1 day 02:00:00","raw":"3q0=","price":"$12.50"},` +
		`"f8":1.2345678901234567,"f4":0.1,"ts":"2024-01-02T01:04:05.123456Z","tsn":"2024-01-02T03:04:05","d":"2024-01-02","iv":"-1 days -02:03:00","by":"3q2+7w==","m":"$1,234.56"}`
	for _, tc := range []struct{ setting, value string }{
		{"extra_float_digits", "0"},
		{"bytea_output", "escape"},
		{"DateStyle", "'SQL, DMY'"},
		{"IntervalStyle", "sql_standard"},
		{"TimeZone", "'America/New_York'"},
	} {
		t.Run(tc.setting, func(t *testing.T) {
			b := setup(t, schema+`DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET `+tc.setting+` = `+strings.ReplaceAll(tc.value, "'", "''")+`', current_database()); END $$;`, `
  - table: site
    relations:
      region_id: {field: region, table: public.region, columns: [id, weight, created, span, raw, price]}`)
			b.start()
			b.exec(`SET lc_monetary = 'C'; SET DateStyle = 'ISO'; SET TimeZone = 'UTC'; SET IntervalStyle = 'postgres'`)
			b.exec(`INSERT INTO site VALUES (1, 1, 1.2345678901234567, 0.1, '2024-01-02 03:04:05.123456+02', '2024-01-02 03:04:05', '2024-01-02', '-1 day -02:03:00', '\xdeadbeef', 1234.56)`)
			b.waitRows(2)
			if got := dataOf(t, b.deliveries("webhook = 'a'")[0].Raw); got != wantData {
				t.Errorf("with %s = %s at the database level\n got %s\nwant %s", tc.setting, tc.value, got, wantData)
			}
		})
	}
}
