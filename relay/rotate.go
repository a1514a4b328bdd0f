package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"holdfast/auth"
	"holdfast/breaker"
	"holdfast/queue"
	"holdfast/relay/o365"
)

// A client secret rotation, by "holdfast creds rotate" or a credential's
// auto_rotate_before, creates a new secret on the app registration with
// Graph's addPassword, writes it atomically into the credential's secret
// directory, waits until Entra has propagated it (a token request with it
// succeeds), and makes it the one in use. The old secret stays in Entra
// for rotate_grace, and is removed with removePassword after that only
// once the new one has got a token (the breaker's record of the material
// that works shows it); its file goes too. One relay rotates a credential
// at a time (a Redis claim); each step is logged and posted on the
// breaker webhook as credential.rotation. When the secret is read from a
// read-only mount (a Kubernetes Secret), the rotation prints the new
// secret for the operator's own tooling to store, and writes nothing.

// EventCredentialRotation is the webhook event of each rotation step.
const EventCredentialRotation = "credential.rotation"

// Rotation steps, as events and log lines name them.
const (
	RotationCreated    = "created"
	RotationPropagated = "propagated"
	RotationSwitched   = "switched"
	RotationRemoved    = "removed"
	RotationFailed     = "failed"
)

// RotationEvent is the body of a credential.rotation webhook event. It
// never holds a secret.
type RotationEvent struct {
	Type       string    `json:"type"`
	ID         string    `json:"id"`
	Credential string    `json:"credential"`
	Step       string    `json:"step"`
	KeyID      string    `json:"key_id,omitempty"`
	Hint       string    `json:"hint,omitempty"`
	Message    string    `json:"message"`
	At         time.Time `json:"at"`
}

// Rotation timings.
const (
	// rotateClaim is how long one relay keeps the right to rotate a
	// credential: a second rotation cannot start meanwhile.
	rotateClaim = 15 * time.Minute
	// rotatePropagation bounds the wait for Entra to accept a new secret.
	rotatePropagation = 10 * time.Minute
	// rotateEvery is how often a relay looks for a secret to rotate or an
	// old one to remove.
	rotateEvery = time.Minute
)

// RotateResult is what a rotation did.
type RotateResult struct {
	KeyID string
	Hint  string
	End   time.Time
	// File is where the new secret was written; empty when printed.
	File string
	// Secret is the new secret, when it was not written: the caller shows
	// it to the operator. Empty otherwise.
	Secret string
	// OldKeyID is the secret it replaces, removed after the grace period
	// when the new one was written.
	OldKeyID string
}

// rotator rotates the client secrets of the relay's credentials.
type rotator struct {
	creds    map[string]Credential
	live     map[string]*auth.Credential
	reload   func(name string) error // re-reads a credential's files on this relay
	graphURL string
	q        rotationStore
	set      *breaker.Set
	claims   noticeClaimer
	events   eventPoster // nil without a webhook
	expiry   *ExpiryMonitor
	log      *slog.Logger
	now      func() time.Time
	// keep, in a relay, has a record of the rotation that Redis did not
	// take made again once it does (gate.keep); nil in "holdfast creds
	// rotate", where such a failure is the command's error.
	keep func(what string, err error, again func(context.Context) error)
	// propagation bounds the wait for a new secret; poll is how often it
	// is tried meanwhile.
	propagation, poll time.Duration

	line eventLine // webhook posts
	mu   sync.Mutex
	// waiting holds, per credential, the last reason a pending removal
	// waited, logged once.
	waiting map[string]string
}

// rotationStore records the rotations waiting to remove their old
// secret: the queue.
type rotationStore interface {
	PendingRotation(ctx context.Context, credential string) (queue.Rotation, bool, error)
	SetRotation(ctx context.Context, r queue.Rotation) error
	EndRotation(ctx context.Context, credential string) error
}

// newRotator builds the rotator of the credentials of o, loaded in live;
// reload re-reads one's files. A nil webhook posts nothing.
func newRotator(o Options, live map[string]*auth.Credential, reload func(string) error, q rotationStore,
	set *breaker.Set, claims noticeClaimer, webhook *breaker.Webhook, expiry *ExpiryMonitor, log *slog.Logger) *rotator {
	r := &rotator{creds: map[string]Credential{}, live: live, reload: reload, graphURL: o.Exchange.GraphURL,
		q: q, set: set, claims: claims, expiry: expiry, log: log.With("component", "rotation"), now: time.Now,
		propagation: rotatePropagation, poll: time.Second}
	for _, c := range o.Credentials {
		r.creds[c.Name] = c
	}
	if webhook != nil {
		r.events = webhook
	}
	return r
}

// RotateCredential rotates one credential's client secret from outside a
// relay ("holdfast creds rotate"), as a relay's rotation does; see
// rotator. The relays see the new file within a second and use it once
// their expiry monitor has read its date from Graph, at once.
func RotateCredential(ctx context.Context, o Options, name string, print bool, log *slog.Logger) (RotateResult, error) {
	tlsConfig, err := exchangeTLS(o.Exchange)
	if err != nil {
		return RotateResult{}, err
	}
	client := auth.NewHTTPClient(tlsConfig)
	live := map[string]*auth.Credential{}
	for _, c := range o.Credentials {
		if c.Name != name {
			continue
		}
		ac, err := auth.NewCredential(c.authOptions(outlookScope, client, log))
		if err != nil {
			return RotateResult{}, err
		}
		live[c.Name] = ac
	}
	rdb := RedisClient(o.Redis)
	defer rdb.Close()
	var webhook *breaker.Webhook
	if o.Breakers.WebhookURL != "" {
		// A command's run is not scraped: no metrics.
		webhook = breaker.NewWebhook(o.Breakers.WebhookURL, &http.Client{Timeout: 10 * time.Second}, log, nil)
		defer webhook.Close()
	}
	reload := func(name string) error {
		if c := live[name]; c != nil {
			_, err := c.Reload()
			return err
		}
		return nil
	}
	r := newRotator(o, live, reload, queue.New(rdb, queue.Options{}), breaker.New(rdb, breaker.Options{Logger: log}),
		breaker.NewNotices(rdb), webhook, nil, log)
	// The relay's own loop is not running here: wait for the posts.
	defer r.line.wait()
	return r.Rotate(ctx, name, print)
}

// ErrNoCredential is a rotation of a name that is not a configured
// credential (a typo): nothing was tried or recorded.
var ErrNoCredential = errors.New("no such credential")

// errRotating is a rotation that did not start: another one holds the
// claim, or one waits to remove its old secret.
var errRotating = errors.New("a rotation of this credential is under way")

// Rotate rotates the named credential's client secret. With print, or
// when the credential's secret directory cannot be written, the new
// secret is returned in RotateResult.Secret instead of being written, and
// nothing waits to remove the old one.
func (r *rotator) Rotate(ctx context.Context, name string, print bool) (RotateResult, error) {
	res, err := r.rotate(ctx, name, print)
	if err != nil && !errors.Is(err, errRotating) && !errors.Is(err, ErrNoCredential) {
		r.step(ctx, name, RotationFailed, res.KeyID, res.Hint, "rotation failed: "+err.Error())
	}
	return res, err
}

// discard removes a secret a failed rotation created and nobody will
// store, so that failed rotations do not pile up valid secrets.
func (r *rotator) discard(ctx context.Context, name string, res RotateResult, pending string) {
	if pending != "" {
		_ = os.Remove(pending)
	}
	if res.KeyID == "" || res.Secret != "" {
		return
	}
	if err := r.live[name].RemovePassword(context.WithoutCancel(ctx), r.graphURL, res.KeyID); err != nil {
		r.log.Error("cannot remove the secret a failed rotation created; remove it from the app registration",
			"credential", name, "key_id", res.KeyID, "err", err)
		return
	}
	r.log.Info("removed the secret the failed rotation created", "credential", name, "key_id", res.KeyID)
}

func (r *rotator) rotate(ctx context.Context, name string, print bool) (RotateResult, error) {
	c, ok := r.creds[name]
	live := r.live[name]
	if !ok || live == nil {
		configured := "none is"
		if len(r.creds) > 0 {
			configured = strings.Join(slices.Sorted(maps.Keys(r.creds)), ", ")
		}
		return RotateResult{}, fmt.Errorf("%q: %w (configured: %s)", name, ErrNoCredential, configured)
	}
	if c.ClientSecretFile == "" && len(c.ClientSecretFiles) == 0 {
		return RotateResult{}, fmt.Errorf("credential %s has no client secret to rotate (certificates and federated credentials are renewed elsewhere)", name)
	}
	if p, ok, err := r.q.PendingRotation(ctx, name); err != nil {
		return RotateResult{}, err
	} else if ok {
		return RotateResult{}, fmt.Errorf("%w: credential %s waits to remove its old secret (key %s) after %s; rotate again after that",
			errRotating, name, p.OldKeyID, p.RemoveAfter.UTC().Format(time.RFC3339))
	}
	// A directory that cannot take the secret is told before the claim,
	// which would refuse the --print the error advises for its lifetime.
	dir := ""
	if !print {
		var why string
		dir, why = secretDir(c)
		if dir == "" {
			return RotateResult{}, fmt.Errorf("credential %s: %s; rotate with --print and store the new secret yourself", name, why)
		}
	}
	// Claimed before Graph is asked: a rotation that cannot go on is not
	// tried again by every relay every minute.
	ok, err := r.claims.Claim(ctx, "rotate", name, "lease", rotateClaim)
	if err != nil {
		return RotateResult{}, fmt.Errorf("claim the rotation: %w", err)
	}
	if !ok {
		return RotateResult{}, fmt.Errorf("%w: another relay is rotating credential %s, or did less than %v ago", errRotating, name, rotateClaim)
	}
	list, err := live.AppCredentials(ctx, r.graphURL)
	if err != nil {
		return RotateResult{}, graphWriteError("read the app registration", err)
	}
	dates := map[string]time.Time{}
	hints := map[string]int{}
	for _, ac := range list {
		if ac.Kind == "secret" {
			dates[ac.Hint] = ac.End
			hints[ac.Hint]++
		}
	}
	// The secret in use, to be replaced, as the relays choose it (by
	// Graph's dates): its key in Graph and its file. Two secrets sharing
	// its hint leave its key unknown, and it is not removed.
	live.SetSecretDates(dates)
	oldHint, _ := live.InUse()
	oldFile, oldKeyID := "", ""
	for _, s := range live.Secrets() {
		if s.InUse {
			oldFile = s.File
		}
	}
	for _, ac := range list {
		if ac.Kind == "secret" && ac.Hint == oldHint && hints[oldHint] == 1 {
			oldKeyID = ac.KeyID
		}
	}
	now := r.now()
	ns, err := live.AddPassword(ctx, r.graphURL, "holdfast "+now.UTC().Format(time.DateOnly), now.Add(c.RotateLifetime.D()))
	if err != nil {
		return RotateResult{}, graphWriteError("create a secret", err)
	}
	res := RotateResult{KeyID: ns.KeyID, Hint: ns.Hint, End: ns.End, OldKeyID: oldKeyID}
	r.step(ctx, name, RotationCreated, ns.KeyID, ns.Hint, fmt.Sprintf("created a client secret (hint %s, key %s) ending %s",
		ns.Hint, ns.KeyID, ns.End.UTC().Format(time.DateOnly)))
	if print {
		res.Secret = ns.Value
		return res, nil
	}
	// Written first under a hidden name, which the secret loader skips:
	// a relay that loaded it before Entra propagated it would find it
	// refused and set it aside. Renamed into place once Entra accepts it.
	content := []byte(ns.Value + "\n")
	base := "holdfast-" + now.UTC().Format("20060102-150405") + ".secret"
	file, pending := filepath.Join(dir, base), filepath.Join(dir, "."+base)
	if err := writeAtomic(pending, content); err != nil {
		// The secret exists in Entra: hand it over rather than lose it
		// (the command prints it; a relay removes it again).
		res.Secret = ns.Value
		return res, fmt.Errorf("write the new secret to %s: %w; make the directory writable, or rotate with --print", dir, err)
	}
	if err := r.waitPropagated(ctx, live, ns.Value); err != nil {
		r.discard(ctx, name, res, pending)
		return res, err
	}
	r.step(ctx, name, RotationPropagated, ns.KeyID, ns.Hint, "Entra accepts the new secret")
	if err := os.Rename(pending, file); err != nil {
		r.discard(ctx, name, res, pending)
		return res, fmt.Errorf("put the new secret in place: %w", err)
	}
	res.File = file
	// In use: loaded, and tried first for its later end date.
	if err := r.reload(name); err != nil {
		return res, err
	}
	dates[ns.Hint] = ns.End
	live.SetSecretDates(dates)
	removeAfter := now.Add(c.RotateGrace.D())
	if oldHint != "" && oldHint != ns.Hint {
		live.Retire(oldHint, removeAfter)
	}
	live.Invalidate()
	if _, err := live.Token(ctx); err != nil {
		return res, fmt.Errorf("a token with the new secret: %w", err)
	}
	if hint, _ := live.InUse(); hint != ns.Hint {
		return res, fmt.Errorf("the new secret (hint %s) was written to %s but secret %s is still in use", ns.Hint, file, hint)
	}
	rot := queue.Rotation{Credential: name, OldKeyID: oldKeyID, OldHint: oldHint, OldFile: oldFile,
		NewKeyID: ns.KeyID, NewHint: ns.Hint, NewFingerprint: live.Fingerprint(), // the new secret's: in use, as checked above
		At: now, RemoveAfter: removeAfter}
	if err := r.q.SetRotation(ctx, rot); err != nil {
		// The new secret is in use: the rotation is done but for its
		// record, without which the old secret would stay. The claim
		// keeps other relays from rotating meanwhile.
		if r.keep == nil {
			return res, err
		}
		r.log.Warn("cannot record the rotation; recorded once Redis answers, and the old secret is removed after that",
			"credential", name, "err", err)
		r.keep("record of the rotation of "+name, err, func(ctx context.Context) error { return r.q.SetRotation(ctx, rot) })
	}
	msg := fmt.Sprintf("the new secret (hint %s) is in use, from %s", ns.Hint, file)
	if oldKeyID != "" {
		msg += fmt.Sprintf("; the old one (hint %s) is removed after %s, once the new one has got a token", oldHint,
			removeAfter.UTC().Format(time.RFC3339))
	}
	r.step(ctx, name, RotationSwitched, ns.KeyID, ns.Hint, msg)
	return res, nil
}

// secretDir is the first directory of the credential's client secret
// files that this process may write, or "" and why not.
func secretDir(c Credential) (dir, why string) {
	for _, p := range c.ClientSecretFiles {
		fi, err := os.Stat(p)
		if err != nil || !fi.IsDir() {
			continue
		}
		probe, err := os.CreateTemp(p, ".holdfast-probe-*")
		if err != nil {
			return "", fmt.Sprintf("its secret directory %s cannot be written (%v): a read-only mount such as a Kubernetes Secret", p, err)
		}
		probe.Close()
		os.Remove(probe.Name())
		return p, ""
	}
	if len(c.ClientSecretFiles) == 0 {
		return "", "it has no client_secret_files directory to write a new secret in (client_secret_file names one file; list its directory in client_secret_files instead to let Holdfast write there)"
	}
	return "", "client_secret_files names no directory to write a new secret in"
}

// writeAtomic writes a secret file under a hidden name, which the secret
// loader skips, syncs it and renames it into place.
func writeAtomic(path string, content []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".holdfast-new-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(content); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// waitPropagated waits until Entra gives a token for the new secret:
// until it has propagated it, Entra answers AADSTS7000215, or at times
// AADSTS7000222.
func (r *rotator) waitPropagated(ctx context.Context, live *auth.Credential, secret string) error {
	deadline := r.now().Add(r.propagation)
	for {
		err := live.TrySecret(ctx, secret)
		if err == nil {
			return nil
		}
		if !o365.SecretMayBePropagating(err) {
			return fmt.Errorf("a token request with the new secret: %w", err)
		}
		if r.now().After(deadline) {
			return fmt.Errorf("the new secret is still refused after %v: Entra has not propagated it (%w)", r.propagation, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(r.poll):
		}
	}
}

// graphWriteError explains a refusal of Graph to read or change the app
// registration.
func graphWriteError(what string, err error) error {
	var ge *auth.GraphError
	if errors.As(err, &ge) && ge.Forbidden() {
		return fmt.Errorf("%s: Graph refused (%s): the app needs the application permission %s, admin-consented, "+
			"and to be an owner of its own registration (or %s)", what, ge.Code, auth.PermissionOwnedBy, "Application.ReadWrite.All")
	}
	return fmt.Errorf("%s: %w", what, err)
}

// run removes old secrets whose grace has passed and rotates the
// credentials whose secret in use expires within auto_rotate_before,
// every rotateEvery, until ctx ends.
func (r *rotator) run(ctx context.Context, every time.Duration) {
	defer r.line.wait()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		for name := range r.creds {
			r.tick(ctx, name)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// tick does one credential's due rotation work.
func (r *rotator) tick(ctx context.Context, name string) {
	pending, ok, err := r.q.PendingRotation(ctx, name)
	if err != nil {
		r.log.Warn("cannot read the credential's rotation", "credential", name, "err", err)
		return
	}
	if ok {
		// Every relay prefers the new secret once it has it: the old
		// one counts as ending at its removal.
		if live := r.live[name]; live != nil && pending.OldHint != "" && pending.OldHint != pending.NewHint {
			live.Retire(pending.OldHint, pending.RemoveAfter)
		}
		r.removeOld(ctx, pending)
		return
	}
	c := r.creds[name]
	if c.AutoRotateBefore <= 0 || r.expiry == nil {
		return
	}
	end := r.expiry.ExpiresAt(name)
	if end.IsZero() || end.Sub(r.now()) > c.AutoRotateBefore.D() {
		return
	}
	r.log.Info("the client secret in use expires within auto_rotate_before; rotating", "credential", name,
		"expires_at", end, "auto_rotate_before", c.AutoRotateBefore.D())
	res, err := r.Rotate(ctx, name, false)
	switch {
	case errors.Is(err, errRotating):
	case err != nil: // logged and posted by Rotate
		if res.Secret != "" {
			// Handed back for an operator to store, but no one reads
			// it here.
			res.Secret = ""
			r.discard(ctx, name, res, "")
		}
	}
}

// removeOld removes a rotation's old secret once its grace has passed and
// the new one has got a token.
func (r *rotator) removeOld(ctx context.Context, p queue.Rotation) {
	if r.now().Before(p.RemoveAfter) {
		return
	}
	st, err := r.set.Status(ctx, credentialBreaker(p.Credential))
	if err != nil {
		return
	}
	if st.GoodFingerprint != p.NewFingerprint {
		r.waitOnce(p.Credential, "the old secret is kept: the new one (hint "+p.NewHint+") has not got a token yet")
		return
	}
	ok, err := r.claims.Claim(ctx, "rotate-remove", p.Credential, p.OldKeyID, rotateClaim)
	if err != nil || !ok {
		return
	}
	if live := r.live[p.Credential]; live != nil && p.OldKeyID != "" {
		// A key already gone (an earlier try's answer lost) is removed.
		if err := live.RemovePassword(ctx, r.graphURL, p.OldKeyID); err != nil {
			err = graphWriteError("remove the old secret", err)
			r.step(ctx, p.Credential, RotationFailed, p.OldKeyID, p.OldHint, err.Error())
			return
		}
	}
	if p.OldFile != "" && strings.HasPrefix(filepath.Base(p.OldFile), "holdfast-") {
		// Only a file a rotation wrote: the operator's own stay.
		_ = os.Remove(p.OldFile)
	}
	if err := r.q.EndRotation(ctx, p.Credential); err != nil {
		// Else the rotation would wait for its claim to lapse (15 min)
		// to remove the secret again, refusing new rotations until then.
		r.log.Warn("cannot end the rotation; ended once Redis answers", "credential", p.Credential, "err", err)
		if r.keep != nil {
			r.keep("end of the rotation of "+p.Credential, err, func(ctx context.Context) error {
				return r.q.EndRotation(ctx, p.Credential)
			})
		}
	}
	if err := r.reload(p.Credential); err != nil {
		r.log.Warn("cannot reload the credential", "credential", p.Credential, "err", err)
	}
	r.step(ctx, p.Credential, RotationRemoved, p.OldKeyID, p.OldHint,
		fmt.Sprintf("removed the old secret (hint %s, key %s) from the app registration", p.OldHint, p.OldKeyID))
}

// waitOnce logs why a removal waits, once per reason.
func (r *rotator) waitOnce(name, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.waiting == nil {
		r.waiting = map[string]string{}
	}
	if r.waiting[name] == why {
		return
	}
	r.waiting[name] = why
	r.log.Info(why, "credential", name)
}

// step logs a rotation step and posts it on the webhook.
func (r *rotator) step(ctx context.Context, name, step, keyID, hint, msg string) {
	level := slog.LevelInfo
	if step == RotationFailed {
		level = slog.LevelError
	}
	r.log.Log(ctx, level, "credential rotation: "+msg, "credential", name, "step", step, "key_id", keyID, "hint", hint)
	if r.events == nil {
		return
	}
	now := r.now().UTC()
	ev := RotationEvent{Type: EventCredentialRotation, ID: fmt.Sprintf("%s:%s:%s:%s", EventCredentialRotation, name, step, keyID),
		Credential: name, Step: step, KeyID: keyID, Hint: hint, Message: msg, At: now}
	r.line.post(ctx, r.events, r.log, EventCredentialRotation, name, ev, nil)
}
