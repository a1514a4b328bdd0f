package sim

import (
	"strings"
	"time"
)

func (s *Sim) findApp(tenantID, clientID string) *app {
	t := s.tenants[strings.ToLower(tenantID)]
	if t == nil {
		return nil
	}
	return t.apps[strings.ToLower(clientID)]
}

// withApp runs change on the app under the lock and reports whether the
// app exists and change succeeded.
func (s *Sim) withApp(tenant, clientID string, change func(a *app) bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.findApp(tenant, clientID)
	return a != nil && change(a)
}

// ExpireSecret makes every client secret of the app expire now: from then
// on they get AADSTS7000222.
func (s *Sim) ExpireSecret(tenant, clientID string) { s.expireSecret(tenant, clientID) }

func (s *Sim) expireSecret(tenant, clientID string) bool {
	return s.withApp(tenant, clientID, func(a *app) bool {
		now := s.now()
		for i := range a.secrets {
			if a.secrets[i].ExpiresAt.IsZero() || a.secrets[i].ExpiresAt.After(now) {
				a.secrets[i].ExpiresAt = now
			}
		}
		return true
	})
}

// RotateSecret replaces the app's secrets with one new secret, valid for
// 180 days.
func (s *Sim) RotateSecret(tenant, clientID, newValue string) {
	s.rotateSecret(tenant, clientID, newValue)
}

func (s *Sim) rotateSecret(tenant, clientID, newValue string) bool {
	return s.withApp(tenant, clientID, func(a *app) bool {
		now := s.now()
		a.secrets = []secret{{Secret: Secret{
			Value:       newValue,
			ExpiresAt:   now.Add(rotatedSecretLifetime),
			KeyID:       newGUID(),
			DisplayName: "rotated " + now.UTC().Format(time.DateOnly),
		}, start: now}}
		return true
	})
}

// SetSecretEnd moves the end date (endDateTime) of one of the app's
// secrets, found by its key id or its value; a zero end never expires. It
// reports whether the app and the secret were found.
func (s *Sim) SetSecretEnd(tenant, clientID, keyIDOrValue string, end time.Time) bool {
	return s.withApp(tenant, clientID, func(a *app) bool {
		for i := range a.secrets {
			k := &a.secrets[i]
			if strings.EqualFold(k.KeyID, keyIDOrValue) || k.Value == keyIDOrValue {
				k.ExpiresAt = end
				return true
			}
		}
		return false
	})
}

// AddSecret adds a secret to the app beside the ones it has, as the
// portal's "New client secret" does, and returns its key id. An empty
// KeyID gets a generated one. It returns "" for an unknown app.
func (s *Sim) AddSecret(tenant, clientID string, sec Secret) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.findApp(tenant, clientID)
	if a == nil || sec.Value == "" {
		return ""
	}
	if sec.KeyID == "" {
		sec.KeyID = newGUID()
	}
	a.secrets = append(a.secrets, secret{Secret: sec, start: s.now()})
	return sec.KeyID
}

// SetGraphRoles replaces the app's Graph application permissions and
// whether it owns itself (see App.GraphRoles). Tokens issued before keep
// the roles they carry, as Entra's do. It reports whether the app exists.
func (s *Sim) SetGraphRoles(tenant, clientID string, roles []string, ownsItself bool) bool {
	return s.withApp(tenant, clientID, func(a *app) bool {
		a.graphRoles = append([]string{}, roles...)
		a.ownsItself = ownsItself
		return true
	})
}

// IssueRefreshToken creates a delegated grant of mailbox to the app, with
// the scopes https://outlook.office.com/SMTP.Send and offline_access, and
// returns its first refresh token. It returns "" if the tenant, app or
// mailbox is unknown.
func (s *Sim) IssueRefreshToken(tenant, clientID, mailbox string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.findApp(tenant, clientID)
	m := s.mailboxes[strings.ToLower(mailbox)]
	if a == nil || m == nil || m.tenant != a.tenant {
		return ""
	}
	now := s.now()
	g := &grant{
		tenant:   a.tenant.id,
		clientID: a.clientID,
		mailbox:  m.address,
		scopes:   []string{audOutlook + "/SMTP.Send", "offline_access"},
		issued:   now,
		lastUsed: now,
	}
	rt := newRefreshToken()
	s.grants[rt] = g
	return rt
}

// RevokeGrant revokes the grant that refreshToken belongs to, with every
// refresh token issued under it: they get AADSTS50173.
func (s *Sim) RevokeGrant(refreshToken string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g := s.grants[refreshToken]; g != nil && !g.revoked {
		g.revoked, g.revokedAt = true, s.now()
	}
}

// RevokeMailboxGrants revokes every grant of mailbox, as "revoke
// sessions" does. Grants issued later are valid.
func (s *Sim) RevokeMailboxGrants(mailbox string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for _, g := range s.grants {
		if strings.EqualFold(g.mailbox, mailbox) && !g.revoked {
			g.revoked, g.revokedAt = true, now
		}
	}
}

// RevokeAppTokens revokes every app-only access token the app holds, as
// an administrator's revocation or a tenant-wide token policy change does:
// SMTP AUTH with one of them gets 535 5.7.3. Tokens issued afterwards
// work. It reports whether the app exists.
func (s *Sim) RevokeAppTokens(tenant, clientID string) bool {
	return s.withApp(tenant, clientID, func(a *app) bool {
		a.epoch++
		return true
	})
}

// DisableApp disables the app's service principal in Entra, or enables
// it again. While it is disabled, every token request of the app gets
// 400 unauthorized_client AADSTS7000112; tokens issued before stay valid
// until they expire (RevokeAppTokens ends them). It reports whether the
// app exists.
func (s *Sim) DisableApp(tenant, clientID string, disabled bool) bool {
	return s.withApp(tenant, clientID, func(a *app) bool {
		a.disabled = disabled
		return true
	})
}

// DenySendAsApp takes the app's SMTP.SendAsApp permission away, or gives
// it back. While it is denied, SMTP AUTH with any of the app's app-only
// tokens, new ones included, gets 535 5.7.3, as Exchange answers an app
// whose permission or service principal is missing. It reports whether
// the app exists.
func (s *Sim) DenySendAsApp(tenant, clientID string, denied bool) bool {
	return s.withApp(tenant, clientID, func(a *app) bool {
		a.denied = denied
		return true
	})
}

// SetSendAs lets the app's app-only tokens send as mailbox, or stops
// them, as a tenant's administrator adds a mailbox to the app's
// application access policy or takes it out: refused, Graph answers
// 403 ErrorAccessDenied and SMTP AUTH 535 5.7.3. A mailbox taken out is
// refused also to an app that may send as every mailbox ("*"). It
// reports whether the app exists.
func (s *Sim) SetSendAs(tenant, clientID, mailbox string, allowed bool) bool {
	return s.withApp(tenant, clientID, func(a *app) bool {
		addr := strings.ToLower(mailbox)
		if allowed {
			a.sendAs[addr] = true
			delete(a.leftOut, addr)
		} else {
			delete(a.sendAs, addr)
			if a.leftOut == nil {
				a.leftOut = map[string]bool{}
			}
			a.leftOut[addr] = true
		}
		return true
	})
}

// DisableSMTPAuth turns SMTP AUTH off or on for a mailbox.
func (s *Sim) DisableSMTPAuth(mailbox string, disabled bool) { s.disableSMTPAuth(mailbox, disabled) }

func (s *Sim) disableSMTPAuth(mailbox string, disabled bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.mailboxes[strings.ToLower(mailbox)]
	if m == nil {
		return false
	}
	m.smtpDisabled = disabled
	return true
}

// SetFault replaces the injected faults.
func (s *Sim) SetFault(f Fault) {
	s.mu.Lock()
	s.fault = f
	front := s.smtp
	s.mu.Unlock()
	if front != nil {
		front.setDown(f.SMTPDown)
	}
}

func (s *Sim) faults() Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fault
}

// Reset clears received messages, counters, faults and the recipients
// each mailbox has sent within its quota's window.
func (s *Sim) Reset() {
	s.mu.Lock()
	s.received = nil
	for _, m := range s.mailboxes {
		m.sent, m.used, m.unordered = nil, 0, false
	}
	s.clients = map[string]*ClientCounters{}
	s.mcount = map[string]*MailboxCounters{}
	for m, n := range s.active {
		// Sessions still open stay counted, so that the limit holds.
		s.mcount[m] = &MailboxCounters{MaxConcurrentSMTP: n}
	}
	s.mu.Unlock()
	s.SetFault(Fault{})
}

// ReceivedCount is how many messages were accepted: len(Received())
// without copying them.
func (s *Sim) ReceivedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.received)
}

// Received returns a copy of the accepted messages, oldest first.
func (s *Sim) Received() []Received {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Received, len(s.received))
	for i, r := range s.received {
		r.To = append([]string(nil), r.To...)
		r.Data = append([]byte(nil), r.Data...)
		out[i] = r
	}
	return out
}

// Counters returns a copy of the counters.
func (s *Sim) Counters() Counters {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := Counters{Clients: map[string]ClientCounters{}, Mailboxes: map[string]MailboxCounters{}}
	for k, v := range s.clients {
		c.Clients[k] = *v
	}
	for k, v := range s.mcount {
		c.Mailboxes[k] = *v
	}
	return c
}

// countRefusal counts a refusal by Fault.SMTPMailRefusal or
// Fault.SMTPDataRefusal for the token's client, spelt as registered, as
// Auth counts it.
func (s *Sim) countRefusal(claims *accessClaims) {
	s.countFault(claims, func(c *ClientCounters) { c.SMTPRefusedByFault++ })
}

// countFault applies count to the counters of the token's client, spelt
// as registered.
func (s *Sim) countFault(claims *accessClaims, count func(*ClientCounters)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := claims.AppID
	if a := s.findApp(claims.Tid, claims.AppID); a != nil {
		id = a.clientID
	}
	count(s.client(id))
}

// client returns the counters of clientID; s.mu must be held.
func (s *Sim) client(clientID string) *ClientCounters {
	c := s.clients[clientID]
	if c == nil {
		c = &ClientCounters{}
		s.clients[clientID] = c
	}
	return c
}

// mailboxCounters returns the counters of a mailbox; s.mu must be held.
func (s *Sim) mailboxCounters(address string) *MailboxCounters {
	k := strings.ToLower(address)
	c := s.mcount[k]
	if c == nil {
		c = &MailboxCounters{}
		s.mcount[k] = c
	}
	return c
}

func (s *Sim) record(r Received) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.received = append(s.received, r)
}

// maySendAs reports whether app-only tokens of a may send as m.
func (a *app) maySendAs(m *mailbox) bool {
	addr := strings.ToLower(m.address)
	return !a.denied && m.tenant == a.tenant && !a.leftOut[addr] && (a.sendAll || a.sendAs[addr])
}

// sendsAs reports whether the mailbox may send as addr: itself, or a
// sender it has SendAs on.
func (m *mailbox) sendsAs(addr string) bool {
	addr = strings.ToLower(addr)
	if addr == strings.ToLower(m.address) {
		return true
	}
	for _, a := range m.sendAs {
		if a == addr || strings.HasPrefix(a, "@") && strings.HasSuffix(addr, a) {
			return true
		}
	}
	return false
}
