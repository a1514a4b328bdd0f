package relay

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

var (
	lineError    = regexp.MustCompile(`^line (\d+): (.*)$`)
	unknownField = regexp.MustCompile(`^field (\S+) not found in type \S+$`)
	wrongType    = regexp.MustCompile("^cannot unmarshal !!\\w+ `(.*)` into (\\S+)$")
	wrongShape   = regexp.MustCompile(`^cannot unmarshal !!(seq|map) into (\S+)$`)
)

// yamlPlace is one key of the configuration: where it is, its path
// (smtp.listeners[1].addr) and the type of the section that holds it.
type yamlPlace struct {
	line, valueLine int
	valueKind       yaml.Kind
	key, path       string
	section         string
	sectionType     reflect.Type
}

// explainYAML rewrites the decoder's errors about a configuration to name
// each option by its path rather than by Go type, and to list the options
// a section takes when a key is not one of them. Syntax errors are left
// as they are.
func explainYAML(data []byte, err error) error {
	var root yaml.Node
	if yaml.Unmarshal(data, &root) != nil {
		return err
	}
	var places []yamlPlace
	collectPlaces(&root, "", reflect.TypeFor[Options](), &places)
	msgs := []string{err.Error()}
	if te, ok := errors.AsType[*yaml.TypeError](err); ok {
		msgs = te.Errors
	}
	for i, m := range msgs {
		msgs[i] = explainLine(m, places)
	}
	return errors.New(strings.Join(msgs, "; "))
}

// explainLine rewrites one "line N: ..." message.
func explainLine(msg string, places []yamlPlace) string {
	m := lineError.FindStringSubmatch(msg)
	if m == nil {
		return msg
	}
	line, _ := strconv.Atoi(m[1])
	what := m[2]
	if f := unknownField.FindStringSubmatch(what); f != nil {
		for _, p := range places {
			if p.line == line && p.key == f[1] {
				section := p.section
				if section == "" {
					section = "the top level"
				}
				return fmt.Sprintf("line %d: %s: no such option; %s takes %s", line, p.path,
					section, strings.Join(optionNames(p.sectionType), ", "))
			}
		}
		return msg
	}
	// The key whose value, of the kind the message is about, is on the
	// line: the innermost when they nest; when two that do not nest are
	// (flow style), the message stays as it is rather than name the
	// wrong one.
	kind := yaml.ScalarNode
	shape := wrongShape.FindStringSubmatch(what)
	switch {
	case shape == nil:
	case shape[1] == "seq":
		kind = yaml.SequenceNode
	default:
		kind = yaml.MappingNode
	}
	var at *yamlPlace
	for i := range places {
		p := &places[i]
		switch {
		case p.valueLine != line || p.valueKind != kind:
		case at == nil || within(p.path, at.path):
			at = p
		case !within(at.path, p.path):
			return msg
		}
	}
	if at == nil {
		return msg
	}
	switch w := wrongType.FindStringSubmatch(what); {
	case w != nil:
		what = fmt.Sprintf("%q %s", w[1], wantedType(w[2]))
	case shape != nil:
		what = shapeName(shape[1]) + " where " + wantedShape(shape[2]) + " belongs"
	}
	return fmt.Sprintf("line %d: %s: %s", line, at.path, strings.TrimPrefix(what, fmt.Sprintf("line %d: ", line)))
}

// within reports whether the option at path inner is inside the one at
// outer.
func within(inner, outer string) bool {
	return strings.HasPrefix(inner, outer+".") || strings.HasPrefix(inner, outer+"[")
}

// shapeName names a YAML node kind as the decoder's message does.
func shapeName(tag string) string {
	if tag == "seq" {
		return "a list"
	}
	return "a section of options"
}

// wantedShape says what a Go type named by the decoder is in YAML.
func wantedShape(goType string) string {
	switch {
	case strings.HasPrefix(goType, "[]"):
		return "a list"
	case strings.HasPrefix(goType, "map[") || strings.Contains(goType, "."):
		return "a section of options"
	}
	return "one value"
}

// wantedType says in words what a Go type named by the decoder takes.
func wantedType(goType string) string {
	switch {
	case strings.HasPrefix(goType, "int") || strings.HasPrefix(goType, "uint"):
		return "is not a whole number"
	case strings.HasPrefix(goType, "float"):
		return "is not a number"
	case goType == "bool":
		return "is not true or false"
	}
	return "is not " + wantedShape(goType)
}

// collectPlaces notes every key under n, whose path is path and whose
// Go type is t (nil when not known).
func collectPlaces(n *yaml.Node, path string, t reflect.Type, out *[]yamlPlace) {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			collectPlaces(c, path, t, out)
		}
	case yaml.SequenceNode:
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for i, c := range n.Content {
			collectPlaces(c, fmt.Sprintf("%s[%d]", path, i), elem, out)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			*out = append(*out, yamlPlace{line: k.Line, valueLine: v.Line, valueKind: v.Kind, key: k.Value, path: p, section: path, sectionType: t})
			collectPlaces(v, p, childType(t, k.Value), out)
		}
	}
}

// childType is the Go type of the option key in a section of type t.
func childType(t reflect.Type, key string) reflect.Type {
	if t == nil {
		return nil
	}
	switch t.Kind() {
	case reflect.Map:
		return t.Elem()
	case reflect.Struct:
		for f := range yamlFields(t) {
			if f.name == key {
				return f.typ
			}
		}
	}
	return nil
}

type yamlField struct {
	name string
	typ  reflect.Type
}

// yamlFields yields the options of a struct section in their order,
// inlined structs included.
func yamlFields(t reflect.Type) func(func(yamlField) bool) {
	return func(yield func(yamlField) bool) {
		for f := range t.Fields() {
			name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			switch {
			case name == "-" || !f.IsExported():
			case opts == "inline":
				for g := range yamlFields(f.Type) {
					if !yield(g) {
						return
					}
				}
			case name != "":
				if !yield(yamlField{name, f.Type}) {
					return
				}
			}
		}
	}
}

// optionNames lists the options a section of type t takes.
func optionNames(t reflect.Type) []string {
	if t == nil || t.Kind() != reflect.Struct {
		return nil
	}
	var out []string
	for f := range yamlFields(t) {
		out = append(out, f.name)
	}
	return out
}
