package sim

import (
	"bytes"
	"io"
	"log"
	"net/mail"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

func (s *Sim) newSMTPServer() *smtp.Server {
	srv := smtp.NewServer(smtpBackend{s})
	srv.Domain = smtpHost
	srv.MaxMessageBytes = maxMessageBytes
	srv.MaxRecipients = 500
	srv.MaxLineLength = 4000
	srv.ReadTimeout = 10 * time.Minute
	srv.WriteTimeout = time.Minute
	// Only TLS connections reach go-smtp (see smtpFront), but it cannot
	// tell, since they are wrapped.
	srv.AllowInsecureAuth = true
	srv.EnableSMTPUTF8 = true
	srv.EnableBINARYMIME = true
	srv.EnableDSN = true
	srv.ErrorLog = log.New(io.Discard, "", 0)
	return srv
}

type smtpBackend struct{ s *Sim }

func (b smtpBackend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	rc, _ := c.Conn().(*replyConn)
	return &smtpSession{s: b.s, rc: rc}, nil
}

// smtpSession is one SMTP session after STARTTLS.
type smtpSession struct {
	s  *Sim
	rc *replyConn

	// mu guards the fields below: go-smtp runs Data for BDAT on a
	// goroutine of its own.
	mu      sync.Mutex
	mailbox *mailbox
	claims  *accessClaims
	slot    string // the key in s.active this session holds, once authenticated
	from    string
	to      []string
	mailAt  time.Time // when MAIL FROM came
}

var (
	_ smtp.Session     = (*smtpSession)(nil)
	_ smtp.AuthSession = (*smtpSession)(nil)
)

func (ss *smtpSession) AuthMechanisms() []string { return []string{"LOGIN", "XOAUTH2"} }

func (ss *smtpSession) Auth(mech string) (sasl.Server, error) {
	switch mech {
	case "XOAUTH2":
		return &xoauth2Server{ss: ss}, nil
	case sasl.Login:
		return &basicServer{prompts: []string{"Username:", "Password:"}}, nil
	case sasl.Plain:
		return &basicServer{prompts: []string{""}}, nil
	}
	return nil, errUnknownMech
}

// basicServer reads a PLAIN or LOGIN exchange to its end, then refuses it:
// Exchange Online has basic authentication off.
type basicServer struct {
	prompts []string
	step    int
}

func (b *basicServer) Next(resp []byte) ([]byte, bool, error) {
	if resp == nil && b.step == 0 && len(b.prompts) > 0 {
		b.step++
		return []byte(b.prompts[0]), false, nil
	}
	if b.step > 0 && b.step < len(b.prompts) {
		b.step++
		return []byte(b.prompts[b.step-1]), false, nil
	}
	return nil, false, errBasicDisabled
}

// xoauth2Server checks "user=MAILBOX\x01auth=Bearer TOKEN\x01\x01". Like
// Exchange, it answers a bad token with a direct 535 and no 334 challenge.
type xoauth2Server struct {
	ss      *smtpSession
	started bool
}

func (x *xoauth2Server) Next(resp []byte) ([]byte, bool, error) {
	if resp == nil && !x.started {
		x.started = true
		return []byte{}, false, nil
	}
	x.started = true
	if d := x.ss.s.faults().AuthDelay; d > 0 {
		time.Sleep(d)
	}
	if err := x.ss.authenticate(resp); err != nil {
		return nil, false, err
	}
	return nil, true, nil
}

// authenticate checks one XOAUTH2 response and, on success, takes one of
// the mailbox's connection slots.
func (ss *smtpSession) authenticate(resp []byte) *smtp.SMTPError {
	var user, token string
	hasUser := false
	for part := range strings.SplitSeq(string(resp), "\x01") {
		switch {
		case strings.HasPrefix(part, "user="):
			user, hasUser = part[len("user="):], true
		case strings.HasPrefix(part, "auth="):
			auth := part[len("auth="):]
			if scheme, t, ok := strings.Cut(auth, " "); ok && strings.EqualFold(scheme, "Bearer") {
				token = strings.TrimSpace(t)
			}
		}
	}
	s := ss.s
	claims, reason := s.parseAccessToken(token)

	s.mu.Lock()
	defer s.mu.Unlock()
	counted := ""
	if claims != nil {
		counted = claims.AppID
		if a := s.findApp(claims.Tid, claims.AppID); a != nil {
			counted = a.clientID
		}
	}
	cc := s.client(counted)
	cc.SMTPAuthAttempts++
	fail := func(e *smtp.SMTPError) *smtp.SMTPError {
		cc.SMTPAuthFailures++
		return e
	}

	if !hasUser || !validAddress(user) {
		return fail(errBadUser)
	}
	if claims == nil || reason != "" || (claims.Aud != audOutlook && claims.Aud != audOutlook365) {
		return fail(errAuthFailed)
	}
	m := s.mailboxes[strings.ToLower(user)]
	if m == nil || !strings.EqualFold(m.tenant.id, claims.Tid) {
		return fail(errAuthFailed)
	}
	if claims.delegated() {
		if !strings.EqualFold(claims.UPN, m.address) || !hasScope(claims.Scp, "SMTP.Send") {
			return fail(errAuthFailed)
		}
	} else {
		a := s.findApp(claims.Tid, claims.AppID)
		if a == nil || !a.maySendAs(m) || claims.Rh != strconv.Itoa(a.epoch) {
			return fail(errAuthFailed)
		}
	}
	if m.smtpDisabled {
		return fail(errAuthDisabled)
	}
	if s.expiringSoon(claims.Exp) {
		return fail(errTokenExpiringSoon)
	}
	key := strings.ToLower(m.address)
	mc := s.mailboxCounters(key)
	mc.MaxConcurrentSMTP = max(mc.MaxConcurrentSMTP, s.active[key]+1)
	if s.active[key] >= maxSMTPPerMailbox {
		return fail(errConcurrent)
	}
	s.active[key]++

	ss.mu.Lock()
	ss.mailbox, ss.claims, ss.slot = m, claims, key
	ss.mu.Unlock()
	return nil
}

func hasScope(scp, want string) bool {
	for sc := range strings.FieldsSeq(scp) {
		if strings.EqualFold(sc, want) {
			return true
		}
	}
	return false
}

func validAddress(a string) bool {
	p, err := mail.ParseAddress(a)
	return err == nil && p.Address == a && strings.Contains(a, "@")
}

func (ss *smtpSession) Mail(from string, _ *smtp.MailOptions) error {
	// s.mu before ss.mu, as Auth takes them: the faults are read first.
	refuse := ss.s.faults().SMTPMailRefusal == "sender_not_permitted"
	ss.mu.Lock()
	if ss.mailbox == nil {
		ss.mu.Unlock()
		return errNotAuthed
	}
	claims := ss.claims
	if !refuse {
		ss.from, ss.to, ss.mailAt = from, nil, time.Now()
	}
	ss.mu.Unlock()
	if refuse {
		ss.s.countRefusal(claims)
		return errNotPermitted
	}
	return nil
}

func (ss *smtpSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.mailbox == nil {
		return errNotAuthed
	}
	local, _, _ := strings.Cut(to, "@")
	if strings.HasPrefix(strings.ToLower(local), "unknown") {
		return errRecipNotFound
	}
	ss.to = append(ss.to, to)
	return nil
}

// Data accepts a message whose envelope sender, and From header if any,
// is the authenticated mailbox or one it has SendAs on. Exchange checks
// SendAs at the end of DATA.
func (ss *smtpSession) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	ss.mu.Lock()
	m, claims, from, to := ss.mailbox, ss.claims, ss.from, append([]string(nil), ss.to...)
	ss.mu.Unlock()
	if m == nil {
		return errNotAuthed
	}
	if f := ss.s.faults(); stallsData(f, m.address) {
		ss.stall()
		return errTransient
	}
	if ss.s.faults().SMTPTransient == "451" {
		return errTransient
	}
	refusal := ss.s.faults().SMTPDataRefusal
	if box := ss.s.faults().SMTPDataRefusalMailbox; box != "" && !strings.EqualFold(box, m.address) {
		refusal = ""
	}
	switch refusal {
	case "thread_limit":
		ss.s.countRefusal(claims)
		return errThreadLimit
	case "sender_throttled":
		ss.s.countRefusal(claims)
		return errSenderBlocked
	}
	if !m.sendsAs(from) {
		return errSendAsDenied(m.address, from)
	}
	msgID := ""
	if msg, err := mail.ReadMessage(bytes.NewReader(data)); err == nil {
		if hf := msg.Header.Get("From"); hf != "" {
			if addrs, err := mail.ParseAddressList(hf); err == nil && len(addrs) == 1 && !m.sendsAs(addrs[0].Address) {
				return errSendAsDenied(m.address, addrs[0].Address)
			}
		}
		msgID = strings.TrimSpace(msg.Header.Get("Message-Id"))
	}
	if msgID == "" {
		msgID = "<" + newGUID() + "@" + smtpHost + ">"
	}
	if !ss.s.takeQuota(m, len(to)) {
		return errQuotaExceeded
	}
	ss.s.record(Received{
		Mailbox:       m.address,
		From:          from,
		To:            to,
		Data:          data,
		MessageID:     msgID,
		Via:           "smtp",
		TokenClientID: claims.AppID,
		Delegated:     claims.delegated(),
		Started:       ss.mailAt,
	})
	if ss.rc != nil {
		ss.rc.setDataReply("250 2.0.0 OK " + msgID + " [Hostname=" + smtpHost + "]")
	}
	return nil
}

// stall leaves the message unanswered: it reads and discards what the
// client sends until the client hangs up, stallTimeout passes or the
// server closes the connection. go-smtp does not read the connection
// while it waits for Data to return.
func (ss *smtpSession) stall() {
	if ss.rc == nil {
		return
	}
	_ = ss.rc.flush() // the replies before the stalled one
	_ = ss.rc.Conn.SetReadDeadline(time.Now().Add(stallTimeout))
	_, _ = io.Copy(io.Discard, ss.rc.Conn)
	_ = ss.rc.Conn.Close()
}

// stallsData says whether fault f stalls the messages of mailbox: all of
// them with SMTPStall "data", those of SMTPStallMailbox alone when it is
// set, with or without SMTPStall.
func stallsData(f Fault, mailbox string) bool {
	if f.SMTPStallMailbox != "" {
		return strings.EqualFold(f.SMTPStallMailbox, mailbox)
	}
	return f.SMTPStall == "data"
}

func (ss *smtpSession) Reset() {
	ss.mu.Lock()
	ss.from, ss.to = "", nil
	ss.mu.Unlock()
}

// Logout frees the session's connection slot.
func (ss *smtpSession) Logout() error {
	ss.mu.Lock()
	slot := ss.slot
	ss.slot = ""
	ss.mu.Unlock()
	if slot != "" {
		ss.s.mu.Lock()
		if ss.s.active[slot]--; ss.s.active[slot] <= 0 {
			delete(ss.s.active, slot)
		}
		ss.s.mu.Unlock()
	}
	return nil
}
