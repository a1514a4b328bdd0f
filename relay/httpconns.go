package relay

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// httpConnAge is how long an HTTP connection must have gone without
// sending a request before a new connection may take its place in a full
// table. A client that means to send a request sends it at once.
const httpConnAge = time.Second

// httpHeaderAge is how long a request's header may have been arriving,
// not whole yet, before a new connection may take its connection's place
// in a full table. A client sends a header in one write; one that
// trickles it for seconds holds a connection as a silent one does.
const httpHeaderAge = 5 * time.Second

// httpConns bounds the HTTP API's connections (http.max_connections). In
// a full table a new connection takes the place of one that is not in a
// request: connected for httpConnAge without sending anything, else idle
// between requests for httpConnAge (keep-alive, which a client must be
// ready to see closed) of an address holding as many connections as the
// newcomer's or more. Before such a kept one, and after it for one kept
// for less, goes one of the address holding the most connections, two
// more than the newcomer's (fairVictimLocked). When no connection can
// go, the newcomer gets 503 with Retry-After and is closed. Without it,
// a client could hold file descriptors by the thousand, and take them
// from SMTP and Redis.
// One client address is held to maxPerIP connections the same way, among
// its own (http.max_connections_per_ip), so that it cannot fill the
// table with requests in progress.
type httpConns struct {
	max      int
	maxPerIP int
	tls      bool // the API serves TLS: a refused newcomer is closed without a reply
	age      atomic.Int64
	// headerAge: httpHeaderAge, changed by tests.
	headerAge atomic.Int64
	log       *slog.Logger

	mu      sync.Mutex
	conns   map[net.Conn]*httpConn // by the connection Accept returned
	closing int                    // connections in conns told to go, not yet closed
	perIP   map[string]int         // connections in conns not told to go, by client IP

	refused *prometheus.CounterVec // by limit: total, per_ip
	evicted prometheus.Counter
	sample  *logSampler

	// lingering bounds the refused connections read out after their 503
	// (see refuse); lingerers waits for them.
	lingering chan struct{}
	lingerers sync.WaitGroup
}

// httpLinger bounds how long a refused connection is read out after its
// 503, and httpLingerers how many are at once; past that, one is closed
// at once.
const (
	httpLinger    = time.Second
	httpLingerers = 64
)

type httpConn struct {
	ip      string
	state   http.ConnState
	since   time.Time // when it entered state
	closing bool
	// readingSince is when the first bytes of a request arrived since
	// the connection was taken in or last went idle (unix ns), 0 when
	// none have. net/http calls a connection active only once a
	// request's header is whole; closing it before could cut a request
	// that the relay then stores while its client sees an error.
	readingSince atomic.Int64
}

// trackedConn is an admitted connection: it notes when bytes arrive.
type trackedConn struct {
	net.Conn
	entry *httpConn
}

func (c *trackedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && c.entry.readingSince.Load() == 0 {
		c.entry.readingSince.CompareAndSwap(0, time.Now().UnixNano())
	}
	return n, err
}

func newHTTPConns(max, maxPerIP int, tls bool, log *slog.Logger) *httpConns {
	h := &httpConns{max: max, maxPerIP: maxPerIP, tls: tls, log: log, conns: map[net.Conn]*httpConn{}, perIP: map[string]int{},
		sample: newLogSampler(logSampleEvery), lingering: make(chan struct{}, httpLingerers),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "holdfast_http_connections_refused_total",
			Help: "HTTP API connections refused with 503 at connect, by the limit reached: total (every connection was in a request, http.max_connections) or per_ip (every connection of the client's address was, http.max_connections_per_ip).",
		}, []string{"limit"}),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "holdfast_http_connections_evicted_total",
			Help: "HTTP API connections not in a request, closed to make room for a new connection in a full table.",
		}),
	}
	for _, l := range []string{"total", "per_ip"} {
		h.refused.WithLabelValues(l)
	}
	h.age.Store(int64(httpConnAge))
	h.headerAge.Store(int64(httpHeaderAge))
	return h
}

// collectors are the table's metrics, for the relay's registry.
func (h *httpConns) collectors() []prometheus.Collector {
	open := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "holdfast_http_connections",
		Help: "HTTP API connections open now (http.max_connections bounds them).",
	}, func() float64 {
		open, _ := h.counts()
		return float64(open)
	})
	return []prometheus.Collector{h.refused, h.evicted, open}
}

// counts reports the open connections and those in a request.
func (h *httpConns) counts() (open, active int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.conns {
		if c.state == http.StateActive {
			active++
		}
	}
	return len(h.conns), active
}

// listener wraps l so that its connections are counted.
func (h *httpConns) listener(l net.Listener) net.Listener {
	return &gatedListener{Listener: l, admit: func(nc net.Conn) net.Conn {
		tc, limit := h.admit(nc)
		if tc == nil {
			h.refuse(nc, limit)
		}
		return tc
	}}
}

// connState is the server's ConnState hook: it follows each connection's
// state and forgets closed ones.
func (h *httpConns) connState(nc net.Conn, state http.ConnState) {
	if t, ok := nc.(*tls.Conn); ok {
		nc = t.NetConn()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.conns[nc]
	if c == nil {
		return
	}
	switch state {
	case http.StateClosed, http.StateHijacked:
		if c.closing {
			h.closing--
		} else {
			h.leaveIPLocked(c.ip)
		}
		delete(h.conns, nc)
	default:
		c.state, c.since = state, time.Now()
		if state == http.StateIdle {
			c.readingSince.Store(0)
		}
	}
}

// admit takes nc in, closing a connection not in a request to make room
// when its address has its share of connections, or the table is full,
// and returns it as tracked; or nil and the limit ("per_ip" or "total")
// when there is no room.
func (h *httpConns) admit(nc net.Conn) (net.Conn, string) {
	ip := clientIP(nc.RemoteAddr())
	h.mu.Lock()
	var victim net.Conn
	switch {
	case h.perIP[ip] >= h.maxPerIP:
		if victim = h.victimLocked(ip); victim == nil {
			h.mu.Unlock()
			return nil, "per_ip"
		}
	case len(h.conns)-h.closing >= h.max:
		// A silent or trickling connection; else one of the address
		// holding the most, not in use; else one kept between requests
		// of an address holding as many as ip or more (a flood that
		// reconnects faster than the table's age, from addresses
		// holding many connections, would otherwise close an
		// application's kept connection at each newcomer, and cut the
		// requests sent on it as it closed); else one of the address
		// holding the most, in use or not.
		gone, kept := h.victimsLocked("", h.perIP[ip])
		if victim = gone; victim == nil {
			victim = h.fairVictimLocked(ip, true)
		}
		if victim == nil {
			victim = kept
		}
		if victim == nil {
			victim = h.fairVictimLocked(ip, false)
		}
		if victim == nil {
			h.mu.Unlock()
			return nil, "total"
		}
	}
	if victim != nil {
		c := h.conns[victim]
		c.closing = true
		h.closing++
		h.leaveIPLocked(c.ip)
	}
	tc := &trackedConn{Conn: nc, entry: &httpConn{ip: ip, state: http.StateNew, since: time.Now()}}
	h.conns[tc] = tc.entry
	h.perIP[ip]++
	h.mu.Unlock()
	if victim != nil {
		h.evicted.Inc()
		if ok, held := h.sample.allow("evicted " + clientIP(victim.RemoteAddr())); ok {
			h.log.Info("HTTP connection not in a request closed to make room", withHeld([]any{"remote", victim.RemoteAddr().String(),
				"for", nc.RemoteAddr().String()}, held)...)
		}
		victim.Close()
	}
	return tc, ""
}

// leaveIPLocked counts a connection of ip out. h.mu is held.
func (h *httpConns) leaveIPLocked(ip string) {
	if h.perIP[ip] <= 1 {
		delete(h.perIP, ip)
		return
	}
	h.perIP[ip]--
}

// victimLocked returns the connection to close for a newcomer, among
// those of ip (all when ip is ""): the oldest that has sent nothing for
// the table's age, else the one whose request header has been arriving
// the longest, for the header age at least, else the one idle between
// requests longest, for the table's age at least (one idle for less is in
// use by a client sending request after request, whose next one would be
// cut as it closed); never one whose header is whole (a request in the
// relay's hands) or began to arrive less than the header age ago; or
// nil. Silent and trickling connections go first: under a flood of
// them, an application's kept connections stay.
// h.mu is held.
func (h *httpConns) victimLocked(ip string) net.Conn {
	gone, idle := h.victimsLocked(ip, 0)
	if gone != nil {
		return gone
	}
	return idle
}

// victimsLocked returns victimLocked's choices apart: gone, the silent
// or trickling connection, and idle, the one kept between requests
// longest, among the addresses that hold keptFrom connections or more.
// h.mu is held.
func (h *httpConns) victimsLocked(ip string, keptFrom int) (gone, idle net.Conn) {
	var fresh, slow net.Conn
	var idleSince, freshSince time.Time
	var slowSince int64
	now := time.Now()
	cutoff := now.Add(-time.Duration(h.age.Load()))
	headerCutoff := now.Add(-time.Duration(h.headerAge.Load())).UnixNano()
	for nc, c := range h.conns {
		reading := c.readingSince.Load()
		switch {
		case c.closing, ip != "" && c.ip != ip, c.state == http.StateActive:
		case reading != 0:
			if reading <= headerCutoff && (slow == nil || reading < slowSince) {
				slow, slowSince = nc, reading
			}
		case c.state == http.StateIdle && !c.since.After(cutoff) && h.perIP[c.ip] >= keptFrom && (idle == nil || c.since.Before(idleSince)):
			idle, idleSince = nc, c.since
		case c.state == http.StateNew && !c.since.After(cutoff) && (fresh == nil || c.since.Before(freshSince)):
			fresh, freshSince = nc, c.since
		}
	}
	switch {
	case fresh != nil:
		return fresh, idle
	case slow != nil:
		return slow, idle
	}
	return nil, idle
}

// fairVictimLocked returns, for a newcomer from ip to a full table where
// no connection is old enough to close (a flood that reconnects faster),
// the oldest connection not in a request of the address holding the
// most of them, if that address holds at least two more connections than
// ip; or nil. An address with few connections gets in, and a flooding one
// cannot take others' places. A connection whose header is whole is in a
// request, and stays; one whose header is still arriving is not, since
// nothing of its request reached the relay (over TLS, the handshake
// counts as arriving bytes). With spareInUse, one kept between requests
// for less than the table's age (in use: its next request would be cut)
// is not taken either; admit asks so first, and takes a kept connection
// idle for the table's age (victimsLocked) before one in use. Without
// it, a flood sending request after request on kept connections would
// hold the table against every newcomer. h.mu is held.
func (h *httpConns) fairVictimLocked(ip string, spareInUse bool) net.Conn {
	count := map[string]int{}
	first := map[string]net.Conn{}
	cutoff := time.Now().Add(-time.Duration(h.age.Load()))
	for nc, c := range h.conns {
		if c.closing || c.state == http.StateActive {
			continue
		}
		count[c.ip]++
		if spareInUse && c.state == http.StateIdle && c.since.After(cutoff) {
			continue
		}
		if f, ok := first[c.ip]; !ok || c.since.Before(h.conns[f].since) {
			first[c.ip] = nc
		}
	}
	if top, ok := crowdedOver(count, h.perIP[ip]); ok {
		return first[top]
	}
	return nil
}

// refuse answers a newcomer that found no room and closes it: 503 on
// plain HTTP; over TLS, where a reply needs a handshake, nothing. A client
// sends its request without waiting: closed with the request unread, the
// connection would be reset and the 503 lost, so it is closed for writing
// and read out for up to httpLinger first, as net/http does.
func (h *httpConns) refuse(nc net.Conn, limit string) {
	h.refused.WithLabelValues(limit).Inc()
	msg, body := "HTTP connection refused: every connection is in a request", tooManyConnections
	if limit == "per_ip" {
		msg, body = "HTTP connection refused: every connection from its address is in a request", tooManyConnectionsPerIP
	}
	if ok, held := h.sample.allow("refused " + clientIP(nc.RemoteAddr())); ok {
		h.log.Info(msg, withHeld([]any{"remote", nc.RemoteAddr().String()}, held)...)
	}
	if h.tls {
		nc.Close()
		return
	}
	_ = nc.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = io.WriteString(nc, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\n"+
		"Content-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		nc.Close()
		return
	}
	select {
	case h.lingering <- struct{}{}:
	default:
		nc.Close()
		return
	}
	h.lingerers.Go(func() {
		defer func() { <-h.lingering }()
		defer nc.Close()
		_ = tc.CloseWrite()
		_ = nc.SetReadDeadline(time.Now().Add(httpLinger))
		_, _ = io.Copy(io.Discard, io.LimitReader(nc, 256<<10))
	})
}

// tooManyConnections and tooManyConnectionsPerIP are the bodies of
// refuse's 503, as writeError writes an error.
var (
	tooManyConnections      = errorBody("The relay has as many HTTP connections as it may, each in a request; send the request again after the Retry-After delay.")
	tooManyConnectionsPerIP = errorBody("The relay has as many HTTP connections from your address as it takes from one address (http.max_connections_per_ip), each in a request; send the request again after the Retry-After delay, or on a connection you keep open.")
)

func errorBody(msg string) string {
	b, _ := json.Marshal(apiError{Error: "too_many_connections", Message: msg})
	return string(b) + "\n"
}

// wait waits for the refused connections being read out.
func (h *httpConns) wait() { h.lingerers.Wait() }
