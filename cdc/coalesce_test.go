package cdc_test

import (
	"encoding/json"
	"fmt"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/test/cdctest"
	"strings"
	"testing"
)

const coalesceModels = `
  - table: item
    model: Item
    object_type: app.item`

const coalesceHooks = `
  - name: n
    url: http://127.0.0.1:1/n
  - name: c
    url: http://127.0.0.1:1/c
    coalesce: transaction
    format: netbox-v4
  - name: cu
    url: http://127.0.0.1:1/cu
    coalesce: transaction
    events: [updated]`

// summary is "webhook event seq key name prechange.name postchange.name".
func summary(d cdctest.Delivery) string {
	name := func(v any) string {
		m, ok := v.(map[string]any)
		if !ok {
			return "null"
		}
		return fmt.Sprint(m["name"])
	}
	s := fmt.Sprintf("%s %s %d %s %s", d.Webhook, d.Event, d.Seq, d.Key, name(d.Body["data"]))
	if sn, ok := d.Body["snapshots"].(map[string]any); ok {
		s += " pre=" + name(sn["prechange"]) + " post=" + name(sn["postchange"])
	}
	return s
}

func TestCoalesceTransaction(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE item (id int PRIMARY KEY, name text);
		ALTER TABLE item REPLICA IDENTITY FULL;
		CREATE TABLE plain (id int PRIMARY KEY, name text);`, coalesceModels)
	b.Reconfigure(coalesceModels+`
  - table: plain
    model: Plain
    object_type: app.plain`, coalesceHooks)
	b.Start()
	txns := []string{
		`INSERT INTO item VALUES (2, 'two'), (3, 'three'), (5, 'five')`,
		// insert then updates: one created with the final row
		`INSERT INTO item VALUES (1, 'a'); UPDATE item SET name = 'b' WHERE id = 1; UPDATE item SET name = 'c' WHERE id = 1`,
		// updates: one updated, prechange = the row before the transaction
		`UPDATE item SET name = 'x' WHERE id = 2; UPDATE item SET name = 'y' WHERE id = 2`,
		// update then delete: deleted, prechange = the row before the transaction
		`UPDATE item SET name = 'z' WHERE id = 3; DELETE FROM item WHERE id = 3`,
		// insert then delete: deleted (as NetBox does), no prechange
		`INSERT INTO item VALUES (4, 'four'); DELETE FROM item WHERE id = 4`,
		// delete then insert again: updated
		`DELETE FROM item WHERE id = 5; INSERT INTO item VALUES (5, 'new five')`,
		// several objects interleaved; default identity: no prechange
		`INSERT INTO plain VALUES (1, 'p'); UPDATE item SET name = 'q' WHERE id = 1; UPDATE plain SET name = 'p2' WHERE id = 1; UPDATE item SET name = 'r' WHERE id = 1; UPDATE plain SET name = 'p3' WHERE id = 1`,
		`UPDATE plain SET name = 'p4' WHERE id = 1; UPDATE plain SET name = 'p5' WHERE id = 1`,
	}
	for _, tx := range txns {
		b.Exec("BEGIN; " + tx + "; COMMIT")
	}
	b.WaitRows(36)
	want := []string{
		"c created 0 2 two pre=null post=two",
		"c created 1 3 three pre=null post=three",
		"c created 2 5 five pre=null post=five",
		"c created 2 1 c pre=null post=c",
		"c updated 1 2 y pre=two post=y",
		"cu updated 1 2 y",
		"c deleted 1 3 z pre=three post=null",
		"c deleted 1 4 four pre=null post=null",
		"c updated 1 5 new five pre=five post=new five",
		"cu updated 1 5 new five",
		"c updated 3 1 r pre=c post=r",
		"cu updated 3 1 r",
		"c created 4 1 p3 pre=null post=p3",
		"c updated 1 1 p5 pre=null post=p5",
		"cu updated 1 1 p5",
	}
	var got []string
	for _, d := range b.Deliveries("webhook <> 'n'") {
		got = append(got, summary(d))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("coalesced:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Without coalescing every change is sent.
	if n := b.Count("webhook = 'n'"); n != 21 {
		t.Errorf("webhook n has %d deliveries, want 21", n)
	}
	// The coalesced created body is the final row, also in data.
	for _, d := range b.Deliveries("webhook = 'c' AND object_key = '1' AND event = 'created' AND model = 'Item'") {
		var v struct {
			ObjectType string         `json:"object_type"`
			Data       map[string]any `json:"data"`
		}
		if err := json.Unmarshal([]byte(d.Raw), &v); err != nil || v.ObjectType != "app.item" || v.Data["name"] != "c" {
			t.Errorf("created body %s", d.Raw)
		}
	}
}

func TestCoalesceBounded(t *testing.T) {
	// Not parallel: it sets maxCoalesceObjects, which every capture of the process reads.
	t.Cleanup(cdc.SetMaxCoalesceObjects(2)) // runs after the capture stops
	b := setup(t, `CREATE TABLE item (id int PRIMARY KEY, name text); INSERT INTO item VALUES (1, 'a'), (2, 'b'), (3, 'c')`, coalesceModels)
	b.Reconfigure(coalesceModels, coalesceHooks)
	b.Start()
	b.Exec(`BEGIN; UPDATE item SET name = 'a1' WHERE id = 1; UPDATE item SET name = 'b1' WHERE id = 2;
		UPDATE item SET name = 'c1' WHERE id = 3; UPDATE item SET name = 'a2' WHERE id = 1; COMMIT`)
	b.WaitRows(4 + 4 + 4)
	var got []string
	for _, d := range b.Deliveries("webhook = 'c'") {
		got = append(got, summary(d))
	}
	want := []string{
		"c updated 0 1 a1 pre=null post=a1",
		"c updated 1 2 b1 pre=null post=b1",
		"c updated 2 3 c1 pre=null post=c1",
		"c updated 3 1 a2 pre=null post=a2",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestCoalesceLookupsAndChunks(t *testing.T) {
	t.Parallel()
	b := setup(t, formatSchema, formatModels)
	b.Reconfigure(formatModels, `
  - name: c
    url: http://127.0.0.1:1/c
    coalesce: transaction
    format: netbox-v4
    models: [Site]
  - name: d
    url: http://127.0.0.1:1/d
    coalesce: transaction
    models: [Device]`)
	b.Start()
	// Relations and computed fields of a coalesced event are read at commit.
	b.Exec(`BEGIN; INSERT INTO site VALUES (1, 'ams1', 'planned', NULL, 'note'); UPDATE site SET region_id = 7 WHERE id = 1;
		INSERT INTO device VALUES (1, 'd1', 1); UPDATE site SET name = 'ams2' WHERE id = 1; COMMIT`)
	b.WaitRows(2)
	ds := b.Deliveries("webhook = 'c'")
	want := `{"event":"created","timestamp":"T","object_type":"dcim.site","model":"site","username":null,"request_id":null,"data":{"id":1,"url":"/api/dcim/sites/1/","name":"ams2","status":{"value":"planned","label":"planned"},"region":{"id":7,"name":"Ohio"},"device_count":1},"snapshots":{"prechange":null,"postchange":{"id":1,"name":"ams2","status":"planned","region":7}}}`
	if len(ds) != 1 || golden(ds[0].Raw) != want || ds[0].Seq != 3 {
		t.Fatalf("got %+v\nwant seq 3 %s", ds, want)
	}
	// More coalesced events than a chunk: all written, one per object.
	b.Exec(`BEGIN; INSERT INTO device SELECT g, 'n' || g, NULL FROM generate_series(100, 1299) g;
		UPDATE device SET name = 'm' || id WHERE id >= 100; COMMIT`)
	b.WaitRows(2 + 1200)
	if n := b.Count("webhook = 'd' AND event = 'created' AND body LIKE '%\"name\":\"m%'"); n != 1200 {
		t.Errorf("%d coalesced created events with the final row, want 1200", n)
	}
}
