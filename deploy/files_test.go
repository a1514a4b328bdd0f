package deploy

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// decodeYAML returns every document of a YAML stream.
func decodeYAML(data []byte) ([]any, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []any
	for {
		var doc any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
}

func readYAML(t *testing.T, path string) []any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	docs, err := decodeYAML(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return docs
}

// TestFilesParse: every YAML and JSON file under deploy/ parses, and none
// is empty.
func TestFilesParse(t *testing.T) {
	n := 0
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		switch filepath.Ext(path) {
		case ".yaml", ".yml":
			docs, err := decodeYAML(data)
			if err != nil {
				t.Errorf("%s: %v", path, err)
			} else if len(docs) == 0 {
				t.Errorf("%s: no YAML document", path)
			}
		case ".json":
			var v any
			if err := json.Unmarshal(data, &v); err != nil {
				t.Errorf("%s: %v", path, err)
			}
		default:
			return nil
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 15 {
		t.Fatalf("parsed only %d YAML and JSON files under deploy/", n)
	}
}

const (
	rulesFile      = "prometheus/holdfast.rules.yml"
	rulesTestFile  = "prometheus/holdfast.rules.test.yml"
	prometheusRule = "kubernetes/base/prometheusrule.yaml"
)

// TestPrometheusRuleMatchesRulesFile: the PrometheusRule carries exactly
// the groups of the rules file.
func TestPrometheusRuleMatchesRulesFile(t *testing.T) {
	rules := readYAML(t, rulesFile)[0].(map[string]any)
	pr := readYAML(t, prometheusRule)[0].(map[string]any)
	if pr["kind"] != "PrometheusRule" {
		t.Fatalf("%s: kind %v", prometheusRule, pr["kind"])
	}
	spec := pr["spec"].(map[string]any)
	if !reflect.DeepEqual(rules["groups"], spec["groups"]) {
		t.Fatalf("%s spec.groups differ from the groups of %s: edit both together", prometheusRule, rulesFile)
	}
}

// alertNames returns the alert names of the rules file.
func alertNames(t *testing.T) []string {
	t.Helper()
	var names []string
	for _, g := range readYAML(t, rulesFile)[0].(map[string]any)["groups"].([]any) {
		for _, r := range g.(map[string]any)["rules"].([]any) {
			if a, ok := r.(map[string]any)["alert"].(string); ok {
				names = append(names, a)
			}
		}
	}
	return names
}

// TestAlertRules runs promtool on the rules and their unit tests, and
// checks that every alert has a unit test that expects it to fire, and
// annotations that say what it is and what to do.
func TestAlertRules(t *testing.T) {
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Fatal("promtool is missing: install Debian's prometheus package (deploy/local/ensure-promtool.sh does)")
	}
	for _, args := range [][]string{
		{"check", "rules", filepath.Base(rulesFile)},
		{"test", "rules", filepath.Base(rulesTestFile)},
	} {
		cmd := exec.Command("promtool", args...)
		cmd.Dir = "prometheus"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	fired := map[string]bool{}
	unfired := map[string]bool{}
	for _, tc := range readYAML(t, rulesTestFile)[0].(map[string]any)["tests"].([]any) {
		for _, at := range tc.(map[string]any)["alert_rule_test"].([]any) {
			at := at.(map[string]any)
			name := at["alertname"].(string)
			if exp, _ := at["exp_alerts"].([]any); len(exp) > 0 {
				fired[name] = true
			} else {
				unfired[name] = true
			}
		}
	}
	names := alertNames(t)
	if len(names) < 10 {
		t.Fatalf("only %d alerts in %s", len(names), rulesFile)
	}
	for _, name := range names {
		if !fired[name] || !unfired[name] {
			t.Errorf("alert %s: needs a unit test where it fires (%v) and one where it must not (%v)", name, fired[name], unfired[name])
		}
	}
	for _, g := range readYAML(t, rulesFile)[0].(map[string]any)["groups"].([]any) {
		for _, r := range g.(map[string]any)["rules"].([]any) {
			r := r.(map[string]any)
			ann, _ := r["annotations"].(map[string]any)
			labels, _ := r["labels"].(map[string]any)
			if ann["summary"] == nil || len(ann["description"].(string)) < 80 {
				t.Errorf("alert %v: needs a summary and a description that says what to do", r["alert"])
			}
			if s := labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("alert %v: severity %v, want warning or critical", r["alert"], s)
			}
		}
	}
}
