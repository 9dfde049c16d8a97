package config

import "testing"

// The shipped config.example.yaml must stay valid.
func TestConfigExampleFileParses(t *testing.T) {
	t.Setenv("INVENTORY_SECRET", "x")
	c, err := Load("../../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Models) != 2 || len(c.Webhooks) != 1 || c.Webhooks[0].Retry.MaxAttempts != 8 {
		t.Errorf("unexpected example config: %+v", c)
	}
}
