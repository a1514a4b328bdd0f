package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"holdfast/auth"
	"holdfast/breaker"
	"holdfast/queue"
)

// Where an expiry date comes from: the label "source" of
// holdfast_credential_expiry_timestamp_seconds.
const (
	SourceConfig      = "config"      // the credential's expires_at
	SourceFile        = "file"        // the date in the credential's expires_at_file
	SourceCertificate = "certificate" // the certificate file's NotAfter
	SourceGraph       = "graph"       // the app registration in Microsoft Graph
	// SourceEntra is Entra's answer to a token request that the secret
	// expired (AADSTS7000222), dated when it said so.
	SourceEntra = "entra"
)

// sources are every source, in the order their dates are listed and
// exported.
var sources = []string{SourceEntra, SourceConfig, SourceFile, SourceCertificate, SourceGraph}

// Once a day per credential, the monitor logs a warning and posts
// credential.expiring. The fleet-wide claim lasts a little less than a
// day, so that a check every 12 h, whose ticks drift by milliseconds,
// still finds it gone after two ticks.
const (
	expiryNoticeKind  = "credential-expiry"
	expiryNoticeEvery = 24*time.Hour - 10*time.Minute
	// EventCredentialExpiring is the webhook event type of the notice.
	EventCredentialExpiring = "credential.expiring"
)

// expiryRetryEvery is how often a Graph read put off while the
// credential's breaker was open is tried again.
const expiryRetryEvery = 30 * time.Second

// expiryRecordKeep is how long a relay's record of a credential's expiry
// counts, with checks every interval: two checks missed, and an hour.
// Each record carries its end, so the command line needs not know the
// relays' interval.
func expiryRecordKeep(interval time.Duration) time.Duration { return 2*interval + time.Hour }

// expiryEventTimeout bounds the posting of one webhook event, retries
// included.
const expiryEventTimeout = 2 * time.Minute

// Expiry is one known end date of a credential's secret or certificate.
type Expiry struct {
	Credential string `json:"credential"`
	// Source is entra, config, file, certificate or graph.
	Source string `json:"source"`
	// Hint (a secret's first three characters, as Graph shows it) or
	// Thumbprint (a certificate's SHA-1, upper-case hex) tell Graph's
	// entries apart; KeyID and DisplayName are Graph's.
	Hint        string    `json:"hint,omitempty"`
	Thumbprint  string    `json:"thumbprint,omitempty"`
	KeyID       string    `json:"key_id,omitempty"`
	DisplayName string    `json:"display_name,omitempty"`
	ExpiresAt   time.Time `json:"expires_at"`
	// InUse is true for the dates of the secret or certificate Holdfast
	// sends with: always for config and certificate; for graph, the
	// entry whose hint or thumbprint is that of the loaded one. The other
	// Graph entries show, for instance, a newer secret not yet deployed.
	InUse bool `json:"in_use"`
	// Superseded is true for a date given by hand (expires_at,
	// expires_at_file) for an earlier secret or certificate than the one
	// loaded now: the fleet first saw the date with another (see
	// bindDates). It is not in use, and says nothing of the one loaded.
	Superseded bool `json:"superseded,omitempty"`
}

// CredentialExpiry is what the monitor knows of one credential.
type CredentialExpiry struct {
	Credential string `json:"credential"`
	// Expiries are every known date, in-use ones first, then by source
	// and date.
	Expiries []Expiry `json:"expiries"`
	// ExpiresAt is the soonest in-use date, and Source where it comes
	// from; zero and "" when no source knows.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	Source    string    `json:"source,omitempty"`
	// Level is unknown, ok, warning, critical or expired at CheckedAt.
	Level     string    `json:"level"`
	CheckedAt time.Time `json:"checked_at,omitzero"`
	// GraphError is why Graph could not be read at the last check; ""
	// when it was.
	GraphError string `json:"graph_error,omitempty"`
}

// Key names the secret (by Graph's hint) or certificate (by thumbprint)
// the date belongs to; "" when it names neither.
func (x Expiry) Key() string {
	switch {
	case x.Hint != "":
		return "secret " + x.Hint + "…"
	case x.Thumbprint != "":
		return "certificate " + x.Thumbprint
	}
	return ""
}

// DaysLeft is the number of days to the date from now, rounded up.
func (x Expiry) DaysLeft(now time.Time) int { return auth.DaysLeft(x.ExpiresAt, now) }

// DaysLeft is the number of days to ExpiresAt from now, rounded up (a
// credential expiring in 2 hours has 1 day left); 0 or less once past.
func (c CredentialExpiry) DaysLeft(now time.Time) int { return auth.DaysLeft(c.ExpiresAt, now) }

// noticeClaimer grants a recurring notice to one replica per period
// (breaker.Notices), and takes back a grant whose notice was not sent.
type noticeClaimer interface {
	Claim(ctx context.Context, kind, name, level string, every time.Duration) (bool, error)
	Release(ctx context.Context, kind, name, level string) error
}

// eventPoster posts a webhook event of a type (breaker.Webhook).
type eventPoster interface {
	Post(ctx context.Context, event string, v any) error
}

// expiryConfig builds an ExpiryMonitor.
type expiryConfig struct {
	credentials []Credential
	// live are the loaded credentials by name; one missing has only its
	// expires_at.
	live     map[string]*auth.Credential
	graphURL string
	interval time.Duration
	// notices and events, when set, make checks notify (see notify).
	notices noticeClaimer
	events  eventPoster
	// graphAllowed, when set, says whether a credential may request a
	// token now: not while its breaker is open. A Graph read it refuses
	// waits for the next retry tick.
	graphAllowed func(ctx context.Context, name string) bool
	// retry is how often a Graph read put off is tried again. Default
	// expiryRetryEvery.
	retry time.Duration
	// bind, when set, records which secrets or certificates (by
	// fingerprint) a date given by hand belongs to, the first one seen
	// with it across the fleet and its restarts and each one it was
	// stated for (written in expires_at_file for it), and returns them
	// (queue.BindCredentialDate). Unset, a given date belongs to
	// whatever is loaded.
	bind func(ctx context.Context, credential, date, fingerprint string, stated bool) (string, error)
	// record, when set, is given each credential's result, for the
	// fleet's record that the command line reads. A result it fails to
	// record is given again, the latest one, every retry until it is.
	record func(ctx context.Context, ce CredentialExpiry) error
	log    *slog.Logger
	now    func() time.Time
}

// ExpiryMonitor reads when each credential's secret or certificate
// expires, from the configuration (expires_at), the certificate's
// NotAfter and Microsoft Graph, at start, every check interval and after
// a reload. Within 30 days of the soonest date it logs a warning and
// posts credential.expiring on the breaker webhook once a day per
// credential across the fleet. It is a prometheus.Collector of
// holdfast_credential_expiry_timestamp_seconds{credential,source}.
type ExpiryMonitor struct {
	cfg            expiryConfig
	desc           *prometheus.Desc
	knownDesc      *prometheus.Desc
	supersededDesc *prometheus.Desc
	wake           chan struct{}
	line           eventLine // webhook posts

	mu      sync.Mutex
	state   map[string]*CredentialExpiry
	pending map[string]bool // credentials reloaded since the last check
	// unrecorded are the credentials whose last result record failed.
	unrecorded map[string]bool
	refused    map[string]bool   // credentials Entra said expired since the last look
	putOff     map[string]bool   // Graph not read: the breaker was open
	denied     map[string]bool   // Graph 403 logged
	failed     map[string]string // last Graph failure logged
	// given are each credential's dates given by hand as its last check
	// bound them (see bindDates); bound the fingerprint each date was
	// last found to belong to, by credential and date; superseded the
	// dates logged as an earlier secret's; dateErr the last
	// expires_at_file error and bind failure logged, by credential and
	// kind.
	given      map[string][]Expiry
	bound      map[string]string
	superseded map[string]bool
	dateErr    map[string]string
}

var _ prometheus.Collector = (*ExpiryMonitor)(nil)

func newExpiryMonitor(cfg expiryConfig) *ExpiryMonitor {
	if cfg.now == nil {
		cfg.now = time.Now
	}
	if cfg.retry <= 0 {
		cfg.retry = expiryRetryEvery
	}
	if cfg.log == nil {
		cfg.log = slog.New(slog.DiscardHandler)
	}
	cfg.log = cfg.log.With("component", "expiry")
	m := &ExpiryMonitor{
		cfg: cfg,
		desc: prometheus.NewDesc("holdfast_credential_expiry_timestamp_seconds",
			"When a credential's secret or certificate expires, in Unix seconds, by where the date comes from (entra, config, file, certificate, graph).",
			[]string{"credential", "source"}, nil),
		knownDesc: prometheus.NewDesc("holdfast_credential_expiry_known",
			"1 when a source knows when the credential's secret or certificate in use expires, 0 when none does "+
				"(no expires_at, or one given for an earlier secret, and Graph does not tell): no expiry alert can come for it. Not exported for a federated credential.",
			[]string{"credential"}, nil),
		supersededDesc: prometheus.NewDesc("holdfast_credential_expiry_superseded",
			"1 when a date given by hand (source config: expires_at; file: expires_at_file) was given for an earlier secret or certificate "+
				"than the one loaded now, and so is not its expiry; 0 when it belongs to the one loaded.",
			[]string{"credential", "source"}, nil),
		wake:       make(chan struct{}, 1),
		state:      map[string]*CredentialExpiry{},
		pending:    map[string]bool{},
		unrecorded: map[string]bool{},
		refused:    map[string]bool{},
		putOff:     map[string]bool{},
		denied:     map[string]bool{},
		failed:     map[string]string{},
		given:      map[string][]Expiry{},
		bound:      map[string]string{},
		superseded: map[string]bool{},
		dateErr:    map[string]string{},
	}
	now := cfg.now()
	for _, c := range cfg.credentials {
		given, _ := m.givenDates(c)
		m.state[c.Name] = summarise(c.Name, m.localExpiries(c, given), now)
	}
	return m
}

// givenDates are the dates given by hand for the credential's secret or
// certificate, expires_at and the date in expires_at_file, taken as in
// use, and the fingerprint of the secret or certificate loaded with them
// when they can be bound to it: "" for a credential not loaded, or of
// several secrets (whose dates are expires_at_by_file's).
func (m *ExpiryMonitor) givenDates(c Credential) ([]Expiry, string) {
	var out []Expiry
	if t, err := c.Expiry(); err == nil && !t.IsZero() {
		out = append(out, Expiry{Credential: c.Name, Source: SourceConfig, ExpiresAt: t, InUse: true})
	}
	live := m.cfg.live[c.Name]
	if live == nil || (c.ClientSecretFile == "" && c.CertFile == "") {
		return out, ""
	}
	fp, at, err := live.FileExpiry()
	m.dateError(c.Name, "file", "cannot read the credential's expires_at_file; its date is unknown until the file holds one", err)
	if !at.IsZero() {
		out = append(out, Expiry{Credential: c.Name, Source: SourceFile, ExpiresAt: at, InUse: true})
	}
	return out, fp
}

// dateError logs err, a failure of one kind of work on the credential's
// given dates, once until another error comes; a nil err forgets the
// last one.
func (m *ExpiryMonitor) dateError(name, kind, msg string, err error) {
	key := name + " " + kind
	m.mu.Lock()
	defer m.mu.Unlock()
	if err == nil {
		delete(m.dateErr, key)
		return
	}
	if m.dateErr[key] != err.Error() {
		m.dateErr[key] = err.Error()
		m.cfg.log.Warn(msg, "credential", name, "err", err)
	}
}

// bindDates are the dates given by hand (givenDates), each bound to the
// secret or certificate the fleet first saw it with, and to each one
// expires_at_file was written for (auth.Credential.DateStatedFor: its
// content changed with that one loaded): a date bound to others than
// the one loaded now was given for an earlier one, and is marked
// Superseded, not in use. So a rotated secret file does
// not inherit the old secret's expires_at, on a relay that saw the
// rotation or on one started after it. When the binding cannot be
// recorded, the last one found stands, else the date is taken for the
// loaded one, as without binding.
func (m *ExpiryMonitor) bindDates(ctx context.Context, c Credential) []Expiry {
	given, fp := m.givenDates(c)
	if fp == "" || m.cfg.bind == nil {
		return given
	}
	live := m.cfg.live[c.Name]
	for i, e := range given {
		date := e.Source + " " + e.ExpiresAt.Format(time.RFC3339)
		key := c.Name + "\x00" + date
		stated := e.Source == SourceFile && live.DateStatedFor(fp)
		owner, err := m.cfg.bind(ctx, c.Name, date, fp, stated)
		m.mu.Lock()
		if err == nil {
			m.bound[key] = owner
		} else if owner = m.bound[key]; owner == "" {
			owner = fp
		}
		was := m.superseded[key]
		earlier := !queue.DateBelongsTo(owner, fp)
		m.superseded[key] = earlier
		m.mu.Unlock()
		m.dateError(c.Name, "bind", "cannot record which secret the credential's given end date belongs to; the last one found stands", err)
		attrs := []any{"credential", c.Name, "expiry_source", e.Source, "expires_at", e.ExpiresAt, "fingerprint", fp, "dated_fingerprints", owner}
		switch {
		case earlier && !was:
			m.cfg.log.Warn("the credential's "+givenName(e.Source)+" was given for an earlier secret or certificate than the one loaded now: "+
				"it is not this one's expiry, which stays unknown unless Graph tells it; write the new end date to expires_at_file (or set expires_at again); "+
				"when it is the same as before, write it in another form, e.g. 2027-08-14T00:00:00Z for 2027-08-14, as content written again unchanged is not seen", attrs...)
		case !earlier && was:
			m.cfg.log.Info("the credential's "+givenName(e.Source)+" belongs to the secret or certificate loaded now", attrs...)
		}
		if earlier {
			given[i].InUse, given[i].Superseded = false, true
		}
	}
	return given
}

// givenName names the option a date given by hand comes from.
func givenName(source string) string {
	if source == SourceFile {
		return "expires_at_file date"
	}
	return "expires_at"
}

// localExpiries are the dates known without asking Graph, given those
// given by hand.
func (m *ExpiryMonitor) localExpiries(c Credential, given []Expiry) []Expiry {
	out := slices.Clone(given)
	if live := m.cfg.live[c.Name]; live != nil {
		for _, s := range live.Secrets() {
			if !s.ExpiresAt.IsZero() {
				out = append(out, Expiry{Credential: c.Name, Source: SourceConfig, Hint: s.Hint, ExpiresAt: s.ExpiresAt.UTC(), InUse: s.InUse})
			}
			if !s.ExpiredAt.IsZero() {
				out = append(out, Expiry{Credential: c.Name, Source: SourceEntra, Hint: s.Hint, ExpiresAt: s.ExpiredAt.UTC(), InUse: s.InUse})
			}
		}
		if t, ok := live.Expiry(); ok {
			_, thumb := live.InUse()
			out = append(out, Expiry{Credential: c.Name, Source: SourceCertificate, Thumbprint: thumb, ExpiresAt: t.UTC(), InUse: true})
		}
	}
	return out
}

// summarise sorts the dates and picks the soonest in use.
func summarise(name string, list []Expiry, now time.Time) *CredentialExpiry {
	slices.SortStableFunc(list, func(a, b Expiry) int {
		switch {
		case a.InUse != b.InUse:
			if a.InUse {
				return -1
			}
			return 1
		case a.Source != b.Source:
			return slices.Index(sources, a.Source) - slices.Index(sources, b.Source)
		}
		return a.ExpiresAt.Compare(b.ExpiresAt)
	})
	ce := &CredentialExpiry{Credential: name, Expiries: list}
	for _, e := range list {
		if e.InUse && (ce.ExpiresAt.IsZero() || e.ExpiresAt.Before(ce.ExpiresAt)) {
			ce.ExpiresAt, ce.Source = e.ExpiresAt, e.Source
		}
	}
	ce.Level = auth.ExpiryLevel(ce.ExpiresAt, now)
	return ce
}

// Expiries returns what is known of every credential, in configuration
// order.
func (m *ExpiryMonitor) Expiries() []CredentialExpiry {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]CredentialExpiry, 0, len(m.cfg.credentials))
	for _, c := range m.cfg.credentials {
		ce := *m.state[c.Name]
		ce.Expiries = slices.Clone(ce.Expiries)
		out = append(out, ce)
	}
	return out
}

// ExpiresAt is a credential's soonest known in-use expiry; zero when no
// source knows it or the credential is not configured.
func (m *ExpiryMonitor) ExpiresAt(name string) time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ce := m.state[name]; ce != nil {
		return ce.ExpiresAt
	}
	return time.Time{}
}

// Describe implements prometheus.Collector.
func (m *ExpiryMonitor) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.desc
	ch <- m.knownDesc
	ch <- m.supersededDesc
}

// Collect implements prometheus.Collector: per credential and source, the
// soonest in-use date; per credential checked, whether any source knows
// one, and whether each date given by hand is an earlier secret's.
func (m *ExpiryMonitor) Collect(ch chan<- prometheus.Metric) {
	federated := map[string]bool{}
	for _, c := range m.cfg.credentials {
		federated[c.Name] = c.ClientAssertionFile != ""
	}
	for _, ce := range m.Expiries() {
		if !ce.CheckedAt.IsZero() && !federated[ce.Credential] {
			known := 0.0
			if !ce.ExpiresAt.IsZero() {
				known = 1
			}
			ch <- prometheus.MustNewConstMetric(m.knownDesc, prometheus.GaugeValue, known, ce.Credential)
		}
		m.mu.Lock()
		given := slices.Clone(m.given[ce.Credential])
		m.mu.Unlock()
		for _, e := range given {
			v := 0.0
			if e.Superseded {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(m.supersededDesc, prometheus.GaugeValue, v, ce.Credential, e.Source)
		}
		soonest := map[string]time.Time{}
		for _, e := range ce.Expiries {
			if t, ok := soonest[e.Source]; e.InUse && (!ok || e.ExpiresAt.Before(t)) {
				soonest[e.Source] = e.ExpiresAt
			}
		}
		for _, src := range sources {
			if t, ok := soonest[src]; ok {
				ch <- prometheus.MustNewConstMetric(m.desc, prometheus.GaugeValue, float64(t.Unix()), ce.Credential, src)
			}
		}
	}
}

// Reloaded tells the monitor that a credential's files changed: it is
// checked again at once. It never blocks.
func (m *ExpiryMonitor) Reloaded(name string) { m.ask(&m.pending, name) }

// SecretExpired tells the monitor that Entra answered that a secret of
// the credential expired (AADSTS7000222): its level is worked out again
// at once from what is known, that answer included, without reading
// Graph, which would be one more token request with the refused secret.
// It never blocks.
func (m *ExpiryMonitor) SecretExpired(name string) { m.ask(&m.refused, name) }

// ask adds name to one of the monitor's sets of work and wakes Run. The
// set is read under the lock: Run takes each set whole and leaves an
// empty one in its place.
func (m *ExpiryMonitor) ask(set *map[string]bool, name string) {
	m.mu.Lock()
	(*set)[name] = true
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// Run checks every credential now and every check interval, and a
// reloaded credential at once, until ctx ends; then it waits for webhook
// posts in flight.
func (m *ExpiryMonitor) Run(ctx context.Context) {
	defer m.line.wait()
	m.CheckAll(ctx)
	t := time.NewTicker(m.cfg.interval)
	defer t.Stop()
	retry := time.NewTicker(m.cfg.retry)
	defer retry.Stop()
	for {
		var names, refused map[string]bool
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.CheckAll(ctx)
			continue
		case <-m.wake:
			m.mu.Lock()
			names, m.pending = m.pending, map[string]bool{}
			refused, m.refused = m.refused, map[string]bool{}
			m.mu.Unlock()
		case <-retry.C:
			m.recordAgain(ctx)
			m.mu.Lock()
			names = maps.Clone(m.putOff)
			m.mu.Unlock()
		}
		for _, c := range m.cfg.credentials {
			switch {
			case names[c.Name]:
				m.check(ctx, c)
			case refused[c.Name]:
				m.recount(ctx, c)
			}
		}
	}
}

// recount works out one credential's level again from the local dates
// and the Graph dates of the last check, without reading Graph.
func (m *ExpiryMonitor) recount(ctx context.Context, c Credential) {
	m.mu.Lock()
	graphErr := m.state[c.Name].GraphError
	given, ok := m.given[c.Name]
	m.mu.Unlock()
	if !ok {
		given = m.bindDates(ctx, c)
	}
	m.settle(ctx, c.Name, append(m.localExpiries(c, given), m.graphExpiries(c.Name)...), graphErr)
}

// CheckAll reads every credential's expiry now.
func (m *ExpiryMonitor) CheckAll(ctx context.Context) {
	for _, c := range m.cfg.credentials {
		if ctx.Err() != nil {
			return
		}
		m.check(ctx, c)
	}
}

// check reads one credential's dates, stores them and notifies.
func (m *ExpiryMonitor) check(ctx context.Context, c Credential) {
	given := m.bindDates(ctx, c)
	m.mu.Lock()
	m.given[c.Name] = given
	m.mu.Unlock()
	list := m.localExpiries(c, given)
	graphErr := ""
	if live := m.cfg.live[c.Name]; live != nil && m.cfg.graphURL != "" {
		allowed := m.cfg.graphAllowed == nil || m.cfg.graphAllowed(ctx, c.Name)
		m.mu.Lock()
		if allowed {
			delete(m.putOff, c.Name)
		} else {
			m.putOff[c.Name] = true
		}
		m.mu.Unlock()
		var graph []Expiry
		var err error
		if allowed {
			var acs []auth.AppCredential
			acs, err = m.readGraph(ctx, c.Name, live)
			// With several secrets, the one Graph gives the latest end
			// date is tried first.
			if err == nil && live.SetSecretDates(auth.SecretDates(acs)) {
				// Another secret is tried first now: mark its dates.
				list = m.localExpiries(c, given)
				live.MarkInUse(acs)
			}
			for _, ac := range acs {
				graph = append(graph, Expiry{Credential: c.Name, Source: SourceGraph, Hint: ac.Hint, Thumbprint: ac.Thumbprint,
					KeyID: ac.KeyID, DisplayName: ac.DisplayName, ExpiresAt: ac.End, InUse: ac.InUse})
			}
		} else {
			err = errors.New("not read while the credential's breaker is open; tried again every " + m.cfg.retry.String())
		}
		if err != nil {
			graphErr = err.Error()
			var ge *auth.GraphError
			if !errors.As(err, &ge) || !ge.Forbidden() {
				// Keep the last dates read: a passing failure does not
				// make them wrong.
				list = append(list, m.graphExpiries(c.Name)...)
			}
		}
		list = append(list, graph...)
	}
	m.settle(ctx, c.Name, list, graphErr)
}

// settle sums up one credential's dates, stores the result and
// notifies.
func (m *ExpiryMonitor) settle(ctx context.Context, name string, list []Expiry, graphErr string) {
	now := m.cfg.now()
	ce := summarise(name, list, now)
	ce.CheckedAt, ce.GraphError = now, graphErr
	m.mu.Lock()
	m.state[name] = ce
	m.mu.Unlock()
	m.cfg.log.Debug("credential expiry checked", "credential", name, "expires_at", ce.ExpiresAt,
		"expiry_source", ce.Source, "expiry_level", ce.Level)
	m.record(ctx, *ce)
	m.notify(ctx, *ce, now)
}

// record gives ce to cfg.record, and notes whether it was recorded.
func (m *ExpiryMonitor) record(ctx context.Context, ce CredentialExpiry) {
	if m.cfg.record == nil {
		return
	}
	err := m.cfg.record(ctx, ce)
	m.mu.Lock()
	was := m.unrecorded[ce.Credential]
	if err != nil {
		m.unrecorded[ce.Credential] = true
	} else {
		delete(m.unrecorded, ce.Credential)
	}
	m.mu.Unlock()
	switch {
	case err != nil && !was:
		m.cfg.log.Warn("cannot record the credential's expiry for holdfast breaker status; trying again every "+m.cfg.retry.String(),
			"credential", ce.Credential, "err", err)
	case err == nil && was:
		m.cfg.log.Info("credential's expiry recorded for holdfast breaker status", "credential", ce.Credential)
	}
}

// recordAgain gives cfg.record again the latest result of each
// credential whose record failed.
func (m *ExpiryMonitor) recordAgain(ctx context.Context) {
	m.mu.Lock()
	var again []CredentialExpiry
	for name := range m.unrecorded {
		if ce := m.state[name]; ce != nil {
			again = append(again, *ce)
		}
	}
	m.mu.Unlock()
	for _, ce := range again {
		m.record(ctx, ce)
	}
}

// graphExpiries are the Graph dates of the last check.
func (m *ExpiryMonitor) graphExpiries(name string) []Expiry {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Expiry
	for _, e := range m.state[name].Expiries {
		if e.Source == SourceGraph {
			out = append(out, e)
		}
	}
	return out
}

// readGraph lists the app registration's secrets and certificates. A 403
// is logged once at info, naming the missing permission; other failures
// once per distinct error at warning.
func (m *ExpiryMonitor) readGraph(ctx context.Context, name string, live *auth.Credential) ([]auth.AppCredential, error) {
	list, err := live.AppCredentials(ctx, m.cfg.graphURL)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		var ge *auth.GraphError
		switch {
		case errors.As(err, &ge) && ge.Forbidden():
			if !m.denied[name] {
				m.denied[name] = true
				m.cfg.log.Info("cannot read the credential's expiry from Microsoft Graph; using expires_at and the certificate instead. Grant the app "+ge.MissingPermission()+" to read it",
					"credential", name, "missing_permission", auth.PermissionApplicationReadAll, "graph_error", ge.Code)
			}
		case m.failed[name] != err.Error():
			m.failed[name] = err.Error()
			m.cfg.log.Warn("cannot read the credential's expiry from Microsoft Graph", "credential", name, "err", err)
		}
		return nil, err
	}
	if m.denied[name] || m.failed[name] != "" {
		m.cfg.log.Info("the credential's expiry is readable from Microsoft Graph again", "credential", name)
	}
	delete(m.denied, name)
	delete(m.failed, name)
	return list, nil
}

// ExpiringEvent is the body of the credential.expiring webhook event.
type ExpiringEvent struct {
	Type string `json:"type"`
	// ID is the same on every replica for one credential, level and day,
	// so that a receiver can drop repeats.
	ID         string    `json:"id"`
	Credential string    `json:"credential"`
	Level      string    `json:"level"`
	ExpiresAt  time.Time `json:"expires_at"`
	DaysLeft   int       `json:"days_left"`
	Source     string    `json:"source"`
	// NewestExpiresAt is the end of the newest secret or certificate
	// listed in Graph, when it ends later than the one in use: one
	// already created and waiting to be deployed.
	NewestExpiresAt time.Time `json:"newest_expires_at,omitzero"`
	Message         string    `json:"message"`
	At              time.Time `json:"at"`
}

// notify logs and posts credential.expiring, once a day per credential
// and level across the fleet, when the soonest date is 30 days away or
// less.
func (m *ExpiryMonitor) notify(ctx context.Context, ce CredentialExpiry, now time.Time) {
	if m.cfg.notices == nil {
		return
	}
	switch ce.Level {
	case auth.LevelWarning, auth.LevelCritical, auth.LevelExpired:
	default:
		return
	}
	ok, err := m.cfg.notices.Claim(ctx, expiryNoticeKind, ce.Credential, ce.Level, expiryNoticeEvery)
	if err != nil {
		// Better twice than never.
		m.cfg.log.Warn("cannot tell whether another replica warned today; warning anyway", "credential", ce.Credential, "err", err)
	} else if !ok {
		return
	}
	ev := ExpiringEvent{
		Type:       EventCredentialExpiring,
		ID:         fmt.Sprintf("%s:%s:%s:%s", EventCredentialExpiring, ce.Credential, ce.Level, now.UTC().Format(time.DateOnly)),
		Credential: ce.Credential,
		Level:      ce.Level,
		ExpiresAt:  ce.ExpiresAt.UTC(),
		DaysLeft:   ce.DaysLeft(now),
		Source:     ce.Source,
		At:         now.UTC(),
	}
	// A later Graph date of a secret Entra has refused as expired is an
	// old reading of that secret, not a newer one to deploy.
	refused := map[string]bool{}
	for _, e := range ce.Expiries {
		if e.Source == SourceEntra {
			refused[e.Key()] = true
		}
	}
	for _, e := range ce.Expiries {
		if e.ExpiresAt.After(ce.ExpiresAt) && e.ExpiresAt.After(ev.NewestExpiresAt) && e.Source == SourceGraph && !refused[e.Key()] {
			ev.NewestExpiresAt = e.ExpiresAt.UTC()
		}
	}
	ev.Message = expiryMessage(ev)
	level := slog.LevelWarn
	if ce.Level != auth.LevelWarning {
		level = slog.LevelError
	}
	m.cfg.log.Log(ctx, level, ev.Message, "credential", ce.Credential, "expiry_level", ce.Level,
		"expires_at", ev.ExpiresAt, "days_left", ev.DaysLeft, "expiry_source", ce.Source)
	if m.cfg.events == nil {
		return
	}
	// A notice the receiver did not take is posted again at the next
	// check that finds the credential at this level, by any replica.
	release := func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), expiryEventTimeout)
		defer cancel()
		if err := m.cfg.notices.Release(rctx, expiryNoticeKind, ce.Credential, ce.Level); err != nil {
			m.cfg.log.Warn("cannot give the day's expiry notice back; it is posted again tomorrow",
				"credential", ce.Credential, "err", err)
			return
		}
		m.cfg.log.Info("the day's expiry notice is posted again at the next check",
			"credential", ce.Credential, "expiry_level", ce.Level)
	}
	m.line.post(ctx, m.cfg.events, m.cfg.log, EventCredentialExpiring, ce.Credential, ev, release)
}

// eventLine posts webhook events in goroutines of its WaitGroup, each
// credential's after the one made before it has been posted (or given
// up): a receiver sees a rotation's steps in the order they were taken,
// also when it answered one of them late.
type eventLine struct {
	wg   sync.WaitGroup
	mu   sync.Mutex
	last map[string]chan struct{} // closed when the credential's last event is done
}

// post posts ev, an event of credential, after the credential's earlier
// events, each within expiryEventTimeout even when ctx ends; it logs a
// failure.
//
// failed, when set, is called after an event that could not be posted.
func (l *eventLine) post(ctx context.Context, p eventPoster, log *slog.Logger, kind, credential string, ev any, failed func()) {
	done := make(chan struct{})
	l.mu.Lock()
	before := l.last[credential]
	if l.last == nil {
		l.last = map[string]chan struct{}{}
	}
	l.last[credential] = done
	l.mu.Unlock()
	l.wg.Go(func() {
		defer close(done)
		if before != nil {
			<-before
		}
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), expiryEventTimeout)
		defer cancel()
		if err := p.Post(pctx, kind, ev); err != nil {
			log.Error("cannot post "+kind, "credential", credential, "err", err)
			if failed != nil {
				failed()
			}
		}
	})
}

// wait returns once every event posted so far is done.
func (l *eventLine) wait() { l.wg.Wait() }

// expiryMessage says what is wrong and what to do.
func expiryMessage(ev ExpiringEvent) string {
	var msg string
	if ev.Level == auth.LevelExpired {
		msg = fmt.Sprintf("credential %s expired on %s (from %s)", ev.Credential, ev.ExpiresAt.Format(time.RFC3339), ev.Source)
	} else {
		in := fmt.Sprintf("in %d days", ev.DaysLeft)
		if ev.DaysLeft <= 1 {
			// Days are rounded up: 1 is anything under a day.
			in = "within a day"
		}
		msg = fmt.Sprintf("credential %s expires %s, on %s (from %s)", ev.Credential, in, ev.ExpiresAt.Format(time.RFC3339), ev.Source)
	}
	if !ev.NewestExpiresAt.IsZero() {
		return msg + fmt.Sprintf("; a newer secret or certificate ending %s is registered: deploy it to client_secret_file (or as one more file of client_secret_files, or to cert_file); no restart needed",
			ev.NewestExpiresAt.Format(time.DateOnly))
	}
	return msg + "; rotate it: create a new secret or certificate, write it to client_secret_file (or as one more file of client_secret_files, or to cert_file), no restart needed, then give its end date in expires_at_file (or update expires_at, or expires_at_by_file)"
}

// authOptions are the auth options of a configured credential for scope.
func (c Credential) authOptions(scope string, client *http.Client, log *slog.Logger) auth.CredentialOptions {
	secretExpires, _ := c.secretExpiries() // checked by Validate
	return auth.CredentialOptions{
		Name: c.Name, Tenant: c.Tenant, ClientID: c.ClientID, Authority: c.Authority,
		ClientSecretFile: c.ClientSecretFile, ClientSecretFiles: c.ClientSecretFiles, SecretExpires: secretExpires,
		ExpiresAtFile: c.ExpiresAtFile,
		CertFile:      c.CertFile, KeyFile: c.KeyFile,
		ClientAssertionFile: c.ClientAssertionFile,
		Scope:               scope, HTTPClient: client, Logger: log,
	}
}

// newExpiryMonitor builds the relay's expiry monitor over the exchange
// sender's credentials, notifying on the breaker webhook, and registers
// it.
func (s *Server) newExpiryMonitor() error {
	cfg := expiryConfig{
		credentials: s.opts.Credentials,
		live:        s.exchange.creds,
		graphURL:    s.opts.Exchange.GraphURL,
		interval:    s.opts.Expiry.CheckInterval.D(),
		notices:     breaker.NewNotices(s.rdb),
		log:         s.log,
		// No token request under an open breaker, this one included.
		graphAllowed: func(ctx context.Context, name string) bool {
			ok, _ := s.gate.set.Allow(ctx, credentialBreaker(name))
			return ok
		},
	}
	if s.webhook != nil {
		cfg.events = s.webhook
	}
	cfg.bind = s.queue.BindCredentialDate
	keep := expiryRecordKeep(cfg.interval)
	cfg.record = func(ctx context.Context, ce CredentialExpiry) error {
		e := queue.CredentialExpiry{Replica: s.opts.Replica, ExpiresAt: ce.ExpiresAt, Source: ce.Source,
			CheckedAt: ce.CheckedAt, Until: ce.CheckedAt.Add(keep)}
		return s.queue.SetCredentialExpiry(ctx, ce.Credential, e)
	}
	s.expiry = newExpiryMonitor(cfg)
	if err := s.reg.Register(s.expiry); err != nil {
		return fmt.Errorf("expiry monitor metrics: %w", err)
	}
	return nil
}

// Expiry is the relay's credential expiry monitor; nil unless
// delivery.sender is "exchange".
func (s *Server) Expiry() *ExpiryMonitor { return s.expiry }
