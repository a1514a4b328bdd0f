package ops

import (
	"bytes"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// sharedGatherer runs one Gather at a time: a scrape that comes while one
// runs waits for it and serves its result. With Redis slow or stopped, a
// scrape waits for its Redis reads up to their bound; scrapes that
// Prometheus sends meanwhile, having given up on the last, then add no
// reads of their own.
//
// It logs a Gather's error once, and serves the families it gathered
// without the error, so that a scrape that joins a failed Gather adds no
// line of its own; promhttp.ContinueOnError serves them the same way.
// A Gather that gathered nothing, or panicked, fails every scrape that
// shares it.
type sharedGatherer struct {
	g   prometheus.Gatherer
	log *slog.Logger

	mu  sync.Mutex
	cur *gathering
}

// gathering is one Gather that scrapes share; done is closed when mfs
// and err are set.
type gathering struct {
	done    chan struct{}
	mfs     []*dto.MetricFamily
	err     error // logged by the scrape that ran the Gather
	joiners int   // scrapes that joined it, under sharedGatherer.mu
}

func (s *sharedGatherer) Gather() ([]*dto.MetricFamily, error) {
	s.mu.Lock()
	g := s.cur
	if g == nil {
		g = &gathering{done: make(chan struct{})}
		s.cur = g
		s.mu.Unlock()
		func() {
			defer func() {
				if g.mfs == nil && g.err == nil {
					// Gather panicked: the scrapes that joined it fail too.
					g.err = errGatherPanicked
				}
				s.mu.Lock()
				s.cur = nil
				s.mu.Unlock()
				close(g.done)
			}()
			g.mfs, g.err = s.g.Gather()
			if g.err != nil && len(g.mfs) > 0 {
				s.log.Warn("metrics: some figures could not be gathered; the scrape serves the others", "err", g.err)
			}
		}()
	} else {
		g.joiners++
		s.mu.Unlock()
		<-g.done
	}
	if len(g.mfs) == 0 {
		// Nothing to serve: promhttp answers 500 with the error.
		return nil, g.err
	}
	// The families are only read; each scrape may reorder or filter its
	// own slice of them.
	return append([]*dto.MetricFamily(nil), g.mfs...), nil
}

// errGatherPanicked fails the scrapes that joined a Gather that panicked.
var errGatherPanicked = errors.New("metrics: gathering the figures panicked")

// bufferedResponse holds a reply until it is complete.
type bufferedResponse struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header         { return b.header }
func (b *bufferedResponse) WriteHeader(code int)        { b.code = code }
func (b *bufferedResponse) Write(p []byte) (int, error) { return b.body.Write(p) }

// scrape serves next into a buffer and sends the reply once it is
// complete, if its client still waits for it. A scrape whose client gave
// up meanwhile (a scrape_timeout shorter than the scrape took) is one log
// line, not a write error for each metric family.
func scrape(next http.Handler, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		buf := &bufferedResponse{header: w.Header(), code: http.StatusOK}
		next.ServeHTTP(buf, r)
		if r.Context().Err() != nil {
			log.Warn("metrics: a scrape's client gave up before its reply was ready; with Redis slow or stopped, a scrape takes up to its Redis reads' bound",
				"took", time.Since(start).Round(time.Millisecond), "client", r.RemoteAddr)
			return
		}
		w.WriteHeader(buf.code)
		_, _ = w.Write(buf.body.Bytes())
	})
}
