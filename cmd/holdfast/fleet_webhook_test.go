package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// webhookReceiver is a breaker webhook's receiver that answers 503 while
// down, and records the transitions posted to it while up.
type webhookReceiver struct {
	*httptest.Server
	down atomic.Bool

	mu  sync.Mutex
	got []webhookPost
}

type webhookPost struct {
	ID string `json:"id"`
	To string `json:"to"`
	at time.Time
}

func newWebhookReceiver(t *testing.T) *webhookReceiver {
	r := &webhookReceiver{}
	r.down.Store(true)
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var p webhookPost
		if err := json.NewDecoder(req.Body).Decode(&p); err != nil {
			t.Errorf("webhook body: %v", err)
		}
		if r.down.Load() {
			http.Error(w, "restarting", http.StatusServiceUnavailable)
			return
		}
		p.at = time.Now()
		r.mu.Lock()
		r.got = append(r.got, p)
		r.mu.Unlock()
	}))
	t.Cleanup(r.Close)
	return r
}

// configure returns an incFleetOptions.edit that sets the breakers'
// webhook to r, after edit when it is not nil.
func (r *webhookReceiver) configure(edit func(n int, config string) string) func(n int, config string) string {
	return func(n int, config string) string {
		if edit != nil {
			config = edit(n, config)
		}
		return strings.Replace(config, "breakers:\n", fmt.Sprintf("breakers:\n  webhook_url: %q\n", r.URL), 1)
	}
}

// webhookPoster waits for a relay to try the breakers' webhook and
// returns its index: the relay that claimed the transition's notice.
func (f *incFleet) webhookPoster() int {
	f.tb.Helper()
	poster := -1
	incWait(f.tb, 10*time.Second, "a relay trying the webhook", func() bool {
		for i, r := range f.relays {
			if _, ok := r.logLine("webhook failed, retrying"); ok {
				poster = i
				return true
			}
		}
		return false
	})
	return poster
}

// posts returns the posts of transition id received so far.
func (r *webhookReceiver) posts(id string) []webhookPost {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []webhookPost
	for _, p := range r.got {
		if p.ID == id {
			out = append(out, p)
		}
	}
	return out
}

// TestWebhookAfterKill: the relay posting a breaker's webhook is killed
// with SIGKILL while the receiver is down (restarting, as it may be in
// the same incident). The transition must still reach the receiver once
// it is back: from another relay once the killed one's claim has lapsed,
// or at once from the killed relay started again with the same name.
func TestWebhookAfterKill(t *testing.T) {
	for _, restart := range []bool{false, true} {
		t.Run(map[bool]string{false: "gone", true: "restarted"}[restart], func(t *testing.T) {
			rcv := newWebhookReceiver(t)
			f := startIncFleet(t, incFleetOptions{mailboxes: 2, edit: rcv.configure(nil)})
			f.cli(0, "breaker", "trip", incCred)
			const id = incCred + "@1"
			poster := f.webhookPoster()
			f.kill(poster)
			killed := time.Now()
			if restart {
				f.restart(poster)
			}
			rcv.down.Store(false)
			// Another relay takes the notice over once the claim has
			// lapsed (15 s); the relay started again, at once.
			within := 25 * time.Second
			if restart {
				within = 5 * time.Second
			}
			incWait(t, within, "the transition posted after the kill", func() bool { return len(rcv.posts(id)) > 0 })
			p := rcv.posts(id)[0]
			if p.To != "open" {
				t.Errorf("posted %+v, want the breaker's opening", p)
			}
			t.Logf("relay-%d killed to the transition posted: %v", poster+1, p.at.Sub(killed).Round(time.Millisecond))
			time.Sleep(2 * time.Second) // room for a second post to show
			// The breaker closes once a relay has probed; that
			// transition is posted too, each once.
			rcv.mu.Lock()
			defer rcv.mu.Unlock()
			seen := map[string]int{}
			for _, p := range rcv.got {
				seen[p.ID]++
			}
			for id, n := range seen {
				if n != 1 {
					t.Errorf("transition %s was posted %d times once the receiver was up, want 1", id, n)
				}
			}
			t.Logf("posted: %v", seen)
		})
	}
}
