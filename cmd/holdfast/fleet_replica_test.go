package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sharedHostname gives every relay of a fleet the same hostname, as one
// ConfigMap does for every pod of a Deployment.
var sharedHostname = regexp.MustCompile(`(?m)^hostname: .*$`)

// sharedSample is the sample of holdfast_replica_name_shared on /metrics.
var sharedSample = regexp.MustCompile(`(?m)^holdfast_replica_name_shared (\S+)$`)

// TestFleetSharesHostname: the relays of a fleet share one
// configuration, and so one hostname (the name in their SMTP greeting).
// A rolling restart while a breaker's webhook is being tried must not
// make the restarted relay take over the live poster's claim: the
// transition is posted once.
func TestFleetSharesHostname(t *testing.T) {
	const host = "relay.example.com"
	rcv := newWebhookReceiver(t)
	f := startIncFleet(t, incFleetOptions{mailboxes: 2, edit: rcv.configure(func(_ int, config string) string {
		return sharedHostname.ReplaceAllString(config, "hostname: "+host)
	})})
	for i, r := range f.relays {
		if g := smtpGreeting(t, r.smtpAddr); !strings.HasPrefix(g, "220 "+host+" ") {
			t.Errorf("relay-%d greets with %q, want the configured hostname %s", i+1, g, host)
		}
	}
	f.cli(0, "breaker", "trip", incCred)
	const id = incCred + "@1"
	poster := f.webhookPoster()
	// The other relay is restarted, as a rolling update does.
	other := 1 - poster
	f.relays[other].stop(t)
	f.restart(other)
	time.Sleep(2 * time.Second) // its first breaker polls
	if _, ok := f.relays[other].logLine("taking over the breaker transition's notice from a replica that stopped posting it"); ok {
		t.Errorf("relay-%d, restarted, took over the webhook that relay-%d is trying", other+1, poster+1)
	}
	rcv.down.Store(false)
	incWait(t, 40*time.Second, "the transition posted", func() bool { return len(rcv.posts(id)) > 0 })
	time.Sleep(3 * time.Second) // room for a second post to show
	if n := len(rcv.posts(id)); n != 1 {
		t.Errorf("transition %s was posted %d times, want 1", id, n)
	}
}

// TestFleetSharedReplicaReported: two relay processes given one replica
// name each report it, in their logs and on /metrics, within two of their
// announcements (5 s apart); a third with a name of its own does not.
func TestFleetSharedReplicaReported(t *testing.T) {
	f := startIncFleet(t, incFleetOptions{mailboxes: 1, relays: 3, edit: func(n int, config string) string {
		if n == 3 {
			return config
		}
		return strings.Replace(config, fmt.Sprintf("replica: relay-%d\n", n), "replica: relay-x\n", 1)
	}})
	shared := func(i int) float64 {
		t.Helper()
		resp, err := f.http.Get("http://" + f.relays[i].opsAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		m := sharedSample.FindSubmatch(body)
		if m == nil {
			t.Fatalf("relay-%d exports no holdfast_replica_name_shared", i+1)
		}
		v, err := strconv.ParseFloat(string(m[1]), 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	const msg = "another relay runs under this relay's replica name: give each relay its own (option replica); until then they take over each other's probes and webhooks"
	incWait(t, 25*time.Second, "relay-1 and relay-2 reporting their shared name", func() bool {
		return shared(0) == 1 && shared(1) == 1
	})
	incWait(t, 5*time.Second, "relay-1 and relay-2 logging their shared name", func() bool {
		_, ok0 := f.relays[0].logLine(msg)
		_, ok1 := f.relays[1].logLine(msg)
		return ok0 && ok1
	})
	if v := shared(2); v != 0 {
		t.Errorf("relay-3, alone under its name, reports holdfast_replica_name_shared %v", v)
	}
	if _, ok := f.relays[2].logLine(msg); ok {
		t.Error("relay-3, alone under its name, logged it shared")
	}
}

// smtpGreeting returns the first line an SMTP server at addr sends.
func smtpGreeting(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("greeting of %s: %v", addr, err)
	}
	return strings.TrimRight(line, "\r\n")
}
