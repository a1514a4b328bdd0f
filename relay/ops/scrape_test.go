package ops

import (
	"errors"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// gatherFunc is a prometheus.Gatherer.
type gatherFunc func() ([]*dto.MetricFamily, error)

func (f gatherFunc) Gather() ([]*dto.MetricFamily, error) { return f() }

// TestSharedGather: scrapes that come while a Gather runs wait for it
// and share its result. A Gather that failed with some figures serves
// them; one that gathered nothing, or panicked, fails every scrape that
// shares it, so that none serves an empty 200.
func TestSharedGather(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "holdfast_test_gauge", Help: "A gauge."}))
	for _, tc := range []struct {
		mode    string
		wantErr bool
	}{
		{"ok", false},
		{"partial", false},
		{"empty", true},
		{"panic", true},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			release := make(chan struct{})
			var gathers atomic.Int32
			sg := &sharedGatherer{log: slog.New(slog.NewTextHandler(io.Discard, nil)), g: gatherFunc(func() ([]*dto.MetricFamily, error) {
				gathers.Add(1)
				<-release
				switch tc.mode {
				case "panic":
					panic("a collector panicked")
				case "empty":
					return nil, errors.New("nothing gathered")
				case "partial":
					mfs, _ := reg.Gather()
					return mfs, errors.New("the queue could not be read")
				}
				return reg.Gather()
			})}
			const scrapes = 5
			type result struct {
				mfs      []*dto.MetricFamily
				err      error
				panicked bool
			}
			results := make([]result, scrapes)
			var wg sync.WaitGroup
			for i := range scrapes {
				wg.Go(func() {
					defer func() {
						if recover() != nil {
							results[i].panicked = true
						}
					}()
					results[i].mfs, results[i].err = sg.Gather()
				})
			}
			// Release the Gather once every other scrape has joined it.
			for {
				sg.mu.Lock()
				joined := sg.cur != nil && sg.cur.joiners == scrapes-1
				sg.mu.Unlock()
				if joined {
					break
				}
				runtime.Gosched()
			}
			close(release)
			wg.Wait()
			if n := gathers.Load(); n != 1 {
				t.Errorf("%d gathers for %d scrapes at once, want 1", n, scrapes)
			}
			panicked := 0
			for i, r := range results {
				switch {
				case r.panicked:
					panicked++
				case tc.wantErr && r.err == nil:
					t.Errorf("scrape %d: %d families and no error, want an error", i, len(r.mfs))
				case !tc.wantErr && (r.err != nil || len(r.mfs) != 1):
					t.Errorf("scrape %d: %d families, %v; want the gauge's", i, len(r.mfs), r.err)
				}
			}
			if want := map[bool]int{true: 1, false: 0}[tc.mode == "panic"]; panicked != want {
				t.Errorf("%d scrapes panicked, want %d (the one that ran the Gather)", panicked, want)
			}
		})
	}
}
