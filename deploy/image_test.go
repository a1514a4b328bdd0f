package deploy

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd  string // upper case: FROM, RUN, COPY…
	args string
}

func readDockerfile(t *testing.T) []instruction {
	t.Helper()
	f, err := os.Open("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []instruction
	var cur strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if more, ok := strings.CutSuffix(line, "\\"); ok {
			cur.WriteString(more + " ")
			continue
		}
		cur.WriteString(line)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, instruction{strings.ToUpper(cmd), strings.TrimSpace(args)})
		cur.Reset()
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDockerfile checks the Dockerfile without a container runtime:
// pinned base images, a static trimmed version-stamped build, a non-root
// final stage without HEALTHCHECK, every Go package the binary needs
// copied, and nothing that looks like a secret copied.
func TestDockerfile(t *testing.T) {
	ins := readDockerfile(t)
	var stages [][]instruction
	for _, in := range ins {
		if in.cmd == "FROM" {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			if in.cmd != "ARG" {
				t.Fatalf("%s before the first FROM", in.cmd)
			}
			continue
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], in)
	}
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a build stage and a runtime stage", len(stages))
	}

	for _, s := range stages {
		image := strings.Fields(s[0].args)[0]
		_, tag, hasTag := strings.Cut(image[strings.LastIndex(image, "/")+1:], ":")
		if !strings.Contains(image, "@sha256:") && (!hasTag || tag == "" || tag == "latest") {
			t.Errorf("FROM %s: pin the base image by tag or digest", image)
		}
	}
	final := stages[len(stages)-1]
	if base := strings.Fields(final[0].args)[0]; !strings.HasPrefix(base, "gcr.io/distroless/static") && base != "scratch" {
		t.Errorf("runtime base %s: want distroless static or scratch", base)
	}

	var build, user, entrypoint string
	var copied []string
	for _, in := range ins {
		switch in.cmd {
		case "RUN":
			if strings.Contains(in.args, "go build") {
				build = in.args
			}
		case "COPY", "ADD":
			if in.cmd == "ADD" {
				t.Errorf("ADD %s: use COPY", in.args)
			}
			f := strings.Fields(in.args)
			for _, src := range f[:len(f)-1] {
				if !strings.HasPrefix(src, "--") {
					copied = append(copied, src)
				}
			}
		case "ENV", "ARG":
			if regexp.MustCompile(`(?i)secret|password|token|key`).MatchString(in.args) {
				t.Errorf("%s %s: secrets are mounted at run time, never built in", in.cmd, in.args)
			}
		case "HEALTHCHECK":
			t.Errorf("HEALTHCHECK %s: Kubernetes probes /readyz and /healthz", in.args)
		}
	}
	for _, in := range final {
		switch in.cmd {
		case "USER":
			user = in.args
		case "ENTRYPOINT":
			entrypoint = in.args
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-X main.version=${VERSION}", "./cmd/holdfast"} {
		if !strings.Contains(build, want) {
			t.Errorf("go build %q: lacks %s", build, want)
		}
	}
	if u, _, _ := strings.Cut(user, ":"); u == "" || u == "root" || u == "0" {
		t.Errorf("USER %q: the runtime stage must run as a non-root user", user)
	}
	if entrypoint != `["/usr/local/bin/holdfast"]` {
		t.Errorf("ENTRYPOINT %s: want the holdfast binary alone, so the image runs every subcommand", entrypoint)
	}

	secretLike := regexp.MustCompile(`(?i)secret|\.pem$|\.key$|passw|token|^var|^\.$|^\./?$|\*`)
	for _, src := range copied {
		if secretLike.MatchString(src) {
			t.Errorf("COPY %s: copy only go.mod, go.sum and Go packages, nothing that could hold a secret", src)
		}
	}
	// Every package of this module that holdfast is built from is copied.
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "../cmd/holdfast").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		rest, ok := strings.CutPrefix(pkg, "holdfast/")
		if !ok {
			continue
		}
		top := strings.Split(rest, "/")[0]
		if !slices.Contains(copied, top) {
			t.Errorf("package %s is not copied into the build stage (COPY %s ./%s)", pkg, top, top)
		}
	}
}

// TestStaticBinary builds holdfast as the Dockerfile does and checks that
// it is static: ldd finds no dynamic section, and, when the test runs as
// root, "holdfast version" runs chrooted in an empty directory, as on
// distroless or scratch.
func TestStaticBinary(t *testing.T) {
	bin := holdfast(t)
	out, _ := exec.Command("ldd", bin).CombinedOutput()
	if !strings.Contains(string(out), "not a dynamic executable") {
		t.Fatalf("ldd %s: %s; want \"not a dynamic executable\"", bin, out)
	}
	info, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath=true"} {
		if !strings.Contains(string(info), want) {
			t.Errorf("go version -m: no %s in\n%s", want, info)
		}
	}

	if os.Geteuid() != 0 {
		t.Log("not root: the chroot run of holdfast version is left out")
		return
	}
	root := t.TempDir()
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "holdfast"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(root)
	if len(entries) != 1 {
		t.Fatalf("the chroot holds %d entries, want only the binary", len(entries))
	}
	cmd := exec.Command("chroot", root, "/holdfast", "version")
	cmd.Env = []string{}
	got, err := cmd.CombinedOutput()
	if err != nil || string(got) != "holdfast "+testVersion+"\n" {
		t.Fatalf("chroot %s /holdfast version: %v\n%s", root, err, got)
	}
}
