package dirsender

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"holdfast/queue"
)

func TestSendWritesMessageAndEnvelope(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "outbox")
	s, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := &queue.Message{ID: "0123abcd0000000000000000000000", Route: "crm", App: "crm",
		From: "a@example.com", To: []string{"b@example.org", "c@example.org"}, Body: []byte("Subject: x\r\n\r\nhi\r\n")}
	reply, err := s.Send(context.Background(), m)
	if err != nil || !strings.HasPrefix(reply, "250 ") {
		t.Fatalf("send: %q %v", reply, err)
	}
	body, err := os.ReadFile(filepath.Join(dir, m.ID+".eml"))
	if err != nil || string(body) != string(m.Body) {
		t.Fatalf("body %q %v", body, err)
	}
	var env envelope
	raw, _ := os.ReadFile(filepath.Join(dir, m.ID+".json"))
	if err := json.Unmarshal(raw, &env); err != nil || env.From != m.From || len(env.To) != 2 || env.Route != "crm" {
		t.Fatalf("envelope %s: %v", raw, err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".tmp-*"))
	if len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Send(ctx, m); err == nil {
		t.Fatal("send with a cancelled context succeeded")
	}
}
