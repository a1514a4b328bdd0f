package relay_test

import (
	"bytes"
	"os"
	"testing"

	"holdfast/relay"
)

// FuzzParse feeds arbitrary YAML to Parse. It must not panic, and what it
// accepts must stay valid.
func FuzzParse(f *testing.F) {
	if example, err := os.ReadFile(exampleFile); err == nil {
		f.Add(example)
	}
	f.Add([]byte(minimalYAML))
	f.Add([]byte(""))
	f.Add([]byte("smtp:\n  listeners: [{addr: \"127.0.0.1:2587\", insecure: true}]\n"))
	f.Add([]byte("queue:\n  lifetime: 5 days\n"))
	f.Add([]byte("delivery:\n  workers: -1\n  lease: 1ns\n"))
	f.Add([]byte("apps: &a [*a]\n"))
	f.Add([]byte("log: {level: debug, format: json}\nhostname: \"a\\tb\"\n"))
	f.Add([]byte("redis:\n  addrs: [\"[::1]:6379\", \"x\"]\n  db: 99999999999999999999\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		// Parse reads the files named by *_file keys. Do not let the
		// fuzzer name devices such as /dev/zero that never end.
		if bytes.Contains(data, []byte("_file")) {
			return
		}
		o, err := relay.Parse(data)
		if err != nil {
			return
		}
		if err := o.Validate(); err != nil {
			t.Fatalf("Parse accepted options that Validate rejects: %v\n%s", err, data)
		}
	})
}
