package deploy

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// localCopy copies deploy/local's scripts into a fresh tree and returns
// its root: the scripts work from their own checkout, so a test of them
// touches nothing here.
func localCopy(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "deploy", "local")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"run.sh", "stop.sh"} {
		b, err := os.ReadFile(filepath.Join("local", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "var", "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Should a script start its Redis after all, stop it by its PID.
	t.Cleanup(func() {
		b, err := os.ReadFile(filepath.Join(root, "var", "redis", "redis.pid"))
		if err != nil {
			return
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			if p, err := os.FindProcess(pid); err == nil {
				_ = p.Kill()
			}
		}
	})
	return root
}

// runScript runs one of the copied scripts with a deadline and returns
// its exit status and output.
func runScript(t *testing.T, root, name string) (int, string) {
	t.Helper()
	cmd := exec.Command("bash", filepath.Join(root, "deploy", "local", name))
	cmd.WaitDelay = time.Second
	done := make(chan struct{})
	timer := time.AfterFunc(30*time.Second, func() {
		_ = cmd.Process.Kill()
		close(done)
	})
	out, err := cmd.CombinedOutput()
	timer.Stop()
	select {
	case <-done:
		t.Fatalf("%s did not finish within 30 s:\n%s", name, out)
	default:
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, string(out)
}

// fakeRun starts a process that looks like a running "make run" (its
// command line names run.sh) and records it in var/dev/run.pid.
func fakeRun(t *testing.T, root string) int {
	t.Helper()
	cmd := exec.Command("bash", "-c", "sleep 60; :", filepath.Join(root, "deploy", "local", "run.sh"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	pid := cmd.Process.Pid
	if err := os.WriteFile(filepath.Join(root, "var", "dev", "run.pid"), []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return pid
}

// TestSecondRunRefused: a second "make run" while one runs stops at once
// with one line saying so, before it starts a Redis or replaces the
// simulator's CA under the first one's relay; and "make stop" does not
// take the Redis from under a running "make run".
func TestSecondRunRefused(t *testing.T) {
	root := localCopy(t)
	ca := filepath.Join(root, "var", "dev", "sim-ca.pem")
	if err := os.WriteFile(ca, []byte("the first run's CA\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pid := fakeRun(t, root)

	code, out := runScript(t, root, "run.sh")
	if code != 1 || !strings.Contains(out, "make run is already running (pid "+strconv.Itoa(pid)+")") {
		t.Errorf("run.sh beside a running one: exit %d\n%s", code, out)
	}
	if b, err := os.ReadFile(ca); err != nil || string(b) != "the first run's CA\n" {
		t.Errorf("the first run's simulator CA was touched: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(root, "var", "redis", "redis.pid")); err == nil {
		t.Error("run.sh started a Redis before refusing")
	}

	code, out = runScript(t, root, "stop.sh")
	if code != 1 || !strings.Contains(out, "make run (pid "+strconv.Itoa(pid)+") is using the development Redis") {
		t.Errorf("stop.sh beside a running make run: exit %d\n%s", code, out)
	}
}

// TestRunRefusesTakenPort: with the relay's SMTP port held by something
// else, run.sh names the port and stops before starting anything.
func TestRunRefusesTakenPort(t *testing.T) {
	root := localCopy(t)
	// Whatever holds 2525 (this listener, or something already there)
	// must be named.
	if ln, err := net.Listen("tcp", "127.0.0.1:2525"); err == nil {
		t.Cleanup(func() { ln.Close() })
	}
	code, out := runScript(t, root, "run.sh")
	if code != 1 || !strings.Contains(out, "127.0.0.1:2525 is in use") {
		t.Errorf("run.sh with 2525 taken: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(root, "var", "redis", "redis.pid")); err == nil {
		t.Error("run.sh started a Redis before refusing")
	}
	if _, err := os.Stat(filepath.Join(root, "var", "dev", "run.pid")); err == nil {
		t.Error("run.sh left var/dev/run.pid behind")
	}
}
