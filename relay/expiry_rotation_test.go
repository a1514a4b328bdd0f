package relay

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"holdfast/auth"
	"holdfast/breaker"
	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
)

// rotationFleet is two relays of one credential dated by expires_at,
// each reading its own copy of the secret (a pod's mounted Secret), and
// Graph closed to them: the configured date is all they know, until
// their expires_at_file holds one.
type rotationFleet struct {
	e       *exchangeEnv
	files   [2]string
	dated   [2]string // each relay's expires_at_file, missing at start
	opts    [2]Options
	relays  [2]*Server
	expires time.Time
}

func newRotationFleet(t *testing.T) *rotationFleet {
	t.Helper()
	f := &rotationFleet{expires: time.Now().Add(10 * 24 * time.Hour).UTC().Truncate(time.Second)}
	f.e = newExchangeEnvSim(t, 0, func(c *sim.Config) {
		c.Tenants[0].Apps[0].GraphRoles = []string{"Mail.Send"} // may not read itself
	}, func(o *Options) {
		o.Expiry.CheckInterval = Duration(time.Hour)
		o.Credentials[0].ExpiresAt = f.expires.Format(time.RFC3339)
	})
	for i := range f.relays {
		dir := t.TempDir()
		f.files[i] = filepath.Join(dir, "secret")
		writeFile(t, f.files[i], simSecret+"\n")
		o := f.e.opts
		o.Replica = []string{"relay-1", "relay-2"}[i]
		o.Credentials = append([]Credential(nil), o.Credentials...)
		o.Credentials[0].ClientSecretFile = f.files[i]
		f.dated[i] = filepath.Join(dir, "expires_at")
		o.Credentials[0].ExpiresAtFile = f.dated[i]
		f.opts[i] = o
		f.relays[i] = runRelay(t, o, f.e.log)
	}
	return f
}

// restart stops relay i and starts it again on the same configuration.
func (f *rotationFleet) restart(t *testing.T, i int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f.relays[i].Shutdown(ctx)
	f.relays[i] = runRelay(t, f.opts[i], f.e.log)
}

// expiry waits until relay i has checked the credential after since and
// returns what it found.
func (f *rotationFleet) expiry(t *testing.T, i int, since time.Time, what string, ok func(CredentialExpiry) bool) CredentialExpiry {
	t.Helper()
	var ce CredentialExpiry
	waitFor(t, 10*time.Second, what, func() bool {
		ce = f.relays[i].Expiry().Expiries()[0]
		return ce.CheckedAt.After(since) && ok(ce)
	})
	return ce
}

func knownSeries(t *testing.T, s *Server) (float64, bool) {
	return series(scrape(t, s), "holdfast_credential_expiry_known", map[string]string{"credential": "contoso"})
}

func supersededSeries(t *testing.T, s *Server, source string) (float64, bool) {
	return series(scrape(t, s), "holdfast_credential_expiry_superseded", map[string]string{"credential": "contoso", "source": source})
}

// TestExpiryConfiguredDateAfterRotation: expires_at dates the secret
// the relays loaded. Once a relay's file holds another secret, that
// date is not the credential's expiry any more: the relay says the
// expiry is unknown, at its own moment, and still after a restart on
// the same configuration; the other relay, still on the old secret,
// keeps the date.
func TestExpiryConfiguredDateAfterRotation(t *testing.T) {
	f := newRotationFleet(t)
	start := time.Time{}
	for i := range f.relays {
		ce := f.expiry(t, i, start, "the check at start", func(CredentialExpiry) bool { return true })
		if ce.Level != auth.LevelWarning || ce.Source != SourceConfig || !ce.ExpiresAt.Equal(f.expires) {
			t.Fatalf("relay %d before the rotation: %+v", i+1, ce)
		}
	}

	f.e.sim.AddSecret(simTenant, simClientID, sim.Secret{Value: "Rot~rotated-secret", ExpiresAt: time.Now().Add(200 * 24 * time.Hour)})
	rotated := time.Now()
	writeFile(t, f.files[0], "Rot~rotated-secret\n")
	ce := f.expiry(t, 0, rotated, "relay 1 checked after its rotation", func(CredentialExpiry) bool { return true })
	if ce.Level != auth.LevelUnknown || !ce.ExpiresAt.IsZero() || ce.Source != "" {
		t.Fatalf("relay 1 after its rotation: level %s, expires %s from %q; want unknown: the configured date is the old secret's",
			ce.Level, ce.ExpiresAt, ce.Source)
	}
	if v, ok := knownSeries(t, f.relays[0]); !ok || v != 0 {
		t.Fatalf("relay 1: holdfast_credential_expiry_known = %v (exported %v), want 0", v, ok)
	}
	if !gaugeIs(f.relays[0], "") {
		t.Fatal("relay 1 still exports a date for the rotated secret")
	}
	if v, ok := supersededSeries(t, f.relays[0], SourceConfig); !ok || v != 1 {
		t.Fatalf("relay 1: holdfast_credential_expiry_superseded{source=config} = %v (exported %v), want 1", v, ok)
	}
	if x := ce.Expiries; len(x) != 1 || x[0].Source != SourceConfig || x[0].InUse || !x[0].Superseded || !x[0].ExpiresAt.Equal(f.expires) {
		t.Fatalf("relay 1's dates after its rotation: %+v, want expires_at listed as an earlier secret's", x)
	}
	if n := strings.Count(f.e.logs.String(), "expires_at was given for an earlier secret"); n != 1 {
		t.Fatalf("%d log lines say the date is an earlier secret's, want 1", n)
	}
	// Relay 2 still sends with the old secret: the date is its.
	if ce := f.relays[1].Expiry().Expiries()[0]; ce.Level != auth.LevelWarning || ce.Source != SourceConfig {
		t.Fatalf("relay 2, not rotated yet: %+v", ce)
	}

	// A restart on the unchanged configuration does not take the old
	// date for the new secret.
	f.restart(t, 0)
	restarted := time.Now()
	ce = f.expiry(t, 0, restarted.Add(-time.Second), "relay 1 checked after its restart", func(ce CredentialExpiry) bool { return !ce.CheckedAt.IsZero() })
	if ce.Level != auth.LevelUnknown || ce.Source != "" {
		t.Fatalf("relay 1 restarted on the old expires_at: level %s from %q, want unknown", ce.Level, ce.Source)
	}

	rotated = time.Now()
	writeFile(t, f.files[1], "Rot~rotated-secret\n")
	ce = f.expiry(t, 1, rotated, "relay 2 checked after its rotation", func(CredentialExpiry) bool { return true })
	if ce.Level != auth.LevelUnknown || ce.Source != "" {
		t.Fatalf("relay 2 after its rotation: level %s, expires %s from %q; want unknown", ce.Level, ce.ExpiresAt, ce.Source)
	}
	// holdfast breaker status reads the relays' records: neither knows
	// a date, and the configured one is not shown in its place.
	rdb := f.e.f.redis.Client(t)
	r := NewBreakerReporter(breaker.New(rdb, breaker.Options{}), queue.New(rdb, f.e.opts.Queue.Options()), f.opts[0])
	if b, err := r.Get(context.Background(), "cred:contoso"); err != nil || !b.CredentialExpires.IsZero() {
		t.Fatalf("breaker status with every relay rotated: expires %s (%v), want unknown", b.CredentialExpires, err)
	}

	// The new secret's date, written beside it, is taken without a
	// restart; it then outlasts a restart.
	newer := time.Now().Add(200 * 24 * time.Hour).UTC().Truncate(time.Second)
	dated := time.Now()
	writeFile(t, f.dated[0], newer.Format(time.RFC3339)+"\n")
	ce = f.expiry(t, 0, dated, "relay 1 checked after its expires_at_file was written", func(CredentialExpiry) bool { return true })
	if ce.Level != auth.LevelOK || ce.Source != SourceFile || !ce.ExpiresAt.Equal(newer) {
		t.Fatalf("relay 1 with the new secret's expires_at_file: level %s, expires %s from %q; want ok, %s from file", ce.Level, ce.ExpiresAt, ce.Source, newer)
	}
	if !gaugeIs(f.relays[0], expiryGauge(fmt.Sprintf("contoso file %d", newer.Unix()))) {
		t.Fatal("relay 1 does not export the date of expires_at_file alone")
	}
	f.restart(t, 0)
	restarted = time.Now()
	ce = f.expiry(t, 0, restarted.Add(-time.Second), "relay 1 checked after its second restart", func(ce CredentialExpiry) bool { return !ce.CheckedAt.IsZero() })
	if ce.Level != auth.LevelOK || ce.Source != SourceFile || !ce.ExpiresAt.Equal(newer) {
		t.Fatalf("relay 1 restarted with its expires_at_file: level %s, expires %s from %q", ce.Level, ce.ExpiresAt, ce.Source)
	}

	// Relay 2's Secret gets both keys at once (the date read first, as
	// the relay does): it takes the date with the secret.
	dated = time.Now()
	writeFile(t, f.dated[1], newer.Format(time.DateOnly)+"\n")
	ce = f.expiry(t, 1, dated, "relay 2 checked after its expires_at_file was written", func(ce CredentialExpiry) bool { return ce.Source == SourceFile })
	if ce.Level != auth.LevelOK || !ce.ExpiresAt.Equal(newer.Truncate(24*time.Hour)) {
		t.Fatalf("relay 2 with its expires_at_file: level %s, expires %s from %q", ce.Level, ce.ExpiresAt, ce.Source)
	}

	// A third secret written without a new date: the date file's date
	// is the second secret's, and the expiry is unknown again.
	f.e.sim.AddSecret(simTenant, simClientID, sim.Secret{Value: "Thd~third-secret", ExpiresAt: time.Now().Add(300 * 24 * time.Hour)})
	rotated = time.Now()
	writeFile(t, f.files[0], "Thd~third-secret\n")
	ce = f.expiry(t, 0, rotated, "relay 1 checked after its second rotation", func(CredentialExpiry) bool { return true })
	if ce.Level != auth.LevelUnknown || ce.Source != "" {
		t.Fatalf("relay 1 rotated again, its expires_at_file left as it was: level %s, expires %s from %q; want unknown", ce.Level, ce.ExpiresAt, ce.Source)
	}
	if v, ok := supersededSeries(t, f.relays[0], SourceFile); !ok || v != 1 {
		t.Fatalf("relay 1: holdfast_credential_expiry_superseded{source=file} = %v (exported %v), want 1", v, ok)
	}
}

// TestExpiryConfiguredDateSameSecretRewritten: the same secret written
// again without its trailing newline (the relay uses it trimmed) is no
// rotation: expires_at still dates it, and the expiry warning stays.
func TestExpiryConfiguredDateSameSecretRewritten(t *testing.T) {
	f := newRotationFleet(t)
	ce := f.expiry(t, 0, time.Time{}, "the check at start", func(CredentialExpiry) bool { return true })
	if ce.Level != auth.LevelWarning || ce.Source != SourceConfig {
		t.Fatalf("relay 1 at start: %+v", ce)
	}
	rewritten := time.Now()
	writeFile(t, f.files[0], simSecret)
	ce = f.expiry(t, 0, rewritten, "relay 1 checked after its secret was written again", func(CredentialExpiry) bool { return true })
	if ce.Level != auth.LevelWarning || ce.Source != SourceConfig || !ce.ExpiresAt.Equal(f.expires) {
		t.Fatalf("relay 1 after the same secret was written again: level %s, expires %s from %q; want warning, %s from config",
			ce.Level, ce.ExpiresAt, ce.Source, f.expires)
	}
	if v, ok := supersededSeries(t, f.relays[0], SourceConfig); !ok || v != 0 {
		t.Fatalf("relay 1: holdfast_credential_expiry_superseded{source=config} = %v (exported %v), want 0", v, ok)
	}
}

// fileDate is the expires_at_file date among ce's dates; false when
// none is listed.
func fileDate(ce CredentialExpiry) (Expiry, bool) {
	for _, e := range ce.Expiries {
		if e.Source == SourceFile {
			return e, true
		}
	}
	return Expiry{}, false
}

// TestExpiryFileDateRestatedForNewSecret: two secrets may end on the
// same day (one leaked and replaced the day it was made). A rotation
// that leaves the date file's content as it was does not carry its
// date over to the new secret; writing the date into the file again,
// in another form, after the rotation states it for the secret loaded
// then. Another relay still on the earlier secret, with the same date,
// keeps it, and a restart keeps the statement.
func TestExpiryFileDateRestatedForNewSecret(t *testing.T) {
	f := newRotationFleet(t)
	day := time.Now().Add(200 * 24 * time.Hour).UTC().Truncate(24 * time.Hour)
	for i := range f.relays {
		dated := time.Now()
		writeFile(t, f.dated[i], day.Format(time.DateOnly)+"\n")
		ce := f.expiry(t, i, dated, "the check after the date was written", func(ce CredentialExpiry) bool { _, ok := fileDate(ce); return ok })
		if e, _ := fileDate(ce); !e.InUse || e.Superseded || !e.ExpiresAt.Equal(day) {
			t.Fatalf("relay %d, its first secret dated %s: %+v", i+1, day.Format(time.DateOnly), e)
		}
	}

	f.e.sim.AddSecret(simTenant, simClientID, sim.Secret{Value: "Rot~rotated-secret", ExpiresAt: day})
	rotated := time.Now()
	writeFile(t, f.files[0], "Rot~rotated-secret\n")
	writeFile(t, f.dated[0], day.Format(time.DateOnly)+"\n")
	ce := f.expiry(t, 0, rotated, "relay 1 checked after its rotation", func(CredentialExpiry) bool { return true })
	if ce.Level != auth.LevelUnknown {
		t.Fatalf("relay 1 rotated, its date file's content unchanged: level %s from %q, want unknown", ce.Level, ce.Source)
	}

	// The operator writes the same end date again, as a time.
	restated := time.Now()
	writeFile(t, f.dated[0], day.Format(time.RFC3339)+"\n")
	ce = f.expiry(t, 0, restated, "relay 1 checked after its date was written again", func(CredentialExpiry) bool { return true })
	if e, _ := fileDate(ce); ce.Level != auth.LevelOK || ce.Source != SourceFile || !ce.ExpiresAt.Equal(day) || !e.InUse || e.Superseded {
		t.Fatalf("relay 1 after the new secret's date was written: level %s, expires %s from %q, file date %+v; want ok, %s from file",
			ce.Level, ce.ExpiresAt, ce.Source, e, day)
	}
	if v, ok := supersededSeries(t, f.relays[0], SourceFile); !ok || v != 0 {
		t.Fatalf("relay 1: holdfast_credential_expiry_superseded{source=file} = %v (exported %v), want 0", v, ok)
	}

	// Relay 2 still sends with the first secret, whose date it is too.
	checked := time.Now()
	if err := f.relays[1].Reload(); err != nil {
		t.Fatal(err)
	}
	ce = f.expiry(t, 1, checked, "relay 2 checked again", func(CredentialExpiry) bool { return true })
	if e, _ := fileDate(ce); !e.InUse || e.Superseded {
		t.Fatalf("relay 2, on the first secret of the same date: file date %+v, want in use", e)
	}

	f.restart(t, 0)
	restarted := time.Now()
	ce = f.expiry(t, 0, restarted.Add(-time.Second), "relay 1 checked after its restart", func(ce CredentialExpiry) bool { return !ce.CheckedAt.IsZero() })
	if ce.Level != auth.LevelOK || ce.Source != SourceFile {
		t.Fatalf("relay 1 restarted after its date was written again: level %s from %q, want ok from file", ce.Level, ce.Source)
	}
}
