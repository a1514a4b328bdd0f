package breaker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"
)

// Webhook defaults.
const (
	webhookQueue   = 64                     // transitions waiting to be sent
	webhookTries   = 5                      // quick attempts per transition
	webhookBackoff = 500 * time.Millisecond // first retry delay, doubled after each quick try
	webhookTimeout = 10 * time.Second       // per attempt
	// After the quick tries, a transition is tried again every
	// webhookSlowEvery until webhookPatience after it was made: a
	// receiver down for a restart or a deploy still gets it.
	webhookSlowEvery = 30 * time.Second
	webhookPatience  = 30 * time.Minute
)

// Webhook POSTs each transition as JSON to a URL from a background
// goroutine, in order, retrying with exponential backoff (webhookTries
// quick tries), then every webhookSlowEvery until webhookPatience after
// the transition; later transitions wait meanwhile. Notify never blocks:
// when the queue is full the oldest waiting transition is dropped and
// logged (with a Ledger, its claim then lapses and a relay takes it over).
// Its Notify method fits Options.OnMade.
//
// With a Ledger (Track), the claims of the transitions it has still to
// post are kept alive every NoticeLease/3, ended when each is posted or
// given up, and handed back at Close: a transition whose relay was killed
// or stopped before posting it is posted by another.
//
// With WebhookMetrics it counts each try by event and outcome, each
// notice it gives up or pushes out of its queue, and the notices it has
// still to post: a receiver that fails shows in Prometheus, not only in
// the log.
type Webhook struct {
	url       string
	client    *http.Client
	log       *slog.Logger
	backoff   time.Duration
	slowEvery time.Duration
	patience  time.Duration
	keepEvery time.Duration
	mx        *WebhookMetrics

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	ledger  Ledger
	queue   []Transition
	current *Transition // being posted
	recent  []string    // noticeMember of the latest transitions posted or given up
	// redo are transitions posted whose claims were taken over again
	// (their NoticeDone failed): keep ends them.
	redo    []Transition
	posting int // Post calls under way
	wake    chan struct{}
	stopped bool
}

// A Ledger keeps, fleet-wide, the claims of the transitions' notices that
// a Webhook posts (Set implements it; see NoticeLease).
type Ledger interface {
	// KeepNotices renews the claims of transitions still to be posted.
	KeepNotices(ctx context.Context, ts []Transition)
	// NoticeDone ends the claim of a transition posted or given up.
	NoticeDone(ctx context.Context, t Transition)
	// ReleaseNotices hands back the claims of transitions this Webhook
	// will not post.
	ReleaseNotices(ctx context.Context, ts []Transition)
}

// ledgerTimeout bounds each call to the Ledger.
const ledgerTimeout = 2 * time.Second

// NewWebhook starts a notifier posting to url with client (default
// http.DefaultClient) and log (default slog.Default()), counting in m
// (nil counts nothing). Call Close to stop it.
func NewWebhook(url string, client *http.Client, log *slog.Logger, m *WebhookMetrics) *Webhook {
	return newWebhook(url, client, log, m, webhookBackoff)
}

func newWebhook(url string, client *http.Client, log *slog.Logger, m *WebhookMetrics, backoff time.Duration) *Webhook {
	if client == nil {
		client = http.DefaultClient
	}
	// A redirect that turns the POST into a GET (301, 302, 303) drops the
	// body: its landing page's 200 would count a notice nobody got as
	// delivered. Such a reply is a failure, retried and logged with its
	// status; 307 and 308 keep the POST and are followed.
	c := *client
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if req.Method != http.MethodPost {
			return http.ErrUseLastResponse
		}
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		return nil
	}
	client = &c
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &Webhook{
		url:       url,
		client:    client,
		log:       log.With("component", "breaker-webhook"),
		backoff:   backoff,
		slowEvery: webhookSlowEvery,
		patience:  webhookPatience,
		keepEvery: NoticeLease / 3,
		mx:        m,
		ctx:       ctx,
		cancel:    cancel,
		wake:      make(chan struct{}, 1),
	}
	m.follow(w.pendingCount)
	w.wg.Go(w.loop)
	return w
}

// Track makes the Webhook keep the claims of its transitions in l, and
// starts their renewal. Call it once, before the first Notify.
func (w *Webhook) Track(l Ledger) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped || w.ledger != nil {
		return
	}
	w.ledger = l
	w.wg.Go(func() { w.keep(l, w.keepEvery) })
}

// Notify queues t to be sent, unless it is queued, being sent or was
// sent lately (a transition this relay claimed and took over again).
func (w *Webhook) Notify(t Transition) {
	w.mu.Lock()
	// The same transition: the same claim (see noticeMember).
	key := noticeMember(t)
	same := func(q Transition) bool { return t.ID != "" && noticeMember(q) == key }
	if t.ID != "" && slices.Contains(w.recent, key) {
		// Posted, but its claim was left (a Redis blip at NoticeDone)
		// and this relay's Watch took it over: end the claim, not post.
		if w.ledger != nil && !slices.ContainsFunc(w.redo, same) {
			w.redo = append(w.redo, t)
		}
		w.mu.Unlock()
		return
	}
	if w.stopped || w.current != nil && same(*w.current) || slices.ContainsFunc(w.queue, same) {
		w.mu.Unlock()
		return
	}
	if len(w.queue) >= webhookQueue {
		old := w.queue[0]
		w.queue = w.queue[1:]
		w.log.Warn("webhook queue full, dropping oldest transition",
			"breaker", old.Name, "to", old.To, "generation", old.Generation)
		w.mx.drop(EventTransition)
	}
	w.queue = append(w.queue, t)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Close stops the notifier: an attempt in flight is cancelled. It then
// hands the claims of the transitions not posted back to the Ledger, for
// another relay to post them (a transition whose cancelled POST the
// receiver had taken is then posted twice, with the same ID). Stop the
// Set's Watch first.
func (w *Webhook) Close() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
	w.cancel()
	w.wg.Wait()
	w.mu.Lock()
	left := w.pending()
	w.queue, w.current = nil, nil
	l := w.ledger
	w.mu.Unlock()
	if l != nil && len(left) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), ledgerTimeout)
		defer cancel()
		l.ReleaseNotices(ctx, left)
	}
}

// pending returns the transition being posted and those queued. w.mu is
// held.
func (w *Webhook) pending() []Transition {
	var out []Transition
	if w.current != nil {
		out = append(out, *w.current)
	}
	return append(out, w.queue...)
}

// pendingCount is the number of notices still to post: the transitions
// of pending and the events being posted.
func (w *Webhook) pendingCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(w.queue) + w.posting
	if w.current != nil {
		n++
	}
	return n
}

func (w *Webhook) loop() {
	for {
		w.mu.Lock()
		ok := len(w.queue) > 0
		var t Transition
		if ok {
			t = w.queue[0]
			w.queue = w.queue[1:]
			w.current = &t
		}
		w.mu.Unlock()
		if !ok {
			select {
			case <-w.ctx.Done():
				return
			case <-w.wake:
				continue
			}
		}
		if !w.send(w.ctx, t) {
			// Stopped in the middle: Close hands it back.
			return
		}
		w.mu.Lock()
		l := w.ledger
		w.mu.Unlock()
		if l != nil {
			ctx, cancel := context.WithTimeout(context.Background(), ledgerTimeout)
			l.NoticeDone(ctx, t)
			cancel()
		}
		// Current until its claim is ended, and remembered after: a
		// claim that lapsed meanwhile, taken over by this relay's own
		// Watch, is not posted again.
		w.mu.Lock()
		w.current = nil
		if t.ID != "" {
			w.recent = append(w.recent, noticeMember(t))
			if len(w.recent) > webhookQueue {
				w.recent = w.recent[1:]
			}
		}
		w.mu.Unlock()
	}
}

// keep renews in l the claims of the transitions still to be posted
// every keepEvery, and ends those of transitions posted whose claims were
// taken over again.
func (w *Webhook) keep(l Ledger, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-tick.C:
		}
		w.mu.Lock()
		left, redo := w.pending(), w.redo
		w.redo = nil
		w.mu.Unlock()
		ctx, cancel := context.WithTimeout(w.ctx, ledgerTimeout)
		if len(left) > 0 {
			l.KeepNotices(ctx, left)
		}
		for _, t := range redo {
			l.NoticeDone(ctx, t)
		}
		cancel()
	}
}

// send posts t, with the retries of deliver. It reports whether it is
// done with t: posted, or given up; not when ctx ended first.
func (w *Webhook) send(ctx context.Context, t Transition) bool {
	body, err := json.Marshal(t)
	if err != nil {
		w.log.Error("webhook encode", "err", err)
		return true
	}
	// The patience counts from the transition, so that transitions
	// queued behind one that waited for the receiver do not each wait
	// as long again.
	made := t.At
	if made.IsZero() || made.After(time.Now()) {
		made = time.Now()
	}
	tries, err := w.deliver(ctx, EventTransition, body, made.Add(w.patience), func(try int, delay time.Duration, err error) {
		w.log.Warn("webhook failed, retrying", "breaker", t.Name, "try", try, "in", delay, "err", err)
	})
	switch {
	case err == nil && tries > webhookTries:
		w.log.Info("webhook delivered after the receiver failed", "breaker", t.Name, "to", t.To,
			"generation", t.Generation, "tries", tries)
	case err != nil && ctx.Err() != nil:
		return false
	case err != nil:
		w.log.Error("webhook failed, giving up", "breaker", t.Name, "to", t.To,
			"generation", t.Generation, "tries", tries, "err", err)
		w.mx.drop(EventTransition)
	}
	return true
}

// deliver posts body, a notice of event, up to webhookTries times,
// doubling the delay from w.backoff between tries, then every
// w.slowEvery while the next try comes before until; it calls retrying
// before each wait, and counts each try. It returns the tries made and
// the last error, nil once the receiver accepted it; when ctx ends during
// a wait, tries is 0 and the error wraps ctx's.
func (w *Webhook) deliver(ctx context.Context, event string, body []byte, until time.Time, retrying func(try int, delay time.Duration, err error)) (int, error) {
	for try := 1; ; try++ {
		err := w.post(ctx, body)
		w.mx.posted(event, err)
		if err == nil || ctx.Err() != nil {
			return try, err
		}
		delay := w.backoff << (try - 1)
		if try >= webhookTries {
			delay = w.slowEvery
			if time.Now().Add(delay).After(until) {
				return try, err
			}
		}
		if retrying != nil {
			retrying(try, delay, err)
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%w (after %d tries: %v)", ctx.Err(), try, err)
		case <-time.After(delay):
		}
	}
}

func (w *Webhook) post(ctx context.Context, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, webhookTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.client.Do(req)
	if err != nil {
		// Not the *url.Error itself: its text holds the URL, and a
		// webhook URL's path or query often carries a token.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("webhook POST: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode/100 == 3 {
		return fmt.Errorf("webhook: %s, which would turn the POST into a GET without its body: set breakers.webhook_url to the address it redirects to", resp.Status)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook: %s", resp.Status)
	}
	return nil
}
