package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

func TestCredsUnblock(t *testing.T) {
	srv := redistest.Start(t)
	cfg := writeConfig(t, srv.Addr())
	ctx := context.Background()
	th := queue.NewAuthThrottle(srv.Client(t), 2, time.Minute)
	for range 2 {
		if err := th.Failed(ctx, "192.0.2.7", "crm"); err != nil {
			t.Fatal(err)
		}
	}
	blocked := func(ip, user string) bool {
		b, err := th.Blocked(ctx, ip, user)
		if err != nil {
			t.Fatal(err)
		}
		return b != nil
	}
	if !blocked("192.0.2.7", "") || !blocked("", "crm") {
		t.Fatal("not blocked after 2 failures")
	}
	if out := mustRun(t, "creds", "unblock", "--config", cfg, "--ip", "192.0.2.7"); !strings.Contains(out, "failures cleared") {
		t.Fatalf("unblock --ip: %q", out)
	}
	if blocked("192.0.2.7", "") || !blocked("", "crm") {
		t.Fatal("after unblock --ip: the IP should be clear and the user still blocked")
	}
	mustRun(t, "creds", "unblock", "--config", cfg, "--user", "crm")
	if blocked("", "crm") {
		t.Fatal("the user is still blocked after unblock --user")
	}
	if out := mustRun(t, "creds", "unblock", "--config", cfg, "--user", "crm"); !strings.Contains(out, "nothing to clear") {
		t.Fatalf("second unblock: %q", out)
	}
	for _, args := range [][]string{{}, {"--ip", "not-an-ip"}, {"--ip", "192.0.2.7", "--user", "crm"}} {
		if r := runCmd(t, append([]string{"creds", "unblock", "--config", cfg}, args...)...); r.code != exitUsage {
			t.Errorf("unblock %q: exit %d, want usage", args, r.code)
		}
	}
}
