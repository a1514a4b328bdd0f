package relay

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"holdfast/auth"
	"holdfast/breaker"
	"holdfast/cmd/o365sim/sim"
	"holdfast/queue"
)

// rotationEnv is an exchange environment whose credential reads its
// secret from a directory, on an app that may change itself
// (Application.ReadWrite.OwnedBy, owner of itself), with Entra taking 2 s
// to propagate a new secret.
func rotationEnv(t *testing.T, change func(*Options)) (*exchangeEnv, string) {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "current"), simSecret+"\n")
	e := newExchangeEnvSim(t, 1, func(c *sim.Config) {
		c.Tenants[0].Apps[0].GraphRoles = []string{"Mail.Send", "Application.ReadWrite.OwnedBy"}
		c.Tenants[0].Apps[0].OwnsItself = true
		c.PasswordPropagation = 2 * time.Second
	}, func(o *Options) {
		o.Credentials[0].ClientSecretFile = ""
		o.Credentials[0].ClientSecretFiles = []string{dir}
		o.Credentials[0].RotateGrace = Duration(3 * time.Second)
		o.Expiry.rotateEvery = 200 * time.Millisecond
		if change != nil {
			change(o)
		}
	})
	return e, dir
}

// appSecrets lists the app registration's secrets in the simulator, by
// hint.
func appSecrets(t *testing.T, e *exchangeEnv) []string {
	t.Helper()
	list, err := e.relays[0].exchange.creds["contoso"].AppCredentials(t.Context(), e.sim.GraphURL())
	if err != nil {
		t.Fatal(err)
	}
	var hints []string
	for _, ac := range list {
		hints = append(hints, ac.Hint)
	}
	return hints
}

// TestRotateSecret: "holdfast creds rotate" on a relay's credential while
// mail flows. The new secret is written to the secret directory, waited
// for while Entra refuses it (AADSTS7000215), and put in use; the old one
// is removed from the app registration after rotate_grace, once the new
// one got a token. Every message is delivered once, none held, and the
// breaker never moves.
func TestRotateSecret(t *testing.T) {
	hook := newWebhookSink(t)
	e, dir := rotationEnv(t, func(o *Options) { o.Breakers.WebhookURL = hook.srv.URL + "/hooks/secret-token" })
	r := e.relays[0]
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var ids []string
	wg.Go(func() {
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			id, err := e.trySubmit(0, "billing@contoso.com", "x@example.org", exchangeMessage(n, "billing@contoso.com"))
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			ids = append(ids, id)
			mu.Unlock()
		}
	})
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	res, err := r.rotator.Rotate(t.Context(), "contoso", false)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if took < 2*time.Second {
		t.Errorf("rotation took %v: it did not wait for Entra's 2 s propagation", took)
	}
	raw, err := os.ReadFile(res.File)
	if err != nil || filepath.Dir(res.File) != dir || strings.TrimSpace(string(raw)) == simSecret || res.Hint != string(raw[:3]) {
		t.Fatalf("new secret file %q: %q, %v; hint %s", res.File, raw, err, res.Hint)
	}
	if hint, _ := r.exchange.creds["contoso"].InUse(); hint != res.Hint {
		t.Errorf("secret in use: hint %s, want the new one, %s", hint, res.Hint)
	}
	if got := appSecrets(t, e); len(got) != 2 {
		t.Errorf("app secrets after the rotation: %v, want the old and the new", got)
	}
	// A second rotation waits until the first has removed its old secret.
	if _, err := r.rotator.Rotate(t.Context(), "contoso", false); err == nil || !strings.Contains(err.Error(), "waits to remove its old secret") {
		t.Errorf("a second rotation during the grace: %v, want it refused", err)
	}
	waitFor(t, 15*time.Second, "the old secret removed", func() bool {
		got := appSecrets(t, e)
		return len(got) == 1 && got[0] == res.Hint
	})
	close(stop)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	waitFor(t, 15*time.Second, "every message delivered", func() bool {
		return e.allDelivered(t, ids)
	})
	count := map[string]int{}
	for _, m := range e.sim.Received() {
		count[m.MessageID]++
	}
	for n := range ids {
		if c := count[fmt.Sprintf("<m%d@test>", n)]; c != 1 {
			t.Errorf("message %d delivered %d times", n, c)
		}
	}
	st, err := r.gate.set.Status(t.Context(), credentialBreaker("contoso"))
	if err != nil || st.Generation != 0 || st.State != breaker.Closed {
		t.Errorf("breaker: %+v, %v; want closed, never moved", st, err)
	}
	logs := e.logs.String()
	waitFor(t, 5*time.Second, "the webhook's four steps", func() bool { return len(hook.events(EventCredentialRotation)) == 4 })
	for i, step := range []string{RotationCreated, RotationPropagated, RotationSwitched, RotationRemoved} {
		if !strings.Contains(logs, "step="+step) {
			t.Errorf("no log line of the step %q", step)
		}
		ev := hook.events(EventCredentialRotation)[i]
		if ev["step"] != step || ev["credential"] != "contoso" || ev["message"] == "" {
			t.Errorf("webhook event %d: %v, want step %s", i, ev, step)
		}
	}
	secret, _ := os.ReadFile(res.File)
	if strings.Contains(logs, strings.TrimSpace(string(secret))) || strings.Contains(fmt.Sprint(hook.events(EventCredentialRotation)), strings.TrimSpace(string(secret))) {
		t.Error("the new secret is in a log line or a webhook event")
	}
	t.Logf("%d messages during the rotation; the rotation took %v", len(ids), took)
}

// TestRotateWhileRefusedAsExpired: Entra answers AADSTS7000222 for the
// new secret until it has propagated it, as it does at times: the
// rotation waits for it as for AADSTS7000215, puts it in use, and the
// credential is never reported expired.
func TestRotateWhileRefusedAsExpired(t *testing.T) {
	e, _ := rotationEnv(t, nil)
	e.sim.SetPasswordPropagation(2*time.Second, true)
	r := e.relays[0]
	start := time.Now()
	res, err := r.rotator.Rotate(t.Context(), "contoso", false)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 2*time.Second {
		t.Errorf("rotation took %v: it did not wait for Entra's 2 s propagation", took)
	}
	if hint, _ := r.exchange.creds["contoso"].InUse(); hint != res.Hint {
		t.Errorf("secret in use: hint %s, want the new one, %s", hint, res.Hint)
	}
	id := e.submit(t, 0, "billing@contoso.com", "x@example.org", exchangeMessage(1, "billing@contoso.com"))
	waitFor(t, 10*time.Second, "a message delivered with the new secret", func() bool { return e.get(t, id).State == queue.Delivered })
	for _, ce := range r.Expiry().Expiries() {
		if ce.Level == auth.LevelExpired {
			t.Errorf("credential reported expired after the rotation: %+v", ce)
		}
	}
	if strings.Contains(e.logs.String(), "credential contoso expired") {
		t.Errorf("an expired notice during the rotation:\n%s", e.logs.String())
	}
}

// TestAutoRotate: a credential whose secret in use ends within
// auto_rotate_before is rotated by the relay itself, once: the new
// secret ends after it.
func TestAutoRotate(t *testing.T) {
	e, dir := rotationEnv(t, func(o *Options) {
		o.Credentials[0].RotateLifetime = Duration(730 * 24 * time.Hour)
		// The simulator's secret ends in a year.
		o.Credentials[0].AutoRotateBefore = Duration(400 * 24 * time.Hour)
	})
	waitFor(t, 20*time.Second, "the old secret removed", func() bool {
		return len(appSecrets(t, e)) == 1 && strings.Contains(e.logs.String(), "step="+RotationRemoved)
	})
	time.Sleep(time.Second)
	if n := strings.Count(e.logs.String(), "step="+RotationCreated); n != 1 {
		t.Errorf("%d secrets created, want 1", n)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "holdfast-*.secret"))
	if len(files) != 1 {
		t.Errorf("secret files written: %v, want 1", files)
	}
}

// TestRotateNeedsPermission: without Application.ReadWrite.OwnedBy, the
// rotation says which permission and ownership the app needs, and
// nothing is written.
func TestRotateNeedsPermission(t *testing.T) {
	e, dir := rotationEnv(t, nil)
	e.sim.SetGraphRoles(simTenant, simClientID, []string{"Mail.Send", "Application.Read.All"}, false)
	_, err := e.relays[0].rotator.Rotate(t.Context(), "contoso", false)
	if err == nil || !strings.Contains(err.Error(), "Application.ReadWrite.OwnedBy") || !strings.Contains(err.Error(), "owner of its own registration") {
		t.Fatalf("rotation without the permission: %v", err)
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "holdfast-*")); len(files) != 0 {
		t.Errorf("files written: %v", files)
	}
}

// TestRotatePrint: "creds rotate --print" shows the new secret and writes
// nothing, for a secret the operator's tooling stores (a Kubernetes
// Secret); the secret works once Entra has propagated it.
func TestRotatePrint(t *testing.T) {
	e, dir := rotationEnv(t, nil)
	res, err := RotateCredential(t.Context(), e.opts, "contoso", true, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Secret) != 40 || res.File != "" || res.Hint != res.Secret[:3] {
		t.Fatalf("printed rotation: %+v", res)
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "holdfast-*")); len(files) != 0 {
		t.Errorf("files written: %v", files)
	}
	live := e.relays[0].exchange.creds["contoso"]
	waitFor(t, 10*time.Second, "Entra accepting the printed secret", func() bool {
		return live.TrySecret(t.Context(), res.Secret) == nil
	})
	if pending, ok, err := e.relays[0].queue.PendingRotation(t.Context(), "contoso"); err != nil || ok {
		t.Errorf("a printed rotation left a removal pending: %+v %v", pending, err)
	}
}

// failingRotations is the queue's record of rotations, failing its first
// SetRotation and its first EndRotation as a moment without Redis would.
type failingRotations struct {
	rotationStore
	setFails, endFails atomic.Int32
}

var errNoRedis = errors.New("dial tcp 127.0.0.1:1: connect: connection refused")

func (f *failingRotations) SetRotation(ctx context.Context, r queue.Rotation) error {
	if f.setFails.Add(-1) >= 0 {
		return errNoRedis
	}
	return f.rotationStore.SetRotation(ctx, r)
}

func (f *failingRotations) EndRotation(ctx context.Context, credential string) error {
	if f.endFails.Add(-1) >= 0 {
		return errNoRedis
	}
	return f.rotationStore.EndRotation(ctx, credential)
}

// TestRotationRecordedLate: Redis fails the record of a rotation whose
// new secret is in use already, and then the end of that rotation. The
// rotation succeeds all the same; the record is made once Redis takes it,
// the old secret is removed after the grace, and the rotation ends
// within seconds, not when its claim lapses.
func TestRotationRecordedLate(t *testing.T) {
	fr := &failingRotations{}
	fr.setFails.Store(1)
	fr.endFails.Store(1)
	e, _ := rotationEnv(t, func(o *Options) {
		o.Expiry.rotations = func(s rotationStore) rotationStore {
			fr.rotationStore = s
			return fr
		}
	})
	r := e.relays[0]
	res, err := r.rotator.Rotate(t.Context(), "contoso", false)
	if err != nil {
		t.Fatalf("rotation whose record Redis failed: %v", err)
	}
	if hint, _ := r.exchange.creds["contoso"].InUse(); hint != res.Hint {
		t.Errorf("secret in use: hint %s, want the new one, %s", hint, res.Hint)
	}
	waitFor(t, 5*time.Second, "the rotation recorded", func() bool {
		p, ok, err := r.Queue().PendingRotation(t.Context(), "contoso")
		return err == nil && ok && p.NewHint == res.Hint
	})
	waitFor(t, 15*time.Second, "the old secret removed", func() bool {
		got := appSecrets(t, e)
		return len(got) == 1 && got[0] == res.Hint
	})
	waitFor(t, 5*time.Second, "the rotation ended", func() bool {
		_, ok, err := r.Queue().PendingRotation(t.Context(), "contoso")
		return err == nil && !ok
	})
	// The line saying a write was made again follows the write, so it
	// can come a moment after the rotation's end is seen.
	for _, what := range []string{"record of the rotation of contoso", "end of the rotation of contoso"} {
		waitFor(t, 5*time.Second, "a log line saying the "+what+" was made once Redis answered", func() bool {
			return strings.Contains(e.logs.String(), "what=\""+what+"\"")
		})
	}
	if strings.Contains(e.logs.String(), "step="+RotationFailed) {
		t.Error("the rotation was reported failed")
	}
}

// TestSecretDirWhyNot: a credential rotation cannot write to says why, in
// the terms of its own configuration.
func TestSecretDirWhyNot(t *testing.T) {
	for _, tc := range []struct {
		c    Credential
		want string
	}{
		{Credential{ClientSecretFile: "/etc/holdfast/contoso.secret"}, "client_secret_file names one file"},
		{Credential{ClientSecretFiles: []string{"/etc/holdfast/contoso.secret"}}, "client_secret_files names no directory"},
	} {
		if dir, why := secretDir(tc.c); dir != "" || !strings.Contains(why, tc.want) {
			t.Errorf("secretDir(%+v) = %q, %q; want no directory and %q", tc.c, dir, why, tc.want)
		}
	}
}
