package relay

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"holdfast/breaker"
)

// maxTripBody bounds the optional JSON body of a trip request.
const maxTripBody = 4096

// breakersAPI serves /v1/breakers to operators holding the admin token.
type breakersAPI struct {
	h        *api
	report   *BreakerReporter
	set      *breaker.Set
	adminSum []byte // SHA-256 of the admin token; nil when none is set
}

// handleBreakers registers the breaker endpoints. adminSHA256 is the hex
// SHA-256 of the admin token, or "" to refuse every request with 403.
func (h *api) handleBreakers(report *BreakerReporter, set *breaker.Set, adminSHA256 string) {
	b := &breakersAPI{h: h, report: report, set: set}
	if adminSHA256 != "" {
		b.adminSum, _ = hex.DecodeString(adminSHA256)
	}
	h.mux.HandleFunc("GET /v1/breakers", b.list)
	h.mux.HandleFunc("GET /v1/breakers/{name}", b.get)
	h.mux.HandleFunc("POST /v1/breakers/{name}/{verb}", b.act)
}

// admin checks the request's admin bearer token; otherwise it writes the
// error and returns false. A wrong token counts among the address's
// failed authentications, as an application's does, and a blocked
// address is refused before its token is looked at.
func (b *breakersAPI) admin(w http.ResponseWriter, r *http.Request) bool {
	if b.adminSum == nil {
		b.h.fail(w, r, nil, http.StatusForbidden, "admin_disabled",
			"The breaker API needs an admin token: set http.admin_token_sha256 to the hash printed by \"holdfast creds token\".")
		return false
	}
	ip := clientIPString(r.RemoteAddr)
	if b.h.refuseBlocked(w, r, ip) {
		return false
	}
	token, ok := bearerToken(r)
	sum := sha256.Sum256([]byte(token))
	if !ok || subtle.ConstantTimeCompare(sum[:], b.adminSum) != 1 {
		if r.Header.Get("Authorization") != "" {
			// A wrong credential, as at the messages API; none at all
			// is not a guess.
			b.h.in.guard.failed(r.Context(), ip, "")
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="holdfast-admin"`)
		b.h.fail(w, r, nil, http.StatusUnauthorized, "invalid_token",
			"Send the admin token (http.admin_token_sha256) as \"Authorization: Bearer <token>\".")
		return false
	}
	return true
}

type breakerList struct {
	Breakers []BreakerStatus `json:"breakers"`
}

func (b *breakersAPI) list(w http.ResponseWriter, r *http.Request) {
	if !b.admin(w, r) {
		return
	}
	list, err := b.report.List(r.Context())
	if err != nil {
		b.storeFailed(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, breakerList{Breakers: list})
}

func (b *breakersAPI) get(w http.ResponseWriter, r *http.Request) {
	if !b.admin(w, r) {
		return
	}
	st, err := b.report.Get(r.Context(), r.PathValue("name"))
	switch {
	case errors.Is(err, ErrNoBreaker):
		b.notFound(w, r)
	case err != nil:
		b.storeFailed(w, r, err)
	default:
		writeJSON(w, http.StatusOK, st)
	}
}

// act runs an operator verb: trip or hold (optional JSON body
// {"reason": "..."}), reset or probe. It answers with the breaker's
// status afterwards; 202 for a probe, which a relay runs within a second.
func (b *breakersAPI) act(w http.ResponseWriter, r *http.Request) {
	if !b.admin(w, r) {
		return
	}
	name, known := b.report.Known(r.PathValue("name"))
	verb := r.PathValue("verb")
	if !known {
		b.notFound(w, r)
		return
	}
	ctx := r.Context()
	status := http.StatusOK
	var err error
	switch verb {
	case "trip", "hold":
		var body struct {
			Reason string `json:"reason"`
		}
		data, rerr := io.ReadAll(io.LimitReader(r.Body, maxTripBody+1))
		if rerr != nil || len(data) > maxTripBody {
			b.h.fail(w, r, nil, http.StatusBadRequest, "bad_body", fmt.Sprintf("The body must be at most %d bytes of JSON: {\"reason\": \"...\"}.", maxTripBody))
			return
		}
		if len(strings.TrimSpace(string(data))) > 0 {
			if jerr := json.Unmarshal(data, &body); jerr != nil {
				b.h.fail(w, r, nil, http.StatusBadRequest, "bad_body", "The body must be JSON: {\"reason\": \"...\"}.")
				return
			}
		}
		open, reason := b.set.Trip, "tripped by an operator"
		if verb == "hold" {
			open, reason = b.set.Hold, "held by an operator"
		}
		if s := strings.TrimSpace(body.Reason); s != "" {
			reason += ": " + truncate(s, 500)
		}
		err = open(ctx, name, reason)
	case "reset":
		err = b.set.Reset(ctx, name)
	case "probe":
		var open bool
		open, err = b.set.ProbeNow(ctx, name)
		if err == nil && !open {
			b.h.fail(w, r, nil, http.StatusConflict, "breaker_closed", "The breaker is closed; there is nothing to probe.")
			return
		}
		if errors.Is(err, breaker.ErrHeld) {
			b.h.fail(w, r, nil, http.StatusConflict, "breaker_held", "An operator holds the breaker open (holdfast breaker hold); it is not probed until it is reset.")
			return
		}
		status = http.StatusAccepted
	default:
		b.h.fail(w, r, nil, http.StatusNotFound, "not_found", "Unknown action "+truncate(verb, 40)+"; use trip, hold, reset or probe.")
		return
	}
	if err != nil {
		b.storeFailed(w, r, err)
		return
	}
	b.h.log.Warn("breaker "+verb+" by an operator", "breaker", name, "remote", r.RemoteAddr)
	st, err := b.report.Get(ctx, name)
	if err != nil {
		b.storeFailed(w, r, err)
		return
	}
	writeJSON(w, status, st)
}

func (b *breakersAPI) notFound(w http.ResponseWriter, r *http.Request) {
	b.h.fail(w, r, nil, http.StatusNotFound, "no_such_breaker",
		"No breaker "+truncate(r.PathValue("name"), 200)+"; GET /v1/breakers lists them (cred:NAME for a credential, mbx:ADDRESS for a mailbox).")
}

func (b *breakersAPI) storeFailed(w http.ResponseWriter, r *http.Request, err error) {
	b.h.log.Warn("breaker API: redis", "err", err)
	w.Header().Set("Retry-After", storeRetryAfter)
	b.h.fail(w, r, nil, http.StatusServiceUnavailable, "store_unavailable", "The breaker records cannot be read or changed right now; try again.")
}
