package relay

import (
	"context"
	"log/slog"
	"strings"
)

// repeatHandler writes a warning or error once per logSampleEvery while
// it repeats word for word: the same level, message and attributes,
// those of the logger included. The next one written after that carries
// how many were held back (like_lines_held_back). While Redis or an
// upstream is down, each loop that polls it fails the same way many
// times a second; the log says so once every 10 s instead. Lines below
// warning, and lines that differ in any attribute (another credential,
// another error), are written as they come.
type repeatHandler struct {
	next   slog.Handler
	prefix string // the logger's groups and attributes, as text
	sample *logSampler
}

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
	var key strings.Builder
	key.WriteString(h.prefix)
	key.WriteString(r.Level.String())
	key.WriteByte(0)
	key.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		writeAttr(&key, a)
		return true
	})
	ok, held := h.sample.allow(key.String())
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
