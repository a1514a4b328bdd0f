package relay

import (
	"context"
	"encoding/binary"
	"hash/maphash"
	"log/slog"
	"strings"
)

// CollapseRepeats returns a logger that writes through log's handler, but
// writes a warning or error once per 10 s while it repeats word for word:
// the same level, message and attributes, those of the logger included.
// The next one written after that carries how many were held back
// (like_lines_held_back); failures after the last one written are not
// counted anywhere. Lines below warning, and lines that differ in any
// attribute (another credential, another error), are written as they
// come. It is for the loops that poll Redis and the Redis client, which
// while Redis is away fail the same way many times a second; lines
// where each occurrence matters (authentication failures, operators'
// actions) do not go through it.
func CollapseRepeats(log *slog.Logger) *slog.Logger {
	return slog.New(newRepeatHandler(log.Handler()))
}

// repeatHandler is CollapseRepeats's handler.
type repeatHandler struct {
	next   slog.Handler
	prefix string // the logger's groups and attributes, as text
	sample *logSampler
}

// repeatSeed hashes the lines' text: the sampler keeps 8 bytes a line.
var repeatSeed = maphash.MakeSeed()

func newRepeatHandler(next slog.Handler) *repeatHandler {
	return &repeatHandler{next: next, sample: newLogSampler(logSampleEvery)}
}

func (h *repeatHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.next.Enabled(ctx, l)
}

func (h *repeatHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		return h.next.Handle(ctx, r)
	}
	var text strings.Builder
	text.WriteString(h.prefix)
	text.WriteString(r.Level.String())
	text.WriteByte(0)
	text.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		writeAttr(&text, a)
		return true
	})
	key := binary.LittleEndian.AppendUint64(nil, maphash.String(repeatSeed, text.String()))
	ok, held := h.sample.allow(string(key))
	if !ok {
		return nil
	}
	if held > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int("like_lines_held_back", held))
	}
	return h.next.Handle(ctx, r)
}

func (h *repeatHandler) WithAttrs(as []slog.Attr) slog.Handler {
	var b strings.Builder
	b.WriteString(h.prefix)
	for _, a := range as {
		writeAttr(&b, a)
	}
	return &repeatHandler{next: h.next.WithAttrs(as), prefix: b.String(), sample: h.sample}
}

func (h *repeatHandler) WithGroup(name string) slog.Handler {
	return &repeatHandler{next: h.next.WithGroup(name), prefix: h.prefix + "\x00group " + name + "\x00", sample: h.sample}
}

// writeAttr writes a as key=value to b, NUL-separated.
func writeAttr(b *strings.Builder, a slog.Attr) {
	b.WriteByte(0)
	b.WriteString(a.Key)
	b.WriteByte('=')
	b.WriteString(a.Value.Resolve().String())
}
