package deploy

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeTools writes, in a directory of its own, the commands run.sh runs:
// a go that builds stand-ins for the relay and the simulator, and a
// redis-server that only sleeps (run.sh reuses the Redis its pidfile
// names when that process is called redis-server). The relay stand-in
// records its PID and each signal in var/dev, and takes SIGHUP as the
// relay does: as a reload, not a stop.
func fakeTools(t *testing.T, root string) string {
	t.Helper()
	dir := t.TempDir()
	relay := `#!/bin/bash
if [ "$1" != serve ]; then exit 0; fi
echo $$ >var/dev/relay.pid
trap 'echo hup >>var/dev/relay.signals' HUP
trap 'echo term >>var/dev/relay.signals; exit 0' TERM
for _ in $(seq 600); do sleep 0.1; done
`
	sim := `#!/bin/bash
while [ $# -gt 0 ]; do [ "$1" = --ca-out ] && echo ca >"$2"; shift; done
trap 'exit 0' TERM
for _ in $(seq 600); do sleep 0.1; done
`
	// go build -o bin/NAME copies the stand-in for NAME.
	goTool := `#!/bin/bash
out=
while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done
cp "$(dirname "$0")/stand-in-$(basename "$out")" "$out"
`
	for name, text := range map[string]string{"go": goTool, "stand-in-holdfast": relay, "stand-in-o365sim": sim} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "redis-server"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// alive reports whether process pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// TestRunStopsRelayOnHangup: closing the terminal of "make run" sends
// SIGHUP to its process group, which the relay takes as "re-read the
// credential files". run.sh stops the relay then, as Ctrl-C does, and
// then the simulator; nothing is left running on the relay's ports.
func TestRunStopsRelayOnHangup(t *testing.T) {
	root := localCopy(t)
	for _, p := range []int{2525, 2587, 8025, 8026, 5587, 8443, 8099} {
		if c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(p), time.Second); err == nil {
			c.Close()
			t.Skipf("127.0.0.1:%d is in use (a \"make run\" of this machine?): run.sh refuses to start beside it", p)
		}
	}
	tools := fakeTools(t, root)
	redis := exec.Command(filepath.Join(tools, "redis-server"), "60")
	if err := redis.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = redis.Process.Kill(); _ = redis.Wait() })
	if err := os.MkdirAll(filepath.Join(root, "var", "redis"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "var", "redis", "redis.pid"), []byte(strconv.Itoa(redis.Process.Pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	// A file, not a buffer: the script writes it while the test reads.
	out, err := os.Create(filepath.Join(t.TempDir(), "run.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	output := func() string { b, _ := os.ReadFile(out.Name()); return string(b) }
	run := exec.Command("bash", filepath.Join(root, "deploy", "local", "run.sh"))
	run.Env = append(os.Environ(), "PATH="+tools+":"+os.Getenv("PATH"))
	run.Stdout, run.Stderr = out, out
	// Its own process group, as a terminal's foreground job has.
	run.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	run.WaitDelay = time.Second
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- run.Wait() }()
	var relayPID, simPID int
	t.Cleanup(func() {
		for _, pid := range []int{relayPID, simPID} {
			if pid > 0 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		_ = syscall.Kill(-run.Process.Pid, syscall.SIGKILL)
	})

	deadline := time.Now().Add(20 * time.Second)
	for relayPID == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the relay did not start within 20 s:\n%s", output())
		}
		select {
		case err := <-exited:
			t.Fatalf("run.sh exited (%v) before the relay started:\n%s", err, output())
		case <-time.After(100 * time.Millisecond):
		}
		if b, err := os.ReadFile(filepath.Join(root, "var", "dev", "relay.pid")); err == nil {
			relayPID, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
	}
	m := regexp.MustCompile(`simulator \(pid (\d+)\)`).FindStringSubmatch(output())
	if m == nil {
		t.Fatalf("run.sh did not name the simulator's PID:\n%s", output())
	}
	simPID, _ = strconv.Atoi(m[1])
	time.Sleep(300 * time.Millisecond) // the relay's traps are set

	if err := syscall.Kill(-run.Process.Pid, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("run.sh still runs 10 s after SIGHUP:\n%s", output())
	}
	stopped := time.Now().Add(5 * time.Second)
	for alive(relayPID) && time.Now().Before(stopped) {
		time.Sleep(50 * time.Millisecond)
	}
	if alive(relayPID) {
		t.Errorf("the relay (pid %d) still runs after its terminal closed", relayPID)
	}
	if alive(simPID) {
		t.Errorf("the simulator (pid %d) still runs after its terminal closed", simPID)
	}
	sig, _ := os.ReadFile(filepath.Join(root, "var", "dev", "relay.signals"))
	if !strings.Contains(string(sig), "term") {
		t.Errorf("the relay got %q, want a SIGTERM after the SIGHUP", sig)
	}
	if _, err := os.Stat(filepath.Join(root, "var", "dev", "run.pid")); err == nil {
		t.Error("run.sh left var/dev/run.pid behind")
	}
}
