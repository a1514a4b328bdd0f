package deploy

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// standInEnv names the variable that makes this test binary stand in for
// the relay or the simulator under run.sh, by the name it is run as.
const standInEnv = "HOLDFAST_TEST_STAND_IN"

// standIn is the test binary run as bin/holdfast or bin/o365sim. The
// relay records in var/dev/stand-in.log each signal it gets and what it
// does, as cmd/holdfast does: SIGHUP re-reads, the first SIGINT or
// SIGTERM starts a shutdown of a second (its deliveries), and a second
// one during it quits at once. The simulator writes its CA file, runs
// until SIGTERM and records that it stopped. Both stop by themselves
// after a minute.
func standIn() int {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	timeout := time.After(time.Minute)
	args := os.Args[1:]
	record := func(what string) {
		f, err := os.OpenFile("var/dev/stand-in.log", os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			fmt.Fprintln(f, what)
			f.Close()
		}
	}
	if filepath.Base(os.Args[0]) == "o365sim" {
		for i, a := range args {
			if a == "--ca-out" && i+1 < len(args) {
				_ = os.WriteFile(args[i+1], []byte("ca\n"), 0o644)
			}
		}
		for {
			select {
			case s := <-sigs:
				if s == syscall.SIGTERM {
					record("simulator stopped")
					return 0
				}
			case <-timeout:
				return 1
			}
		}
	}
	if len(args) == 0 || args[0] != "serve" {
		return 0 // creds devcert
	}
	if err := os.WriteFile("var/dev/relay.pid", []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return 1
	}
	var drained <-chan time.Time
	for {
		select {
		case s := <-sigs:
			switch {
			case s == syscall.SIGHUP:
				record("hangup")
			case drained != nil:
				record("killed by a second " + s.String())
				return 1
			default:
				record(s.String())
				drained = time.After(time.Second)
			}
		case <-drained:
			record("drained")
			return 0
		case <-timeout:
			return 1
		}
	}
}

// fakeTools writes, in a directory of its own, the commands run.sh runs
// that are not this test binary: a go whose build copies the stand-in
// to its -o path, and a redis-server that only sleeps (run.sh reuses the
// Redis its pidfile names when that process is called redis-server).
func fakeTools(t *testing.T, root string) string {
	t.Helper()
	dir := t.TempDir()
	goTool := `#!/bin/bash
out=
while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done
cp "$` + standInEnv + `" "$out"
`
	if err := os.WriteFile(filepath.Join(dir, "go"), []byte(goTool), 0o755); err != nil {
		t.Fatal(err)
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

// runUnderTerminal runs a copy of run.sh in a process group of its own,
// as a terminal's foreground job, with stand-ins for go, the relay, the
// simulator and Redis; it waits until the relay stand-in runs, sends the
// group the signals in turn, 200 ms apart, and returns once run.sh has
// exited: the copy's root, the relay's and the simulator's PIDs, and
// run.sh's output.
func runUnderTerminal(t *testing.T, signals ...syscall.Signal) (root string, relay, sim int, output string) {
	t.Helper()
	return runSignalled(t, false, signals...)
}

// runSignalled is runUnderTerminal; with alone, the signals go to the
// PID that run.sh wrote in var/dev/run.pid, not to its process group.
func runSignalled(t *testing.T, alone bool, signals ...syscall.Signal) (root string, relay, sim int, output string) {
	t.Helper()
	for _, p := range []int{2525, 2587, 8025, 8026, 5587, 8443, 8099} {
		if c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(p), time.Second); err == nil {
			c.Close()
			t.Fatalf("127.0.0.1:%d is in use, so run.sh would refuse to start: stop \"make run\" (or what listens there) and run the test again", p)
		}
	}
	root = localCopy(t)
	tools := fakeTools(t, root)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
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
	read := func() string { b, _ := os.ReadFile(out.Name()); return string(b) }
	run := exec.Command("bash", filepath.Join(root, "deploy", "local", "run.sh"))
	run.Env = append(os.Environ(), "PATH="+tools+":"+os.Getenv("PATH"), standInEnv+"="+self)
	run.Stdout, run.Stderr = out, out
	run.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	run.WaitDelay = time.Second
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- run.Wait() }()
	t.Cleanup(func() {
		for _, pid := range []int{relay, sim} {
			if pid > 0 && alive(pid) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		_ = syscall.Kill(-run.Process.Pid, syscall.SIGKILL)
	})

	deadline := time.Now().Add(20 * time.Second)
	for relay == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the relay did not start within 20 s:\n%s", read())
		}
		select {
		case err := <-exited:
			t.Fatalf("run.sh exited (%v) before the relay started:\n%s", err, read())
		case <-time.After(50 * time.Millisecond):
		}
		// The stand-in writes its PID once its signals are caught.
		if b, err := os.ReadFile(filepath.Join(root, "var", "dev", "relay.pid")); err == nil {
			relay, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
	}
	m := regexp.MustCompile(`simulator \(pid (\d+)\)`).FindStringSubmatch(read())
	if m == nil {
		t.Fatalf("run.sh did not name the simulator's PID:\n%s", read())
	}
	sim, _ = strconv.Atoi(m[1])

	for i, s := range signals {
		if i > 0 {
			time.Sleep(200 * time.Millisecond)
		}
		target := -run.Process.Pid
		if alone {
			b, err := os.ReadFile(filepath.Join(root, "var", "dev", "run.pid"))
			if err != nil {
				t.Fatal(err)
			}
			if target, err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil || target != run.Process.Pid {
				t.Fatalf("var/dev/run.pid holds %q, want run.sh's PID %d", b, run.Process.Pid)
			}
		}
		if err := syscall.Kill(target, s); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("run.sh still runs 10 s after %v:\n%s", signals, read())
	}
	stopped := time.Now().Add(5 * time.Second)
	for (alive(relay) || alive(sim)) && time.Now().Before(stopped) {
		time.Sleep(50 * time.Millisecond)
	}
	if alive(relay) {
		t.Errorf("the relay (pid %d) still runs after run.sh exited", relay)
	}
	if alive(sim) {
		t.Errorf("the simulator (pid %d) still runs after run.sh exited", sim)
	}
	if _, err := os.Stat(filepath.Join(root, "var", "dev", "run.pid")); err == nil {
		t.Error("run.sh left var/dev/run.pid behind")
	}
	return root, relay, sim, read()
}

// recorded returns what the stand-ins recorded, in order, a line each
// with "_" for spaces.
func recorded(t *testing.T, root string) []string {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(root, "var", "dev", "stand-in.log"))
	return strings.Fields(strings.ReplaceAll(string(b), " ", "_"))
}

// TestRunStopsRelayOnHangup: closing the terminal of "make run" sends
// SIGHUP to its process group, which the relay takes as "re-read the
// credential files". run.sh then stops the relay as Ctrl-C does, with
// one SIGTERM, lets it finish, and then stops the simulator.
func TestRunStopsRelayOnHangup(t *testing.T) {
	root, _, _, out := runUnderTerminal(t, syscall.SIGHUP)
	if got, want := recorded(t, root), []string{"hangup", "terminated", "drained", "simulator_stopped"}; !equal(got, want) {
		t.Errorf("the relay recorded %q, want %q\n%s", got, want, out)
	}
}

// TestRunStopsOnKillOfItsPID: "kill $(cat var/dev/run.pid)", as the
// README says for a "make run" started in the background, stops the
// relay as Ctrl-C does, lets it finish, and then stops the simulator.
func TestRunStopsOnKillOfItsPID(t *testing.T) {
	root, _, _, out := runSignalled(t, true, syscall.SIGTERM)
	if got, want := recorded(t, root), []string{"terminated", "drained", "simulator_stopped"}; !equal(got, want) {
		t.Errorf("the relay recorded %q, want %q\n%s", got, want, out)
	}
}

// TestRunCtrlCThenHangup: Ctrl-C, then the terminal closed while the
// relay finishes its deliveries: the relay is not told to stop a second
// time, which would make it quit at once, and the simulator is stopped
// after it, not under its deliveries.
func TestRunCtrlCThenHangup(t *testing.T) {
	root, _, _, out := runUnderTerminal(t, syscall.SIGINT, syscall.SIGHUP)
	if got, want := recorded(t, root), []string{"interrupt", "hangup", "drained", "simulator_stopped"}; !equal(got, want) {
		t.Errorf("the relay recorded %q, want %q\n%s", got, want, out)
	}
	if !strings.Contains(out, "run: the relay stopped; now stopping the simulator") {
		t.Errorf("run.sh did not say what it stops after Ctrl-C:\n%s", out)
	}
}

func equal(a, b []string) bool {
	return strings.Join(a, "\n") == strings.Join(b, "\n")
}
