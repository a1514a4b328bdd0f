package relay

import (
	"fmt"
	"net/netip"
	"time"
)

// RedisGuards bound how long ingress waits for Redis and say how durable
// an acknowledgement is. They are part of the redis section.
type RedisGuards struct {
	// DialTimeout, ReadTimeout and WriteTimeout are go-redis's own
	// timeouts for connecting and for each command's network I/O.
	// Defaults 5s, 3s and 3s: a hung Redis fails a command within
	// seconds instead of holding a client's connection.
	DialTimeout  Duration `yaml:"dial_timeout"`
	ReadTimeout  Duration `yaml:"read_timeout"`
	WriteTimeout Duration `yaml:"write_timeout"`
	// IngressTimeout bounds storing one submitted message, replication
	// wait included. Past it SMTP answers 451 4.3.0 and HTTP 503.
	// Default 3s.
	IngressTimeout Duration `yaml:"ingress_timeout"`
	// CheckInterval is how often the durability check (AOF on, fsync on,
	// no eviction) runs again while the relay runs. Default 1m.
	CheckInterval Duration `yaml:"check_interval"`
	// MinReplicasAcked is how many replicas must have a message (WAIT),
	// or, on Redis 7.2 and later, how many must have it in their AOF
	// (WAITAOF), before it is acknowledged. Default 0: the primary alone.
	MinReplicasAcked int `yaml:"min_replicas_acked"`
	// ReplicasTimeout is how long to wait for those replicas; past it the
	// client gets a temporary failure. Default 1s.
	ReplicasTimeout Duration `yaml:"replicas_timeout"`
}

// ThrottleOptions limit password and token guessing, counted across every
// replica in Redis.
type ThrottleOptions struct {
	// MaxFailures is how many failed AUTH commands (or HTTP 401s) from one
	// client IP, or for one SMTP user name, are allowed within Window.
	// Past it, further attempts from that IP or for that user are refused
	// (SMTP 454 4.7.0, HTTP 429) without checking the password, until the
	// window passes or "holdfast creds unblock" clears the block.
	// Default 10.
	MaxFailures int `yaml:"max_failures"`
	// Window is the time over which failures are counted. Default 5m.
	Window Duration `yaml:"window"`
	// BcryptWorkers is how many password checks run at once; the others
	// wait their turn (at most 10s, then AUTH answers 454 4.7.0). Default
	// 0: half the CPUs, at least one, so that guesses leave CPU to the
	// sessions already authenticated.
	BcryptWorkers int `yaml:"bcrypt_workers"`
	// ExemptNetworks are client networks (CIDR, or single addresses)
	// whose addresses are neither counted nor blocked, as Postfix's
	// smtpd_client_event_limit_exceptions: a proxy or NAT in front of the
	// relay, or the applications' own host, where every application
	// shares one address and one that fails would lock the others out.
	// Wrong passwords and tokens from there are still refused one by one,
	// and an SMTP user name that fails too often is still blocked.
	// Default: none.
	ExemptNetworks []string `yaml:"exempt_networks"`
}

// exemptPrefixes parses ExemptNetworks; a single address is a network of
// its own.
func (o ThrottleOptions) exemptPrefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, n := range o.ExemptNetworks {
		if a, err := netip.ParseAddr(n); err == nil {
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(n)
		if err != nil {
			return nil, fmt.Errorf("%q is not a network (10.0.0.0/8) or an address", n)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func defaultRedisGuards() RedisGuards {
	return RedisGuards{
		DialTimeout:     Duration(5 * time.Second),
		ReadTimeout:     Duration(3 * time.Second),
		WriteTimeout:    Duration(3 * time.Second),
		IngressTimeout:  Duration(3 * time.Second),
		CheckInterval:   Duration(time.Minute),
		ReplicasTimeout: Duration(time.Second),
	}
}

func defaultThrottle() ThrottleOptions {
	return ThrottleOptions{MaxFailures: 10, Window: Duration(5 * time.Minute), ExemptNetworks: []string{}}
}

// defaultMaxInflightBytes is the default of smtp.max_inflight_bytes.
const defaultMaxInflightBytes = 256 << 20

// validateIngress checks the options of this file and
// smtp.max_inflight_bytes.
func (o *Options) validateIngress() error {
	if err := positive(
		durationField{"redis.dial_timeout", o.Redis.DialTimeout},
		durationField{"redis.read_timeout", o.Redis.ReadTimeout},
		durationField{"redis.write_timeout", o.Redis.WriteTimeout},
		durationField{"redis.ingress_timeout", o.Redis.IngressTimeout},
		durationField{"redis.check_interval", o.Redis.CheckInterval},
		durationField{"redis.replicas_timeout", o.Redis.ReplicasTimeout},
		durationField{"auth_throttle.window", o.AuthThrottle.Window},
	); err != nil {
		return err
	}
	if o.Redis.MinReplicasAcked < 0 {
		return bad("redis.min_replicas_acked", "must not be negative")
	}
	if o.Redis.MinReplicasAcked > 0 && (o.Redis.ReplicasTimeout >= o.Redis.IngressTimeout || o.Redis.ReplicasTimeout >= o.Redis.ReadTimeout) {
		return bad("redis.replicas_timeout", "must be shorter than redis.ingress_timeout and redis.read_timeout")
	}
	if o.AuthThrottle.MaxFailures < 1 {
		return bad("auth_throttle.max_failures", "must be at least 1")
	}
	if o.AuthThrottle.BcryptWorkers < 0 {
		return bad("auth_throttle.bcrypt_workers", "must not be negative (0 is half the CPUs)")
	}
	if _, err := o.AuthThrottle.exemptPrefixes(); err != nil {
		return bad("auth_throttle.exempt_networks", "%v", err)
	}
	least := minInflightBytes(o.SMTP)
	if o.SMTP.MaxInflightBytes < least {
		return bad("smtp.max_inflight_bytes", "must be at least twice smtp.max_message_bytes plus 64 KiB (%d): a message of the largest size needs that much while its buffer grows", least)
	}
	if p := o.SMTP.MaxInflightBytesPerApp; p != 0 && (p < least || p > o.SMTP.MaxInflightBytes) {
		return bad("smtp.max_inflight_bytes_per_app", "must be 0 (half of smtp.max_inflight_bytes), or from twice smtp.max_message_bytes plus 64 KiB (%d) to smtp.max_inflight_bytes (%d)",
			least, o.SMTP.MaxInflightBytes)
	}
	return nil
}

// connectionsPerApp is the authenticated sessions one of apps
// applications may hold (see SMTPOptions.MaxConnectionsPerApp).
func (o SMTPOptions) connectionsPerApp(apps int) int {
	switch {
	case o.MaxConnectionsPerApp > 0:
		return o.MaxConnectionsPerApp
	case apps <= 1:
		return o.MaxConnections
	}
	return max(o.MaxConnections/2, 1)
}

// inflightPerApp is the bytes one application may hold of the in-flight
// budget (see SMTPOptions.MaxInflightBytesPerApp).
func (o SMTPOptions) inflightPerApp() int64 {
	if o.MaxInflightBytesPerApp > 0 {
		return o.MaxInflightBytesPerApp
	}
	return max(o.MaxInflightBytes/2, minInflightBytes(o))
}

// minInflightBytes is the smallest budget, or application share of it,
// that holds one message of the largest size however it arrives: its
// buffer grows by half, up to the size limit, and holds the old buffer
// and the new one while it copies; with a size given, the first buffer
// and the sized one.
func minInflightBytes(o SMTPOptions) int64 {
	return 2*o.MaxMessageBytes + firstBuf
}
