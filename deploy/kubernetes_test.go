package deploy

import (
	"bytes"
	"errors"
	"io"
	"maps"
	"net"
	"os/exec"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// The kustomizations that must build: the base and the example overlay
// (which includes the Redis example).
var kustomizations = []string{"kubernetes/base", "kubernetes/overlays/example"}

// object is one Kubernetes object of a kustomize build.
type object struct {
	Kind     string `yaml:"kind"`
	Metadata meta   `yaml:"metadata"`
	node     yaml.Node
}

type meta struct {
	Name   string            `yaml:"name"`
	Labels map[string]string `yaml:"labels"`
}

type labelSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"`
	} `yaml:"httpGet"`
}

type container struct {
	Name  string   `yaml:"name"`
	Image string   `yaml:"image"`
	Args  []string `yaml:"args"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	Env            []any  `yaml:"env"`
	EnvFrom        []any  `yaml:"envFrom"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	Lifecycle      struct {
		PreStop struct {
			Sleep struct {
				Seconds int `yaml:"seconds"`
			} `yaml:"sleep"`
		} `yaml:"preStop"`
	} `yaml:"lifecycle"`
	Resources struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext struct {
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   bool  `yaml:"readOnlyRootFilesystem"`
		Capabilities             struct {
			Drop []string `yaml:"drop"`
		} `yaml:"capabilities"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		SubPath   string `yaml:"subPath"`
	} `yaml:"volumeMounts"`
}

// port returns the container port called name, or 0.
func (c container) port(name string) int {
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	return 0
}

type podTemplate struct {
	Metadata meta `yaml:"metadata"`
	Spec     struct {
		TerminationGracePeriodSeconds int   `yaml:"terminationGracePeriodSeconds"`
		AutomountServiceAccountToken  *bool `yaml:"automountServiceAccountToken"`
		SecurityContext               struct {
			RunAsNonRoot bool `yaml:"runAsNonRoot"`
			RunAsUser    int  `yaml:"runAsUser"`
		} `yaml:"securityContext"`
		TopologySpreadConstraints []struct {
			TopologyKey   string        `yaml:"topologyKey"`
			LabelSelector labelSelector `yaml:"labelSelector"`
		} `yaml:"topologySpreadConstraints"`
		Containers []container `yaml:"containers"`
		Volumes    []struct {
			Name   string `yaml:"name"`
			Secret *struct {
				SecretName string `yaml:"secretName"`
				Items      []struct {
					Key  string `yaml:"key"`
					Path string `yaml:"path"`
				} `yaml:"items"`
			} `yaml:"secret"`
			ConfigMap *struct {
				Name string `yaml:"name"`
			} `yaml:"configMap"`
		} `yaml:"volumes"`
	} `yaml:"spec"`
}

type workload struct {
	Spec struct {
		Replicas int           `yaml:"replicas"`
		Selector labelSelector `yaml:"selector"`
		Template podTemplate   `yaml:"template"`
	} `yaml:"spec"`
}

type service struct {
	Spec struct {
		Selector map[string]string `yaml:"selector"`
		Ports    []struct {
			Name       string `yaml:"name"`
			Port       int    `yaml:"port"`
			TargetPort string `yaml:"targetPort"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type serviceMonitor struct {
	Spec struct {
		JobLabel  string        `yaml:"jobLabel"`
		Selector  labelSelector `yaml:"selector"`
		Endpoints []struct {
			Port string `yaml:"port"`
			Path string `yaml:"path"`
		} `yaml:"endpoints"`
	} `yaml:"spec"`
}

type peer struct {
	NamespaceSelector *labelSelector `yaml:"namespaceSelector"`
	PodSelector       *labelSelector `yaml:"podSelector"`
}

type policyPort struct {
	Port     string `yaml:"port"`
	Protocol string `yaml:"protocol"`
}

type networkPolicy struct {
	Spec struct {
		PodSelector labelSelector `yaml:"podSelector"`
		Ingress     []struct {
			From  []peer       `yaml:"from"`
			Ports []policyPort `yaml:"ports"`
		} `yaml:"ingress"`
		Egress []struct {
			To    []peer       `yaml:"to"`
			Ports []policyPort `yaml:"ports"`
		} `yaml:"egress"`
	} `yaml:"spec"`
}

type disruptionBudget struct {
	Spec struct {
		Selector       labelSelector `yaml:"selector"`
		MaxUnavailable int           `yaml:"maxUnavailable"`
	} `yaml:"spec"`
}

type configMap struct {
	Data map[string]string `yaml:"data"`
}

// build is the output of one kustomize build.
type build struct {
	dir  string
	objs []object
}

var (
	buildsMu sync.Mutex
	builds   = map[string]*build{}
)

// kustomizeBuild runs "kustomize build dir" once per test run.
func kustomizeBuild(t *testing.T, dir string) *build {
	t.Helper()
	bin := kustomize(t)
	buildsMu.Lock()
	defer buildsMu.Unlock()
	if b := builds[dir]; b != nil {
		return b
	}
	cmd := exec.Command(bin, "build", dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kustomize build %s: %v\n%s", dir, err, stderr.String())
	}
	b := &build{dir: dir}
	dec := yaml.NewDecoder(bytes.NewReader(out))
	for {
		var o object
		err := dec.Decode(&o.node)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("kustomize build %s: output: %v", dir, err)
		}
		if err := o.node.Decode(&o); err != nil {
			t.Fatalf("kustomize build %s: %v", dir, err)
		}
		b.objs = append(b.objs, o)
	}
	builds[dir] = b
	return b
}

// find decodes the only object of kind whose name starts with prefix
// (kustomize suffixes generated ConfigMaps with a hash).
func (b *build) find(t *testing.T, kind, prefix string, v any) object {
	t.Helper()
	var found []object
	for _, o := range b.objs {
		if o.Kind == kind && strings.HasPrefix(o.Metadata.Name, prefix) {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s: %d objects of kind %s named %s*, want 1", b.dir, len(found), kind, prefix)
	}
	if err := found[0].node.Decode(v); err != nil {
		t.Fatalf("%s: %s %s: %v", b.dir, kind, found[0].Metadata.Name, err)
	}
	return found[0]
}

// all returns every object of kind.
func (b *build) all(kind string) []object {
	var out []object
	for _, o := range b.objs {
		if o.Kind == kind {
			out = append(out, o)
		}
	}
	return out
}

// selects reports whether a selector picks objects with these labels; an
// empty selector selects nothing here, as none of ours should be empty.
func selects(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// relayConfig is what the tests read from the ConfigMap's holdfast.yaml.
type relayConfig struct {
	Redis struct {
		Addrs []string `yaml:"addrs"`
	} `yaml:"redis"`
	SMTP struct {
		Listeners []struct {
			Addr string `yaml:"addr"`
		} `yaml:"listeners"`
	} `yaml:"smtp"`
	HTTP struct {
		Addr string `yaml:"addr"`
	} `yaml:"http"`
	Ops struct {
		Addr string `yaml:"addr"`
	} `yaml:"ops"`
	ShutdownTimeout string `yaml:"shutdown_timeout"`
}

// relay is the relay's part of a build: the Deployment, its container and
// its configuration.
type relay struct {
	deploy    workload
	container container
	config    string // holdfast.yaml as in the ConfigMap
	parsed    relayConfig
}

func relayOf(t *testing.T, b *build) relay {
	t.Helper()
	var r relay
	b.find(t, "Deployment", "holdfast", &r.deploy)
	cs := r.deploy.Spec.Template.Spec.Containers
	if len(cs) != 1 || cs[0].Name != "holdfast" {
		t.Fatalf("%s: the Deployment needs one container, holdfast: %+v", b.dir, cs)
	}
	r.container = cs[0]

	// The container reads --config from the ConfigMap's mount.
	args := strings.Join(r.container.Args, " ")
	cfgPath, ok := strings.CutPrefix(args, "serve --config ")
	if !ok {
		t.Fatalf("%s: container args %q, want serve --config FILE", b.dir, args)
	}
	var cm configMap
	cmObj := b.find(t, "ConfigMap", "holdfast-config", &cm)
	mounted := false
	for _, v := range r.deploy.Spec.Template.Spec.Volumes {
		if v.ConfigMap == nil || v.ConfigMap.Name != cmObj.Metadata.Name {
			continue
		}
		for _, m := range r.container.VolumeMounts {
			if m.Name == v.Name && path.Dir(cfgPath) == m.MountPath {
				r.config = cm.Data[path.Base(cfgPath)]
				mounted = true
			}
		}
	}
	if !mounted || r.config == "" {
		t.Fatalf("%s: --config %s is not a key of the mounted ConfigMap %s", b.dir, cfgPath, cmObj.Metadata.Name)
	}
	if err := yaml.Unmarshal([]byte(r.config), &r.parsed); err != nil {
		t.Fatalf("%s: holdfast.yaml: %v", b.dir, err)
	}
	return r
}

// TestKustomize builds the base and the overlay with kustomize and checks
// that the pieces fit: ports, labels and selectors agree across the
// Deployment, Services, ServiceMonitor, NetworkPolicy and PDB, and the
// pod is set up as the README promises.
func TestKustomize(t *testing.T) {
	for _, dir := range kustomizations {
		t.Run(path.Base(dir), func(t *testing.T) {
			b := kustomizeBuild(t, dir)
			checkRelay(t, b)
			checkServices(t, b)
			checkNetworkPolicy(t, b)
			if len(b.all("PrometheusRule")) != 1 {
				t.Errorf("%s: want one PrometheusRule", dir)
			}
		})
	}
}

// TestKustomizeOverlay: the overlay sets a fixed image version and brings
// the Redis example, durable, with a volume, and reachable as configured.
func TestKustomizeOverlay(t *testing.T) {
	b := kustomizeBuild(t, "kubernetes/overlays/example")
	r := relayOf(t, b)
	image := r.container.Image
	if i := strings.LastIndex(image, ":"); i < 0 || image[i+1:] == "latest" || strings.Contains(image[i+1:], "/") {
		t.Errorf("overlay image %q: want a fixed tag", image)
	}

	var sts struct {
		Spec struct {
			VolumeClaimTemplates []struct {
				Metadata meta `yaml:"metadata"`
			} `yaml:"volumeClaimTemplates"`
		} `yaml:"spec"`
	}
	var redis workload
	b.find(t, "StatefulSet", "holdfast-redis", &redis)
	b.find(t, "StatefulSet", "holdfast-redis", &sts)
	if len(redis.Spec.Template.Spec.Containers) != 1 {
		t.Fatal("the Redis StatefulSet needs one container")
	}
	rc := redis.Spec.Template.Spec.Containers[0]
	claimed := false
	for _, m := range rc.VolumeMounts {
		for _, c := range sts.Spec.VolumeClaimTemplates {
			claimed = claimed || (m.Name == c.Metadata.Name && m.MountPath == "/data")
		}
	}
	if !claimed {
		t.Error("Redis's /data must be a PersistentVolumeClaim")
	}
	var cm configMap
	b.find(t, "ConfigMap", "holdfast-redis-config", &cm)
	conf := cm.Data["redis.conf"]
	for _, want := range []string{"appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction"} {
		if !slices.Contains(strings.Split(conf, "\n"), want) {
			t.Errorf("redis.conf lacks %q", want)
		}
	}
	usesSecret := false
	for _, e := range rc.Env {
		s, _ := yaml.Marshal(e)
		usesSecret = usesSecret || strings.Contains(string(s), "secretKeyRef")
	}
	if !usesSecret || !strings.Contains(strings.Join(rc.Args, " ")+strings.Join(rcCommand(t, b), " "), "--requirepass") {
		t.Error("Redis must take its password from a Secret (--requirepass)")
	}

	// The relay reaches Redis at the Service's name and port, and the
	// Service forwards to Redis's container port.
	var svc service
	svcObj := b.find(t, "Service", "holdfast-redis", &svc)
	if len(r.parsed.Redis.Addrs) != 1 {
		t.Fatalf("redis.addrs %v", r.parsed.Redis.Addrs)
	}
	host, port, _ := net.SplitHostPort(r.parsed.Redis.Addrs[0])
	if host != svcObj.Metadata.Name || port != strconv.Itoa(svc.Spec.Ports[0].Port) {
		t.Errorf("redis.addrs %s, but the Redis Service is %s:%d", r.parsed.Redis.Addrs[0], svcObj.Metadata.Name, svc.Spec.Ports[0].Port)
	}
	if rc.port(svc.Spec.Ports[0].TargetPort) == 0 || !selects(svc.Spec.Selector, redis.Spec.Template.Metadata.Labels) {
		t.Error("the Redis Service does not reach the Redis pod's port")
	}
	// The NetworkPolicy lets the relay reach it.
	var np networkPolicy
	b.find(t, "NetworkPolicy", "holdfast", &np)
	reached := false
	for _, e := range np.Spec.Egress {
		for _, to := range e.To {
			if to.PodSelector != nil && selects(to.PodSelector.MatchLabels, redis.Spec.Template.Metadata.Labels) {
				for _, p := range e.Ports {
					reached = reached || p.Port == strconv.Itoa(rc.port("redis"))
				}
			}
		}
	}
	if !reached {
		t.Error("the NetworkPolicy does not let the relay reach Redis's port")
	}
}

func rcCommand(t *testing.T, b *build) []string {
	t.Helper()
	var sts struct {
		Spec struct {
			Template struct {
				Spec struct {
					Containers []struct {
						Command []string `yaml:"command"`
					} `yaml:"containers"`
				} `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	b.find(t, "StatefulSet", "holdfast-redis", &sts)
	return sts.Spec.Template.Spec.Containers[0].Command
}

func checkRelay(t *testing.T, b *build) {
	r := relayOf(t, b)
	spec := r.deploy.Spec
	pod := spec.Template.Spec
	labels := spec.Template.Metadata.Labels
	if spec.Replicas != 3 {
		t.Errorf("replicas %d, want 3", spec.Replicas)
	}
	if !selects(spec.Selector.MatchLabels, labels) {
		t.Errorf("the Deployment's selector %v does not select its pods %v", spec.Selector.MatchLabels, labels)
	}
	keys := map[string]bool{}
	for _, c := range pod.TopologySpreadConstraints {
		if selects(c.LabelSelector.MatchLabels, labels) {
			keys[c.TopologyKey] = true
		}
	}
	if !keys["kubernetes.io/hostname"] || !keys["topology.kubernetes.io/zone"] {
		t.Errorf("topology spread over nodes and zones, selecting the pods: got %v", keys)
	}

	c := r.container
	for _, p := range []struct {
		name string
		pr   *probe
		path string
	}{{"readiness", c.ReadinessProbe, "/readyz"}, {"liveness", c.LivenessProbe, "/healthz"}} {
		if p.pr == nil || p.pr.HTTPGet == nil || p.pr.HTTPGet.Path != p.path || p.pr.HTTPGet.Port != "ops" {
			t.Errorf("%s probe: want GET %s on the ops port", p.name, p.path)
		}
	}
	for _, res := range []map[string]string{c.Resources.Requests, c.Resources.Limits} {
		if res["cpu"] == "" || res["memory"] == "" {
			t.Errorf("resources: want cpu and memory requests and limits, got %+v", c.Resources)
		}
	}
	sc := c.SecurityContext
	if !pod.SecurityContext.RunAsNonRoot || pod.SecurityContext.RunAsUser == 0 || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		!sc.ReadOnlyRootFilesystem || !slices.Equal(sc.Capabilities.Drop, []string{"ALL"}) {
		t.Errorf("security context: want non-root, no privilege escalation, read-only root, all capabilities dropped: pod %+v, container %+v", pod.SecurityContext, sc)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the relay needs no Kubernetes API token: automountServiceAccountToken: false")
	}

	// Grace: the kubelet must not kill the relay before the preStop pause
	// and the relay's own shutdown budget are over.
	budget := 25 * time.Second // shutdown_timeout's default
	if s := r.parsed.ShutdownTimeout; s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("shutdown_timeout %q: %v", s, err)
		}
		budget = d
	}
	need := budget + time.Duration(c.Lifecycle.PreStop.Sleep.Seconds)*time.Second
	if grace := time.Duration(pod.TerminationGracePeriodSeconds) * time.Second; grace <= need {
		t.Errorf("terminationGracePeriodSeconds %v, want more than preStop + shutdown_timeout = %v", grace, need)
	}

	// Secrets reach the relay as files only: no environment, no subPath
	// (a subPath mount never sees a rotated Secret), and every *_file of
	// the configuration is in a mounted Secret.
	if len(c.Env) > 0 || len(c.EnvFrom) > 0 {
		t.Errorf("the relay's container has environment variables; secrets must be files: %v %v", c.Env, c.EnvFrom)
	}
	secretFiles := map[string]bool{} // paths of files the Secrets provide, or dir+"/*"
	for _, v := range pod.Volumes {
		if v.Secret == nil {
			continue
		}
		for _, m := range c.VolumeMounts {
			if m.Name != v.Name {
				continue
			}
			if m.SubPath != "" {
				t.Errorf("Secret %s is mounted with subPath: rotations would never reach the pod", v.Secret.SecretName)
			}
			if len(v.Secret.Items) == 0 {
				secretFiles[m.MountPath+"/*"] = true
			}
			for _, it := range v.Secret.Items {
				secretFiles[path.Join(m.MountPath, it.Path)] = true
			}
		}
	}
	files := configFiles(t, r.config)
	if len(files) < 4 {
		t.Fatalf("only %d *_file settings in holdfast.yaml: %v", len(files), files)
	}
	for key, p := range files {
		if !secretFiles[p] && !secretFiles[path.Dir(p)+"/*"] {
			t.Errorf("%s: %s is not a file of a mounted Secret (%v)", key, p, slices.Sorted(maps.Keys(secretFiles)))
		}
	}

	// The configuration listens where the container ports are.
	for _, l := range []struct {
		field, addr, port string
	}{
		{"smtp.listeners[0].addr", first(r.parsed.SMTP.Listeners).Addr, "smtp"},
		{"http.addr", r.parsed.HTTP.Addr, "http"},
		{"ops.addr", r.parsed.Ops.Addr, "ops"},
	} {
		host, port, err := net.SplitHostPort(l.addr)
		if err != nil || host != "0.0.0.0" || port != strconv.Itoa(c.port(l.port)) {
			t.Errorf("%s %q: want 0.0.0.0:%d, the container port %s", l.field, l.addr, c.port(l.port), l.port)
		}
	}

	var pdb disruptionBudget
	b.find(t, "PodDisruptionBudget", "holdfast", &pdb)
	if !selects(pdb.Spec.Selector.MatchLabels, labels) || pdb.Spec.MaxUnavailable != 1 {
		t.Errorf("PodDisruptionBudget: want maxUnavailable 1 of the relay's pods: %+v", pdb.Spec)
	}
}

func first[T any](s []T) T {
	var zero T
	if len(s) == 0 {
		return zero
	}
	return s[0]
}

// configFiles returns every *_file setting of a holdfast.yaml, by its
// dotted key.
func configFiles(t *testing.T, config string) map[string]string {
	t.Helper()
	var doc any
	if err := yaml.Unmarshal([]byte(config), &doc); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && strings.HasSuffix(k, "_file") && s != "" {
					out[prefix+k] = s
				}
				walk(prefix+k+".", x)
			}
		case []any:
			for i, x := range v {
				walk(strings.TrimSuffix(prefix, ".")+"["+strconv.Itoa(i)+"].", x)
			}
		}
	}
	walk("", doc)
	return out
}

func checkServices(t *testing.T, b *build) {
	r := relayOf(t, b)
	labels := r.deploy.Spec.Template.Metadata.Labels
	targets := map[string]service{}
	svcLabels := map[string]map[string]string{}
	for _, o := range b.all("Service") {
		var s service
		if err := o.node.Decode(&s); err != nil {
			t.Fatal(err)
		}
		if !selects(s.Spec.Selector, labels) {
			continue // Redis's
		}
		svcLabels[o.Metadata.Name] = o.Metadata.Labels
		for _, p := range s.Spec.Ports {
			if r.container.port(p.TargetPort) == 0 {
				t.Errorf("Service %s port %s: targetPort %q is no container port", o.Metadata.Name, p.Name, p.TargetPort)
			}
			targets[p.TargetPort] = s
		}
	}
	for _, want := range []string{"smtp", "http", "ops"} {
		if _, ok := targets[want]; !ok {
			t.Errorf("no Service forwards to the relay's %s port", want)
		}
	}

	// The ServiceMonitor scrapes /metrics on the ops port of exactly one
	// Service, and its job label is "holdfast" as the alerts expect.
	var sm serviceMonitor
	b.find(t, "ServiceMonitor", "holdfast", &sm)
	var monitored []string
	for name, l := range svcLabels {
		if selects(sm.Spec.Selector.MatchLabels, l) {
			monitored = append(monitored, name)
		}
	}
	if len(monitored) != 1 {
		t.Fatalf("the ServiceMonitor selects Services %v, want exactly one", monitored)
	}
	if got := svcLabels[monitored[0]][sm.Spec.JobLabel]; got != "holdfast" {
		t.Errorf("ServiceMonitor jobLabel %q gives job %q, want holdfast (the alert rules use up{job=\"holdfast\"})", sm.Spec.JobLabel, got)
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Fatalf("ServiceMonitor endpoints %+v, want one on /metrics", sm.Spec.Endpoints)
	}
	var s service
	b.find(t, "Service", monitored[0], &s)
	ok := false
	for _, p := range s.Spec.Ports {
		ok = ok || (p.Name == sm.Spec.Endpoints[0].Port && p.TargetPort == "ops")
	}
	if !ok {
		t.Errorf("ServiceMonitor port %q is not the ops port of Service %s", sm.Spec.Endpoints[0].Port, monitored[0])
	}
}

func checkNetworkPolicy(t *testing.T, b *build) {
	r := relayOf(t, b)
	var np networkPolicy
	b.find(t, "NetworkPolicy", "holdfast", &np)
	if !selects(np.Spec.PodSelector.MatchLabels, r.deploy.Spec.Template.Metadata.Labels) {
		t.Fatalf("the NetworkPolicy does not select the relay's pods")
	}
	allowed := map[string]bool{}
	for _, in := range np.Spec.Ingress {
		if len(in.From) == 0 {
			t.Error("a NetworkPolicy ingress rule without from admits everyone")
		}
		for _, p := range in.Ports {
			if r.container.port(p.Port) == 0 {
				t.Errorf("NetworkPolicy ingress port %q is no container port", p.Port)
			}
			allowed[p.Port] = true
		}
	}
	for _, want := range []string{"smtp", "http", "ops"} {
		if !allowed[want] {
			t.Errorf("the NetworkPolicy admits nobody to the %s port", want)
		}
	}
	egress := map[string]bool{}
	for _, e := range np.Spec.Egress {
		for _, p := range e.Ports {
			egress[p.Port+"/"+p.Protocol] = true
		}
	}
	for _, want := range []string{"53/UDP", "443/TCP", "587/TCP", "6379/TCP"} {
		if !egress[want] {
			t.Errorf("the NetworkPolicy lets the relay reach no %s (DNS, Entra and Graph, Exchange SMTP, Redis)", want)
		}
	}
}
