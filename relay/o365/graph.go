package o365

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"holdfast/queue"
	"holdfast/relay/upstream"
)

// MaxGraphMIME is the largest raw message sent through Graph: its request
// is capped at 4 MB, and base64 grows the message by a third.
const MaxGraphMIME = 3 << 20

// GraphOptions configure the Graph sender.
type GraphOptions struct {
	// BaseURL is Graph's root. Default "https://graph.microsoft.com".
	BaseURL string
	// HTTPClient must have timeouts. Default: 60s per request.
	HTTPClient *http.Client
	// Router gives each message's mailbox and Graph-audience tokens.
	Router Router
	// Large sends messages over MaxGraphMIME; nil refuses them.
	Large interface {
		Send(ctx context.Context, m *queue.Message) (string, error)
	}
	// Outcomes remembers which messages had an attempt with an unknown
	// outcome; before sending one of those again, the sender looks for it
	// in the mailbox's Sent Items. Nil turns the lookup off.
	Outcomes Outcomes
}

// GraphSender delivers messages with Graph's sendMail, raw MIME in base64.
type GraphSender struct {
	o GraphOptions
}

// NewGraphSender returns a Graph sender; o.Router is required.
func NewGraphSender(o GraphOptions) (*GraphSender, error) {
	if o.Router == nil {
		return nil, errors.New("o365: Graph sender needs a router")
	}
	if o.BaseURL == "" {
		o.BaseURL = "https://graph.microsoft.com"
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: 60 * time.Second}
	}
	o.BaseURL = strings.TrimRight(o.BaseURL, "/")
	return &GraphSender{o: o}, nil
}

// Send posts the message to /v1.0/users/{mailbox}/sendMail; 202 means
// Exchange took it.
func (g *GraphSender) Send(ctx context.Context, m *queue.Message) (string, error) {
	if len(m.Body) > MaxGraphMIME {
		if g.o.Large != nil {
			return g.o.Large.Send(ctx, m)
		}
		return "", &upstream.Error{Class: upstream.Permanent,
			Text: fmt.Sprintf("message of %d bytes is over Graph's limit of %d bytes of MIME, and SMTP is not enabled for this route", len(m.Body), MaxGraphMIME)}
	}
	// Graph needs no SMTP connection: free the reserved one.
	if gr, _ := ctx.Value(grantKey{}).(*Grant); gr != nil {
		gr.Release()
	}
	r, err := g.o.Router(ctx, m)
	if err != nil {
		return "", err
	}
	raw, msgID := withMessageID(m.Body, m.ID, r.Mailbox)
	if reply, sent, err := g.sentBefore(ctx, r, m.ID, msgID); err != nil || sent {
		return reply, err
	}
	// A 401 on a cached token may only mean it expired early: try once
	// more with a new one before blaming the credential.
	for fresh := false; ; fresh = true {
		reply, status, unknown, err := g.post(ctx, r, raw)
		if GraphTokenRefused(status) && !fresh {
			r.Tokens.Invalidate()
			continue
		}
		if unknown {
			err = g.markUnknown(ctx, m.ID, err)
		}
		return reply, err
	}
}

// post sends raw MIME with sendMail. unknown is true when the outcome is
// not known: Graph answered 5xx, or the connection failed or timed out
// after the request was written. Either way Exchange may have sent the
// message. Any 202 is a send, with or without Retry-After.
func (g *GraphSender) post(ctx context.Context, r Route, raw []byte) (reply string, status int, unknown bool, err error) {
	tok, err := r.Tokens.Token(ctx)
	if err != nil {
		return "", 0, false, ClassifyTokenError(err, r.Kind)
	}
	u := g.o.BaseURL + "/v1.0/users/" + url.PathEscape(r.Mailbox) + "/sendMail"
	body := base64.StdEncoding.EncodeToString(raw)
	var wrote atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(i httptrace.WroteRequestInfo) { wrote.Store(i.Err == nil) },
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(body))
	if err != nil {
		return "", 0, false, err
	}
	req.Header.Set("Content-Type", "text/plain")
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	resp, err := g.o.HTTPClient.Do(req)
	if err != nil {
		return "", 0, wrote.Load(), &upstream.Error{Class: upstream.Transient, Text: "POST sendMail", Err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusAccepted {
		return "202 Accepted by Graph sendMail", resp.StatusCode, false, nil
	}
	return "", resp.StatusCode, resp.StatusCode >= 500, ClassifyGraph(graphFailure(resp), r.Kind)
}

// graphFailure reads a failed Graph answer (see ParseGraphError).
func graphFailure(resp *http.Response) GraphFailure {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return ParseGraphError(resp.StatusCode, resp.Header, raw)
}

// maxGraphText bounds the code and message kept from a Graph error.
const maxGraphText = 512

// ParseGraphError reads a Graph error answer: its status, Retry-After
// header and JSON body {"error": {"code": ..., "message": ...}}. A body
// that is not such JSON leaves Code and Message empty. Code and Message
// are cut to one line of at most 512 bytes, since they end up in logs and
// in the queue's last error.
func ParseGraphError(status int, h http.Header, body []byte) GraphFailure {
	var ge struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	_ = json.Unmarshal(body, &ge)
	return GraphFailure{
		HTTPStatus: status,
		Code:       oneLine(ge.Error.Code),
		Message:    oneLine(ge.Error.Message),
		RetryAfter: retryAfter(h.Get("Retry-After")),
	}
}

// oneLine replaces control characters and invalid UTF-8 with spaces and
// cuts s to maxGraphText bytes.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == utf8.RuneError || unicode.IsControl(r) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, " "))
	if len(s) > maxGraphText {
		n := maxGraphText
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s = s[:n]
	}
	return strings.TrimSpace(s)
}

// maxRetryAfter caps a Retry-After: a larger figure is not meant, and
// would overflow time.Duration.
const maxRetryAfter = 24 * time.Hour

// retryAfter parses a Retry-After header in seconds or as an HTTP date,
// capped at maxRetryAfter.
func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil && n >= 0 {
		return time.Duration(min(n, int64(maxRetryAfter/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(0, time.Until(t)), maxRetryAfter)
	}
	return 0
}
