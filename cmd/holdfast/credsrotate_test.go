package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"holdfast/cmd/o365sim/sim"
	"holdfast/queue/redistest"
)

// TestCredsRotate: "holdfast creds rotate" writes a new secret into the
// credential's secret directory once Entra accepts it, and says where;
// "--print" prints one instead and writes nothing; an app without the
// permission is told which it needs, with exit 1.
func TestCredsRotate(t *testing.T) {
	s := startCheckSim(t, sim.App{ClientID: checkClientID,
		Secrets:    []sim.Secret{{Value: checkSecret, ExpiresAt: time.Now().Add(20 * 24 * time.Hour)}},
		GraphRoles: []string{"Application.ReadWrite.OwnedBy"}, OwnsItself: true},
		func(c *sim.Config) { c.PasswordPropagation = time.Second })
	redis := redistest.Start(t)
	dir, secrets := t.TempDir(), t.TempDir()
	incWriteFile(t, filepath.Join(secrets, "current"), checkSecret+"\n")
	config := writeCheckConfig(t, s, dir, redis.Addr(), fmt.Sprintf("client_secret_files: [%q]", secrets))

	// A name that is not a configured credential: a wrong command line.
	if r := runCmd(t, "creds", "rotate", "--config", config, "contosso"); r.code != exitUsage ||
		!strings.Contains(r.stderr, `"contosso": no such credential`) || !strings.Contains(r.stderr, "configured: contoso") {
		t.Fatalf("rotate of an unknown credential: exit %d, stderr %q", r.code, r.stderr)
	}
	r := runProcess(t, "creds", "rotate", "--config", config, "contoso")
	if r.code != exitOK || !strings.Contains(r.stdout, "written to "+secrets+"/holdfast-") || !strings.Contains(r.stdout, "accepted by Entra") {
		t.Fatalf("rotate: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	files, _ := filepath.Glob(filepath.Join(secrets, "holdfast-*.secret"))
	if len(files) != 1 {
		t.Fatalf("secret files: %v", files)
	}
	written, _ := os.ReadFile(files[0])
	if strings.Contains(r.stdout+r.stderr, strings.TrimSpace(string(written))) {
		t.Error("the written secret is printed too")
	}

	// --print: the secret on stdout, nothing written. The rotation claim
	// of the first run (15 minutes) goes with the rest of Redis.
	if err := redis.Client(t).FlushDB(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	r = runProcess(t, "creds", "rotate", "--config", config, "--print", "contoso")
	secret := strings.TrimSpace(r.stdout)
	if r.code != exitOK || len(secret) != 40 || !strings.Contains(r.stderr, "written nowhere") {
		t.Fatalf("rotate --print: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if files, _ := filepath.Glob(filepath.Join(secrets, "holdfast-*.secret")); len(files) != 1 {
		t.Errorf("--print wrote a file: %v", files)
	}

	// Without the permission.
	if err := redis.Client(t).FlushDB(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	s.SetGraphRoles(checkTenant, checkClientID, []string{"Application.Read.All"}, false)
	r = runProcess(t, "creds", "rotate", "--config", config, "contoso")
	if r.code != exitError || !strings.Contains(r.stderr, "Application.ReadWrite.OwnedBy") {
		t.Fatalf("without the permission: exit %d\nstderr:\n%s", r.code, r.stderr)
	}
}
