package relay

import (
	"context"

	"holdfast/relay/ops"
)

// expirySource gives the status page each credential's expiry as this
// relay knows it: the config's expires_at, else the certificate's
// NotAfter (the same dates GET /v1/breakers reports).
func (s *Server) expirySource() ops.ExpirySource {
	return expiryFunc(func(context.Context) ([]ops.Expiry, error) {
		out := make([]ops.Expiry, 0, len(s.opts.Credentials))
		for _, c := range s.opts.Credentials {
			e := ops.Expiry{Credential: c.Name}
			if t, err := c.Expiry(); err == nil && !t.IsZero() {
				e.At, e.Source = t, "config"
			} else if c.CertFile != "" && s.exchange != nil && s.exchange.creds[c.Name] != nil {
				ac := s.exchange.creds[c.Name]
				if t, ok := ac.Expiry(); ok {
					e.At, e.Source = t.UTC(), "certificate"
				}
			}
			out = append(out, e)
		}
		return out, nil
	})
}

type expiryFunc func(context.Context) ([]ops.Expiry, error)

func (f expiryFunc) Expiries(ctx context.Context) ([]ops.Expiry, error) { return f(ctx) }
