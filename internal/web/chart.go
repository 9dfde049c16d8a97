package web

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/walhook/walhook/internal/outbox"
)

// The status page draws, per webhook, the last hour from the minutes table
// (which dispatchers fill): attempts per minute as bars, delivered below
// and failed attempts (retried or given up) above, and the backlog sampled
// each minute as a step line under them. The SVG is written by the page's
// template from the coordinates computed here: no script, no inline style
// (the page's CSP refuses both); colours come from classes in walhook.css,
// with presentation attributes as a fallback.

// Chart geometry, in SVG user units (pixels at the default size).
const (
	chartMinutes = 60
	chartWidth   = 300
	chartHeight  = 122
	chartLeft    = 36 // room for the y-axis labels
	chartSlot    = 4  // width of one minute
	chartBar     = 3  // width of a bar
	barsTop      = 8
	barsBottom   = 62
	backlogTop   = 78
	backlogBase  = 102
	chartTimeY   = 116
)

// chartView is one webhook's chart, ready for the template.
type chartView struct {
	Name          string
	Width, Height int
	// Label is the chart's accessible name: the figures it shows.
	Label string
	// Empty: no attempt and no backlog sample in the hour.
	Empty bool
	Bars  []barView
	// BarsMax and BacklogMax are the top of each y axis (labelled).
	BarsMax, BacklogMax string
	// Backlog is the step line's SVG path ("" without samples).
	Backlog string
	// Geometry for the axes and labels.
	Left, Right, AxisX, BarsTop, BarsBottom, BacklogTop, BacklogBase, TimeY, Mid, NoteY int
}

// barView is one minute's bars.
type barView struct {
	X, Width int
	// Heights are "" for an absent part.
	OKY, OKH, BadY, BadH string
	Title                string
}

// minuteChart is what a chart is drawn from: chartMinutes minutes, oldest
// first, the last one being the current (partial) minute.
type minuteChart struct {
	Start  time.Time
	Counts [chartMinutes]outbox.MinuteCounts
	Has    [chartMinutes]bool
}

// readCharts reads the last hour of every webhook.
func (s *Server) readCharts(ctx context.Context, now time.Time) (map[string]*minuteChart, error) {
	end := outbox.Minute(now)
	start := end.Add(-(chartMinutes - 1) * time.Minute)
	rows, err := s.store.Minutes(ctx, start, end)
	if err != nil {
		return nil, err
	}
	out := map[string]*minuteChart{}
	for _, r := range rows {
		i := int(r.Minute.Sub(start) / time.Minute)
		if i < 0 || i >= chartMinutes {
			continue
		}
		c := out[r.Webhook]
		if c == nil {
			c = &minuteChart{Start: start}
			out[r.Webhook] = c
		}
		c.Counts[i], c.Has[i] = r, true
	}
	return out, nil
}

// drawChart lays out webhook name's chart; c may be nil (no data).
func drawChart(name string, c *minuteChart) *chartView {
	v := &chartView{Name: name, Width: chartWidth, Height: chartHeight,
		Left: chartLeft, Right: chartLeft + chartMinutes*chartSlot, AxisX: chartLeft - 4,
		NoteY:   (barsTop + barsBottom) / 2,
		BarsTop: barsTop, BarsBottom: barsBottom, BacklogTop: backlogTop, BacklogBase: backlogBase,
		TimeY: chartTimeY, Mid: chartLeft + chartMinutes*chartSlot/2}
	if c == nil {
		c = &minuteChart{}
	}
	var delivered, retried, failed, peak, peakBacklog int64
	var last *int64
	sampled := false
	for i := range chartMinutes {
		m := c.Counts[i]
		delivered += m.Delivered
		retried += m.Retried
		failed += m.Failed
		peak = max(peak, m.Delivered+m.Retried+m.Failed)
		if m.Backlog != nil {
			sampled = true
			peakBacklog = max(peakBacklog, *m.Backlog)
			last = m.Backlog
		}
	}
	v.Empty = peak == 0 && !sampled
	barsMax, backlogMax := niceCeil(peak), niceCeil(peakBacklog)
	v.BarsMax, v.BacklogMax = strconv.FormatInt(barsMax, 10)+"/min", strconv.FormatInt(backlogMax, 10)

	label := fmt.Sprintf("%s, last hour: %d delivered, %d failed attempts (%d retried, %d gave up); at most %d attempts in a minute",
		name, delivered, retried+failed, retried, failed, peak)
	if last != nil {
		label += fmt.Sprintf("; backlog %d at the last sample, at most %d", *last, peakBacklog)
	} else {
		label += "; backlog not sampled"
	}
	v.Label = label + "."

	barsH := float64(barsBottom - barsTop)
	backlogH := float64(backlogBase - backlogTop)
	var path strings.Builder
	prev := false
	for i := range chartMinutes {
		m := c.Counts[i]
		x := chartLeft + i*chartSlot
		if bad := m.Retried + m.Failed; m.Delivered+bad > 0 {
			okH := height(m.Delivered, barsMax, barsH)
			badH := height(bad, barsMax, barsH)
			b := barView{X: x, Width: chartBar}
			if okH > 0 {
				b.OKY, b.OKH = px(barsBottom-okH), px(okH)
			}
			if badH > 0 {
				b.BadY, b.BadH = px(barsBottom-okH-badH), px(badH)
			}
			b.Title = fmt.Sprintf("%s UTC: %d delivered, %d failed attempts", c.Start.Add(time.Duration(i)*time.Minute).Format("15:04"),
				m.Delivered, bad)
			v.Bars = append(v.Bars, b)
		}
		if m.Backlog == nil {
			prev = false
			continue
		}
		y := px(backlogBase - height(*m.Backlog, backlogMax, backlogH))
		if prev {
			fmt.Fprintf(&path, " V%s H%d", y, x+chartSlot)
		} else {
			fmt.Fprintf(&path, " M%d %s H%d", x, y, x+chartSlot)
		}
		prev = true
	}
	v.Backlog = strings.TrimSpace(path.String())
	return v
}

// height is n's height on an axis of top max and h units; a non-zero
// count is at least one unit high, so that it shows.
func height(n, top int64, h float64) float64 {
	if n <= 0 || top <= 0 {
		return 0
	}
	return max(1, float64(n)/float64(top)*h)
}

// px formats a coordinate with one decimal.
func px(f float64) string { return strconv.FormatFloat(math.Round(f*10)/10, 'f', -1, 64) }

// niceCeil rounds n up to 1, 2 or 5 times a power of ten (at least 1), the
// labelled top of an axis.
func niceCeil(n int64) int64 {
	if n <= 1 {
		return 1
	}
	for p := int64(1); ; p *= 10 {
		for _, m := range []int64{1, 2, 5} {
			if m*p >= n {
				return m * p
			}
		}
		if p > math.MaxInt64/100 {
			return n
		}
	}
}
