package main

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// messageID is the Message-ID of message n, by which the demo finds it
// at the simulator.
func messageID(n int) string { return fmt.Sprintf("<demo-%d@holdfast.demo>", n) }

// submitter submits numbered messages over SMTP through two sessions to
// each relay; a session quits and reconnects every 20 messages, as an
// application would.
type submitter struct {
	f    *fleet
	work chan int
	wg   sync.WaitGroup

	mu       sync.Mutex
	accepted map[string]bool // Message-IDs that got a 250
	refused  []string
}

func (f *fleet) startSubmitter() *submitter {
	s := &submitter{f: f, work: make(chan int), accepted: map[string]bool{}}
	for k := range 2 * len(f.relays) {
		s.wg.Add(1)
		go s.session(f.relays[k%len(f.relays)])
	}
	return s
}

// close waits for the sessions to finish and quit.
func (s *submitter) close() {
	close(s.work)
	s.wg.Wait()
}

func (s *submitter) counts() (accepted, refused int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.accepted), len(s.refused)
}

func (s *submitter) session(r *relayProc) {
	defer s.wg.Done()
	var c *smtp.Client
	sent := 0
	defer func() {
		if c != nil {
			_ = c.Quit()
		}
	}()
	for n := range s.work {
		if c != nil && sent >= 20 {
			_ = c.Quit()
			c = nil
		}
		if c == nil {
			var err error
			if c, err = dial(r.smtpAddr); err != nil {
				s.refuse(n, r, err)
				continue
			}
			sent = 0
		}
		from := s.f.mailboxes[n%len(s.f.mailboxes)]
		err := send(c, n, from)
		sent++
		if err != nil {
			s.refuse(n, r, err)
			_ = c.Close()
			c = nil
			continue
		}
		s.mu.Lock()
		s.accepted[messageID(n)] = true
		s.mu.Unlock()
	}
}

func (s *submitter) refuse(n int, r *relayProc, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refused = append(s.refused, fmt.Sprintf("message %d to %s: %v", n, r.name, err))
}

func dial(addr string) (*smtp.Client, error) {
	c, err := smtp.Dial(addr)
	if err != nil {
		return nil, err
	}
	c.CommandTimeout, c.SubmissionTimeout = 10*time.Second, 10*time.Second
	if err := c.Auth(sasl.NewPlainClient("", appUser, appPass)); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("AUTH: %w", err)
	}
	return c, nil
}

func send(c *smtp.Client, n int, from string) error {
	rcpt := fmt.Sprintf("customer%d@example.org", n)
	if err := c.Mail(from, nil); err != nil {
		return fmt.Errorf("MAIL: %w", err)
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return fmt.Errorf("RCPT: %w", err)
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	msg := fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: Your order %d\r\nMessage-ID: %s\r\n\r\nThank you for order %d.\r\n",
		from, rcpt, n, messageID(n), n)
	if _, err := io.WriteString(w, msg); err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return fmt.Errorf("end of DATA: %w", err)
	}
	if !strings.Contains(resp.StatusText, "Queued as") {
		return fmt.Errorf("end of DATA: 250 without a queue id: %q", resp.StatusText)
	}
	return nil
}
