// Package human formats sizes and durations for people, the same way in
// `walhook status`, `walhook deliveries`, `walhook check` and the status
// page.
package human

import (
	"fmt"
	"time"
)

// Bytes renders n bytes with binary units: 512 B, 1.5 KiB, 20.0 MiB.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%d B", n)
	}
	f := float64(n)
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB", "PiB"} {
		f /= unit
		if (f < unit && f > -unit) || u == "PiB" {
			return fmt.Sprintf("%.1f %s", f, u)
		}
	}
	panic("unreachable")
}

// Duration renders d briefly, with two significant units: 850ms, 42s,
// 3m12s, 5h03m, 2d04h. A negative d is rendered as its absolute value.
func Duration(d time.Duration) string {
	d = d.Abs()
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	if s := d.Round(time.Second); s < time.Hour {
		if s < time.Minute {
			return s.String()
		}
		return fmt.Sprintf("%dm%02ds", int(s.Minutes()), int(s.Seconds())%60)
	}
	if m := d.Round(time.Minute); m < 48*time.Hour {
		return fmt.Sprintf("%dh%02dm", int(m.Hours()), int(m.Minutes())%60)
	}
	h := int(d.Round(time.Hour).Hours())
	return fmt.Sprintf("%dd%02dh", h/24, h%24)
}

// Since renders the time from t to now: "42s ago", or "in 3m12s" when t is
// after now.
func Since(t, now time.Time) string {
	if d := now.Sub(t); d >= 0 {
		return Duration(d) + " ago"
	}
	return "in " + Duration(t.Sub(now))
}
