package deploy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"holdfast/cmd/o365sim/sim"
	"holdfast/queue/redistest"
)

const (
	liveTenant   = "contoso.example"
	liveClientID = "0d0e0f00-1111-4222-8333-444455556666"
	liveSecret   = "live-metrics-secret"
	liveAppToken = "live-app-token"
	liveAdmin    = "live-admin-token"
	liveMailbox  = "noreply@contoso.example"
)

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// lockedBuffer collects a process's output for the failure message.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestMetricsExported starts the real holdfast binary against a real
// Redis and the Exchange Online simulator, delivers one message, trips and
// resets the credential breaker, then scrapes /metrics on the operators'
// listener (ops.addr): every metric the alert rules and the dashboard use
// must be there, with the agreed type.
func TestMetricsExported(t *testing.T) {
	bin := holdfast(t)
	rds := redistest.Start(t, redistest.WithArgs("--appendonly", "yes", "--maxmemory-policy", "noeviction"))
	s, err := sim.New(sim.Config{Tenants: []sim.Tenant{{
		ID: liveTenant,
		Apps: []sim.App{{ClientID: liveClientID, SendAsMailboxes: []string{"*"},
			Secrets: []sim.Secret{{Value: liveSecret, ExpiresAt: time.Now().Add(20 * 24 * time.Hour)}}}},
		Mailboxes: []sim.Mailbox{{Address: liveMailbox}, {Address: "someone@contoso.example"}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })

	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	secretFile := write("contoso.secret", liveSecret+"\n")
	caFile := write("sim-ca.pem", string(s.CACertPEM()))
	grantKey := write("grants.key", strings.Repeat("ab", 32))
	httpAddr, opsAddr := freeAddr(t), freeAddr(t)
	// The operators' webhook, which takes every notice.
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(io.Discard, r.Body) }))
	t.Cleanup(hook.Close)
	config := write("holdfast.yaml", fmt.Sprintf(`hostname: relay.test
redis:
  addrs: [%q]
  strict: true
smtp:
  listeners:
    - addr: 127.0.0.1:0
      insecure: true
http:
  addr: %s
  admin_token_sha256: %s
ops:
  addr: %s
breakers:
  webhook_url: %q
delivery:
  sender: exchange
  poll: 100ms
apps:
  - name: crm
    token_sha256: %s
    senders: ["@contoso.example"]
    credential: contoso
    mailbox: %s
credentials:
  - name: contoso
    tenant: %s
    client_id: %s
    authority: %q
    client_secret_file: %q
    expires_at: "2030-01-01"
exchange:
  smtp_addr: %q
  graph_url: %q
  ca_file: %q
  grant_key_file: %q
`, rds.Addr(), httpAddr, sha256Hex(liveAdmin), opsAddr, hook.URL+"/hooks/live", sha256Hex(liveAppToken), liveMailbox,
		liveTenant, liveClientID, s.AuthorityURL(), secretFile, s.SMTPAddr(), s.GraphURL(), caFile, grantKey))

	var logs lockedBuffer
	cmd := exec.Command(bin, "serve", "--config", config)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{}) // closed when holdfast has exited, with waitErr set
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(40 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})

	client := &http.Client{Timeout: 5 * time.Second}
	call := func(method, url, token, body string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, url, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, []byte(err.Error())
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !cond() {
			select {
			case <-exited:
				t.Fatalf("holdfast exited (%v) while waiting for %s:\n%s", waitErr, what, logs.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %s within 20 s:\n%s", what, logs.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	wait("ready relay on ops.addr", func() bool {
		code, _ := call("GET", "http://"+opsAddr+"/readyz", "", "")
		return code == http.StatusOK
	})

	// One delivery, through the simulator's SMTP.
	code, body := call("POST", "http://"+httpAddr+"/v1/messages?from=noreply@contoso.example&to=someone@contoso.example", liveAppToken,
		"From: noreply@contoso.example\r\nTo: someone@contoso.example\r\nSubject: metrics\r\nMessage-ID: <metrics@holdfast.test>\r\n\r\nhello\r\n")
	if code != http.StatusAccepted {
		t.Fatalf("submit: %d %s", code, body)
	}
	var sub struct{ ID string }
	if err := json.Unmarshal(body, &sub); err != nil {
		t.Fatal(err)
	}
	wait("delivery", func() bool {
		_, b := call("GET", "http://"+httpAddr+"/v1/messages/"+sub.ID, liveAppToken, "")
		var m struct{ State string }
		return json.Unmarshal(b, &m) == nil && m.State == "delivered"
	})
	// A breaker transition each way, each posted on the webhook.
	for _, action := range []string{"trip", "reset"} {
		if code, b := call("POST", "http://"+httpAddr+"/v1/breakers/cred:contoso/"+action, liveAdmin, ""); code != http.StatusOK {
			t.Fatalf("breaker %s: %d %s", action, code, b)
		}
	}
	wait("both transitions posted on the webhook", func() bool {
		_, b := call("GET", "http://"+opsAddr+"/metrics", "", "")
		return bytes.Contains(b, []byte(`holdfast_webhook_posts_total{event="breaker.transition",outcome="delivered"} 2`))
	})

	// A delegated grant, which the relay counts once it has looked.
	rt := s.IssueRefreshToken(liveTenant, liveClientID, "someone@contoso.example")
	if code, b := call("PUT", "http://"+httpAddr+"/v1/mailboxes/someone@contoso.example", liveAppToken,
		fmt.Sprintf(`{"refresh_token": %q, "credential": "contoso"}`, rt)); code != http.StatusOK {
		t.Fatalf("PUT mailbox: %d %s", code, b)
	}
	wait("the grant counted", func() bool {
		_, b := call("GET", "http://"+opsAddr+"/metrics", "", "")
		return bytes.Contains(b, []byte(`holdfast_grants{state="ok"} 1`))
	})

	code, body = call("GET", "http://"+opsAddr+"/metrics", "", "")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics on ops.addr: %d %s", code, body)
	}
	types := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			types[f[2]] = f[3]
		}
	}
	for name, where := range usedMetrics(t) {
		if name == "up" {
			continue
		}
		switch got := types[name]; {
		case got == "":
			t.Errorf("%s (used by %s) is not in /metrics", name, strings.Join(where, ", "))
		case got != agreedMetrics[name].kind:
			t.Errorf("%s is a %s in /metrics, agreed: %s", name, got, agreedMetrics[name].kind)
		}
	}
}
