package relay

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// TestLogKeysUnique runs a whole delivery cycle with JSON logs at debug
// level and decodes every line: no line may carry a key twice. slog's own
// message key is "msg", so the message id must go elsewhere.
func TestLogKeysUnique(t *testing.T) {
	f := newFixture(t)
	o := f.opts
	o.Redis.Addrs = []string{f.redis.Addr()}
	o.HTTP.Addr = "127.0.0.1:0"
	o.Delivery.Dir = t.TempDir()
	o.Delivery.Poll = Duration(50 * time.Millisecond)
	logs := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := New(context.Background(), o, nil, log)
	if err != nil {
		t.Fatalf("new relay: %v", err)
	}
	s.Start()

	c, err := smtp.Dial(s.SMTPAddrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Auth(sasl.NewPlainClient("", crmUser, crmPassword)); err != nil {
		t.Fatal(err)
	}
	body := "From: billing@contoso.com\r\nSubject: logs\r\n\r\nhello\r\n"
	if err := c.SendMail("billing@contoso.com", []string{"alice@example.org"}, strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, _ := filepath.Glob(filepath.Join(o.Delivery.Dir, "*.eml"))
		if len(m) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the message was not delivered")
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	lines, withID := 0, 0
	sc := bufio.NewScanner(strings.NewReader(logs.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		lines++
		keys, err := jsonKeys(sc.Bytes())
		if err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		seen := map[string]bool{}
		for _, k := range keys {
			if seen[k] {
				t.Errorf("key %q twice in %s", k, sc.Text())
			}
			seen[k] = true
		}
		if seen["id"] {
			withID++
		}
	}
	if lines == 0 || withID == 0 {
		t.Fatalf("%d log lines, %d with an id: the cycle did not log", lines, withID)
	}
}

// jsonKeys returns the top-level keys of a JSON object in order, repeats
// included (encoding/json keeps only the last).
func jsonKeys(line []byte) ([]string, error) {
	dec := json.NewDecoder(bytes.NewReader(line))
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		keys = append(keys, tok.(string))
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
	}
	if _, err := dec.Token(); err != nil && err != io.EOF {
		return nil, err
	}
	return keys, nil
}
