package o365

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/mail"
	"net/url"
	"strings"

	"holdfast/relay/upstream"
)

// Outcomes is what the Graph sender needs of the queue to remember
// attempts whose outcome is unknown.
type Outcomes interface {
	MarkAmbiguous(ctx context.Context, id string) error
	Ambiguous(ctx context.Context, id string) (bool, error)
}

// sentBefore reports whether message id, whose Message-ID is msgID, is
// already in the mailbox's Sent Items after an earlier attempt with an
// unknown outcome. It only looks when such an attempt was recorded. A
// lookup that Graph refuses for good (the app lacks Mail.ReadBasic.All, for
// one) counts as not found: the message is sent again rather than held.
func (g *GraphSender) sentBefore(ctx context.Context, r Route, id, msgID string) (string, bool, error) {
	if g.o.Outcomes == nil || msgID == "" {
		return "", false, nil
	}
	unknown, err := g.o.Outcomes.Ambiguous(ctx, id)
	if err != nil {
		return "", false, &upstream.Error{Class: upstream.Transient, Text: "reading the outcome of an earlier attempt", Err: err}
	}
	if !unknown {
		return "", false, nil
	}
	// A 401 on a cached token may only mean it expired early, as in Send.
	for fresh := false; ; fresh = true {
		found, status, err := g.findSent(ctx, r, msgID)
		if GraphTokenRefused(status) && !fresh {
			r.Tokens.Invalidate()
			continue
		}
		if err != nil || !found {
			return "", false, err
		}
		return fmt.Sprintf("found %s in the Sent Items of %s after an attempt with an unknown outcome", msgID, r.Mailbox), true, nil
	}
}

// findSent looks for msgID in the mailbox's Sent Items. status is Graph's
// HTTP status, 0 when it did not answer. A lookup that Graph refuses for
// good finds nothing, with no error (see sentBefore).
func (g *GraphSender) findSent(ctx context.Context, r Route, msgID string) (found bool, status int, err error) {
	tok, err := r.Tokens.Token(ctx)
	if err != nil {
		return false, 0, ClassifyTokenError(err, r.Kind)
	}
	filter := "internetMessageId eq '" + strings.ReplaceAll(msgID, "'", "''") + "'"
	u := g.o.BaseURL + "/v1.0/users/" + url.PathEscape(r.Mailbox) + "/mailFolders/SentItems/messages?$filter=" +
		strings.ReplaceAll(url.QueryEscape(filter), "+", "%20") + "&$select=id"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return false, 0, err
	}
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	resp, err := g.o.HTTPClient.Do(req)
	if err != nil {
		return false, 0, &upstream.Error{Class: upstream.Transient, Text: "GET Sent Items after an unknown outcome", Err: err}
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusOK:
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusUnauthorized || resp.StatusCode >= 500:
		return false, resp.StatusCode, ClassifyGraph(graphFailure(resp), r.Kind)
	default:
		return false, resp.StatusCode, nil
	}
	var list struct {
		Value []struct {
			ID string `json:"id"`
		} `json:"value"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&list); err != nil {
		return false, resp.StatusCode, &upstream.Error{Class: upstream.Transient, Text: "reading Sent Items", Err: err}
	}
	return len(list.Value) > 0, resp.StatusCode, nil
}

// markUnknown records that the attempt that failed with err may have sent
// message id. The record must outlive a cancelled send.
func (g *GraphSender) markUnknown(ctx context.Context, id string, err error) error {
	err = fmt.Errorf("%w (%w)", err, upstream.ErrOutcomeUnknown)
	if g.o.Outcomes == nil {
		return err
	}
	if merr := g.o.Outcomes.MarkAmbiguous(context.WithoutCancel(ctx), id); merr != nil {
		return fmt.Errorf("%w (the unknown outcome could not be recorded: %v)", err, merr)
	}
	return err
}

// withMessageID returns the message with a Message-ID, and that
// Message-ID: the message's own, or, when it has none, one made from the
// queue id and the mailbox's domain and added as the first header, the
// same on every attempt, so that Sent Items can be searched for it.
func withMessageID(raw []byte, id, mailbox string) ([]byte, string) {
	if msg, err := mail.ReadMessage(bytes.NewReader(raw)); err == nil {
		if v := strings.TrimSpace(msg.Header.Get("Message-Id")); v != "" {
			return raw, v
		}
	} else {
		return raw, ""
	}
	_, domain, _ := strings.Cut(mailbox, "@")
	if domain == "" {
		domain = "holdfast.invalid"
	}
	msgID := "<" + id + "@" + domain + ">"
	out := make([]byte, 0, len(raw)+len(msgID)+14)
	out = append(out, "Message-ID: "+msgID+"\r\n"...)
	return append(out, raw...), msgID
}
