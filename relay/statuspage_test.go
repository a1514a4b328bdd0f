package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"holdfast/auth"
	"holdfast/queue"
	"holdfast/relay/ops"
)

// chromiumPath is Debian's chromium; .ci/run installs it.
const chromiumPath = "/usr/bin/chromium"

// artifactDir is where browser tests leave their screenshots:
// $HOLDFAST_TEST_ARTIFACTS, or holdfast-test-artifacts in the temp dir.
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("HOLDFAST_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "holdfast-test-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// browser starts headless Chromium for the test; a missing browser fails
// the test.
func browser(t *testing.T, width, height int) context.Context {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("%s is needed for the status page test (apt-get install chromium): %v", chromiumPath, err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath),
		chromedp.NoSandbox,
		chromedp.Flag("headless", "new"),
		chromedp.WindowSize(width, height),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(func() { cancelTimeout(); cancelCtx(); cancelAlloc() })
	return ctx
}

// readStatus reads /status.json from the operators' listener at base.
func readStatus(base string) (ops.Status, error) {
	var st ops.Status
	resp, err := http.Get(base + "/status.json")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&st)
	return st, err
}

// TestStatusPageInChromium loads the status page of a live relay in real
// headless Chromium: the credential's secret has expired at Entra
// (AADSTS7000222), so its breaker is open and mail is held, and the
// configured expires_at is 2 hours short of 12 days away, which shows as
// 12 days, rounded up as the command line counts. It checks what a person sees and
// leaves screenshots (desktop and phone) as test artefacts.
func TestStatusPageInChromium(t *testing.T) {
	expires := time.Now().Add(12*24*time.Hour - 2*time.Hour).UTC()
	e := newExchangeEnv(t, 1, func(o *Options) {
		o.Ops.minuteFlush = Duration(200 * time.Millisecond)
		o.Credentials[0].ExpiresAt = expires.Format(time.RFC3339)
	})
	r := e.relays[0]
	const sent = 6
	for i := range sent {
		e.submit(t, 0, "billing@contoso.com", fmt.Sprintf("ok%d@example.org", i), exchangeMessage(i, "billing@contoso.com"))
	}
	waitFor(t, 10*time.Second, "the first deliveries", func() bool { return e.sim.ReceivedCount() == sent })
	base := "http://" + r.OpsAddr()

	// Before Entra refuses the secret, the configured date decides: 12
	// days, amber.
	ctx := browser(t, 1100, 1300)
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("#expiry"))); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	expiryClass := see(t, ctx, chromedp.AttributeValue(chromedp.CSS("#expiry tr.level-warn"), "class")).Value
	expiryDays := see(t, ctx, chromedp.Text(chromedp.CSS("#expiry tr.level-warn td.days")))
	amber := see(t, ctx, chromedp.Evaluate[string](`getComputedStyle(document.querySelector("#expiry tr.level-warn")).backgroundColor`))
	if expiryClass != "level-warn" || strings.TrimSpace(expiryDays) != "12 days" {
		t.Errorf("expiry row class %q, days %q; want amber (level-warn) and \"12 days\"", expiryClass, expiryDays)
	}
	if amber != "rgb(255, 243, 214)" {
		t.Errorf("expiry row background %s, want the amber rgb(255, 243, 214)", amber)
	}
	// No card scrolls sideways on a desktop screen.
	wide := see(t, ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll("section")].filter(s => s.scrollWidth > s.clientWidth).map(s => s.id + " " + s.scrollWidth + ">" + s.clientWidth)`))
	if len(wide) > 0 {
		t.Errorf("cards wider than their place at 1100 px: %v", wide)
	}

	// The secret expires at Entra. The cached token and the idle
	// connections go, as they would within the hour (idle connections
	// close after 2 s).
	e.sim.ExpireSecret(simTenant, simClientID)
	time.Sleep(2500 * time.Millisecond)
	for _, c := range r.exchange.creds {
		c.Invalidate()
	}
	const held = 4
	for i := range held {
		e.submit(t, 0, "billing@contoso.com", fmt.Sprintf("held%d@example.org", i), exchangeMessage(100+i, "billing@contoso.com"))
	}
	var st ops.Status
	waitFor(t, 15*time.Second, "the breaker open, the mail held and counted", func() bool {
		var err error
		if st, err = readStatus(base); err != nil || len(st.Breakers) != 1 {
			return false
		}
		last := st.Minutes[len(st.Minutes)-1]
		return st.Breakers[0].State == "open" && st.Queue.Held == held && last.Held == held
	})

	// The page's numbers are those of GET /v1/breakers and the queue's
	// stats.
	list, err := r.breakerReporter().List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	qs, err := r.Queue().Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range list {
		if b.Name == credentialBreaker("contoso") {
			if got := st.Breakers[0]; got.Held != b.HeldMessages || got.Reason != b.Reason || !got.Since.Equal(b.Since) {
				t.Errorf("status.json breaker %+v; /v1/breakers says held %d, reason %q, since %v", got, b.HeldMessages, b.Reason, b.Since)
			}
		}
	}
	if st.Queue.Held != qs.Total.Held || st.Queue.Dead != qs.Total.Dead || st.Queue.Ready != qs.Total.Ready {
		t.Errorf("status.json queue %+v; queue stats %+v", st.Queue, qs.Total)
	}

	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("#breakers"))); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	title := see(t, ctx, chromedp.Title())
	breakers := see(t, ctx, chromedp.Text(chromedp.CSS("#breakers")))
	heldTile := see(t, ctx, chromedp.Text(chromedp.CSS("#held")))
	// Entra said the secret expired: that outranks the configured date.
	expired := see(t, ctx, chromedp.Text(chromedp.CSS("#expiry tr.level-crit")))
	red := see(t, ctx, chromedp.Evaluate[string](`getComputedStyle(document.querySelector("#expiry tr.level-crit")).backgroundColor`))
	bars := see(t, ctx, chromedp.Evaluate[int](`document.querySelectorAll("#chart svg rect.delivered").length`))
	lines := see(t, ctx, chromedp.Evaluate[int](`document.querySelectorAll("#chart svg polyline.held").length`))
	shot := see(t, ctx, chromedp.FullScreenshot(100))
	path := filepath.Join(artifactDir(t), "status.png")
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)

	if !strings.Contains(breakers, "contoso") || !strings.Contains(breakers, "open") || !strings.Contains(breakers, "AADSTS7000222") {
		t.Errorf("credential breakers section does not show contoso open with AADSTS7000222:\n%s", breakers)
	}
	if got := strings.Fields(heldTile); len(got) < 2 || got[0] != fmt.Sprint(held) || got[1] != "held" {
		t.Errorf("held tile reads %q, want %d held", heldTile, held)
	}
	if !strings.Contains(expired, "contoso") || !strings.Contains(expired, "expired today") || !strings.Contains(expired, "entra") {
		t.Errorf("after AADSTS7000222 the expiry row reads %q; want contoso, expired, source entra", expired)
	}
	if red == amber {
		t.Errorf("the expired row is amber (%s), not red", red)
	}
	after, err := readStatus(base)
	if err != nil || len(after.Expiries) != 1 || after.Expiries[0].Level != auth.LevelExpired || after.Expiries[0].Source != SourceEntra {
		t.Errorf("status.json credential_expiry %+v (%v); want level expired, source entra", after.Expiries, err)
	}
	if bars < 1 || lines != 1 {
		t.Errorf("chart has %d delivered bars and %d held lines; want bars for the %d delivered and one held line", bars, lines, sent)
	}
	if !strings.HasPrefix(title, "!") {
		t.Errorf("title %q does not flag the open breaker", title)
	}

	// On a phone the page fits the screen's width.
	phone := browser(t, 390, 844)
	if err := chromedp.Do(phone, chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile), chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("#breakers"))); err != nil {
		t.Fatalf("chromium (phone): %v", err)
	}
	scrollW := see(t, phone, chromedp.Evaluate[int](`document.documentElement.scrollWidth`))
	clientW := see(t, phone, chromedp.Evaluate[int](`document.documentElement.clientWidth`))
	shot = see(t, phone, chromedp.FullScreenshot(100))
	if err := os.WriteFile(filepath.Join(artifactDir(t), "status-phone.png"), shot, 0o644); err != nil {
		t.Fatal(err)
	}
	if scrollW > clientW {
		t.Errorf("on a 390 px phone the page is %d px wide: it scrolls sideways", scrollW)
	}
}

// see runs one browser action and returns what it read.
func see[T any](t *testing.T, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	return v
}

// TestStatusPageMailboxWaitsInChromium: while Exchange's block of a
// mailbox holds its mail on every relay, the status page, in headless
// Chromium, names the mailbox, why it waits and for how long, where the
// ready count alone would leave an operator guessing.
func TestStatusPageMailboxWaitsInChromium(t *testing.T) {
	e := newExchangeEnv(t, 1, nil)
	lim := queue.NewLimiter(e.f.redis.Client(t), nil)
	if _, err := lim.HoldMailbox(t.Context(), "noreply@contoso.com", waitBlocked, 30*time.Minute); err != nil {
		t.Fatal(err)
	}
	id := e.submit(t, 0, "noreply@contoso.com", "a@example.org", exchangeMessage(1, "noreply@contoso.com"))
	base := "http://" + e.relays[0].OpsAddr()
	var st ops.Status
	waitFor(t, 10*time.Second, "the wait in /status.json", func() bool {
		var err error
		st, err = readStatus(base)
		return err == nil && st.MailboxWaitCount == 1
	})
	if w := st.MailboxWaits; len(w) != 1 || w[0].Mailbox != "noreply@contoso.com" || time.Until(w[0].Until) < 29*time.Minute {
		t.Fatalf("/status.json mailbox_waits = %+v", w)
	}

	ctx := browser(t, 1100, 1300)
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("#waits table"))); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	title := see(t, ctx, chromedp.Text(chromedp.CSS("#waits h2")))
	row := see(t, ctx, chromedp.Text(chromedp.CSS("#waits tr:nth-child(2)")))
	// Card titles are set in capitals by the style sheet.
	if !strings.EqualFold(title, "Mailboxes Microsoft asked to wait (1)") || !strings.Contains(row, "noreply@contoso.com") ||
		!strings.Contains(row, "Exchange holds its sending") || !strings.Contains(row, "in 29m") && !strings.Contains(row, "in 30m") {
		t.Errorf("the waits card shows %q, %q", title, row)
	}
	shot := see(t, ctx, chromedp.FullScreenshot(100))
	if err := os.WriteFile(filepath.Join(artifactDir(t), "status-mailbox-waits.png"), shot, 0o644); err != nil {
		t.Fatal(err)
	}
	if m := e.get(t, id); m.State != queue.Ready || m.Attempts != 0 || e.sim.ReceivedCount() != 0 {
		t.Errorf("the waiting mailbox's message: %s, %d attempts, %d received; want it waiting untried", m.State, m.Attempts, e.sim.ReceivedCount())
	}
}

// TestStatusPageFullRouteInChromium: a route holding
// queue.max_messages_per_route messages is named on the status page, in
// headless Chromium, with what it holds and that its new mail is
// refused; before, the page says that no route is at the bound.
func TestStatusPageFullRouteInChromium(t *testing.T) {
	f := newFixture(t)
	s := startRelayOn(t, f, func(o *Options) {
		o.Delivery.Sender = "off"
		o.Queue.MaxMessagesPerRoute = 2
	})
	base := "http://" + s.OpsAddr()
	ctx := browser(t, 1100, 1300)
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("#full"))); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	if none := see(t, ctx, chromedp.Text(chromedp.CSS("#full p"))); !strings.Contains(none, "every route holds fewer than 2 messages") {
		t.Errorf("with no route full, the card says %q", none)
	}

	var route string
	for _, key := range []string{"a", "b"} {
		status, _, reply := postRouted(t, s, key)
		if status != http.StatusAccepted {
			t.Fatalf("message %s: %d", key, status)
		}
		m, err := s.queue.Get(t.Context(), reply.ID)
		if err != nil {
			t.Fatal(err)
		}
		route = m.Route
	}
	st, err := readStatus(base)
	if err != nil {
		t.Fatal(err)
	}
	if want := []ops.FullRoute{{Route: route, Messages: 2}}; !slices.Equal(st.FullRoutes, want) || st.FullRouteCount != 1 || st.MaxPerRoute != 2 {
		t.Fatalf("/status.json: full routes %+v (count %d, bound %d), want %+v, 1 and 2", st.FullRoutes, st.FullRouteCount, st.MaxPerRoute, want)
	}
	if err := chromedp.Do(ctx, chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS("#full table"))); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	title := see(t, ctx, chromedp.Text(chromedp.CSS("#full h2")))
	row := see(t, ctx, chromedp.Text(chromedp.CSS("#full tr:nth-child(2)")))
	if !strings.EqualFold(title, "Senders at their queue bound (1)") || !strings.Contains(row, route) ||
		!strings.Contains(row, "new mail refused") || !strings.HasSuffix(strings.TrimSpace(row), "2") {
		t.Errorf("the full routes card shows %q, %q", title, row)
	}
	shot := see(t, ctx, chromedp.FullScreenshot(100))
	if err := os.WriteFile(filepath.Join(artifactDir(t), "status-full-route.png"), shot, 0o644); err != nil {
		t.Fatal(err)
	}
}
