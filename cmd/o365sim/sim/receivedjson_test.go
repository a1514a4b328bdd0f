package sim

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// TestReceivedJSON: GET /admin/received shows the message itself, not
// base64, and reads back the same.
func TestReceivedJSON(t *testing.T) {
	r := Received{Mailbox: "app@example.com", From: "app@example.com", To: []string{"a@example.org"},
		Data: []byte("Subject: hi\r\n\r\nbody\r\n"), MessageID: "<m@x>", Via: "smtp", TokenClientID: "c"}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"data":"Subject: hi\r\n\r\nbody\r\n"`) || strings.Count(string(b), `"data"`) != 1 {
		t.Errorf("JSON %s: want the data once, as text", b)
	}
	var back Received
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, r) {
		t.Errorf("read back %+v, want %+v", back, r)
	}
}
