package relay

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestInflightBudgetSMTP: while one transfer holds most of the budget, a
// MAIL FROM whose SIZE does not fit and a DATA that grows past the budget
// get 452 4.3.1; once the first message is stored, the same message is
// taken.
func TestInflightBudgetSMTP(t *testing.T) {
	e, big, a, b := holdAndRefuse(t, newInflight(300<<10, 0))
	a.write(".\r\n")
	a.expect("250 2.0.0 Queued as ")
	if n := e.f.ingest.budget.inUse(); n != 0 {
		t.Errorf("%d bytes still counted after both messages ended", n)
	}
	b.sendSized("billing@contoso.com", big)
	if n := len(smtpReady(t, e.f)); n != 2 {
		t.Errorf("%d messages queued, want 2", n)
	}
}

// TestInflightBudgetPerApp: one application's transfers cannot take the
// whole budget. While crm holds most of its share, its next message does
// not fit although the budget has room; another application's does.
func TestInflightBudgetPerApp(t *testing.T) {
	// crm holds about 180 KB of the 600 KB budget in a transfer in
	// progress; a second 180 KB would pass its share of 300 KB.
	e, big, a, b := holdAndRefuse(t, newInflight(600<<10, 300<<10))

	// web has the rest of the budget.
	w := dialSMTP(t, e.insecure)
	w.cmd("EHLO client.test", "250 ")
	w.cmd("AUTH PLAIN "+smtpPlain("", webUser, webPassword), "235 ")
	w.sendSized("web@fabrikam.example", big)

	a.write(".\r\n")
	a.expect("250 2.0.0 Queued as ")
	// With A stored, crm's share has room again.
	b.sendSized("billing@contoso.com", big)
	if n := e.f.ingest.budget.inUse(); n != 0 {
		t.Errorf("%d bytes still counted after every message ended", n)
	}
}

// holdAndRefuse starts SMTP ingress with budget (messages up to 200 KB),
// where crm's transfer A holds a message of about 180 KB, its end not
// sent yet. crm's second session B is refused the same message with
// 452 4.3.1: at MAIL FROM with SIZE, and at the end of DATA without. It
// returns the ingress, the message, and A and B.
func holdAndRefuse(t *testing.T, budget *inflight) (e *smtpEnv, big string, a, b *smtpTestConn) {
	t.Helper()
	e = newSMTPEnv(t, func(o *Options) {
		o.SMTP.MaxMessageBytes = 200 << 10
		o.SMTP.MaxInflightBytes = budget.max
	})
	e.f.ingest.budget = budget
	big = "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 98)+"\r\n", 1800) // 180 KB

	a = dialSMTP(t, e.insecure)
	a.login()
	a.cmd("MAIL FROM:<billing@contoso.com> SIZE=184000", "250 ")
	a.cmd("RCPT TO:<x@example.org>", "250 ")
	a.cmd("DATA", "354 ")
	a.write(big)
	waitFor(t, 5*time.Second, "A's body in the budget", func() bool { return budget.inUse() >= 150<<10 })

	b = dialSMTP(t, e.insecure)
	b.login()
	b.cmd("MAIL FROM:<billing@contoso.com> SIZE=184000", "452 4.3.1 Insufficient system storage")
	b.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
	b.cmd("RCPT TO:<x@example.org>", "250 ")
	b.cmd("DATA", "354 ")
	b.write(big + ".\r\n")
	b.expect("452 4.3.1 Insufficient system storage")
	return e, big, a, b
}

// TestInflightFullTooBigIsPermanent: a message over smtp.max_message_bytes
// gets 552 5.3.4 even when the budget fills before its end is read: the
// 452 4.3.1 it got before tells the client to send it again, and it can
// never be taken. So does a line too long. A message that would fit
// still gets the 452 (holdAndRefuse).
func TestInflightFullTooBigIsPermanent(t *testing.T) {
	e, big, a, b := holdAndRefuse(t, newInflight(300<<10, 0))
	huge := big + big // 360 KB, over the 200 KB limit
	b.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
	b.cmd("RCPT TO:<x@example.org>", "250 ")
	b.cmd("DATA", "354 ")
	b.write(huge + ".\r\n")
	b.expect("552 5.3.4 ")
	b.cmd("NOOP", "250 ")

	c := dialSMTP(t, e.insecure)
	c.login()
	c.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
	c.cmd("RCPT TO:<x@example.org>", "250 ")
	c.cmd("DATA", "354 ")
	c.write(big + strings.Repeat("y", 5000) + "\r\n.\r\n")
	c.expect("500 5.5.2 ")
	c.expect("421 4.5.0 ")

	a.write(".\r\n")
	a.expect("250 2.0.0 Queued as ")
}

// TestInflightFullBDATTooBigIsPermanent: BDAT chunks that add up past
// smtp.max_message_bytes get 552 5.3.4 while the budget is full, as they
// do once it has room; so does a SIZE past it. The chunks of a message
// that finds no room are read and dropped up to the last chunk, or up to
// the one that passes the limit: a message within it gets its 452 4.3.1
// at its last chunk, and is taken when sent again with room.
func TestInflightFullBDATTooBigIsPermanent(t *testing.T) {
	e, big, a, b := holdAndRefuse(t, newInflight(300<<10, 0))
	// big and big again: 360 KB, over the 200 KB limit.
	b.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
	b.cmd("RCPT TO:<x@example.org>", "250 ")
	b.bdat(big, false, "250 ")
	b.bdat(big, true, "552 5.3.4 ")
	b.cmd("MAIL FROM:<billing@contoso.com> SIZE=400000", "552 5.3.4 ")

	// 180 KB in two chunks, within the limit.
	half := len(big) / 2
	b.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
	b.cmd("RCPT TO:<x@example.org>", "250 ")
	b.bdat(big[:half], false, "250 ")
	b.bdat(big[half:], true, "452 4.3.1 ")

	a.write(".\r\n")
	a.expect("250 2.0.0 Queued as ")
	b.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
	b.cmd("RCPT TO:<x@example.org>", "250 ")
	b.bdat(big, false, "250 ")
	b.bdat(big, true, "552 5.3.4 ")
	// The budget, smaller than the options allow, takes it whole only
	// with its size given.
	b.cmd(fmt.Sprintf("MAIL FROM:<billing@contoso.com> SIZE=%d", len(big)), "250 ")
	b.cmd("RCPT TO:<x@example.org>", "250 ")
	b.bdat(big[:half], false, "250 ")
	b.bdat(big[half:], true, "250 2.0.0 Queued as ")
	if n := len(smtpReady(t, e.f)); n != 2 {
		t.Errorf("%d messages queued, want 2", n)
	}
	if n := e.f.ingest.budget.inUse(); n != 0 {
		t.Errorf("%d bytes still counted after every message ended", n)
	}
}

// TestInflightFullBDATReadOutHoldsNothing: a BDAT message that found no
// room gives back what it held of the budget before its later chunks are
// read out, so that a client slow to send them keeps no room from others.
func TestInflightFullBDATReadOutHoldsNothing(t *testing.T) {
	e, big, a, b := holdAndRefuse(t, newInflight(300<<10, 0))
	held := e.f.ingest.budget.inUse()
	b.cmd("MAIL FROM:<billing@contoso.com>", "250 ")
	b.cmd("RCPT TO:<x@example.org>", "250 ")
	b.bdat(big[:100<<10], false, "250 ")
	if n := e.f.ingest.budget.inUse(); n != held {
		t.Errorf("%d bytes counted while the message that found no room waits for its next chunk, want %d (the other message's)", n, held)
	}
	b.bdat(big[100<<10:], true, "452 4.3.1 ")
	a.write(".\r\n")
	a.expect("250 2.0.0 Queued as ")
	if n := e.f.ingest.budget.inUse(); n != 0 {
		t.Errorf("%d bytes still counted after every message ended", n)
	}
}

// sendSized sends msg from from to x@example.org with MAIL FROM's SIZE
// set, and expects it queued.
func (c *smtpTestConn) sendSized(from, msg string) {
	c.t.Helper()
	c.cmd(fmt.Sprintf("MAIL FROM:<%s> SIZE=%d", from, len(msg)+2000), "250 ")
	c.cmd("RCPT TO:<x@example.org>", "250 ")
	c.cmd("DATA", "354 ")
	c.write(msg + ".\r\n")
	c.expect("250 2.0.0 Queued as ")
}

// TestInflightPerAppDefault: an application's share is half the budget,
// but never less than what one message of the largest size may need.
func TestInflightPerAppDefault(t *testing.T) {
	for _, c := range []struct{ budget, maxMsg, set, want int64 }{
		{256 << 20, 35 << 20, 0, 128 << 20},
		{100 << 20, 35 << 20, 0, 70<<20 + 64<<10},
		{256 << 20, 35 << 20, 200 << 20, 200 << 20},
	} {
		o := SMTPOptions{MaxInflightBytes: c.budget, MaxMessageBytes: c.maxMsg, MaxInflightBytesPerApp: c.set}
		if got := o.inflightPerApp(); got != c.want {
			t.Errorf("budget %d, max message %d, set %d: share %d, want %d", c.budget, c.maxMsg, c.set, got, c.want)
		}
	}
	b := newInflight(100, 60)
	if !b.take("a", 60) || b.take("a", 1) || !b.take("b", 40) || b.take("", 1) {
		t.Error("a share of 60 in a budget of 100: want a's 60 taken, a's 61st byte refused, b's 40 taken, then nothing more")
	}
	b.give("a", 60)
	if !b.fits("a", 60) || b.fits("b", 21) {
		t.Error("after a gave back its 60: want a's 60 to fit, and b's 21 more not (its share is 60)")
	}
}

// TestInflightBudgetHTTP: the HTTP API shares the budget and answers 503
// with Retry-After when a message does not fit.
func TestInflightBudgetHTTP(t *testing.T) {
	e := newAPIEnv(t, apiConfig{maxBytes: 200 << 10})
	e.f.ingest.budget = newInflight(300<<10, 0)
	if !e.f.ingest.budget.take("", 200<<10) {
		t.Fatal("take")
	}
	big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 98)+"\r\n", 1800)
	r := e.post(t, crmToken, "from=billing@contoso.com&to=a@x.example", big, nil)
	wantError(t, r, 503, "insufficient_storage")
	if r.header.Get("Retry-After") == "" {
		t.Error("no Retry-After")
	}
	e.f.ingest.budget.give("", 200<<10)
	accepted(t, e.post(t, crmToken, "from=billing@contoso.com&to=a@x.example", big, nil))
	if n := e.f.ingest.budget.inUse(); n != 0 {
		t.Errorf("%d bytes still counted", n)
	}
}

// TestInflightFullTooBigHTTP: a body over the size limit gets 413 while
// the budget is full, as it does once the budget has room: a chunked one
// (no Content-Length), and one within the limit as sent whose bare LF
// line endings, made CRLF, take it past. A chunked body within the limit
// gets 503 while the budget is full, and is taken once it has room.
func TestInflightFullTooBigHTTP(t *testing.T) {
	// A chunked body of the largest size may need twice that at once.
	e := newAPIEnv(t, apiConfig{maxBytes: 200 << 10})
	e.f.ingest.budget = newInflight(600<<10, 0)
	big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 98)+"\r\n", 1800) // 180 KB
	bareLF := "Subject: big\n\n" + strings.Repeat("xxxxxxxxx\n", 20000)                  // 200 KB, 220 KB as CRLF
	const query = "from=billing@contoso.com&to=a@x.example"
	chunked := func(body string) reply {
		t.Helper()
		// A MultiReader's length is unknown: the client sends it chunked.
		return e.do(t, http.MethodPost, "/v1/messages?"+query, crmToken, io.MultiReader(strings.NewReader(body)), nil)
	}
	submit := func(full bool) {
		t.Helper()
		wantError(t, chunked(big+big), 413, "too_large")
		wantError(t, chunked(bareLF), 413, "too_large")
		wantError(t, e.post(t, crmToken, query, bareLF, nil), 413, "too_large")
		if full {
			wantError(t, chunked(big), 503, "insufficient_storage")
		} else {
			accepted(t, chunked(big))
		}
	}
	if !e.f.ingest.budget.take("", 400<<10) {
		t.Fatal("take")
	}
	submit(true)
	e.f.ingest.budget.give("", 400<<10)
	submit(false)
	if n := len(smtpReady(t, e.f)); n != 1 {
		t.Errorf("%d messages queued, want 1", n)
	}
	if n := e.f.ingest.budget.inUse(); n != 0 {
		t.Errorf("%d bytes still counted", n)
	}
}

// TestInflightFullHTTPReadOutHoldsNothing: a body that found no room
// gives back what it held of the budget before the rest of it is read
// out, so that a client slow to send it keeps no room from others.
func TestInflightFullHTTPReadOutHoldsNothing(t *testing.T) {
	f := newFixture(t)
	budget := newInflight(300<<10, 0)
	f.ingest.budget = budget
	h := newAPI(f.ingest, f.apps, f.queue, nil, 200<<10, slog.New(slog.DiscardHandler))
	if !budget.take("", 200<<10) {
		t.Fatal("take")
	}
	big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 98)+"\r\n", 1800) // 180 KB
	// The rest of the body, asked for once the first 100 KB are read,
	// sees what the budget counts then.
	seen := int64(-1)
	rest := readerFunc(func(p []byte) (int, error) {
		if seen < 0 {
			seen = budget.inUse()
		}
		return 0, io.EOF
	})
	req := httptest.NewRequest(http.MethodPost, "/v1/messages", io.MultiReader(strings.NewReader(big[:100<<10]), rest))
	buf := f.ingest.newBody("crm")
	defer buf.release()
	if err := h.readBody(httptest.NewRecorder(), req, buf, []byte("Received: x\r\n")); !errors.Is(err, errInflightFull) {
		t.Fatalf("readBody: %v, want %v", err, errInflightFull)
	}
	if seen != 200<<10 {
		t.Errorf("%d bytes counted while the rest of a body that found no room is read out, want %d (the bytes taken before)", seen, 200<<10)
	}
}

// readerFunc is an io.Reader made of a function.
type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// TestInflightPerAppHTTP: the HTTP API counts a message against its
// application's share too.
func TestInflightPerAppHTTP(t *testing.T) {
	e := newAPIEnv(t, apiConfig{maxBytes: 200 << 10})
	e.f.ingest.budget = newInflight(600<<10, 300<<10)
	if !e.f.ingest.budget.take("crm", 200<<10) {
		t.Fatal("take")
	}
	big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 98)+"\r\n", 1800)
	wantError(t, e.post(t, crmToken, "from=billing@contoso.com&to=a@x.example", big, nil), 503, "insufficient_storage")
	accepted(t, e.post(t, webToken, "from=web@fabrikam.example&to=a@x.example", big, nil))
	e.f.ingest.budget.give("crm", 200<<10)
	accepted(t, e.post(t, crmToken, "from=billing@contoso.com&to=a@x.example", big, nil))
}

// chunkReader returns its data n bytes a read, as a network peer does.
type chunkReader struct {
	data []byte
	n    int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	k := copy(p[:min(len(p), r.n)], r.data)
	r.data = r.data[k:]
	return k, nil
}

// TestBodyBufLargestFitsMinimumBudget: a message of the largest size,
// without a size given, read a few KB at a time, fits in the smallest
// budget the options allow; one byte more is too big, not "full".
func TestBodyBufLargestFitsMinimumBudget(t *testing.T) {
	const maxMsg = 10 << 20
	o := DefaultOptions().SMTP
	o.MaxMessageBytes = maxMsg
	budget := newInflight(minInflightBytes(o), 0)
	prefix := []byte("Received: from client.test by relay.test; " + strings.Repeat("x", 300) + "\r\n")
	for _, size := range []int{maxMsg, maxMsg - 100_000, 3 << 20} {
		b := newBodyBuf(budget)
		if err := b.setPrefix(prefix); err != nil {
			t.Fatal(err)
		}
		if err := b.readFrom(&chunkReader{data: make([]byte, size), n: 4096}, maxMsg); err != nil {
			t.Errorf("a %d-byte message in a budget of %d: %v", size, budget.max, err)
		}
		b.release()
	}
	b := newBodyBuf(budget)
	if err := b.setPrefix(prefix); err != nil {
		t.Fatal(err)
	}
	if err := b.readFrom(&chunkReader{data: make([]byte, maxMsg+1), n: 4096}, maxMsg); !errors.Is(err, errBodyTooBig) {
		t.Errorf("a message one byte over the limit: %v, want errBodyTooBig", err)
	}
	b.release()
	if n := budget.inUse(); n != 0 {
		t.Errorf("%d bytes still counted", n)
	}
}

// TestBodyBufCopies: a message read with its size known is held once; the
// stored bytes are the Received: header and the message, in one buffer.
func TestBodyBufCopies(t *testing.T) {
	budget := newInflight(1<<30, 0)
	b := newBodyBuf(budget)
	msg := strings.Repeat("y", 10<<20)
	if err := b.setPrefix([]byte("Received: x\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := b.reserve(int64(len(msg))); err != nil {
		t.Fatal(err)
	}
	if err := b.readFrom(strings.NewReader(msg), 20<<20); err != nil {
		t.Fatal(err)
	}
	if got := string(b.bytes()); got != "Received: x\r\n"+msg {
		t.Fatal("stored bytes differ")
	}
	if held := budget.inUse(); held > int64(len(msg))+64<<10 {
		t.Errorf("%d bytes held for a %d-byte message with its size known", held, len(msg))
	}
	b.release()

	// Without a size, the buffer grows by half: at most 1.5 times the
	// message when done.
	b = newBodyBuf(budget)
	if err := b.readFrom(strings.NewReader(msg), 20<<20); err != nil {
		t.Fatal(err)
	}
	if held := budget.inUse(); held > int64(len(msg))*3/2 {
		t.Errorf("%d bytes held for a %d-byte message of unknown size", held, len(msg))
	}
	b.release()
	if budget.inUse() != 0 {
		t.Errorf("%d bytes still counted", budget.inUse())
	}
}

// TestBodyBufReuse: a released first buffer serves the next message, and
// nothing of the message before shows in it; a message that grew past
// the first buffer keeps its own, and every byte is given back.
func TestBodyBufReuse(t *testing.T) {
	budget := newInflight(1<<30, 0)
	long := strings.Repeat("long message ", 4000) // 52,000 bytes
	reused := false
	// The pool keeps a buffer per P: a goroutine moved to another P
	// between the two messages misses it, so one reuse in ten is enough.
	for range 10 {
		b := newBodyBuf(budget)
		if err := b.readFrom(strings.NewReader(long), 1<<20); err != nil {
			t.Fatal(err)
		}
		first := &b.bytes()[0]
		b.release()
		if b.bytes() != nil {
			t.Fatal("a released buffer is still in use")
		}
		b = newBodyBuf(budget)
		if err := b.setPrefix([]byte("Received: y\r\n")); err != nil {
			t.Fatal(err)
		}
		if err := b.readFrom(strings.NewReader("short\r\n"), 1<<20); err != nil {
			t.Fatal(err)
		}
		if got := string(b.bytes()); got != "Received: y\r\nshort\r\n" {
			t.Fatalf("stored %q", got)
		}
		if &b.bytes()[0] == first {
			reused = true
		}
		b.release()
	}
	if !reused {
		t.Error("no first buffer was reused in ten messages")
	}
	big := newBodyBuf(budget)
	if err := big.readFrom(strings.NewReader(strings.Repeat("z", 200<<10)), 1<<20); err != nil {
		t.Fatal(err)
	}
	if c := cap(big.bytes()); c == firstBuf {
		t.Fatalf("a 200 KiB message in a %d-byte buffer", c)
	}
	big.release()
	if budget.inUse() != 0 {
		t.Errorf("%d bytes still counted", budget.inUse())
	}
}
