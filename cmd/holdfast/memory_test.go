package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"holdfast/queue"
	"holdfast/queue/redistest"
)

// Burst of large messages: 20 clients at once, 30 MB each, against a relay
// whose bodies budget is 128 MiB.
const (
	burstClients = 20
	burstBytes   = 30_000_000
	burstBudget  = 128 << 20
	// burstSlack is what the relay may use beyond the budget.
	burstSlack = 100 << 20
)

// TestInflightBudgetRSS runs a real relay process, built without the race
// detector, and sends it 20 messages of 30 MB at once. Its peak RSS
// (VmHWM) stays under the budget plus 100 MB; every acknowledged message
// is in the queue whole; every refused client got 452 4.3.1; after the
// burst the memory goes back to the OS.
func TestInflightBudgetRSS(t *testing.T) {
	srv := redistest.Start(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "holdfast")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	pass := "burst-password"
	hash, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("unused-token"))
	cfg := filepath.Join(dir, "holdfast.yaml")
	// Storing 30 MB messages, several at once, on a machine other tests
	// share can take longer than the 3 s defaults; the test is about
	// memory, so Redis gets 15 s.
	if err := os.WriteFile(cfg, fmt.Appendf(nil, `redis:
  addrs: [%q]
  read_timeout: 15s
  write_timeout: 15s
  ingress_timeout: 15s
smtp:
  listeners: [{addr: "127.0.0.1:0", insecure: true}]
  max_inflight_bytes: %d
http:
  addr: 127.0.0.1:0
ops:
  addr: 127.0.0.1:0
delivery:
  sender: "off"
log:
  format: json
apps:
  - name: burst
    password_hash: %q
    token_sha256: %s
    senders: ["@contoso.com"]
`, srv.Addr(), burstBudget, hash, hex.EncodeToString(sum[:])), 0o600); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(bin, "serve", "--config", cfg)
	var logs syncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	addr := waitListening(t, &logs, exited)

	body := burstMessage()
	type outcome struct {
		id    string
		reply string
	}
	results := make([]outcome, burstClients)
	var wg sync.WaitGroup
	for i := range burstClients {
		wg.Go(func() {
			id, reply := sendBurst(addr, pass, body, i%2 == 0)
			results[i] = outcome{id, reply}
		})
	}
	wg.Wait()

	hwm := procStatusKB(t, cmd.Process.Pid, "VmHWM")
	t.Logf("relay peak RSS %d MB for a %d MB budget", hwm>>10, burstBudget>>20)
	if limit := int64(burstBudget+burstSlack) >> 10; hwm > limit {
		t.Errorf("peak RSS %d kB, over the budget plus 100 MB (%d kB)", hwm, limit)
	}

	q := queue.New(srv.Client(t), queue.Options{})
	acked := 0
	for i, r := range results {
		switch {
		case r.id != "":
			acked++
			m, err := q.Get(context.Background(), r.id)
			if err != nil || m.Size < burstBytes {
				t.Errorf("client %d: acknowledged %s is not stored whole (%v, size %d)", i, r.id, err, sizeOf(m))
			}
		case !strings.HasPrefix(r.reply, "452 4.3.1"):
			t.Errorf("client %d: refused with %q, want 452 4.3.1", i, r.reply)
		}
	}
	t.Logf("%d of %d messages acknowledged, the others refused with 452 4.3.1", acked, burstClients)
	if acked == 0 {
		t.Error("no message was acknowledged")
	}

	// Memory goes back to the OS once the burst has drained.
	deadline := time.Now().Add(15 * time.Second)
	for {
		rss := procStatusKB(t, cmd.Process.Pid, "VmRSS")
		if rss < hwm/2 {
			t.Logf("RSS back to %d MB after the burst", rss>>10)
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("RSS still %d kB 15 s after the burst (peak %d kB)", rss, hwm)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func sizeOf(m *queue.Message) int {
	if m == nil {
		return -1
	}
	return m.Size
}

// burstMessage is a valid message of burstBytes: short lines.
func burstMessage() []byte {
	var b strings.Builder
	b.Grow(burstBytes + 100)
	b.WriteString("From: burst@contoso.com\r\nSubject: burst\r\n\r\n")
	line := strings.Repeat("z", 98) + "\r\n"
	for b.Len()+len(line) <= burstBytes {
		b.WriteString(line)
	}
	for b.Len() < burstBytes-2 {
		b.WriteByte('z')
	}
	b.WriteString("\r\n")
	return []byte(b.String())
}

// sendBurst sends body once, giving SIZE when withSize. It returns the
// queue id, or the refusal.
func sendBurst(addr, pass string, body []byte, withSize bool) (string, string) {
	c, err := smtp.Dial(addr)
	if err != nil {
		return "", err.Error()
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "burst", pass)); err != nil {
		return "", err.Error()
	}
	var mo *smtp.MailOptions
	if withSize {
		mo = &smtp.MailOptions{Size: int64(len(body))}
	}
	if err := c.Mail("burst@contoso.com", mo); err != nil {
		return "", replyOf(err)
	}
	if err := c.Rcpt("a@example.org", nil); err != nil {
		return "", replyOf(err)
	}
	w, err := c.Data()
	if err != nil {
		return "", replyOf(err)
	}
	if _, err := w.Write(body); err != nil {
		return "", replyOf(err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", replyOf(err)
	}
	_, id, ok := strings.Cut(resp.StatusText, "Queued as ")
	if !ok {
		return "", resp.StatusText
	}
	return id, ""
}

func replyOf(err error) string {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		c := se.EnhancedCode
		return fmt.Sprintf("%d %d.%d.%d %s", se.Code, c[0], c[1], c[2], se.Message)
	}
	return err.Error()
}

// waitListening waits for the relay's "holdfast started" log line and
// returns its SMTP address.
func waitListening(t *testing.T, logs *syncBuffer, exited <-chan struct{}) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		sc := bufio.NewScanner(strings.NewReader(logs.String()))
		for sc.Scan() {
			var l struct {
				Msg  string   `json:"msg"`
				SMTP []string `json:"smtp"`
			}
			if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "holdfast started" && len(l.SMTP) == 1 {
				return l.SMTP[0]
			}
		}
		select {
		case <-exited:
			t.Fatalf("the relay exited:\n%s", logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the relay did not start within 15s:\n%s", logs.String())
		}
	}
}

// procStatusKB reads a "Name: N kB" field of /proc/PID/status.
func procStatusKB(t *testing.T, pid int, name string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", name, pid)
	return 0
}
