package deploy

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// tools is a directory, shared by the tests of one run, holding the
// binaries they build once: holdfast itself and kustomize.
var tools string

func TestMain(m *testing.M) {
	if os.Getenv(standInEnv) != "" {
		os.Exit(standIn())
	}
	dir, err := os.MkdirTemp("", "holdfast-deploy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tools = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// testVersion is stamped into the holdfast binary the tests build.
const testVersion = "v0.0.0-deploytest"

// built builds one binary at most once per test run.
type built struct {
	once sync.Once
	path string
	err  error
}

func (b *built) get(t *testing.T, build func() (string, error)) string {
	t.Helper()
	b.once.Do(func() { b.path, b.err = build() })
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

var holdfastBin, kustomizeBin built

// holdfast returns the path of a holdfast binary built as the Dockerfile
// builds it: static (CGO_ENABLED=0), -trimpath, version stamped.
func holdfast(t *testing.T) string {
	return holdfastBin.get(t, func() (string, error) {
		out := filepath.Join(tools, "holdfast")
		err := goBuild("..", []string{"CGO_ENABLED=0"}, "-trimpath", "-ldflags", "-s -w -X main.version="+testVersion, "-o", out, "./cmd/holdfast")
		return out, err
	})
}

// kustomize returns the path of kustomize, built from the version pinned
// in tools/go.mod (downloaded through the module proxy the first time).
func kustomize(t *testing.T) string {
	return kustomizeBin.get(t, func() (string, error) {
		out := filepath.Join(tools, "kustomize")
		err := goBuild("tools", nil, "-o", out, "sigs.k8s.io/kustomize/kustomize/v5")
		return out, err
	})
}

func goBuild(dir string, env []string, args ...string) error {
	cmd := exec.Command("go", append([]string{"build"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %v in %s: %v\n%s", args, dir, err, stderr.String())
	}
	return nil
}
