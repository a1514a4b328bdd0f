package o365

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

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
	r, err := g.o.Router(ctx, m)
	if err != nil {
		return "", err
	}
	// A 401 on a cached token may only mean it expired early: try once
	// more with a new one before blaming the credential.
	for fresh := false; ; fresh = true {
		reply, status, err := g.post(ctx, r, m)
		if GraphTokenRefused(status) && !fresh {
			r.Tokens.Invalidate()
			continue
		}
		return reply, err
	}
}

func (g *GraphSender) post(ctx context.Context, r Route, m *queue.Message) (string, int, error) {
	tok, err := r.Tokens.Token(ctx)
	if err != nil {
		return "", 0, tokenError(err, r.Kind)
	}
	u := g.o.BaseURL + "/v1.0/users/" + url.PathEscape(r.Mailbox) + "/sendMail"
	body := base64.StdEncoding.EncodeToString(m.Body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(body))
	if err != nil {
		return "", 0, err
	}
	req.Header.Set("Content-Type", "text/plain")
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	resp, err := g.o.HTTPClient.Do(req)
	if err != nil {
		return "", 0, &upstream.Error{Class: upstream.Transient, Text: "POST sendMail", Err: err}
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode == http.StatusAccepted {
		return "202 Accepted by Graph sendMail", resp.StatusCode, nil
	}
	var ge struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	_ = json.Unmarshal(raw, &ge)
	return "", resp.StatusCode, ClassifyGraph(GraphFailure{
		HTTPStatus: resp.StatusCode,
		Code:       ge.Error.Code,
		Message:    ge.Error.Message,
		RetryAfter: retryAfter(resp.Header.Get("Retry-After")),
	}, r.Kind)
}

// retryAfter parses a Retry-After header in seconds or as an HTTP date.
func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(0, time.Until(t))
	}
	return 0
}
