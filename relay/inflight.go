package relay

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"sync"
	"time"
)

// errInflightFull: the memory budget for message bodies has no room.
var errInflightFull = errors.New("the memory budget for messages in flight is used up")

// errBodyTooBig: a message grew past the size limit.
var errBodyTooBig = errors.New("message over the size limit")

// inflight is the memory budget for message bodies held at once, shared by
// SMTP and HTTP ingress (smtp.max_inflight_bytes), of which one
// application may hold at most perApp (smtp.max_inflight_bytes_per_app).
// Readers take bytes before they allocate them and give them back once
// the message is stored or refused. After a burst that used much of the
// budget has drained, the freed memory is handed back to the operating
// system.
type inflight struct {
	max    int64
	perApp int64 // 0 is no bound but max

	mu   sync.Mutex
	used int64
	apps map[string]int64 // bytes taken by each application, when perApp is set
	high int64            // most bytes used since the memory was last returned

	freeing   sync.WaitGroup
	lastFree  time.Time
	freeAfter int64 // a burst this large is returned to the OS once drained
}

// newInflight returns a budget of max bytes, of which one application may
// hold perApp; perApp 0 does not bound applications.
func newInflight(max, perApp int64) *inflight {
	return &inflight{max: max, perApp: perApp, apps: map[string]int64{}, freeAfter: max / 4}
}

// take reserves n bytes for app, or reports that they do not fit. An
// empty app name counts against the whole budget only.
func (b *inflight) take(app string, n int64) bool {
	if n <= 0 {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.fitsLocked(app, n) {
		return false
	}
	b.used += n
	if b.shares(app) {
		b.apps[app] += n
	}
	b.high = max(b.high, b.used)
	return true
}

// fits reports whether n more bytes for app fit now.
func (b *inflight) fits(app string, n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.fitsLocked(app, n)
}

func (b *inflight) fitsLocked(app string, n int64) bool {
	return b.used+n <= b.max && (!b.shares(app) || b.apps[app]+n <= b.perApp)
}

// shares reports whether app's bytes count against a share of their own.
func (b *inflight) shares(app string) bool { return b.perApp > 0 && app != "" }

// give returns n bytes that app took earlier.
func (b *inflight) give(app string, n int64) {
	if n <= 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	if b.shares(app) {
		if b.apps[app] -= n; b.apps[app] <= 0 {
			delete(b.apps, app)
		}
	}
	free := b.used == 0 && b.high >= b.freeAfter && time.Since(b.lastFree) > time.Second
	if free {
		b.high, b.lastFree = 0, time.Now()
		b.freeing.Add(1)
	}
	b.mu.Unlock()
	if free {
		// Go returns freed heap to the OS only lazily; after a burst of
		// large messages the process would keep its peak for minutes.
		go func() {
			defer b.freeing.Done()
			debug.FreeOSMemory()
		}()
	}
}

// wait waits for a return of memory to the OS in progress.
func (b *inflight) wait() { b.freeing.Wait() }

// inUse reports the bytes taken now.
func (b *inflight) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// bodyBuf holds one message in a single buffer whose memory is counted
// against the budget: the Received: header first, then the body as read.
// It grows by doubling, taking the new size from the budget before it
// allocates, so that the bytes counted are the bytes held (the old buffer
// included while it is copied).
type bodyBuf struct {
	budget *inflight
	app    string // whose share of the budget it counts against
	// limit, once readFrom has set it, is the most the buffer grows to:
	// the header, the largest body and one byte to tell a body too big.
	limit  int
	buf    []byte
	held   int64
	prefix int // length of the Received: header at the start
}

func newBodyBuf(budget *inflight) *bodyBuf { return &bodyBuf{budget: budget} }

// grow makes room for at least n more bytes. It grows by half, not by
// doubling, so that a buffer is at most half again as large as its
// message, and never past the limit: the old and new buffers together,
// while one is copied into the other, are at most twice the largest
// message (see minInflightBytes). Past the limit the body is too big.
func (b *bodyBuf) grow(n int) error {
	if cap(b.buf)-len(b.buf) >= n {
		return nil
	}
	if b.limit > 0 && len(b.buf)+n > b.limit {
		return errBodyTooBig
	}
	size := max(cap(b.buf)+cap(b.buf)/2, len(b.buf)+n, firstBuf)
	if b.limit > 0 {
		size = min(size, b.limit)
	}
	if !b.budget.take(b.app, int64(size)) {
		return errInflightFull
	}
	var nb []byte
	if size == firstBuf {
		nb = (*firstBufs.Get().(*[]byte))[:len(b.buf)]
	} else {
		nb = make([]byte, len(b.buf), size)
	}
	copy(nb, b.buf)
	b.budget.give(b.app, b.held)
	b.buf, b.held = nb, int64(size)
	return nil
}

// reserve sizes the buffer for a message of about n bytes after the
// header, when the client said so (SMTP SIZE, HTTP Content-Length).
func (b *bodyBuf) reserve(n int64) error {
	if n <= 0 {
		return nil
	}
	return b.grow(int(n) + 1)
}

// setPrefix writes the Received: header; it must come before any body.
func (b *bodyBuf) setPrefix(p []byte) error {
	if err := b.grow(len(p)); err != nil {
		return err
	}
	b.buf = append(b.buf, p...)
	b.prefix = len(p)
	return nil
}

// readFrom reads r to its end. More than max body bytes is errBodyTooBig;
// a read error is returned as it is.
func (b *bodyBuf) readFrom(r io.Reader, max int64) error {
	b.limit = b.prefix + int(max) + 1
	for {
		if err := b.grow(1); err != nil {
			return err
		}
		n, err := r.Read(b.buf[len(b.buf):cap(b.buf)])
		b.buf = b.buf[:len(b.buf)+n]
		if int64(len(b.buf)-b.prefix) > max {
			return errBodyTooBig
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// memoryHeadroom is what the process may use beyond the bodies budget
// before the garbage collector works harder to stay within it.
const memoryHeadroom = 64 << 20

// setMemoryLimit sets the Go runtime's soft memory limit to the bodies
// budget plus memoryHeadroom, unless GOMEMLIMIT says otherwise. Without it
// the collector lets the heap grow to twice what is live, so a burst of
// large messages could take twice the budget.
func setMemoryLimit(budget int64, log *slog.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	limit := budget + memoryHeadroom
	debug.SetMemoryLimit(limit)
	log.Debug("memory limit set", "bytes", limit)
}

// body is the message as read, without the header.
func (b *bodyBuf) body() []byte { return b.buf[b.prefix:] }

// bytes is the whole buffer: header and body.
func (b *bodyBuf) bytes() []byte { return b.buf }

// bareLFToCRLF turns a body that uses LF line endings only (no CR at all)
// into CRLF, as HTTP clients send. A body with any CR is kept as it is.
func (b *bodyBuf) bareLFToCRLF() error {
	body := b.body()
	if bytes.IndexByte(body, '\r') >= 0 {
		return nil
	}
	lfs := bytes.Count(body, []byte{'\n'})
	if lfs == 0 {
		return nil
	}
	// Convert from the end, in place, once the buffer has room.
	if err := b.grow(lfs); err != nil {
		return err
	}
	old := len(b.buf)
	b.buf = b.buf[:old+lfs]
	w := len(b.buf)
	for r := old - 1; r >= b.prefix; r-- {
		c := b.buf[r]
		w--
		b.buf[w] = c
		if c == '\n' {
			w--
			b.buf[w] = '\r'
		}
	}
	return nil
}

// release gives the buffer's memory back to the budget. The buffer must
// not be used after.
func (b *bodyBuf) release() {
	b.budget.give(b.app, b.held)
	if cap(b.buf) == firstBuf {
		buf := b.buf[:0]
		firstBufs.Put(&buf)
	}
	b.buf, b.held = nil, 0
}

// firstBuf is the size of a message's first buffer, which holds most
// messages whole. Those buffers are reused rather than allocated and
// cleared for every message. A buffer goes back only when released, once
// the message is stored or refused; nothing keeps its bytes after.
const firstBuf = 64 << 10

var firstBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, firstBuf)
	return &b
}}
