package relay

import (
	"context"

	"holdfast/relay/ops"
)

// expirySource gives the status page each credential's soonest in-use
// expiry, as the expiry monitor knows it (config, certificate or Graph),
// the same date GET /v1/breakers reports.
func (s *Server) expirySource() ops.ExpirySource {
	return expiryFunc(func(context.Context) ([]ops.Expiry, error) {
		if s.expiry == nil {
			return nil, nil
		}
		list := s.expiry.Expiries()
		out := make([]ops.Expiry, 0, len(list))
		for _, ce := range list {
			e := ops.Expiry{Credential: ce.Credential, At: ce.ExpiresAt, Source: ce.Source, Level: ce.Level}
			for _, x := range ce.Expiries {
				if key := x.Key(); key != "" {
					e.Keys = append(e.Keys, ops.ExpiryKey{Key: key, At: x.ExpiresAt, Source: x.Source, InUse: x.InUse})
				}
			}
			out = append(out, e)
		}
		return out, nil
	})
}

type expiryFunc func(context.Context) ([]ops.Expiry, error)

func (f expiryFunc) Expiries(ctx context.Context) ([]ops.Expiry, error) { return f(ctx) }
