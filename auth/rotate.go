package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// NewSecret is a client secret Graph created with addPassword. Value is
// the secret itself: shown once, never logged.
type NewSecret struct {
	KeyID string
	Hint  string
	Value string
	End   time.Time
}

// AddPassword creates a client secret on the credential's own app
// registration with Graph's addPassword, ending at end. Graph refuses it
// (a *GraphError, Forbidden) unless the app holds
// Application.ReadWrite.OwnedBy and is an owner of itself, or
// Application.ReadWrite.All.
func (c *Credential) AddPassword(ctx context.Context, graphURL, displayName string, end time.Time) (NewSecret, error) {
	body, _ := json.Marshal(map[string]any{"passwordCredential": map[string]string{
		"displayName": displayName, "endDateTime": end.UTC().Format(time.RFC3339)}})
	raw, err := c.graphApp(ctx, graphURL, http.MethodPost, "/addPassword", body)
	if err != nil {
		return NewSecret{}, err
	}
	var pc struct {
		KeyID       string `json:"keyId"`
		Hint        string `json:"hint"`
		SecretText  string `json:"secretText"`
		EndDateTime string `json:"endDateTime"`
	}
	if err := json.Unmarshal(raw, &pc); err != nil || pc.SecretText == "" || pc.KeyID == "" {
		return NewSecret{}, fmt.Errorf("graph: addPassword: no secret in the answer")
	}
	ns := NewSecret{KeyID: pc.KeyID, Hint: pc.Hint, Value: pc.SecretText}
	if ns.End, err = graphTime("endDateTime", pc.EndDateTime); err != nil {
		return NewSecret{}, err
	}
	return ns, nil
}

// RemovePassword deletes a client secret of the credential's own app
// registration with Graph's removePassword; it needs what AddPassword
// needs. A key that is not on the registration (removed by an earlier
// try whose answer was lost) is removed: Graph answers 400 to it, as it
// does to a request it cannot take, so after a 400 RemovePassword lists
// the registration's secrets and returns Graph's error if the key is
// still there, or cannot be read.
func (c *Credential) RemovePassword(ctx context.Context, graphURL, keyID string) error {
	body, _ := json.Marshal(map[string]string{"keyId": keyID})
	_, err := c.graphApp(ctx, graphURL, http.MethodPost, "/removePassword", body)
	var ge *GraphError
	if !errors.As(err, &ge) || ge.HTTPStatus != http.StatusBadRequest {
		return err
	}
	list, lerr := c.AppCredentials(ctx, graphURL)
	if lerr != nil {
		return fmt.Errorf("%w (and cannot list the app's secrets to see whether the key is gone: %w)", err, lerr)
	}
	for _, a := range list {
		if a.Kind == "secret" && strings.EqualFold(a.KeyID, keyID) {
			return err
		}
	}
	return nil
}

// graphApp sends a request to the credential's own app registration in
// Graph (applications(appId='…') followed by suffix: a query or an
// action) with a fresh app-only token for GraphScope, and returns the
// answer's body. A token failure is a *TokenError; an error answer of
// Graph is a *GraphError.
func (c *Credential) graphApp(ctx context.Context, graphURL, method, suffix string, body []byte) ([]byte, error) {
	tok, err := c.redeem(ctx, c.log, []string{GraphScope}, nil)
	if err != nil {
		return nil, err
	}
	u := strings.TrimRight(graphURL, "/") + "/v1.0/applications(appId='" + url.PathEscape(c.opts.ClientID) + "')" + suffix
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("graph: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.opts.HTTPClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("graph: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxGraphBody))
	if err != nil {
		return nil, fmt.Errorf("graph: read the answer: %w", err)
	}
	if resp.StatusCode >= 300 {
		return nil, graphErr(resp.StatusCode, raw)
	}
	return raw, nil
}

// TrySecret asks the token endpoint for a token with a client secret that
// is not loaded: nil when Entra accepts it, else its *TokenError (a secret
// Entra has not propagated yet is AADSTS7000215). Nothing about the
// credential changes.
func (c *Credential) TrySecret(ctx context.Context, secret string) error {
	cfg := &clientcredentials.Config{ClientID: c.opts.ClientID, ClientSecret: secret, TokenURL: c.tokenURL,
		Scopes: []string{c.opts.Scope}, AuthStyle: oauth2.AuthStyleInParams}
	_, err := cfg.Token(context.WithValue(ctx, oauth2.HTTPClient, c.opts.HTTPClient))
	if err != nil {
		return tokenErr(err, c.opts.Now(), secret)
	}
	return nil
}
