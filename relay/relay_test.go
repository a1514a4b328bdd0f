package relay

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// startRelay runs a whole relay on loopback over a private redis-server,
// delivering with the dir sender into a temporary folder.
func startRelay(t *testing.T) (*Server, string) {
	t.Helper()
	var outbox string
	s := startRelayOn(t, newFixture(t), func(o *Options) {
		o.Redis.Strict = true
		outbox = o.Delivery.Dir
	})
	return s, outbox
}

func TestRelayEndToEnd(t *testing.T) {
	s, outbox := startRelay(t)
	body := "From: <billing@contoso.com>\r\nTo: <alice@example.org>\r\nSubject: invoice\r\nMessage-ID: <inv-1@contoso.com>\r\n\r\nYour invoice.\r\n"
	c, err := smtp.Dial(s.SMTPAddrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", crmUser, crmPassword)); err != nil {
		t.Fatal(err)
	}
	if err := c.SendMail("billing@contoso.com", []string{"alice@example.org", "bob@example.org"}, strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}

	// The dir sender writes <id>.eml; find it.
	var eml string
	deadline := time.Now().Add(10 * time.Second)
	for eml == "" {
		matches, _ := filepath.Glob(filepath.Join(outbox, "*.eml"))
		if len(matches) == 1 {
			eml = matches[0]
		} else if time.Now().After(deadline) {
			t.Fatalf("no delivered message in %s", outbox)
		} else {
			time.Sleep(20 * time.Millisecond)
		}
	}
	got, err := os.ReadFile(eml)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(got, []byte("Received: from ")) || !bytes.HasSuffix(got, []byte(body)) {
		t.Fatalf("delivered bytes are not our Received: header plus the original:\n%s", got)
	}
	id := strings.TrimSuffix(filepath.Base(eml), ".eml")
	var env struct {
		From string   `json:"from"`
		To   []string `json:"to"`
	}
	raw, _ := os.ReadFile(filepath.Join(outbox, id+".json"))
	if err := json.Unmarshal(raw, &env); err != nil || env.From != "billing@contoso.com" || strings.Join(env.To, ",") != "alice@example.org,bob@example.org" {
		t.Fatalf("envelope %s: %v", raw, err)
	}

	// Its status over HTTP says delivered, eventually (the ack follows the
	// file).
	var st struct {
		State    string `json:"state"`
		Attempts int    `json:"attempts"`
	}
	for {
		req, _ := http.NewRequest("GET", "http://"+s.HTTPAddr()+"/v1/messages/"+id, nil)
		req.Header.Set("Authorization", "Bearer "+crmToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if st.State == "delivered" || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st.State != "delivered" || st.Attempts != 1 {
		t.Fatalf("status: %+v, want delivered after 1 attempt", st)
	}
}

// TestRelayShutdown: an idle SMTP session gets 421 when the relay stops,
// /readyz fails, and new connections are refused.
func TestRelayShutdown(t *testing.T) {
	s, _ := startRelay(t)
	conn, err := net.Dial("tcp", s.SMTPAddrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	if greet, _ := r.ReadString('\n'); !strings.HasPrefix(greet, "220 ") {
		t.Fatalf("greeting %q", greet)
	}
	resp, err := http.Get("http://" + s.HTTPAddr() + "/readyz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("readyz before shutdown: %v %v", resp, err)
	}
	resp.Body.Close()

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	// An idle session is told at once, without sending a command.
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	line, _ := r.ReadString('\n')
	if !strings.HasPrefix(line, "421 ") {
		t.Fatalf("after shutdown: %q, want 421", line)
	}
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if c, err := net.DialTimeout("tcp", s.SMTPAddrs()[0], time.Second); err == nil {
		c.Close()
		t.Fatal("the SMTP listener still accepts after shutdown")
	}
}

// TestRelayRefusesNonDurableRedisInStrictMode: with redis.strict, a Redis
// without AOF stops the relay at start with a message naming the setting.
func TestRelayRefusesNonDurableRedisInStrictMode(t *testing.T) {
	f := newFixture(t)
	if err := f.redis.Client(t).ConfigSet(context.Background(), "appendonly", "no").Err(); err != nil {
		t.Fatal(err)
	}
	o := f.opts
	o.Redis.Addrs = []string{f.redis.Addr()}
	o.Redis.Strict = true
	o.HTTP.Addr = "127.0.0.1:0"
	o.Delivery.Dir = t.TempDir()
	_, err := New(context.Background(), o, nil, discardLogger())
	if err == nil || !strings.Contains(err.Error(), "appendonly") {
		t.Fatalf("strict start on a Redis without AOF: %v", err)
	}
}
