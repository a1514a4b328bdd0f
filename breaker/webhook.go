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
// logged. Its Notify method fits Options.OnTransition.
type Webhook struct {
	url       string
	client    *http.Client
	log       *slog.Logger
	backoff   time.Duration
	slowEvery time.Duration
	patience  time.Duration

	mu      sync.Mutex
	queue   []Transition
	wake    chan struct{}
	stop    chan struct{}
	done    chan struct{}
	stopped bool
}

// NewWebhook starts a notifier posting to url with client (default
// http.DefaultClient) and log (default slog.Default()). Call Close to
// stop it.
func NewWebhook(url string, client *http.Client, log *slog.Logger) *Webhook {
	return newWebhook(url, client, log, webhookBackoff)
}

func newWebhook(url string, client *http.Client, log *slog.Logger, backoff time.Duration) *Webhook {
	if client == nil {
		client = http.DefaultClient
	}
	if log == nil {
		log = slog.Default()
	}
	w := &Webhook{
		url:       url,
		client:    client,
		log:       log.With("component", "breaker-webhook"),
		backoff:   backoff,
		slowEvery: webhookSlowEvery,
		patience:  webhookPatience,
		wake:      make(chan struct{}, 1),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	go w.loop()
	return w
}

// Notify queues t to be sent.
func (w *Webhook) Notify(t Transition) {
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return
	}
	if len(w.queue) >= webhookQueue {
		old := w.queue[0]
		w.queue = w.queue[1:]
		w.log.Warn("webhook queue full, dropping oldest transition",
			"breaker", old.Name, "to", old.To, "generation", old.Generation)
	}
	w.queue = append(w.queue, t)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Close stops the notifier; transitions still queued are not sent. It
// waits for an attempt in flight to end.
func (w *Webhook) Close() {
	w.mu.Lock()
	if !w.stopped {
		w.stopped = true
		close(w.stop)
	}
	w.mu.Unlock()
	<-w.done
}

func (w *Webhook) loop() {
	defer close(w.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-w.stop
		cancel()
	}()
	for {
		w.mu.Lock()
		var t Transition
		ok := len(w.queue) > 0
		if ok {
			t = w.queue[0]
			w.queue = w.queue[1:]
		}
		w.mu.Unlock()
		if !ok {
			select {
			case <-w.stop:
				return
			case <-w.wake:
				continue
			}
		}
		w.send(ctx, t)
	}
}

// send posts t, with the retries of deliver.
func (w *Webhook) send(ctx context.Context, t Transition) {
	body, err := json.Marshal(t)
	if err != nil {
		w.log.Error("webhook encode", "err", err)
		return
	}
	// The patience counts from the transition, so that transitions
	// queued behind one that waited for the receiver do not each wait
	// as long again.
	made := t.At
	if made.IsZero() || made.After(time.Now()) {
		made = time.Now()
	}
	tries, err := w.deliver(ctx, body, made.Add(w.patience), func(try int, delay time.Duration, err error) {
		w.log.Warn("webhook failed, retrying", "breaker", t.Name, "try", try, "in", delay, "err", err)
	})
	switch {
	case err == nil && tries > webhookTries:
		w.log.Info("webhook delivered after the receiver failed", "breaker", t.Name, "to", t.To,
			"generation", t.Generation, "tries", tries)
	case err != nil && tries > 0:
		w.log.Error("webhook failed, giving up", "breaker", t.Name, "to", t.To,
			"generation", t.Generation, "tries", tries, "err", err)
	}
}

// deliver posts body up to webhookTries times, doubling the delay from
// w.backoff between tries, then every w.slowEvery while the next try
// comes before until; it calls retrying before each wait. It returns the
// tries made and the last error, nil once the receiver accepted it; when
// ctx ends during a wait, tries is 0 and the error wraps ctx's.
func (w *Webhook) deliver(ctx context.Context, body []byte, until time.Time, retrying func(try int, delay time.Duration, err error)) (int, error) {
	for try := 1; ; try++ {
		err := w.post(ctx, body)
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
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook: %s", resp.Status)
	}
	return nil
}
