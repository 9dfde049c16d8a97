package cdc

import (
	"context"
	"errors"
	"testing"

	"github.com/walhook/walhook/cdc/payload"
	"github.com/walhook/walhook/internal/config"
)

func TestBackfillUsageErrors(t *testing.T) {
	cfg := &config.Config{Models: []config.Model{{Schema: "public", Name: "site", Model: "Site"}}}
	for _, o := range []BackfillOptions{
		{Config: cfg, Model: "Nope"},
		{Config: cfg, Model: "Site", Event: payload.EventDeleted},
	} {
		_, err := Backfill(context.Background(), o)
		var be *BackfillError
		if !errors.As(err, &be) {
			t.Errorf("%+v: err = %v, want a BackfillError", o, err)
		}
	}
}
