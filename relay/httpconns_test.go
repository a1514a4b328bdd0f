package relay

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// dialHTTPRaw connects to the HTTP API and sends nothing.
func dialHTTPRaw(t *testing.T, s *Server) net.Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", s.HTTPAddr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}

// waitClosed fails the test unless the server closes nc within 5 s,
// and returns what it sent first.
func waitClosed(t *testing.T, nc net.Conn) string {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(nc)
	if err != nil && !isConnReset(err) {
		t.Fatalf("waiting for the server to close: %v (read %q)", err, b)
	}
	return string(b)
}

// TestHTTPFullTable: with every HTTP connection slot taken, a new
// request gets in by closing the oldest connection that is not in a
// request (connected a second without sending one); when every connection
// is in a request, a newcomer gets 503 with Retry-After.
func TestHTTPFullTable(t *testing.T) {
	f := newFixture(t)
	logs := &syncBuffer{}
	s := startRelayLogged(t, f, func(o *Options) { o.HTTP.MaxConnections = 2 }, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	defer func() {
		if t.Failed() {
			t.Logf("logs:\n%s", logs.String())
		}
	}()
	s.httpConns.age.Store(int64(50 * time.Millisecond))
	silent := dialHTTPRaw(t, s)
	time.Sleep(20 * time.Millisecond)
	dialHTTPRaw(t, s)
	time.Sleep(100 * time.Millisecond)

	if code, _ := httpFrom(t, s, nil, crmToken); code != http.StatusAccepted {
		t.Fatalf("a request with the table full of silent connections: %d, want 202", code)
	}
	if got := waitClosed(t, silent); got != "" {
		t.Errorf("the silent connection got %q before it was closed", got)
	}

	// The request's connection is gone once the server has seen its
	// client close it.
	waitHTTPOpen(t, s, 1)
	// Two requests whose bodies are still coming take both slots: the
	// second closes the silent connection.
	for range 2 {
		busy := dialHTTPRaw(t, s)
		_, _ = io.WriteString(busy, "POST /v1/messages?from=billing@contoso.com&to=a@example.org HTTP/1.1\r\nHost: x\r\n"+
			"Authorization: Bearer "+crmToken+"\r\nContent-Length: 100\r\n\r\nSubject: t\r\n")
	}
	waitFor(t, 5*time.Second, "both requests in progress", func() bool {
		_, active := s.httpConns.counts()
		return active == 2
	})
	time.Sleep(100 * time.Millisecond)
	over := dialHTTPRaw(t, s)
	resp, err := http.ReadResponse(bufio.NewReader(over), nil)
	if err != nil {
		t.Fatalf("the newcomer: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" ||
		!strings.Contains(string(body), `"error":"too_many_connections"`) {
		t.Errorf("the newcomer: %d, Retry-After %q, %s; want 503 too_many_connections with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	// A client that sends its request at once, in two writes as many do,
	// still reads the 503: the connection is read out, not reset.
	late := dialHTTPRaw(t, s)
	_, _ = io.WriteString(late, "POST /v1/messages?from=billing@contoso.com&to=a@example.org HTTP/1.1\r\nHost: x\r\n"+
		"Authorization: Bearer "+crmToken+"\r\nContent-Length: 19\r\n\r\n")
	time.Sleep(100 * time.Millisecond)
	if _, err := io.WriteString(late, "Subject: t\r\n\r\nhi\r\n"); err != nil {
		t.Errorf("a newcomer's body, after the 503 was sent: %v, want it taken", err)
	}
	time.Sleep(100 * time.Millisecond)
	if resp, err := http.ReadResponse(bufio.NewReader(late), nil); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("a newcomer that sent its request: %v, %v; want 503", resp, err)
	}
	if n := testutil.ToFloat64(s.httpConns.evicted); n != 2 {
		t.Errorf("holdfast_http_connections_evicted_total = %v, want 2", n)
	}
	if n := testutil.ToFloat64(s.httpConns.refused.WithLabelValues("total")); n != 2 {
		t.Errorf("holdfast_http_connections_refused_total{limit=\"total\"} = %v, want 2", n)
	}
}

// startFairShare starts a relay whose HTTP table holds 6 connections,
// none old enough to close by age nor slow enough by its header, so
// that only the fair share makes room; dialFrom connects from ip.
func startFairShare(t *testing.T) (s *Server, dialFrom func(ip net.IP) net.Conn) {
	t.Helper()
	s = startRelayOn(t, newFixture(t), func(o *Options) { o.HTTP.MaxConnections, o.HTTP.MaxConnectionsPerIP = 6, 10 })
	s.httpConns.age.Store(int64(time.Hour))
	s.httpConns.headerAge.Store(int64(time.Hour))
	return s, func(ip net.IP) net.Conn {
		nc, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 5 * time.Second}).Dial("tcp", s.HTTPAddr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		return nc
	}
}

// TestHTTPFullTableFairShare: a flood that reconnects before its
// connections are old enough to close keeps the table full; a request
// from an address with fewer connections then takes the place of the
// oldest of the address holding the most, and the flooding address's
// newcomer is refused.
func TestHTTPFullTableFairShare(t *testing.T) {
	s, dialFrom := startFairShare(t)
	flood := net.IPv4(127, 0, 0, 2)
	var floods []net.Conn
	for range 5 {
		floods = append(floods, dialFrom(flood))
		time.Sleep(5 * time.Millisecond)
	}
	dialFrom(net.IPv4(127, 0, 0, 3))
	waitHTTPOpen(t, s, 6)

	if code, _ := httpFrom(t, s, net.IPv4(127, 0, 0, 4), crmToken); code != http.StatusAccepted {
		t.Fatalf("a request from a fresh address with the table full of a flood: %d, want 202", code)
	}
	if got := waitClosed(t, floods[0]); got != "" {
		t.Errorf("the flood's oldest connection got %q before it was closed", got)
	}
	waitHTTPOpen(t, s, 5)
	dialFrom(flood)
	waitHTTPOpen(t, s, 6)
	// The refusal is sent at connect, before any request: read it raw, as
	// a client that has not sent yet would.
	over := dialFrom(flood)
	_ = over.SetReadDeadline(time.Now().Add(5 * time.Second))
	if resp, err := http.ReadResponse(bufio.NewReader(over), nil); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("a newcomer from the flooding address: %v, %v; want 503", resp, err)
	}
	if n := testutil.ToFloat64(s.httpConns.evicted); n != 1 {
		t.Errorf("holdfast_http_connections_evicted_total = %v, want 1", n)
	}
}

// TestHTTPFairShareSparesRequests: the fair share takes only connections
// not in a request. With every connection of the crowded address in a
// request (its header whole, its body coming), a newcomer from another
// address gets 503, and each request goes on to its answer.
func TestHTTPFairShareSparesRequests(t *testing.T) {
	s, dialFrom := startFairShare(t)
	const body = "Subject: t\r\n\r\nhi\r\n"
	crowd := net.IPv4(127, 0, 0, 2)
	var busy []net.Conn
	for range 6 {
		nc := dialFrom(crowd)
		head := "POST /v1/messages?from=billing@contoso.com&to=a@example.org HTTP/1.1\r\nHost: x\r\n" +
			"Authorization: Bearer " + crmToken + "\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n"
		if _, err := io.WriteString(nc, head); err != nil {
			t.Fatal(err)
		}
		busy = append(busy, nc)
	}
	waitFor(t, 5*time.Second, "six requests in progress", func() bool {
		open, active := s.httpConns.counts()
		return open == 6 && active == 6
	})
	over := dialFrom(net.IPv4(127, 0, 0, 3))
	_ = over.SetReadDeadline(time.Now().Add(5 * time.Second))
	if resp, err := http.ReadResponse(bufio.NewReader(over), nil); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("a newcomer with every connection in a request: %v, %v; want 503", resp, err)
	}
	for i, nc := range busy {
		if _, err := io.WriteString(nc, body); err != nil {
			t.Errorf("request %d: the rest of it: %v", i, err)
			continue
		}
		_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if resp, err := http.ReadResponse(bufio.NewReader(nc), nil); err != nil || resp.StatusCode != http.StatusAccepted {
			t.Errorf("request %d, begun before the newcomer: %v, %v; want 202", i, resp, err)
		}
	}
	if n := testutil.ToFloat64(s.httpConns.evicted); n != 0 {
		t.Errorf("holdfast_http_connections_evicted_total = %v, want 0", n)
	}
}

// TestHTTPFairShareTLSFlood: over TLS, a flood whose connections finish
// the handshake and send nothing more, reconnecting faster than the
// table's age, still gives way to a fresh address's request: the
// handshake's bytes are not a request.
func TestHTTPFairShareTLSFlood(t *testing.T) {
	certFile, keyFile, _ := rsaCert(t, t.TempDir(), time.Now().Add(24*time.Hour))
	s := startRelayOn(t, newFixture(t), func(o *Options) {
		o.HTTP.MaxConnections, o.HTTP.MaxConnectionsPerIP = 6, 10
		o.HTTP.CertFile, o.HTTP.KeyFile = certFile, keyFile
	})
	s.httpConns.age.Store(int64(time.Hour))
	for i := range 6 {
		ip := net.IPv4(127, 0, 0, 2)
		if i == 5 {
			ip = net.IPv4(127, 0, 0, 3)
		}
		nc, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 5 * time.Second}).Dial("tcp", s.HTTPAddr())
		if err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(nc, &tls.Config{InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tc.Close() })
	}
	waitHTTPOpen(t, s, 6)
	tr := &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 4)}}).DialContext,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodPost, "https://"+s.HTTPAddr()+"/v1/messages?from=billing@contoso.com&to=a@example.org",
		strings.NewReader("Subject: t\r\n\r\nhi\r\n"))
	req.Header.Set("Authorization", "Bearer "+crmToken)
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("a request from a fresh address with the table full of a TLS flood: %v, want 202", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("a request from a fresh address with the table full of a TLS flood: %d, want 202", resp.StatusCode)
	}
}

// TestHTTPFullTableClosesIdleKeepAlive: a connection kept alive between
// requests goes once it has been idle for the table's age; a client
// reconnects for its next request as HTTP lets it.
func TestHTTPFullTableClosesIdleKeepAlive(t *testing.T) {
	s := startRelayOn(t, newFixture(t), func(o *Options) { o.HTTP.MaxConnections = 1 })
	s.httpConns.age.Store(int64(50 * time.Millisecond))
	kc := newKeptClient(t, s)
	post := kc.post
	if code := post(); code != http.StatusAccepted {
		t.Fatalf("first request: %d", code)
	}
	waitFor(t, 5*time.Second, "the kept connection idle", func() bool {
		open, active := s.httpConns.counts()
		return open == 1 && active == 0
	})
	time.Sleep(100 * time.Millisecond)
	if code, _ := httpFrom(t, s, nil, crmToken); code != http.StatusAccepted {
		t.Fatalf("a request while the only slot holds an idle connection: %d, want 202", code)
	}
	waitHTTPOpen(t, s, 0)
	if code := post(); code != http.StatusAccepted {
		t.Fatalf("the kept-alive client's next request: %d, want 202", code)
	}
}

// TestHTTPRefusalDoesNotWaitForTheBody: a request refused before its body
// is read (a wrong token) gets its answer at once and its connection is
// closed, instead of the server reading the rest of a body that may
// trickle for the whole read timeout while it holds a connection slot.
func TestHTTPRefusalDoesNotWaitForTheBody(t *testing.T) {
	s := startRelayOn(t, newFixture(t), nil)
	nc := dialHTTPRaw(t, s)
	_, _ = io.WriteString(nc, "POST /v1/messages?from=billing@contoso.com&to=a@example.org HTTP/1.1\r\nHost: x\r\n"+
		"Authorization: Bearer wrong-token\r\nContent-Length: 100000\r\n\r\nSubject: t\r\n")
	_ = nc.SetReadDeadline(time.Now().Add(3 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		t.Fatalf("no answer while the body is unsent: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("status %d, want 401", resp.StatusCode)
	}
	waitHTTPOpen(t, s, 0)
}

// TestHTTPFullTableSparesRequestInProgress: a connection whose next
// request has begun to arrive, its header not whole yet (net/http still
// counts it idle, or new), is not closed to make room: closing it could
// cut a request the relay goes on to store.
func TestHTTPFullTableSparesRequestInProgress(t *testing.T) {
	s := startRelayOn(t, newFixture(t), func(o *Options) { o.HTTP.MaxConnections = 1 })
	s.httpConns.age.Store(int64(50 * time.Millisecond))
	const msg = "Subject: t\r\n\r\nhi\r\n"
	head := "POST /v1/messages?from=billing@contoso.com&to=a@example.org HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + crmToken + "\r\n"
	for _, kept := range []bool{true, false} {
		nc := dialHTTPRaw(t, s)
		br := bufio.NewReader(nc)
		if kept {
			// A first request, answered; the connection is kept.
			_, _ = io.WriteString(nc, head+"Content-Length: "+strconv.Itoa(len(msg))+"\r\n\r\n"+msg)
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusAccepted {
				t.Fatalf("first request: %v %v", resp, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
		}
		// The next request's first lines, and a pause.
		_, _ = io.WriteString(nc, head)
		time.Sleep(150 * time.Millisecond)
		over := dialHTTPRaw(t, s)
		if resp, err := http.ReadResponse(bufio.NewReader(over), nil); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("kept %v: the newcomer got %v, %v; want 503", kept, resp, err)
		}
		_, _ = io.WriteString(nc, "Content-Length: "+strconv.Itoa(len(msg))+"\r\n\r\n"+msg)
		_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusAccepted {
			t.Errorf("kept %v: the request in progress got %v, %v; want 202", kept, resp, err)
		}
		nc.Close()
		waitHTTPOpen(t, s, 0)
	}
}

// TestHTTPFullTableClosesSlowHeaders: a connection whose request header
// has been arriving for the header age (5 s; a client sends its header at
// once) goes for a newcomer in a full table, as a silent one does: a few
// addresses trickling headers and connecting again at the header timeout
// would otherwise hold every connection. The newcomer's request is
// answered.
func TestHTTPFullTableClosesSlowHeaders(t *testing.T) {
	s := startRelayOn(t, newFixture(t), func(o *Options) { o.HTTP.MaxConnections = 1 })
	s.httpConns.headerAge.Store(int64(200 * time.Millisecond))
	slow := dialHTTPRaw(t, s)
	_, _ = io.WriteString(slow, "POST /v1/messages?from=billing@contoso.com&to=a@example.org HTTP/1.1\r\n")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := io.WriteString(slow, "X"); err != nil {
				return
			}
		}
	})
	defer func() { close(stop); wg.Wait() }()
	time.Sleep(400 * time.Millisecond)
	if code, _ := httpFrom(t, s, nil, crmToken); code != http.StatusAccepted {
		t.Fatalf("a newcomer while a header trickles: %d, want 202", code)
	}
	waitClosed(t, slow)
}

// TestHTTPFullTableClosesSilentBeforeKept: with a silent connection old
// enough to go and an application's connection kept between requests, the
// silent one goes.
func TestHTTPFullTableClosesSilentBeforeKept(t *testing.T) {
	s := startRelayOn(t, newFixture(t), func(o *Options) { o.HTTP.MaxConnections = 2 })
	s.httpConns.age.Store(int64(50 * time.Millisecond))
	kc := newKeptClient(t, s)
	if code := kc.post(); code != http.StatusAccepted {
		t.Fatalf("first request: %d", code)
	}
	first := kc.last
	silent := dialHTTPRaw(t, s)
	time.Sleep(100 * time.Millisecond)
	if code, _ := httpFrom(t, s, nil, crmToken); code != http.StatusAccepted {
		t.Fatalf("a newcomer: %d", code)
	}
	waitClosed(t, silent)
	if code := kc.post(); code != http.StatusAccepted {
		t.Fatalf("second request: %d", code)
	}
	if kc.last != first {
		t.Error("the kept connection was closed to make room, with a silent one old enough to go")
	}
}

// TestHTTPFloodDoesNotCloseKept: a newcomer from an address holding more
// connections than the application's, here slow requests, does not take
// the place of the application's connection kept between requests, even
// one idle for the table's age: it gets 503. Before, a flood reconnecting
// faster than the table's age closed the kept one at each newcomer, and
// a POST the client sent as it closed failed with a reset or EOF (14 of
// an application's 750 under 200 silent connections, 150 slow uploads
// and 100 trickled headers from 20 addresses).
func TestHTTPFloodDoesNotCloseKept(t *testing.T) {
	s, dialFrom := startFairShare(t)
	s.httpConns.age.Store(int64(50 * time.Millisecond))
	kc := newKeptClient(t, s)
	if code := kc.post(); code != http.StatusAccepted {
		t.Fatalf("first request: %d", code)
	}
	first := kc.last
	flood := net.IPv4(127, 0, 0, 2)
	for range 5 {
		nc := dialFrom(flood)
		_, _ = io.WriteString(nc, "POST /v1/messages?from=billing@contoso.com&to=a@example.org HTTP/1.1\r\nHost: x\r\n"+
			"Authorization: Bearer "+crmToken+"\r\nContent-Length: 1000\r\n\r\n")
	}
	waitFor(t, 5*time.Second, "five slow requests and the kept connection", func() bool {
		open, active := s.httpConns.counts()
		return open == 6 && active == 5
	})
	time.Sleep(100 * time.Millisecond)
	over := dialFrom(flood)
	_ = over.SetReadDeadline(time.Now().Add(5 * time.Second))
	if resp, err := http.ReadResponse(bufio.NewReader(over), nil); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("a newcomer from the flooding address: %v, %v; want 503", resp, err)
	}
	if n := testutil.ToFloat64(s.httpConns.evicted); n != 0 {
		t.Errorf("holdfast_http_connections_evicted_total = %v, want 0", n)
	}
	if code := kc.post(); code != http.StatusAccepted {
		t.Fatalf("second request: %d", code)
	}
	if kc.last != first {
		t.Error("the kept connection was closed to make room for the flood")
	}
}

// TestHTTPFullTableSparesKeptInUse: a connection kept between requests
// whose last request ended less than the table's age ago is in use by a
// client sending one request after another, and a newcomer from a fresh
// address does not take its place: the newcomer gets a 503 it can retry,
// where the kept client's next POST, sent as its connection closed, got
// a reset or EOF and could not tell whether it was stored (in a run of
// 10 token guessers and 100 slow uploads, 25 of an application's 900).
func TestHTTPFullTableSparesKeptInUse(t *testing.T) {
	s, dialFrom := startFairShare(t)
	kc := newKeptClient(t, s)
	if code := kc.post(); code != http.StatusAccepted {
		t.Fatalf("first request: %d", code)
	}
	first := kc.last
	for range 5 {
		slow := dialFrom(net.IPv4(127, 0, 0, 2))
		_, _ = io.WriteString(slow, "POST /v1/messages?from=billing@contoso.com&to=a@example.org HTTP/1.1\r\nHost: x\r\n"+
			"Authorization: Bearer "+crmToken+"\r\nContent-Length: 1000\r\n\r\n")
	}
	waitFor(t, 5*time.Second, "five slow requests and the kept connection", func() bool {
		open, active := s.httpConns.counts()
		return open == 6 && active == 5
	})
	over := dialFrom(net.IPv4(127, 0, 0, 3))
	_ = over.SetReadDeadline(time.Now().Add(5 * time.Second))
	if resp, err := http.ReadResponse(bufio.NewReader(over), nil); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("a newcomer from a fresh address: %v, %v; want 503", resp, err)
	}
	if code := kc.post(); code != http.StatusAccepted {
		t.Fatalf("second request: %d", code)
	}
	if kc.last != first {
		t.Error("the kept connection, in use, was closed to make room")
	}
}

// keptClient posts messages to a relay's API over a connection it keeps
// between requests, as an HTTP client library does.
type keptClient struct {
	t      *testing.T
	s      *Server
	client *http.Client
	last   net.Conn // the connection of the last post
}

func newKeptClient(t *testing.T, s *Server) *keptClient {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &keptClient{t: t, s: s, client: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

// post sends one message and returns the status.
func (k *keptClient) post() int {
	k.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+k.s.HTTPAddr()+"/v1/messages?from=billing@contoso.com&to=a@example.org",
		strings.NewReader("Subject: t\r\n\r\nhi\r\n"))
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { k.last = i.Conn }}
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
	req.Header.Set("Authorization", "Bearer "+crmToken)
	resp, err := k.client.Do(req)
	if err != nil {
		k.t.Fatalf("POST: %v", err)
	}
	// Read to its end, or the transport does not keep the connection.
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// waitHTTPOpen waits until the API has n connections open.
func waitHTTPOpen(t *testing.T, s *Server, n int) {
	t.Helper()
	waitFor(t, 5*time.Second, strconv.Itoa(n)+" HTTP connections open", func() bool {
		open, _ := s.httpConns.counts()
		return open == n
	})
}

// TestHTTPSlowUploadGetsItsAnswer: a body that takes longer to arrive
// than the write timeout still gets its 202. The write deadline net/http
// sets when the header is read would otherwise have passed by the time
// the message is stored, and the client would see its connection cut
// after the relay had taken the message.
func TestHTTPSlowUploadGetsItsAnswer(t *testing.T) {
	f := newFixture(t)
	o := f.opts
	o.Redis.Addrs = []string{f.redis.Addr()}
	o.HTTP.Addr = "127.0.0.1:0"
	o.Delivery.Sender = "off"
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := New(context.Background(), o, nil, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	s.httpSrv.WriteTimeout = 300 * time.Millisecond
	s.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})

	nc := dialHTTPRaw(t, s)
	body := "Subject: slow\r\n\r\nhi\r\n"
	_, _ = io.WriteString(nc, "POST /v1/messages?from=billing@contoso.com&to=a@example.org HTTP/1.1\r\nHost: x\r\n"+
		"Authorization: Bearer "+crmToken+"\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body[:5])
	time.Sleep(600 * time.Millisecond)
	_, _ = io.WriteString(nc, body[5:])
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		t.Fatalf("a body slower than the write timeout: %v, want its answer", err)
	}
	reply, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || !strings.Contains(string(reply), `"id":"`) {
		t.Fatalf("a body slower than the write timeout: %d %s, want 202 with an id", resp.StatusCode, reply)
	}
	if n := stats(t, f).Ready; n != 1 {
		t.Errorf("ready %d, want 1", n)
	}
}

// dialHTTPFrom connects to the HTTP API from ip and sends nothing.
func dialHTTPFrom(t *testing.T, s *Server, ip net.IP) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 5 * time.Second}
	nc, err := d.Dial("tcp", s.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}

// TestHTTPConnectionsPerIP: one address holds at most
// http.max_connections_per_ip connections. Past it, a new connection
// from that address takes the place of one of its own that is not in a
// request, or gets 503; other addresses are not affected, and the table
// as a whole is not full.
func TestHTTPConnectionsPerIP(t *testing.T) {
	f := newFixture(t)
	s := startRelayOn(t, f, func(o *Options) {
		o.HTTP.MaxConnections = 100
		o.HTTP.MaxConnectionsPerIP = 2
	})
	s.httpConns.age.Store(int64(50 * time.Millisecond))

	// Two silent connections: a third from the address closes the older.
	silent := dialHTTPFrom(t, s, attackerIP)
	time.Sleep(20 * time.Millisecond)
	dialHTTPFrom(t, s, attackerIP)
	time.Sleep(100 * time.Millisecond)
	if code, _ := httpFrom(t, s, attackerIP, crmToken); code != http.StatusAccepted {
		t.Fatalf("a request from an address at its limit with silent connections: %d, want 202", code)
	}
	if got := waitClosed(t, silent); got != "" {
		t.Errorf("the silent connection got %q before it was closed", got)
	}
	// The request's connection, closed by its client, leaves the table
	// (until then it counts, active or idle): the second silent one stays.
	waitFor(t, 5*time.Second, "the request's connection gone", func() bool {
		open, _ := s.httpConns.counts()
		return open == 1
	})

	// Two requests in progress: a third connection from the address gets
	// 503, while another address gets in.
	for range 2 {
		busy := dialHTTPFrom(t, s, attackerIP)
		_, _ = io.WriteString(busy, "POST /v1/messages?from=billing@contoso.com&to=a@example.org HTTP/1.1\r\nHost: x\r\n"+
			"Authorization: Bearer "+crmToken+"\r\nContent-Length: 100\r\n\r\nSubject: t\r\n")
	}
	waitFor(t, 5*time.Second, "both requests in progress", func() bool {
		_, active := s.httpConns.counts()
		return active == 2
	})
	over := dialHTTPFrom(t, s, attackerIP)
	resp, err := http.ReadResponse(bufio.NewReader(over), nil)
	if err != nil {
		t.Fatalf("the address's third connection: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" ||
		!strings.Contains(string(body), `"error":"too_many_connections"`) || !strings.Contains(string(body), "your address") {
		t.Errorf("the address's third connection: %d, Retry-After %q, %s; want 503 too_many_connections for the address", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if code, _ := httpFrom(t, s, otherIP, crmToken); code != http.StatusAccepted {
		t.Errorf("another address: %d, want 202", code)
	}
	if n := testutil.ToFloat64(s.httpConns.refused.WithLabelValues("per_ip")); n != 1 {
		t.Errorf(`holdfast_http_connections_refused_total{limit="per_ip"} = %v, want 1`, n)
	}
	if n := testutil.ToFloat64(s.httpConns.refused.WithLabelValues("total")); n != 0 {
		t.Errorf(`holdfast_http_connections_refused_total{limit="total"} = %v, want 0`, n)
	}
}

// TestHTTPFairShareAfterIdleKept: in a full table, a connection kept
// between requests for the table's age goes for a newcomer before the
// fair share takes one in use (kept for less) of the address holding the
// most connections: the idle one's client is not sending, the other's
// next POST would be cut as it closed.
func TestHTTPFairShareAfterIdleKept(t *testing.T) {
	s, dialFrom := startFairShare(t)
	s.httpConns.age.Store(int64(500 * time.Millisecond))
	idle := newKeptClient(t, s)
	idle.client.Transport.(*http.Transport).DialContext = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext
	if code := idle.post(); code != http.StatusAccepted {
		t.Fatalf("first request on the idle connection: %d", code)
	}
	for range 2 {
		slow := dialFrom(net.IPv4(127, 0, 0, 4))
		_, _ = io.WriteString(slow, "POST /v1/messages?from=billing@contoso.com&to=a@example.org HTTP/1.1\r\nHost: x\r\n"+
			"Authorization: Bearer "+crmToken+"\r\nContent-Length: 1000\r\n\r\n")
	}
	time.Sleep(700 * time.Millisecond)
	var busy []*keptClient
	var first []net.Conn
	for range 3 {
		kc := newKeptClient(t, s)
		if code := kc.post(); code != http.StatusAccepted {
			t.Fatalf("first request: %d", code)
		}
		busy, first = append(busy, kc), append(first, kc.last)
	}
	if open, active := s.httpConns.counts(); open != 6 || active != 2 {
		t.Fatalf("%d connections open, %d in a request; want 6 and 2", open, active)
	}
	if code, _ := httpFrom(t, s, net.IPv4(127, 0, 0, 3), crmToken); code != http.StatusAccepted {
		t.Fatalf("a request from a fresh address: %d, want 202", code)
	}
	for i, kc := range busy {
		if code := kc.post(); code != http.StatusAccepted {
			t.Fatalf("second request: %d", code)
		}
		if kc.last != first[i] {
			t.Errorf("kept connection %d, in use, was closed while one idle for the table's age stayed", i)
		}
	}
}
