package sim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"
)

// faultJSON is Fault on the admin API; durations are Go duration strings
// such as "30s".
type faultJSON struct {
	TokenThrottle          string `json:"token_throttle,omitempty"`
	TokenUnavailable       bool   `json:"token_unavailable,omitempty"`
	SMTPTransient          string `json:"smtp_transient,omitempty"`
	SMTPDown               bool   `json:"smtp_down,omitempty"`
	SMTPStall              string `json:"smtp_stall,omitempty"`
	SMTPStallMailbox       string `json:"smtp_stall_mailbox,omitempty"`
	GraphThrottle          string `json:"graph_throttle,omitempty"`
	GraphThrottleBox       string `json:"graph_throttle_mailbox,omitempty"`
	GraphAfterSend         string `json:"graph_after_send,omitempty"`
	GraphFail              string `json:"graph_fail,omitempty"`
	GraphAcceptedRA        string `json:"graph_accepted_retry_after,omitempty"`
	SMTPMailRefusal        string `json:"smtp_mail_refusal,omitempty"`
	SMTPDataRefusal        string `json:"smtp_data_refusal,omitempty"`
	SMTPDataRefusalMailbox string `json:"smtp_data_refusal_mailbox,omitempty"`
}

// MarshalJSON writes f as the admin API shows it.
func (f Fault) MarshalJSON() ([]byte, error) {
	j := faultJSON{TokenUnavailable: f.TokenUnavailable, SMTPTransient: f.SMTPTransient, SMTPDown: f.SMTPDown, SMTPStall: f.SMTPStall,
		SMTPStallMailbox: f.SMTPStallMailbox, GraphThrottleBox: f.GraphThrottleMailbox, GraphAfterSend: f.GraphAfterSend, GraphFail: f.GraphFail,
		SMTPMailRefusal: f.SMTPMailRefusal, SMTPDataRefusal: f.SMTPDataRefusal, SMTPDataRefusalMailbox: f.SMTPDataRefusalMailbox}
	if f.GraphAcceptedRetryAfter > 0 {
		j.GraphAcceptedRA = f.GraphAcceptedRetryAfter.String()
	}
	if f.TokenThrottle > 0 {
		j.TokenThrottle = f.TokenThrottle.String()
	}
	if f.GraphThrottle > 0 {
		j.GraphThrottle = f.GraphThrottle.String()
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads f as the admin API takes it.
func (f *Fault) UnmarshalJSON(b []byte) error {
	var j faultJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return err
	}
	var out Fault
	var err error
	if j.TokenThrottle != "" {
		if out.TokenThrottle, err = time.ParseDuration(j.TokenThrottle); err != nil {
			return fmt.Errorf("token_throttle: %w", err)
		}
	}
	if j.GraphThrottle != "" {
		if out.GraphThrottle, err = time.ParseDuration(j.GraphThrottle); err != nil {
			return fmt.Errorf("graph_throttle: %w", err)
		}
	}
	if j.GraphAcceptedRA != "" {
		if out.GraphAcceptedRetryAfter, err = time.ParseDuration(j.GraphAcceptedRA); err != nil {
			return fmt.Errorf("graph_accepted_retry_after: %w", err)
		}
	}
	switch j.GraphAfterSend {
	case "", "500", "504", "hang":
	default:
		return fmt.Errorf("graph_after_send: %q is not \"500\", \"504\", \"hang\" or empty", j.GraphAfterSend)
	}
	switch j.GraphFail {
	case "", "500", "503":
	default:
		return fmt.Errorf("graph_fail: %q is not \"500\", \"503\" or empty", j.GraphFail)
	}
	out.GraphAfterSend, out.GraphFail = j.GraphAfterSend, j.GraphFail
	switch j.SMTPTransient {
	case "", "421", "451":
	default:
		return fmt.Errorf("smtp_transient: %q is not \"421\", \"451\" or empty", j.SMTPTransient)
	}
	switch j.SMTPStall {
	case "", "greeting", "data":
	default:
		return fmt.Errorf("smtp_stall: %q is not \"greeting\", \"data\" or empty", j.SMTPStall)
	}
	out.TokenUnavailable, out.SMTPTransient, out.SMTPDown, out.SMTPStall = j.TokenUnavailable, j.SMTPTransient, j.SMTPDown, j.SMTPStall
	switch j.SMTPMailRefusal {
	case "", "sender_not_permitted":
	default:
		return fmt.Errorf("smtp_mail_refusal: %q is not \"sender_not_permitted\" or empty", j.SMTPMailRefusal)
	}
	switch j.SMTPDataRefusal {
	case "", "thread_limit", "sender_throttled":
	default:
		return fmt.Errorf("smtp_data_refusal: %q is not \"thread_limit\", \"sender_throttled\" or empty", j.SMTPDataRefusal)
	}
	out.SMTPStallMailbox, out.SMTPMailRefusal, out.SMTPDataRefusal = j.SMTPStallMailbox, j.SMTPMailRefusal, j.SMTPDataRefusal
	out.GraphThrottleMailbox, out.SMTPDataRefusalMailbox = j.GraphThrottleBox, j.SMTPDataRefusalMailbox
	*f = out
	return nil
}

// appRef names an app in an admin request body.
type appRef struct {
	Tenant   string `json:"tenant"`
	ClientID string `json:"client_id"`
}

// adminSecret is one of an app's secrets as the admin API shows it after
// a change: its hint (first three characters), never its value.
type adminSecret struct {
	KeyID       string    `json:"key_id"`
	DisplayName string    `json:"display_name,omitempty"`
	Hint        string    `json:"hint"`
	EndDateTime time.Time `json:"end_date_time,omitzero"`
}

// secretsOf describes the app's secrets now.
func (s *Sim) secretsOf(ref appRef) map[string]any {
	var out []adminSecret
	s.withApp(ref.Tenant, ref.ClientID, func(a *app) bool {
		for _, k := range a.secrets {
			out = append(out, adminSecret{KeyID: k.KeyID, DisplayName: k.DisplayName, Hint: k.hint(), EndDateTime: k.ExpiresAt.UTC()})
		}
		return true
	})
	return map[string]any{"tenant": ref.Tenant, "client_id": ref.ClientID, "secrets": out}
}

// adminIndex answers GET /admin: what the admin API offers.
const adminIndex = `Exchange Online simulator: admin API (JSON bodies; see the package documentation of cmd/o365sim/sim)

POST /admin/secrets/expire            {"tenant", "client_id"}: the app's secrets expire now
POST /admin/secrets/rotate            {"tenant", "client_id", "secret"}: one new secret replaces them
POST /admin/secrets/end               move one secret's end date
POST /admin/secrets/add               one more secret beside the others
POST /admin/apps/graph-roles          the app's Graph permissions
POST /admin/apps/disabled             the app off (AADSTS7000112) or on
POST /admin/apps/send-as              {"tenant", "client_id", "mailbox", "allowed"}: the app may send as it, or not
POST /admin/grants/issue, /revoke     delegated grants
POST /admin/mailboxes/smtp-auth       SMTP AUTH off or on for a mailbox
POST /admin/tokens/expiring-margin    refuse tokens this close to expiry
POST /admin/fault, GET /admin/fault   throttling, transient failures, stalls, SMTP down, refusals
GET  /admin/received, /received/count the messages received
GET  /admin/counters                  requests by kind
POST /admin/reset                     clear messages, counters, faults and quotas
`

func (s *Sim) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /admin", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, adminIndex)
	})
	mux.HandleFunc("POST /admin/secrets/expire", func(w http.ResponseWriter, r *http.Request) {
		var req appRef
		if decode(w, r, &req) && found(w, s.expireSecret(req.Tenant, req.ClientID), "app") {
			writeJSON(w, http.StatusOK, s.secretsOf(req))
		}
	})
	mux.HandleFunc("POST /admin/secrets/rotate", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			appRef
			Secret string `json:"secret"`
		}
		if !decode(w, r, &req) {
			return
		}
		if req.Secret == "" {
			adminError(w, http.StatusBadRequest, "secret is empty")
			return
		}
		if found(w, s.rotateSecret(req.Tenant, req.ClientID, req.Secret), "app") {
			writeJSON(w, http.StatusOK, s.secretsOf(req.appRef))
		}
	})
	mux.HandleFunc("POST /admin/secrets/end", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			appRef
			KeyID       string `json:"key_id"`
			Secret      string `json:"secret"`
			EndDateTime string `json:"end_date_time"`
		}
		if !decode(w, r, &req) {
			return
		}
		which := req.KeyID
		if (req.KeyID == "") == (req.Secret == "") {
			adminError(w, http.StatusBadRequest, "give key_id or secret, not both")
			return
		}
		if which == "" {
			which = req.Secret
		}
		end, ok := adminTime(w, "end_date_time", req.EndDateTime)
		if ok && found(w, s.SetSecretEnd(req.Tenant, req.ClientID, which, end), "app or secret") {
			w.WriteHeader(http.StatusNoContent)
		}
	})
	mux.HandleFunc("POST /admin/secrets/add", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			appRef
			Secret      string `json:"secret"`
			EndDateTime string `json:"end_date_time"`
			DisplayName string `json:"display_name"`
			// Propagation delays the secret's first use (see
			// Secret.ValidFrom), as a Go duration such as "20s".
			Propagation string `json:"propagation"`
			// PropagationAnswer is "unknown" (AADSTS7000215, the
			// default) or "expired" (AADSTS7000222): Entra's answer
			// meanwhile.
			PropagationAnswer string `json:"propagation_answer"`
		}
		if !decode(w, r, &req) {
			return
		}
		if req.Secret == "" {
			adminError(w, http.StatusBadRequest, "secret is empty")
			return
		}
		end, ok := adminTime(w, "end_date_time", req.EndDateTime)
		if !ok {
			return
		}
		var from time.Time
		if req.Propagation != "" {
			d, ok := adminDuration(w, "propagation", req.Propagation, `"20s"`)
			if !ok {
				return
			}
			from = s.now().Add(d)
		}
		if req.PropagationAnswer != "" && req.PropagationAnswer != "unknown" && req.PropagationAnswer != "expired" {
			adminError(w, http.StatusBadRequest, `propagation_answer must be "unknown" or "expired"`)
			return
		}
		id := s.AddSecret(req.Tenant, req.ClientID, Secret{Value: req.Secret, ExpiresAt: end, DisplayName: req.DisplayName,
			ValidFrom: from, RefusedAsExpired: req.PropagationAnswer == "expired"})
		if found(w, id != "", "app") {
			writeJSON(w, http.StatusOK, map[string]string{"key_id": id})
		}
	})
	mux.HandleFunc("POST /admin/apps/graph-roles", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			appRef
			Roles      []string `json:"roles"`
			OwnsItself bool     `json:"owns_itself"`
		}
		if decode(w, r, &req) && found(w, s.SetGraphRoles(req.Tenant, req.ClientID, req.Roles, req.OwnsItself), "app") {
			w.WriteHeader(http.StatusNoContent)
		}
	})
	mux.HandleFunc("POST /admin/apps/disabled", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			appRef
			Disabled bool `json:"disabled"`
		}
		if decode(w, r, &req) && found(w, s.DisableApp(req.Tenant, req.ClientID, req.Disabled), "app") {
			w.WriteHeader(http.StatusNoContent)
		}
	})
	mux.HandleFunc("POST /admin/apps/send-as", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			appRef
			Mailbox string `json:"mailbox"`
			Allowed bool   `json:"allowed"`
		}
		if !decode(w, r, &req) {
			return
		}
		if req.Mailbox == "" {
			adminError(w, http.StatusBadRequest, "give mailbox")
			return
		}
		if found(w, s.SetSendAs(req.Tenant, req.ClientID, req.Mailbox, req.Allowed), "app") {
			w.WriteHeader(http.StatusNoContent)
		}
	})
	mux.HandleFunc("POST /admin/grants/issue", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			appRef
			Mailbox string `json:"mailbox"`
		}
		if !decode(w, r, &req) {
			return
		}
		rt := s.IssueRefreshToken(req.Tenant, req.ClientID, req.Mailbox)
		if found(w, rt != "", "tenant, app or mailbox") {
			writeJSON(w, http.StatusOK, map[string]string{"refresh_token": rt})
		}
	})
	mux.HandleFunc("POST /admin/grants/revoke", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Mailbox      string `json:"mailbox"`
			RefreshToken string `json:"refresh_token"`
		}
		if !decode(w, r, &req) {
			return
		}
		if req.Mailbox == "" && req.RefreshToken == "" {
			adminError(w, http.StatusBadRequest, "give mailbox or refresh_token")
			return
		}
		if req.Mailbox != "" {
			s.RevokeMailboxGrants(req.Mailbox)
		}
		if req.RefreshToken != "" {
			s.RevokeGrant(req.RefreshToken)
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /admin/mailboxes/smtp-auth", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Mailbox  string `json:"mailbox"`
			Disabled bool   `json:"disabled"`
		}
		if decode(w, r, &req) && found(w, s.disableSMTPAuth(req.Mailbox, req.Disabled), "mailbox") {
			w.WriteHeader(http.StatusNoContent)
		}
	})
	mux.HandleFunc("POST /admin/tokens/expiring-margin", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Margin string `json:"margin"`
		}
		if !decode(w, r, &req) {
			return
		}
		d, ok := adminDuration(w, "margin", req.Margin, `"10m", or "0s" for off`)
		if !ok {
			return
		}
		s.SetExpiringTokenMargin(d)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /admin/fault", func(w http.ResponseWriter, r *http.Request) {
		var f Fault
		if decode(w, r, &f) {
			s.SetFault(f)
			w.WriteHeader(http.StatusNoContent)
		}
	})
	mux.HandleFunc("GET /admin/fault", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.faults())
	})
	mux.HandleFunc("GET /admin/received", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Received())
	})
	mux.HandleFunc("GET /admin/received/count", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]int{"count": s.ReceivedCount()})
	})
	mux.HandleFunc("GET /admin/counters", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Counters())
	})
	mux.HandleFunc("POST /admin/reset", func(w http.ResponseWriter, r *http.Request) {
		s.Reset()
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

// decode reads a JSON body strictly; on failure it writes a 400.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		adminError(w, http.StatusBadRequest, "bad JSON body: "+err.Error())
		return false
	}
	return true
}

// adminTime reads an RFC 3339 time; "" is the zero time (never expires).
// On failure it writes a 400.
func adminTime(w http.ResponseWriter, field, v string) (time.Time, bool) {
	if v == "" {
		return time.Time{}, true
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		adminError(w, http.StatusBadRequest, field+": not an RFC 3339 time such as 2027-02-14T00:00:00Z")
		return time.Time{}, false
	}
	return t, true
}

// adminDuration parses a Go duration that must not be negative, or
// answers 400 naming the field and giving an example.
func adminDuration(w http.ResponseWriter, field, v, example string) (time.Duration, bool) {
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		adminError(w, http.StatusBadRequest, field+": not a duration such as "+example)
		return 0, false
	}
	return d, true
}

func found(w http.ResponseWriter, ok bool, what string) bool {
	if !ok {
		adminError(w, http.StatusNotFound, what+" not found")
	}
	return ok
}

func adminError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
