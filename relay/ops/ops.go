// Package ops serves the operators' listener: the status page at /, the
// Prometheus metrics at /metrics, and /healthz and /readyz. It is kept off
// the applications' network: see ops.addr.
package ops

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Config is what the operators' listener serves.
type Config struct {
	// Gatherer is the registry /metrics serves.
	Gatherer prometheus.Gatherer
	// Ready reports whether the relay can take mail; /readyz answers 503
	// with its error.
	Ready func(ctx context.Context) error
	// Status reads what the status page shows, but for expiry.
	Status StatusSource
	// Expiry gives each credential's expiry for the page.
	Expiry ExpirySource
	// AdminSHA256, when set, is the SHA-256 of the admin token: every
	// path but /healthz and /readyz then asks for it as the basic
	// authentication password.
	AdminSHA256 []byte
	// Refresh is how often the page reloads itself. Default 15s.
	Refresh time.Duration
	Log     *slog.Logger
}

// StatusSource reads the fleet's state for the status page.
type StatusSource interface {
	Status(ctx context.Context) (Status, error)
}

// ExpirySource gives the expiry of every configured credential.
type ExpirySource interface {
	Expiries(ctx context.Context) ([]Expiry, error)
}

// Expiry is when a credential's secret or certificate expires, and where
// that date comes from ("config", "certificate" or "graph"). A zero At
// means unknown.
type Expiry struct {
	Credential string    `json:"credential"`
	At         time.Time `json:"expires_at,omitzero"`
	Source     string    `json:"source,omitempty"`
	// Level is the expiry monitor's: unknown, ok, warning, critical or
	// expired.
	Level string `json:"level,omitempty"`
	// Keys are the credential's secrets and certificates with a known
	// date, such as the two secrets of a rotation.
	Keys []ExpiryKey `json:"keys,omitempty"`
}

// ExpiryKey is one secret (by Graph's hint) or certificate (by
// thumbprint) of a credential.
type ExpiryKey struct {
	Key    string    `json:"key"` // "secret ABC…" or "certificate THUMBPRINT"
	At     time.Time `json:"expires_at"`
	Source string    `json:"source"`
	InUse  bool      `json:"in_use"` // Holdfast sends with it
}

// probeTimeout bounds one readiness check and one status read.
const probeTimeout = 5 * time.Second

type handler struct {
	cfg  Config
	mux  *http.ServeMux
	page *pageRenderer
}

// New returns the operators' handler.
func New(cfg Config) http.Handler {
	if cfg.Refresh <= 0 {
		cfg.Refresh = 15 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	h := &handler{cfg: cfg, mux: http.NewServeMux(), page: newPageRenderer()}
	h.mux.Handle("GET /metrics", h.protect(scrape(promhttp.HandlerFor(&sharedGatherer{g: cfg.Gatherer, log: cfg.Log}, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
		ErrorLog:      slog.NewLogLogger(cfg.Log.Handler(), slog.LevelWarn),
	}), cfg.Log)))
	h.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	h.mux.HandleFunc("GET /readyz", h.readyz)
	h.mux.Handle("GET /{$}", h.protect(http.HandlerFunc(h.statusPage)))
	h.mux.Handle("GET /status.json", h.protect(http.HandlerFunc(h.statusJSON)))
	return h.mux
}

// protect asks for the admin token as the basic authentication password
// when one is configured.
func (h *handler) protect(next http.Handler) http.Handler {
	if h.cfg.AdminSHA256 == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, pass, ok := r.BasicAuth()
		sum := sha256.Sum256([]byte(pass))
		if !ok || subtle.ConstantTimeCompare(sum[:], h.cfg.AdminSHA256) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="holdfast operators", charset="UTF-8"`)
			http.Error(w, "Give the admin token as the password (any user name).", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (h *handler) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), probeTimeout)
	defer cancel()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := h.cfg.Ready(ctx); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "not ready: "+err.Error()+"\n")
		return
	}
	_, _ = io.WriteString(w, "ok\n")
}

// read gathers everything the page shows.
func (h *handler) read(ctx context.Context) (Status, error) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	st, err := h.cfg.Status.Status(ctx)
	if err != nil {
		return Status{}, err
	}
	if h.cfg.Expiry != nil {
		exp, err := h.cfg.Expiry.Expiries(ctx)
		if err != nil {
			return Status{}, err
		}
		st.Expiries = exp
	}
	// Lists, even empty, are lists in /status.json: [] rather than null.
	st.Breakers, st.OpenMailboxes = nonNil(st.Breakers), nonNil(st.OpenMailboxes)
	st.Expiries, st.Transitions, st.Minutes = nonNil(st.Expiries), nonNil(st.Transitions), nonNil(st.Minutes)
	st.Transports, st.GraphFallbacks = nonNil(st.Transports), nonNil(st.GraphFallbacks)
	st.MailboxWaits, st.FullRoutes = nonNil(st.MailboxWaits), nonNil(st.FullRoutes)
	return st, nil
}

// nonNil is l, or an empty slice when l is nil.
func nonNil[T any](l []T) []T {
	if l == nil {
		return []T{}
	}
	return l
}

func (h *handler) statusJSON(w http.ResponseWriter, r *http.Request) {
	st, err := h.read(r.Context())
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err != nil {
		h.cfg.Log.Warn("status: cannot read the fleet's state", "err", err)
		// As the HTTP API's errors: a code and a message.
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = enc.Encode(struct {
			Error   string `json:"error"`
			Message string `json:"message"`
		}{"state_unavailable", "The relay's state cannot be read right now: " + err.Error()})
		return
	}
	_ = enc.Encode(st)
}

func (h *handler) statusPage(w http.ResponseWriter, r *http.Request) {
	st, err := h.read(r.Context())
	w.Header().Set("Cache-Control", "no-store")
	if err != nil {
		h.cfg.Log.Warn("status: cannot read the fleet's state", "err", err)
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	h.page.render(w, st, err, h.cfg.Refresh)
}
