// Command hfload is Holdfast's SMTP load generator. It opens concurrent
// authenticated sessions to an SMTP listener on loopback, sends a bounded
// number of messages of a given size over them, and reports the accepted
// rate and the accept latency (MAIL FROM to the final 250) percentiles.
//
// It stops by itself after -messages messages or -timeout, whichever
// comes first.
package main

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

type config struct {
	addr     string
	user     string
	pass     string
	from     string
	to       string
	sessions int
	messages int
	size     int
	timeout  time.Duration
	startTLS bool
	// reconnect opens a new connection (with STARTTLS when asked, and
	// AUTH) for every message, as many applications do.
	reconnect bool
	// x25519 offers only X25519 for the TLS key exchange, the group an
	// OpenSSL 3.0 server (Debian 12's Postfix) negotiates; by default Go
	// offers the post-quantum hybrid X25519MLKEM768 first, which a Go
	// server takes, and which costs both sides more.
	x25519  bool
	jsonOut bool
}

// result is what a run measured.
type result struct {
	Sessions   int     `json:"sessions"`
	Size       int     `json:"message_bytes"`
	Accepted   int64   `json:"accepted"`
	Failed     int64   `json:"failed"`
	Seconds    float64 `json:"seconds"`
	PerSecond  float64 `json:"messages_per_second"`
	P50ms      float64 `json:"p50_ms"`
	P99ms      float64 `json:"p99_ms"`
	MaxMs      float64 `json:"max_ms"`
	FirstError string  `json:"first_error,omitempty"`
}

func main() {
	var c config
	flag.StringVar(&c.addr, "smtp", "127.0.0.1:2587", "SMTP `host:port` (loopback only)")
	flag.StringVar(&c.user, "user", "demo", "SMTP AUTH user")
	flag.StringVar(&c.pass, "pass", "demo-password", "SMTP AUTH password")
	flag.StringVar(&c.from, "from", "load@example.com", "envelope sender; a comma-separated list is used in turn, one address per message")
	flag.StringVar(&c.to, "to", "sink@example.org", "envelope recipient")
	flag.IntVar(&c.sessions, "sessions", 20, "concurrent SMTP sessions")
	flag.IntVar(&c.messages, "messages", 20000, "messages to send in all")
	flag.IntVar(&c.size, "size", 2048, "message size in bytes")
	flag.DurationVar(&c.timeout, "timeout", 60*time.Second, "stop after this long even if messages remain")
	flag.BoolVar(&c.startTLS, "starttls", false, "use STARTTLS (certificate not verified)")
	flag.BoolVar(&c.reconnect, "reconnect", false, "a new connection, STARTTLS (with -starttls) and AUTH for every message; the latency then includes them")
	flag.BoolVar(&c.x25519, "x25519", false, "with -starttls, offer only X25519 for the key exchange (not Go's default X25519MLKEM768 first), so that every server does the same key exchange")
	flag.BoolVar(&c.jsonOut, "json", false, "print the result as JSON")
	flag.Parse()
	if err := c.check(); err != nil {
		fmt.Fprintln(os.Stderr, "hfload:", err)
		os.Exit(2)
	}
	r := run(c)
	if c.jsonOut {
		json.NewEncoder(os.Stdout).Encode(r)
	} else {
		r.print(os.Stdout)
	}
	if r.Accepted == 0 {
		os.Exit(1)
	}
}

func (c config) check() error {
	host, _, err := net.SplitHostPort(c.addr)
	if err != nil {
		return fmt.Errorf("-smtp: %w", err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("-smtp: %s is not a loopback address; hfload only loads local servers", host)
	}
	if c.sessions < 1 || c.messages < 1 || c.size < 200 || c.timeout <= 0 {
		return errors.New("-sessions and -messages must be at least 1, -size at least 200, -timeout positive")
	}
	return nil
}

// message builds a message of about size bytes with CRLF lines of 76
// characters, but for its Message-ID header, which send writes first:
// each message's is its own, so that a receiver can count duplicates.
func message(from, to string, size int) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: hfload\r\n\r\n", from, to)
	line := strings.Repeat("x", 76) + "\r\n"
	id := len(messageIDHeader("00000000", 0))
	for b.Len()+id+len(line) <= size {
		b.WriteString(line)
	}
	return []byte(b.String())
}

// messageIDHeader is the Message-ID header of message n of run.
func messageIDHeader(run string, n int64) []byte {
	h := append([]byte("Message-ID: <hfload."), run...)
	h = append(h, '.')
	h = strconv.AppendInt(h, n, 10)
	return append(h, "@example.com>\r\n"...)
}

func run(c config) result {
	froms := strings.Split(c.from, ",")
	bodies := make([][]byte, len(froms))
	for i, f := range froms {
		bodies[i] = message(f, c.to, c.size)
	}
	deadline := time.Now().Add(c.timeout)
	run := fmt.Sprintf("%08x", rand.Uint32())
	var (
		next      atomic.Int64
		failed    atomic.Int64
		mu        sync.Mutex
		latencies []time.Duration
		firstErr  string
		wg        sync.WaitGroup
	)
	fail := func(err error) {
		failed.Add(1)
		mu.Lock()
		if firstErr == "" {
			firstErr = err.Error()
		}
		mu.Unlock()
	}
	start := time.Now()
	for range c.sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var own []time.Duration
			defer func() { mu.Lock(); latencies = append(latencies, own...); mu.Unlock() }()
			if c.reconnect {
				for n := next.Add(1); n <= int64(c.messages) && time.Now().Before(deadline); n = next.Add(1) {
					i := int(n) % len(froms)
					t0 := time.Now()
					cl, err := dial(c, deadline)
					if err == nil {
						err = send(cl, froms[i], c.to, messageIDHeader(run, n), bodies[i])
						if err == nil {
							err = cl.Quit()
						}
						cl.Close()
					}
					if err != nil {
						fail(err)
						continue
					}
					own = append(own, time.Since(t0))
				}
				return
			}
			cl, err := dial(c, deadline)
			if err != nil {
				fail(err)
				return
			}
			defer func() {
				if cl != nil {
					cl.Close()
				}
			}()
			for n := next.Add(1); n <= int64(c.messages) && time.Now().Before(deadline); n = next.Add(1) {
				i := int(n) % len(froms)
				t0 := time.Now()
				if err := send(cl, froms[i], c.to, messageIDHeader(run, n), bodies[i]); err != nil {
					fail(err)
					cl.Close() // not reused: its session state is unknown
					if cl, err = dial(c, deadline); err != nil {
						fail(err)
						return
					}
					continue
				}
				own = append(own, time.Since(t0))
			}
			cl.Quit()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(latencies)
	r := result{
		Sessions: c.sessions, Size: len(bodies[0]) + len(messageIDHeader(run, int64(c.messages))), Accepted: int64(len(latencies)), Failed: failed.Load(),
		Seconds: elapsed.Seconds(), FirstError: firstErr,
	}
	if n := len(latencies); n > 0 {
		r.PerSecond = float64(n) / elapsed.Seconds()
		r.P50ms = ms(latencies[n*50/100])
		r.P99ms = ms(latencies[min(n-1, n*99/100)])
		r.MaxMs = ms(latencies[n-1])
	}
	return r
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func dial(c config, deadline time.Time) (*smtp.Client, error) {
	conn, err := net.DialTimeout("tcp", c.addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(deadline.Add(10 * time.Second))
	var cl *smtp.Client
	if c.startTLS {
		// The development certificate is self-signed; this is a load
		// generator for loopback only.
		cfg := &tls.Config{InsecureSkipVerify: true}
		if c.x25519 {
			cfg.CurvePreferences = []tls.CurveID{tls.X25519}
		}
		cl, err = smtp.NewClientStartTLS(conn, cfg)
		if err != nil {
			conn.Close()
			return nil, err
		}
	} else {
		cl = smtp.NewClient(conn)
	}
	if err := cl.Auth(sasl.NewPlainClient("", c.user, c.pass)); err != nil {
		cl.Close()
		return nil, err
	}
	return cl, nil
}

func send(cl *smtp.Client, from, to string, id, body []byte) error {
	if err := cl.Mail(from, nil); err != nil {
		return err
	}
	if err := cl.Rcpt(to, nil); err != nil {
		return err
	}
	w, err := cl.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(id); err != nil {
		return err
	}
	if _, err := w.Write(body); err != nil {
		return err
	}
	return w.Close()
}

func (r result) print(w io.Writer) {
	fmt.Fprintf(w, "sessions %d, message %d bytes: %d accepted, %d failed in %.2fs\n",
		r.Sessions, r.Size, r.Accepted, r.Failed, r.Seconds)
	fmt.Fprintf(w, "throughput %.0f messages/s; accept latency p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
		r.PerSecond, r.P50ms, r.P99ms, r.MaxMs)
	if r.FirstError != "" {
		fmt.Fprintf(w, "first error: %s\n", r.FirstError)
	}
}
