package relay

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// TestLogKeysUnique runs a whole delivery cycle with JSON logs at debug
// level and decodes every line: no line may carry a key twice. slog's own
// message key is "msg", so the message id must go elsewhere.
func TestLogKeysUnique(t *testing.T) {
	f := newFixture(t)
	o := f.opts
	o.Redis.Addrs = []string{f.redis.Addr()}
	o.HTTP.Addr = "127.0.0.1:0"
	o.Delivery.Dir = t.TempDir()
	o.Delivery.Poll = Duration(50 * time.Millisecond)
	logs := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := New(context.Background(), o, nil, log)
	if err != nil {
		t.Fatalf("new relay: %v", err)
	}
	s.Start()

	c, err := smtp.Dial(s.SMTPAddrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Auth(sasl.NewPlainClient("", crmUser, crmPassword)); err != nil {
		t.Fatal(err)
	}
	body := "From: billing@contoso.com\r\nSubject: logs\r\n\r\nhello\r\n"
	if err := c.SendMail("billing@contoso.com", []string{"alice@example.org"}, strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, _ := filepath.Glob(filepath.Join(o.Delivery.Dir, "*.eml"))
		if len(m) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the message was not delivered")
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	lines, withID := 0, 0
	sc := bufio.NewScanner(strings.NewReader(logs.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		lines++
		keys, err := jsonKeys(sc.Bytes())
		if err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		seen := map[string]bool{}
		for _, k := range keys {
			if seen[k] {
				t.Errorf("key %q twice in %s", k, sc.Text())
			}
			seen[k] = true
		}
		if seen["id"] {
			withID++
		}
	}
	if lines == 0 || withID == 0 {
		t.Fatalf("%d log lines, %d with an id: the cycle did not log", lines, withID)
	}
}

// jsonKeys returns the top-level keys of a JSON object in order, repeats
// included (encoding/json keeps only the last).
func jsonKeys(line []byte) ([]string, error) {
	dec := json.NewDecoder(bytes.NewReader(line))
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		keys = append(keys, tok.(string))
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
	}
	if _, err := dec.Token(); err != nil && err != io.EOF {
		return nil, err
	}
	return keys, nil
}

// TestLogKeysNotReserved reads every log call of the module's code: no
// attribute may take a key of slog's own record fields. A JSON line with
// "level" twice reads, to most log pipelines, as the attribute's level,
// not the record's, and an ERROR would be filed as something else.
func TestLogKeysNotReserved(t *testing.T) {
	reserved := map[string]bool{slog.TimeKey: true, slog.LevelKey: true, slog.MessageKey: true, slog.SourceKey: true}
	// skip is how many leading arguments of each logging method are not
	// attributes.
	skip := map[string]int{
		"Debug": 1, "Info": 1, "Warn": 1, "Error": 1,
		"DebugContext": 2, "InfoContext": 2, "WarnContext": 2, "ErrorContext": 2,
		"Log": 3, "LogAttrs": 3, "With": 0,
	}
	attrFuncs := map[string]bool{"String": true, "Int": true, "Int64": true, "Uint64": true, "Float64": true,
		"Bool": true, "Time": true, "Duration": true, "Any": true, "Group": true}
	fset := token.NewFileSet()
	files := 0
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "var" || d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) && path != ".." {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		files++
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			check := func(arg ast.Expr) {
				if lit, ok := arg.(*ast.BasicLit); ok && lit.Kind == token.STRING {
					if k, err := strconv.Unquote(lit.Value); err == nil && reserved[k] {
						t.Errorf("%s: log attribute key %q is slog's own", fset.Position(lit.Pos()), k)
					}
				}
			}
			if pkg, ok := sel.X.(*ast.Ident); ok && pkg.Name == "slog" && attrFuncs[sel.Sel.Name] && len(call.Args) > 0 {
				check(call.Args[0])
				return true
			}
			n0, ok := skip[sel.Sel.Name]
			if !ok || len(call.Args) < n0 {
				return true
			}
			// Keys are the string literals of the key-value list; an
			// argument of another kind is an slog.Attr.
			args := call.Args[n0:]
			for i := 0; i < len(args); i++ {
				if lit, ok := args[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
					check(lit)
					i++
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 50 {
		t.Fatalf("read %d Go files, want the whole module", files)
	}
}
