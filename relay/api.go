package relay

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"holdfast/queue"
)

// maxHTTPRecipients is the most recipients one HTTP submission may have:
// the SMTP default (SMTPOptions.MaxRecipients), which is Exchange Online's
// default limit.
const maxHTTPRecipients = 500

// maxIdempotencyKey is the longest Idempotency-Key accepted, in bytes.
const maxIdempotencyKey = 255

// storeRetryAfter is the Retry-After, in seconds, sent with a 503 when the
// queue could not store or read a message.
const storeRetryAfter = "30"

// readyTimeout bounds one readiness check: /readyz answers within it,
// even when Redis hangs.
const readyTimeout = time.Second

// api is the HTTP API. Its routes are registered in newAPI.
type api struct {
	mux      *http.ServeMux
	in       *ingress
	apps     *apps
	store    store
	ready    func(context.Context) error
	maxBytes int64
	log      *slog.Logger
	sample   *logSampler // one refusal line per status and client IP per interval
}

// newAPI returns the HTTP API handler. ready reports whether the relay can
// take mail (Redis reachable, not shutting down); maxBytes is the largest
// message body accepted (a value below 1 means the SMTP default).
//
// Every error reply is JSON, {"error": code, "message": text}, where code
// is a stable machine-readable string and text says what to do. That
// includes unknown paths (404) and wrong methods (405, with Allow).
func newAPI(in *ingress, a *apps, st store, ready func(context.Context) error, maxBytes int64, log *slog.Logger) *api {
	if maxBytes < 1 {
		maxBytes = DefaultOptions().SMTP.MaxMessageBytes
	}
	if ready == nil {
		ready = func(context.Context) error { return nil }
	}
	h := &api{
		mux:      http.NewServeMux(),
		in:       in,
		apps:     a,
		store:    st,
		ready:    ready,
		maxBytes: maxBytes,
		log:      log.With("component", "http"),
		sample:   newLogSampler(logSampleEvery),
	}
	h.mux.HandleFunc("POST /v1/messages", h.postMessage)
	h.mux.HandleFunc("GET /v1/messages/{id}", h.getMessage)
	h.mux.HandleFunc("GET /healthz", h.healthz)
	h.mux.HandleFunc("GET /readyz", h.readyz)
	return h
}

// ServeHTTP routes the request. When no route matches, the mux's own 404
// and 405 replies are turned into JSON errors.
func (h *api) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if _, pattern := h.mux.Handler(r); pattern == "" {
		w = &jsonNoRoute{ResponseWriter: w}
	}
	h.mux.ServeHTTP(w, r)
}

// jsonNoRoute replaces the mux's plain-text 404 and 405 replies with JSON
// errors. The mux's other replies (redirects to a cleaned path) pass
// through.
type jsonNoRoute struct {
	http.ResponseWriter
	replaced bool
}

func (j *jsonNoRoute) WriteHeader(status int) {
	switch status {
	case http.StatusNotFound:
		j.replaced = true
		writeError(j.ResponseWriter, status, "not_found", "There is no such endpoint; the API serves POST /v1/messages, GET /v1/messages/{id}, /v1/breakers, /v1/mailboxes/{address}, GET /healthz and GET /readyz (see the README's HTTP API).")
	case http.StatusMethodNotAllowed:
		j.replaced = true
		writeError(j.ResponseWriter, status, "method_not_allowed", "This endpoint does not take this method; use one of: "+j.ResponseWriter.Header().Get("Allow")+".")
	default:
		j.ResponseWriter.WriteHeader(status)
	}
}

func (j *jsonNoRoute) Write(b []byte) (int, error) {
	if j.replaced {
		return len(b), nil
	}
	return j.ResponseWriter.Write(b)
}

// identityEncoding reports whether the Content-Encoding values name no
// coding but identity.
func identityEncoding(values []string) bool {
	for _, v := range values {
		for c := range strings.SplitSeq(v, ",") {
			if c = strings.TrimSpace(c); c != "" && !strings.EqualFold(c, "identity") {
				return false
			}
		}
	}
	return true
}

// postMessage handles POST /v1/messages: submit one message.
//
// The request body is the raw RFC 5322 message, headers and body, as it
// should be delivered; at most maxBytes after line endings are normalised.
// A message whose lines all end in LF, as most HTTP clients send, has them
// turned into CRLF before it is stored; a message with any CR must use CRLF
// throughout. The message then passes the validator SMTP ingress uses
// (checkMessage), with the same reason text in a 400: no NUL bytes, no CR
// or LF outside CRLF, no line over smtp.max_line_length, and a header
// section first: one or more "Name: value" lines (with folded continuation
// lines) up to the first empty line.
//
// The envelope is given in the query string:
//
//	from  the envelope sender, exactly once; it must be one of the
//	      application's senders (an address or an @domain of its Senders).
//	to    the envelope recipients: the parameter may be repeated, and each
//	      value may hold several addresses separated by commas
//	      (to=a@x.example,b@y.example&to=c@z.example). Exact duplicates
//	      are dropped. At least 1, at most maxHTTPRecipients.
//
// Addresses are plain mailboxes, local@domain, without angle brackets or
// display names. Other query parameters are refused.
//
// Headers:
//
//	Authorization    "Bearer <token>", the application's API token.
//	Idempotency-Key  optional; 1 to 255 printable ASCII characters. A
//	                 repeated submission with the same key by the same
//	                 application returns the first message's id with
//	                 "duplicate": true and stores nothing, for as long as
//	                 the queue remembers keys (queue.idempotency_ttl). The
//	                 same key with another sender or other recipients is
//	                 refused with 422.
//
// Replies: 202 {"id": ..., "duplicate": bool} with Location
// /v1/messages/{id} once the message is durably queued; 400 for a bad
// envelope, key or message; 401 for a missing or wrong token; 403 for a
// sender the application may not use; 413 for a message over the size
// limit; 415 for a compressed body (any Content-Encoding but identity);
// 422 for an Idempotency-Key used for another message; 429 after too many wrong tokens from the client's IP, and,
// with Retry-After, when the sender's route holds queue.max_messages_per_route messages; 503 with
// Retry-After when the relay holds as many messages in memory as
// smtp.max_inflight_bytes allows, or when the queue could not store it in
// time, in which case nothing was stored.
func (h *api) postMessage(w http.ResponseWriter, r *http.Request) {
	app := h.authenticate(w, r)
	if app == nil {
		return
	}
	fail := func(status int, code, msg string) { h.fail(w, r, app, status, code, msg) }

	if enc := r.Header.Values("Content-Encoding"); len(enc) > 0 && !identityEncoding(enc) {
		// Stored as sent, a compressed body would be delivered as
		// garbage, or refused for its NUL bytes with a misleading reason.
		fail(http.StatusUnsupportedMediaType, "unsupported_content_encoding",
			fmt.Sprintf("Content-Encoding %q is not supported; POST the message uncompressed.", truncate(strings.Join(enc, ", "), 100)))
		return
	}
	from, to, ok := h.envelope(w, r, app)
	if !ok {
		return
	}
	key, ok := idempotencyKey(r.Header)
	if !ok {
		fail(http.StatusBadRequest, "invalid_idempotency_key", fmt.Sprintf("The Idempotency-Key header must be one value of 1 to %d printable ASCII characters; send a shorter key such as a UUID, or none.", maxIdempotencyKey))
		return
	}
	if !app.maySend(from) {
		// The wording of Exchange Online's 550 5.7.60, as SMTP ingress
		// replies.
		fail(http.StatusForbidden, "sender_not_permitted", fmt.Sprintf("5.7.60 Client does not have permissions to send as this sender (%s); send from an address or domain this application is configured for, or ask the operator to add it.", from))
		return
	}
	route, err := h.in.senderRoute(r.Context(), app, from)
	if err != nil {
		h.failSender(w, r, app, err)
		return
	}
	// A retry with an Idempotency-Key goes on: the queue answers it as a
	// duplicate when the first try was stored.
	if key == "" && h.in.refuseFull(route, "HTTP", app.Name) {
		h.failRouteFull(w, r, app)
		return
	}

	protocol := "HTTP"
	if r.TLS != nil {
		protocol = "HTTPS"
	}
	sub := submission{
		app:        app,
		from:       from,
		route:      route,
		to:         to,
		idemKey:    scopedKey(app, key),
		protocol:   protocol,
		remoteAddr: r.RemoteAddr,
	}
	buf := h.in.newBody(app.Name)
	defer buf.release()
	err = h.readBody(w, r, buf, h.in.stamp(sub))
	// net/http set the write deadline when the header arrived; a slow
	// body may have used it up, and the answer to a stored message must
	// still reach the client.
	renewWriteDeadline(w, r)
	switch {
	case err == nil:
	case errors.Is(err, errInflightFull):
		w.Header().Set("Retry-After", storeRetryAfter)
		fail(http.StatusServiceUnavailable, "insufficient_storage", "Insufficient system storage: the relay holds as many messages in memory as it may; send it again after the Retry-After delay.")
		return
	case errors.Is(err, errBodyTooBig):
		fail(http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("The message is larger than the limit of %d bytes once its line endings are CRLF; send a smaller message.", h.maxBytes))
		return
	default:
		fail(http.StatusBadRequest, "unreadable_body", "The request body could not be read completely; send the request again.")
		return
	}
	if len(buf.body()) == 0 {
		fail(http.StatusBadRequest, "empty_body", "The request body is empty; send the raw RFC 5322 message, headers and body, as the request body.")
		return
	}
	if f := h.in.check(buf.body()); f != nil {
		fail(http.StatusBadRequest, f.code, f.httpMessage())
		return
	}
	sub.body = buf.bytes()
	if sub.idemKey != "" {
		sub.print = fingerprint(from, to)
	}
	id, dup, err := h.in.accept(r.Context(), sub)
	if errors.Is(err, queue.ErrKeyReused) {
		fail(http.StatusUnprocessableEntity, "idempotency_key_reused", fmt.Sprintf("The Idempotency-Key was used for message %s, from another sender or to other recipients; nothing was stored. A retry must carry the same sender and recipients; another message needs another key.", id))
		return
	}
	if errors.Is(err, queue.ErrRouteFull) {
		h.failRouteFull(w, r, app) // accept has logged why
		return
	}
	if err != nil {
		// accept has logged why.
		w.Header().Set("Retry-After", storeRetryAfter)
		fail(http.StatusServiceUnavailable, "queue_unavailable", "The queue could not store the message and nothing was kept; send it again after the Retry-After delay, with the same Idempotency-Key.")
		return
	}
	w.Header().Set("Location", "/v1/messages/"+id)
	writeJSON(w, http.StatusAccepted, submitReply{ID: id, Duplicate: dup})
}

// routeFullRetryAfter is the Retry-After, in seconds, of a submission
// refused because its route holds queue.max_messages_per_route messages:
// room comes as the route's mail is delivered, at the mailbox's pace.
const routeFullRetryAfter = "60"

// failRouteFull answers a submission whose route holds as many messages
// as it may (queue.ErrRouteFull).
func (h *api) failRouteFull(w http.ResponseWriter, r *http.Request, app *App) {
	w.Header().Set("Retry-After", routeFullRetryAfter)
	h.fail(w, r, app, http.StatusTooManyRequests, "sender_queue_full",
		"Too many messages from this sender are waiting for delivery, and nothing was stored; send it again after the Retry-After delay.")
}

// submitReply is the 202 body of POST /v1/messages.
type submitReply struct {
	ID        string `json:"id"`
	Duplicate bool   `json:"duplicate"`
}

// envelope reads and checks the from and to query parameters. On failure
// it has written the reply.
func (h *api) envelope(w http.ResponseWriter, r *http.Request, app *App) (from string, to []string, ok bool) {
	fail := func(code, msg string) { h.fail(w, r, app, http.StatusBadRequest, code, msg) }
	tooMany := func() {
		fail("too_many_recipients", fmt.Sprintf("A message may have at most %d recipients; split it into several messages.", maxHTTPRecipients))
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil && strings.Count(r.URL.RawQuery, "&") > maxHTTPRecipients {
		// More parameters than a from and maxHTTPRecipients tos, which
		// ParseQuery past its own bound refuses unparsed: the sender
		// must split the recipients, not mend the query.
		tooMany()
		return "", nil, false
	}
	if err != nil {
		fail("invalid_query", "The query string is malformed; percent-encode the from and to values and separate parameters with &.")
		return "", nil, false
	}
	for name := range q {
		if name != "from" && name != "to" {
			fail("unknown_parameter", "The only query parameters are from and to; remove "+strconv.Quote(truncate(name, 64))+".")
			return "", nil, false
		}
	}
	switch froms := q["from"]; {
	case len(froms) == 0 || len(froms) == 1 && froms[0] == "":
		fail("missing_from", "Give the envelope sender as the from query parameter, e.g. ?from=billing@example.com.")
		return "", nil, false
	case len(froms) > 1:
		fail("invalid_from", "Give exactly one from query parameter.")
		return "", nil, false
	default:
		from = froms[0]
	}
	if _, err := parseAddress(from); err != nil {
		fail("invalid_from", "The from parameter is not a plain address such as billing@example.com (no display name, angle brackets, spaces or line breaks); correct it.")
		return "", nil, false
	}
	seen := map[string]bool{}
	for _, v := range q["to"] {
		for a := range strings.SplitSeq(v, ",") {
			a = strings.Trim(a, " \t")
			if a == "" || seen[a] {
				continue
			}
			if _, err := parseAddress(a); err != nil {
				fail("invalid_to", "A to address is not a plain address such as someone@example.com (no display name, angle brackets, spaces or line breaks); correct it.")
				return "", nil, false
			}
			if len(to) == maxHTTPRecipients {
				tooMany()
				return "", nil, false
			}
			seen[a] = true
			to = append(to, a)
		}
	}
	if len(to) == 0 {
		fail("missing_to", "Give at least one recipient as the to query parameter, e.g. ?to=someone@example.com; repeat it or separate addresses with commas for more.")
		return "", nil, false
	}
	return from, to, true
}

// idempotencyKey returns the request's Idempotency-Key, "" when there is
// none, and whether it is acceptable: one value of 1 to maxIdempotencyKey
// printable ASCII characters.
func idempotencyKey(hdr http.Header) (string, bool) {
	vals := hdr.Values("Idempotency-Key")
	switch len(vals) {
	case 0:
		return "", true
	case 1:
	default:
		return "", false
	}
	k := vals[0]
	if k == "" || len(k) > maxIdempotencyKey {
		return "", false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < ' ' || k[i] > '~' {
			return "", false
		}
	}
	return k, true
}

// fingerprint identifies the envelope of a submission under an
// Idempotency-Key: its sender and its recipients in any order. The
// message is left out: many mail libraries give a rebuilt message a new
// Date:, Message-ID: and MIME boundaries, and a retry of it must still
// find the first. It is hex, so it has no line break.
func fingerprint(from string, to []string) string {
	rcpts := slices.Clone(to)
	slices.Sort(rcpts)
	h := sha256.New()
	h.Write([]byte(from))
	for _, a := range rcpts {
		h.Write([]byte{0})
		h.Write([]byte(a))
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// scopedKey makes an Idempotency-Key unique to the application, so that
// two applications that share a route cannot match each other's keys. The
// name's length comes first, so no name and key pair can collide with
// another.
func scopedKey(app *App, key string) string {
	if key == "" {
		return ""
	}
	return strconv.Itoa(len(app.Name)) + ":" + app.Name + ":" + key
}

// renewWriteDeadline gives the answer to r the server's whole write
// timeout from now.
func renewWriteDeadline(w http.ResponseWriter, r *http.Request) {
	if srv, ok := r.Context().Value(http.ServerContextKey).(*http.Server); ok && srv.WriteTimeout > 0 {
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(srv.WriteTimeout))
	}
}

// readBody reads the request body into buf after prefix, at most
// h.maxBytes once LF line endings are CRLF. It returns errBodyTooBig,
// errInflightFull, or the error that stopped the read. A body that finds
// no room in the budget is read to its end, or past the limit, without
// keeping it, unless its length says it is within the limit: one over
// the limit is errBodyTooBig whether or not the budget is full, so that a
// client told 503 sends again only what can be taken.
func (h *api) readBody(w http.ResponseWriter, r *http.Request, buf *bodyBuf, prefix []byte) error {
	if r.ContentLength > h.maxBytes {
		return errBodyTooBig
	}
	body := http.MaxBytesReader(w, r.Body, h.maxBytes)
	err := h.holdBody(body, r.ContentLength, buf, prefix)
	if errors.Is(err, errInflightFull) && !(r.ContentLength >= 0 && 2*r.ContentLength <= h.maxBytes) {
		// A length of half the limit or less stays within it even with
		// every byte an LF made CRLF.
		err = restOfBody(buf, body, h.maxBytes, err)
	}
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return errBodyTooBig
	}
	if err != nil && !errors.Is(err, errBodyTooBig) && !errors.Is(err, errInflightFull) {
		if ok, held := h.sample.allow("unreadable " + clientIPString(r.RemoteAddr)); ok {
			h.log.Info("request body unreadable", withHeld([]any{"remote", r.RemoteAddr, "err", err}, held)...)
		}
	}
	return err
}

// holdBody reads body, of size bytes when the client said so, into buf
// after prefix, with LF line endings made CRLF.
func (h *api) holdBody(body io.Reader, size int64, buf *bodyBuf, prefix []byte) error {
	if err := buf.setPrefix(prefix); err != nil {
		return err
	}
	if err := buf.reserve(size); err != nil {
		return err
	}
	if err := buf.readFrom(body, h.maxBytes); err != nil {
		return err
	}
	if err := buf.bareLFToCRLF(); err != nil {
		return err
	}
	if int64(len(buf.body())) > h.maxBytes {
		return errBodyTooBig
	}
	return nil
}

// restOfBody reads out the rest of a body whose first bytes, in buf, are
// all the budget had room for (full, errInflightFull), without keeping
// it: buf is released first, so that the budget has its room back while
// a slow client sends the rest. It returns errBodyTooBig when the whole
// body is over max once LF line endings are CRLF (as bareLFToCRLF makes
// them), the error that stopped the read, or else full.
func restOfBody(buf *bodyBuf, rest io.Reader, max int64, full error) error {
	var n crlfSize
	_, _ = n.Write(buf.body())
	buf.release()
	if _, err := io.Copy(&n, rest); err != nil {
		return err
	}
	if n.crlf() > max {
		return errBodyTooBig
	}
	return full
}

// crlfSize counts the bytes written to it and what they would be with
// LF line endings made CRLF.
type crlfSize struct {
	written, lfs int64
	cr           bool
}

func (c *crlfSize) Write(p []byte) (int, error) {
	c.written += int64(len(p))
	c.lfs += int64(bytes.Count(p, []byte{'\n'}))
	c.cr = c.cr || bytes.IndexByte(p, '\r') >= 0
	return len(p), nil
}

// crlf is the size of the bytes written once a body without any CR has
// CRLF line endings.
func (c *crlfSize) crlf() int64 {
	if c.cr {
		return c.written
	}
	return c.written + c.lfs
}

// messageStatus is the JSON of GET /v1/messages/{id}. Times are RFC 3339
// in UTC; optional ones are left out when they do not apply.
type messageStatus struct {
	ID            string   `json:"id"`
	State         string   `json:"state"`
	Attempts      int      `json:"attempts"`
	LastReply     string   `json:"last_reply"`
	From          string   `json:"from"`
	To            []string `json:"to"`
	Size          int      `json:"size"`
	SubmittedAt   string   `json:"submitted_at"`
	UpdatedAt     string   `json:"updated_at"`
	NextAttemptAt string   `json:"next_attempt_at,omitempty"`
	DeliveredAt   string   `json:"delivered_at,omitempty"`
	DeadAt        string   `json:"dead_at,omitempty"`
	DeadReason    string   `json:"dead_reason,omitempty"`
	HoldReason    string   `json:"hold_reason,omitempty"`
}

func newMessageStatus(m *queue.Message) messageStatus {
	s := messageStatus{
		ID:            m.ID,
		State:         string(m.State),
		Attempts:      m.Attempts,
		LastReply:     m.LastError,
		From:          m.From,
		To:            m.To,
		Size:          m.Size,
		SubmittedAt:   rfc3339(m.Submitted),
		UpdatedAt:     rfc3339(m.Updated),
		NextAttemptAt: rfc3339(m.Due),
		HoldReason:    m.HoldReason,
	}
	if s.To == nil {
		s.To = []string{}
	}
	switch m.State {
	case queue.Delivered:
		s.DeliveredAt = rfc3339(m.Done)
	case queue.Dead:
		s.DeadAt = rfc3339(m.Done)
		s.DeadReason = m.Reason
	}
	return s
}

// rfc3339 formats t in UTC, "" for the zero time.
func rfc3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// getMessage handles GET /v1/messages/{id}: the status of a message the
// application submitted. A message of another application is reported as
// not found, so that ids cannot be probed.
func (h *api) getMessage(w http.ResponseWriter, r *http.Request) {
	app := h.authenticate(w, r)
	if app == nil {
		return
	}
	notFound := func() {
		h.fail(w, r, app, http.StatusNotFound, "not_found", "No message with this id exists for this application; check the id returned when it was submitted (delivered messages are kept for a limited time).")
	}
	id := r.PathValue("id")
	if !queue.ValidID(id) {
		notFound()
		return
	}
	m, err := h.store.Get(r.Context(), id)
	switch {
	case errors.Is(err, queue.ErrNotFound):
		notFound()
		return
	case err != nil:
		h.log.Error("message status failed", "id", id, "app", app.Name, "err", err)
		w.Header().Set("Retry-After", storeRetryAfter)
		h.fail(w, r, app, http.StatusServiceUnavailable, "queue_unavailable", "The queue could not be read; try again after the Retry-After delay.")
		return
	case m.App != app.Name:
		notFound()
		return
	}
	writeJSON(w, http.StatusOK, newMessageStatus(m))
}

// healthz handles GET /healthz: 200 while the process serves.
func (h *api) healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "ok\n")
}

// readyz handles GET /readyz: 200 when the relay can take mail, 503 with
// the reason otherwise.
func (h *api) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
	defer cancel()
	if err := h.ready(ctx); err != nil {
		h.log.Warn("not ready", "err", err)
		writeError(w, http.StatusServiceUnavailable, "not_ready", "The relay cannot take mail now ("+err.Error()+"); send to another replica or try again later.")
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "ok\n")
}

// authenticate returns the application whose bearer token the request
// carries. Otherwise it writes a 401 and returns nil. The token is never
// logged.
func (h *api) authenticate(w http.ResponseWriter, r *http.Request) *App {
	auth := r.Header.Get("Authorization")
	if auth == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="holdfast"`)
		h.fail(w, r, nil, http.StatusUnauthorized, "missing_token", "Send the application's API token as \"Authorization: Bearer <token>\".")
		return nil
	}
	ip := clientIPString(r.RemoteAddr)
	if h.refuseBlocked(w, r, ip) {
		return nil
	}
	var app *App
	if token, ok := bearerToken(r); ok {
		app = h.apps.checkToken(token)
	}
	if app == nil {
		h.in.guard.failed(r.Context(), ip, "")
		w.Header().Set("WWW-Authenticate", `Bearer realm="holdfast", error="invalid_token"`)
		h.fail(w, r, nil, http.StatusUnauthorized, "invalid_token", "The bearer token is not valid; check the application's API token, sent as \"Authorization: Bearer <token>\".")
		return nil
	}
	return app
}

// refuseBlocked answers 429 when ip is blocked for its failed
// authentications, and reports whether it did.
func (h *api) refuseBlocked(w http.ResponseWriter, r *http.Request, ip string) bool {
	b := h.in.guard.blocked(r.Context(), "http", ip, "")
	if b == nil {
		return false
	}
	wait := int(max(b.Until.Seconds(), 1))
	w.Header().Set("Retry-After", strconv.Itoa(wait))
	h.fail(w, r, nil, http.StatusTooManyRequests, "too_many_failures", fmt.Sprintf(
		"Too many failed authentications came from this address (wrong SMTP passwords, API tokens and admin tokens count together); "+
			"none is checked from it for %d s (Retry-After). Fix the application's password or token; "+
			"an operator can lift the block at once with: holdfast creds unblock --ip %s", wait, ip))
	return true
}

// bearerToken returns the token of an "Authorization: Bearer" header.
func bearerToken(r *http.Request) (string, bool) {
	scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	return strings.TrimSpace(token), strings.EqualFold(scheme, "Bearer")
}

// fail logs a refused request and writes its JSON error.
func (h *api) fail(w http.ResponseWriter, r *http.Request, app *App, status int, code, msg string) {
	level := slog.LevelInfo
	if status >= 500 {
		level = slog.LevelWarn
	}
	if ok, held := h.sample.allow(strconv.Itoa(status) + " " + clientIPString(r.RemoteAddr)); ok {
		attrs := []any{"method", r.Method, "path", r.URL.Path, "status", status, "error", code, "remote", r.RemoteAddr}
		if app != nil {
			attrs = append(attrs, "app", app.Name)
		}
		h.log.Log(r.Context(), level, "request refused", withHeld(attrs, held)...)
	}
	writeError(w, status, code, msg)
}

// apiError is the body of every error reply.
type apiError struct {
	Error   string `json:"error"`
	Message string `json:"message"`
}

// errorBodyDrain bounds how long the rest of a refused request's body is
// read before the answer.
const errorBodyDrain = time.Second

// writeError answers with an error. The request's body may be unread (a
// wrong token is refused first); net/http reads up to 256 KiB of it
// before it answers, so that the client, still sending, reads the answer
// rather than a reset. That read is bounded to errorBodyDrain: a body
// that trickles would otherwise hold the answer back, and a connection
// slot, for the whole read timeout. When it runs out, the connection is
// closed after the answer.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(errorBodyDrain))
	writeJSON(w, status, apiError{Error: code, Message: msg})
}

// writeJSON writes v as the JSON reply, on one line. <, > and & are
// written as they are: SMTP replies carry <message-ids>, and the reply is
// never read as HTML (nosniff).
func writeJSON(w http.ResponseWriter, status int, v any) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		// Only the types above are written, and they always marshal.
		panic("relay: marshal reply: " + err.Error())
	}
	hdr := w.Header()
	hdr.Del("Content-Length")
	hdr.Set("Content-Type", "application/json")
	hdr.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(b.Bytes())
}

// truncate shortens s to at most n bytes, for echoing client input.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
