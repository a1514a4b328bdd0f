package relay

import (
	"errors"
	"fmt"
	"net"
)

// OpsOptions configure the operators' listener: the status page, /metrics,
// /healthz and /readyz, kept apart from the applications' API.
type OpsOptions struct {
	// Addr is the host:port of the operators' listener. Default
	// "127.0.0.1:8026"; "" turns it off.
	Addr string `yaml:"addr"`
	// BasicAuth asks for HTTP basic authentication on every path but
	// /healthz and /readyz: any user name, and the admin token (whose
	// SHA-256 is http.admin_token_sha256) as the password. Default false.
	BasicAuth bool `yaml:"basic_auth"`

	// Version is the build's version for holdfast_build_info, set by the
	// binary.
	Version string `yaml:"-"`
	// noMetrics turns off the metrics of the delivery and ingress paths,
	// so that a benchmark can measure what they cost.
	noMetrics bool
	// minuteFlush overrides how often this replica adds to the fleet's
	// per-minute counts (default 10s), for tests.
	minuteFlush Duration
}

func defaultOpsOptions() OpsOptions { return OpsOptions{Addr: "127.0.0.1:8026"} }

func (o *Options) validateOps() error {
	if o.Ops.Addr != "" {
		if _, _, err := net.SplitHostPort(o.Ops.Addr); err != nil {
			return fmt.Errorf("ops.addr: %q is not host:port", o.Ops.Addr)
		}
	}
	if o.Ops.BasicAuth && o.HTTP.AdminTokenSHA256 == "" && o.HTTP.AdminTokenSHA256File == "" {
		return errors.New("ops.basic_auth: needs the admin token: set http.admin_token_sha256")
	}
	return nil
}
