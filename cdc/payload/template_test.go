package payload

import "testing"

func TestTemplateJSONKeepsOrder(t *testing.T) {
	tp := NewTemplater()
	p, err := tp.Payload(`{"event":"created","signal_received_timestamp":1.5,"model":"M","data":{"z":1,"a":{"y":2,"b":[1,{"k":"v","c":null}]},"n":12345678901234567890}}`, nil)
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := tp.parse("t", `{{json .data}}|{{json .data.a}}|{{json .data.z}}|{{.data.z}}|{{json .old}}|{{.timestamp}}|{{json .data.n}}|{{json "x\"y"}}|{{if eq .data.z 1}}one{{end}}`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := tp.Execute(tmpl, p)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"z":1,"a":{"y":2,"b":[1,{"k":"v","c":null}]},"n":12345678901234567890}|{"y":2,"b":[1,{"k":"v","c":null}]}|1|1|null|1.5|12345678901234567890|"x\"y"|one`
	if got != want {
		t.Errorf("\n got %s\nwant %s", got, want)
	}
	// A map built in the template has no rendered text: sorted keys.
	b, _ := tp.appendJSON(nil, map[string]any{"b": 1, "a": []any{true, "s"}}, 0)
	if string(b) != `{"a":[true,"s"],"b":1}` {
		t.Errorf("map = %s", b)
	}
}
