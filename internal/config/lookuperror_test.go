package config

import (
	"strings"
	"testing"
)

func TestOnLookupError(t *testing.T) {
	for _, tc := range []struct{ name, line, want, wantErr string }{
		{"default", "", LookupErrorRetry, ""},
		{"retry", "    on_lookup_error: retry\n", LookupErrorRetry, ""},
		{"omit", "    on_lookup_error: omit\n", LookupErrorOmit, ""},
		{"bad", "    on_lookup_error: skip\n", "", `walhook.yaml:5: model dcim_site: on_lookup_error "skip" must be retry or omit`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.Replace(minimal, "  - table: dcim_site\n", "  - table: dcim_site\n"+tc.line, 1)
			c, ce := parseErr(t, y(src), nil)
			if tc.wantErr != "" {
				if ce == nil || !strings.Contains(ce.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", ce, tc.wantErr)
				}
				return
			}
			if ce != nil {
				t.Fatal(ce)
			}
			if got := c.Models[0].OnLookupError; got != tc.want {
				t.Errorf("OnLookupError = %q, want %q", got, tc.want)
			}
		})
	}
}
