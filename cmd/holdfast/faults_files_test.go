//go:build faults

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"holdfast/breaker"
)

// Rotation through the ways a secret file changes. Three replicas, each
// with its own secret file, take mail from an app that keeps submitting
// to all three. The client secret expires and the breaker opens; the
// secret is rotated at Entra (the old one deleted), and the new secret
// reaches the files in three ways:
//
//   - relay 1's file is replaced atomically (a rename);
//   - relay 2's file is written in place in two writes, filesSplit apart,
//     so that the relay reads half a secret in between;
//   - relay 3's file is a Kubernetes Secret volume's key, a link through
//     ..data, which is swapped to a new directory filesLate after relay
//     1's file changed.
//
// Each relay delivers within filesFirst of its file holding the whole new
// secret; nothing acknowledged is lost or dead-lettered; no message is
// delivered twice (no relay is killed); and the breaker, once closed,
// stays closed: half a secret in one relay's file does not hold the
// fleet's mail.
func TestFaultRotationFileShapes(t *testing.T) {
	const (
		before     = 30
		rate       = 20
		filesSplit = 2 * time.Second
		filesLate  = 10 * time.Second
		filesFirst = 3 * time.Second
		drainMax   = 60 * time.Second
	)
	f := startRotationFleet(t)
	volume := kubeSecretVolume(t, f.secretFiles[2], incSecret+"\n")
	h := holdAtExpiry(t, f, before, rate)
	watch, held := h.watch, h.st.Held

	f.sim.RotateSecret(incTenant, incClientID, incRotated)
	rotated := time.Now()
	atRotation := f.counters()
	var changed [3]time.Time

	incWriteFile(t, f.secretFiles[0], incRotated+"\n")
	changed[0] = time.Now()
	closed := watch.waitFor(t, breaker.Closed, changed[0], 10*time.Second)

	time.Sleep(2 * time.Second)
	half := len(incRotated) / 2
	writeInPlace(t, f.secretFiles[1], incRotated[:half], false)
	split := time.Now()
	time.Sleep(filesSplit)
	writeInPlace(t, f.secretFiles[1], incRotated[half:]+"\n", true)
	changed[1] = time.Now()

	incSleepUntil(changed[0].Add(filesLate))
	volume.swap(t, incRotated+"\n")
	changed[2] = time.Now()

	time.Sleep(filesFirst + time.Second)
	h.load.stop()
	c, lost, drain, drained := f.outcome(h.ledger, drainMax)
	end, err := f.stats()
	if err != nil {
		t.Fatal(err)
	}

	rows := countRows(c)
	rows = append(rows,
		[]string{"held at the rotation", strconv.FormatInt(held, 10)},
		[]string{"relay 1 file changed to breaker closed (seen in Redis)", ms(closed.Sub(changed[0]))},
	)
	names := []string{"relay-1 (rename)", "relay-2 (two writes, " + filesSplit.String() + " apart)", "relay-3 (..data swap, " + filesLate.String() + " late)"}
	var firsts [3]time.Duration
	for i, r := range f.relays {
		first, ok := firstLogged(r, "delivered", changed[i])
		firsts[i] = -1
		if ok {
			firsts[i] = first.Sub(changed[i])
		}
		refused := r.loggedAfter("token request rejected", rotated)
		got := "none"
		if ok {
			got = ms(firsts[i])
		}
		rows = append(rows, []string{names[i] + ": file whole to its first delivery", got},
			[]string{"  refused token requests after the rotation", strconv.Itoa(refused)})
	}
	if first, ok := firstLogged(f.relays[1], "delivered", split); ok && first.Before(changed[1]) {
		rows = append(rows, []string{"relay-2: delivered while its file held half the secret", "yes"})
	}
	reopened, ok := watch.after(breaker.Open, closed)
	if ok {
		rows = append(rows, []string{"breaker opened again after it closed", ms(reopened.Sub(closed)) + " after"})
	}
	rows = append(rows,
		[]string{"refused token requests after the rotation (Entra)", strconv.Itoa(f.counters().TokenErrors - atRotation.TokenErrors)},
		[]string{"dead letters", strconv.FormatInt(end.Dead, 10)},
		[]string{"drained after the load in", fmt.Sprintf("%s (within %v: %v)", ms(drain), drainMax, drained)},
	)
	table(t, "rotation through the ways a secret file changes", rows)

	if held == 0 {
		t.Error("nothing was held at the rotation: the test proves nothing")
	}
	if c.lost > 0 {
		t.Errorf("%d acknowledged messages never delivered, e.g. %v", c.lost, lost[:min(len(lost), 10)])
	}
	if end.Dead > 0 {
		t.Errorf("%d dead letters: an auth outage must hold mail, not bounce it", end.Dead)
	}
	if c.duplicates > 0 {
		t.Errorf("%d duplicates with no relay killed", c.duplicates)
	}
	if !drained {
		t.Errorf("the queue did not drain within %v of the end of submission", drainMax)
	}
	for i, d := range firsts {
		if d < 0 || d > filesFirst {
			t.Errorf("%s: first delivery %v after its file held the new secret, want within %v", names[i], d, filesFirst)
		}
	}
	if ok {
		t.Errorf("the breaker opened again %v after it closed", reopened.Sub(closed).Round(time.Millisecond))
	}
	f.checkRunning()
}

// firstLogged returns the time of relay r's first log line msg after from.
func firstLogged(r *incRelay, msg string, from time.Time) (time.Time, bool) {
	for _, e := range r.logEntries(msg) {
		if e.Time.After(from) {
			return e.Time, true
		}
	}
	return time.Time{}, false
}

// writeInPlace writes content into path without a rename: truncating it
// first, or appending.
func writeInPlace(tb testing.TB, path, content string, appendTo bool) {
	tb.Helper()
	flag := os.O_WRONLY | os.O_TRUNC
	if appendTo {
		flag = os.O_WRONLY | os.O_APPEND
	}
	fh, err := os.OpenFile(path, flag, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := fh.WriteString(content); err != nil {
		tb.Fatal(err)
	}
	if err := fh.Close(); err != nil {
		tb.Fatal(err)
	}
}

// kubeVolume is a directory laid out as the kubelet lays out a Secret
// volume: the key is a link to ..data/key, and ..data a link to a
// timestamped directory, swapped by a rename.
type kubeVolume struct {
	dir string
	gen int
}

// kubeSecretVolume makes path a link to the key of a new volume holding
// content.
func kubeSecretVolume(tb testing.TB, path, content string) *kubeVolume {
	tb.Helper()
	v := &kubeVolume{dir: path + ".volume"}
	if err := os.Mkdir(v.dir, 0o700); err != nil {
		tb.Fatal(err)
	}
	v.swap(tb, content)
	if err := os.Symlink("..data/secret", filepath.Join(v.dir, "secret")); err != nil {
		tb.Fatal(err)
	}
	tmp := path + ".link"
	if err := os.Symlink(filepath.Join(v.dir, "secret"), tmp); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		tb.Fatal(err)
	}
	return v
}

// swap writes content into a new timestamped directory and points ..data
// at it, then removes the previous one.
func (v *kubeVolume) swap(tb testing.TB, content string) {
	tb.Helper()
	v.gen++
	gen := fmt.Sprintf("..2026_%02d", v.gen)
	if err := os.Mkdir(filepath.Join(v.dir, gen), 0o700); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(v.dir, gen, "secret"), []byte(content), 0o600); err != nil {
		tb.Fatal(err)
	}
	tmp := filepath.Join(v.dir, "..data_tmp")
	if err := os.Symlink(gen, tmp); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, "..data")); err != nil {
		tb.Fatal(err)
	}
	if v.gen > 1 {
		if err := os.RemoveAll(filepath.Join(v.dir, fmt.Sprintf("..2026_%02d", v.gen-1))); err != nil {
			tb.Fatal(err)
		}
	}
}
