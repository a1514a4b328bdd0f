package ops

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"holdfast/auth"
)

//go:embed page.html
var pageFS embed.FS

type pageRenderer struct {
	tmpl *template.Template
}

func newPageRenderer() *pageRenderer {
	t := template.Must(template.New("page.html").Funcs(template.FuncMap{
		"ago":      ago,
		"in":       func(now, t time.Time) string { return "in " + human(Seconds(t.Sub(now))) },
		"duration": human,
		"stamp":    func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") },
	}).ParseFS(pageFS, "page.html"))
	return &pageRenderer{tmpl: t}
}

// pageData is the template's input: the status and what is drawn from
// it.
type pageData struct {
	Status
	Err      string
	Refresh  int
	Expiry   []expiryRow
	Chart    chart
	Degraded bool
}

type expiryRow struct {
	Expiry
	Days  string
	Level string // "ok", "warn" (30 days or less), "crit" (7 days or less, or past) or "unknown"
}

func (p *pageRenderer) render(w http.ResponseWriter, st Status, err error, refresh time.Duration) {
	d := pageData{Status: st, Refresh: int(refresh / time.Second)}
	if err != nil {
		d.Err = err.Error()
	}
	if d.Now.IsZero() {
		d.Now = time.Now()
	}
	for _, e := range st.Expiries {
		d.Expiry = append(d.Expiry, expiryRow{Expiry: e, Days: daysLeft(e.At, d.Now), Level: expiryLevel(e.At, d.Now)})
	}
	for _, b := range st.Breakers {
		d.Degraded = d.Degraded || b.State != "closed"
	}
	d.Degraded = d.Degraded || st.OpenMailboxCount > 0
	d.Chart = drawChart(st.Minutes)
	var buf bytes.Buffer
	if terr := p.tmpl.Execute(&buf, d); terr != nil {
		http.Error(w, "status page: "+terr.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(buf.Bytes())
}

// expiryLevel is the class of a row: auth.ExpiryLevel's, with a date
// past the end shown as a critical one.
func expiryLevel(at, now time.Time) string {
	switch auth.ExpiryLevel(at, now) {
	case auth.LevelUnknown:
		return "unknown"
	case auth.LevelCritical, auth.LevelExpired:
		return "crit"
	case auth.LevelWarning:
		return "warn"
	}
	return "ok"
}

// daysLeft says how many days are left before at, rounded up as the
// command line and the webhook count them (auth.DaysLeft), or how long
// ago it passed.
func daysLeft(at, now time.Time) string {
	if at.IsZero() {
		return "unknown"
	}
	if n := auth.DaysLeft(at, now); n > 0 {
		return plural(n, "day")
	}
	// In milliseconds, as auth.DaysLeft counts.
	past := now.UnixMilli() - at.UnixMilli()
	day := int64(24 * time.Hour / time.Millisecond)
	if past < day {
		return "expired today"
	}
	return "expired " + plural(int(past/day), "day") + " ago"
}

func plural(n int, unit string) string {
	if n == 1 {
		return "1 " + unit
	}
	return strconv.Itoa(n) + " " + unit + "s"
}

// ago says how long before now t was.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return human(Seconds(now.Sub(t))) + " ago"
}

// human writes a duration the way a person reads it: "45s", "12m",
// "3h 20m", "2d 4h".
func human(s Seconds) string {
	d := time.Duration(s)
	switch {
	case d <= 0:
		return "0s"
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh %dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd %dh", int(d.Hours())/24, int(d.Hours())%24)
}

// chart is the per-minute chart, drawn on the server as SVG shapes.
type chart struct {
	Width, Height int
	Top           int64 // the value at the top of the scale
	Bars          []bar // delivered per minute
	HeldLine      string
	HeldDots      []dot
	TotalDone     int64
	LastHeld      int64
}

type bar struct {
	X, Y, W, H float64
	Title      string
}

type dot struct {
	X, Y  float64
	Title string
}

const (
	chartW    = 600
	chartH    = 160
	chartPadT = 10
)

func drawChart(minutes []Minute) chart {
	c := chart{Width: chartW, Height: chartH}
	for _, m := range minutes {
		c.Top = max(c.Top, m.Delivered, m.Held)
		c.TotalDone += m.Delivered
	}
	if len(minutes) > 0 {
		c.LastHeld = minutes[len(minutes)-1].Held
	}
	c.Top = niceCeil(c.Top)
	if len(minutes) == 0 {
		return c
	}
	slot := float64(chartW) / float64(len(minutes))
	y := func(v int64) float64 {
		return chartH - float64(v)/float64(c.Top)*float64(chartH-chartPadT)
	}
	var line strings.Builder
	for i, m := range minutes {
		x := float64(i) * slot
		label := m.Start.UTC().Format("15:04")
		if m.Delivered > 0 {
			top := y(m.Delivered)
			c.Bars = append(c.Bars, bar{X: x + 1, Y: top, W: slot - 2, H: chartH - top,
				Title: fmt.Sprintf("%s: %d delivered", label, m.Delivered)})
		}
		cx, cy := x+slot/2, y(m.Held)
		fmt.Fprintf(&line, "%.1f,%.1f ", cx, cy)
		if m.Held > 0 {
			c.HeldDots = append(c.HeldDots, dot{X: cx, Y: cy, Title: fmt.Sprintf("%s: %d held", label, m.Held)})
		}
	}
	c.HeldLine = strings.TrimSpace(line.String())
	return c
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten, at least 5.
func niceCeil(v int64) int64 {
	if v <= 5 {
		return 5
	}
	p := math.Pow(10, math.Floor(math.Log10(float64(v))))
	for _, f := range []float64{1, 2, 5, 10} {
		if n := int64(f * p); n >= v {
			return n
		}
	}
	return v
}
