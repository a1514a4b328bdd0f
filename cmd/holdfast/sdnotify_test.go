package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"holdfast/queue/redistest"
)

// notifySocket listens as systemd does for sd_notify messages.
func notifySocket(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// nextNotification reads one datagram, waiting at most d.
func nextNotification(t *testing.T, conn *net.UnixConn, d time.Duration) string {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(d)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("no sd_notify message within %v: %v", d, err)
	}
	return string(buf[:n])
}

func TestSdNotify(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	conn := notifySocket(t, path)
	if err := sdNotify(path, "READY=1"); err != nil {
		t.Fatal(err)
	}
	if got := nextNotification(t, conn, 5*time.Second); got != "READY=1" {
		t.Fatalf("got %q, want READY=1", got)
	}

	// systemd may pass an abstract socket, written with a leading "@".
	abstract := fmt.Sprintf("@holdfast-sdnotify-test-%d", os.Getpid())
	aconn := notifySocket(t, abstract)
	if err := sdNotify(abstract, "STOPPING=1"); err != nil {
		t.Fatal(err)
	}
	if got := nextNotification(t, aconn, 5*time.Second); got != "STOPPING=1" {
		t.Fatalf("abstract socket: got %q, want STOPPING=1", got)
	}

	if err := sdNotify("", "READY=1"); err != nil {
		t.Fatalf("without NOTIFY_SOCKET: %v, want nothing done", err)
	}
	if err := sdNotify(filepath.Join(t.TempDir(), "absent"), "READY=1"); err == nil || !strings.Contains(err.Error(), "READY=1") {
		t.Fatalf("to a missing socket: %v, want an error naming the state", err)
	}
}

// TestServeNotifiesSystemd: under Type=notify, holdfast serve sends
// READY=1 once it takes mail (its listeners answer) and STOPPING=1 when
// asked to stop.
func TestServeNotifiesSystemd(t *testing.T) {
	srv := redistest.Start(t)
	dir := t.TempDir()
	socket := filepath.Join(dir, "notify")
	conn := notifySocket(t, socket)
	cfg := filepath.Join(dir, "holdfast.yaml")
	sum := sha256.Sum256([]byte("test-token"))
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpAddr := httpLn.Addr().String()
	httpLn.Close()
	err = os.WriteFile(cfg, fmt.Appendf(nil, `redis:
  addrs: [%q]
smtp:
  listeners: [{addr: "127.0.0.1:0", insecure: true}]
http:
  addr: %s
ops:
  addr: 127.0.0.1:0
delivery:
  dir: %s
apps:
  - name: crm
    token_sha256: %s
    senders: ["@contoso.com"]
`, srv.Addr(), httpAddr, filepath.Join(dir, "outbox"), hex.EncodeToString(sum[:])), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--config", cfg}, &env{
			stdin: strings.NewReader(""), stdout: &stderr, stderr: &stderr, now: time.Now,
			getenv: func(k string) string {
				if k == "NOTIFY_SOCKET" {
					return socket
				}
				return ""
			},
		})
	}()
	if got := nextNotification(t, conn, 15*time.Second); got != "READY=1" {
		t.Fatalf("first notification %q, want READY=1\n%s", got, stderr.String())
	}
	// Ready means serving: the HTTP listener answers at once.
	c, err := net.DialTimeout("tcp", httpAddr, time.Second)
	if err != nil {
		t.Fatalf("READY=1 sent but the HTTP listener does not answer: %v", err)
	}
	c.Close()

	cancel()
	if got := nextNotification(t, conn, 15*time.Second); got != "STOPPING=1" {
		t.Fatalf("notification after the stop signal %q, want STOPPING=1", got)
	}
	select {
	case code := <-done:
		if code != exitOK {
			t.Fatalf("serve exited with %d:\n%s", code, stderr.String())
		}
	case <-time.After(40 * time.Second):
		t.Fatalf("serve did not stop:\n%s", stderr.String())
	}
}
