package config

import "testing"

// The shipped examples/netbox.yaml must stay valid.
func TestNetBoxExampleParses(t *testing.T) {
	c, err := Load("../../examples/netbox.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Models) != 6 || len(c.Webhooks) != 2 || c.Webhooks[1].Condition == nil || c.Webhooks[1].IsEnabled() {
		t.Errorf("unexpected example config: %d models, %+v", len(c.Models), c.Webhooks)
	}
	site := c.Models[0]
	if site.Model != "Site" || site.Relations["region_id"].URL != "/api/dcim/regions/{id}/" || site.ComputedOrder[0] != "display_url" {
		t.Errorf("site model: %+v", site)
	}
}
