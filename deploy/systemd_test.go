package deploy

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const unitFile = "systemd/holdfast.service"

// unitSettings returns the unit's [Service] settings; a key set several
// times keeps every value.
func unitSettings(t *testing.T) map[string][]string {
	t.Helper()
	f, err := os.Open(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = line
		case section == "[Service]":
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: %q is no setting", unitFile, line)
			}
			out[k] = append(out[k], v)
		}
	}
	return out
}

// TestSystemdUnit checks the unit's promises: Type=notify (holdfast serve
// sends READY=1), reload by SIGHUP, a restart policy, a stop timeout above
// the relay's shutdown budget, the config checked before start, and the
// hardening of issue 13; then runs systemd-analyze verify where it exists.
func TestSystemdUnit(t *testing.T) {
	s := unitSettings(t)
	one := func(k string) string {
		if len(s[k]) != 1 {
			t.Errorf("%s: want %s set once, got %q", unitFile, k, s[k])
			return ""
		}
		return s[k][0]
	}
	want := map[string]string{
		"Type":                    "notify",
		"ExecReload":              "/bin/kill -HUP $MAINPID",
		"Restart":                 "on-failure",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"CapabilityBoundingSet":   "",
		"AmbientCapabilities":     "",
		"RestrictSUIDSGID":        "yes",
		"StateDirectory":          "holdfast",
		"ExecStart":               "/usr/local/bin/holdfast serve --config /etc/holdfast/holdfast.yaml",
		"ExecStartPre":            "/usr/local/bin/holdfast serve --check-config --config /etc/holdfast/holdfast.yaml",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
	}
	for k, v := range want {
		if got := one(k); got != v {
			t.Errorf("%s=%q, want %q", k, got, v)
		}
	}
	if s["User"] == nil && one("DynamicUser") != "yes" {
		t.Error("run as a dedicated User= or DynamicUser=yes")
	}
	if len(s["ReadWritePaths"]) > 0 {
		t.Errorf("ReadWritePaths=%q: the relay writes only to its StateDirectory", s["ReadWritePaths"])
	}
	for _, env := range s["Environment"] {
		for _, word := range []string{"SECRET", "PASSWORD", "TOKEN"} {
			if strings.Contains(strings.ToUpper(env), word) {
				t.Errorf("Environment=%s: secrets live in files", env)
			}
		}
	}
	stop, err := time.ParseDuration(one("TimeoutStopSec"))
	if err != nil || stop <= 25*time.Second {
		t.Errorf("TimeoutStopSec=%v: want more than shutdown_timeout (25s)", s["TimeoutStopSec"])
	}

	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Log("systemd-analyze is not installed: the unit is not verified")
		return
	}
	// verify needs the binary the unit runs: point it at one just built.
	data, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(t.TempDir(), "holdfast.service")
	if err := os.WriteFile(unit, []byte(strings.ReplaceAll(string(data), "/usr/local/bin/holdfast", holdfast(t))), 0o644); err != nil {
		t.Fatal(err)
	}
	// systemd-analyze reports unknown keys and bad values on stderr with a
	// zero exit status, so any output about the unit is a failure.
	out, err := exec.Command("systemd-analyze", "verify", unit).CombinedOutput()
	var problems []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "holdfast.service") {
			problems = append(problems, line)
		}
	}
	if err != nil || len(problems) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
