// Package deploy holds what runs Holdfast in production: the container
// image (Dockerfile at the top of the repository), Kubernetes manifests
// (kubernetes/), a systemd unit (systemd/), alert rules (prometheus/) and a
// Grafana dashboard (grafana/).
//
// It has no code of its own. Its tests check that the pieces parse and fit
// together: kustomize builds, ports, labels and selectors agree, the
// ConfigMap's configuration loads, the alert rules pass promtool, and every
// metric the rules and the dashboard use is one the relay exports.
package deploy
