package auth

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

const (
	xoUser  = "sales@contoso.com"
	xoToken = "eyJ0eXAiOiJKV1QiLCJub25jZSI6IkZha2UifQ.eyJhdWQiOiJodHRwczovL291dGxvb2sub2ZmaWNlMzY1LmNvbSJ9.c2ln"
	xoWant  = "user=" + xoUser + "\x01auth=Bearer " + xoToken + "\x01\x01"
)

// saslServerFunc adapts a function to sasl.Server.
type saslServerFunc func(response []byte) ([]byte, bool, error)

func (f saslServerFunc) Next(response []byte) ([]byte, bool, error) { return f(response) }

// xoServer is a go-smtp server whose XOAUTH2 step is scripted: step is
// called with each client response (the initial response first) and its
// number, and answers like sasl.Server.Next.
type xoServer struct {
	step func(n int, response []byte) ([]byte, bool, error)

	mu        sync.Mutex
	responses [][]byte
}

func (s *xoServer) NewSession(*smtp.Conn) (smtp.Session, error) { return &xoSession{srv: s}, nil }

type xoSession struct{ srv *xoServer }

func (*xoSession) Reset()                               {}
func (*xoSession) Logout() error                        { return nil }
func (*xoSession) Mail(string, *smtp.MailOptions) error { return nil }
func (*xoSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (*xoSession) Data(r io.Reader) error               { _, err := io.Copy(io.Discard, r); return err }
func (*xoSession) AuthMechanisms() []string             { return []string{XOAUTH2} }
func (s *xoSession) Auth(mech string) (sasl.Server, error) {
	if mech != XOAUTH2 {
		return nil, errors.New("unsupported mechanism")
	}
	n := 0
	return saslServerFunc(func(response []byte) ([]byte, bool, error) {
		s.srv.mu.Lock()
		s.srv.responses = append(s.srv.responses, bytes.Clone(response))
		s.srv.mu.Unlock()
		n++
		return s.srv.step(n, response)
	}), nil
}

func (s *xoServer) got() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.responses
}

// startXOServer runs s on a loopback port and returns a connected client.
func startXOServer(t *testing.T, s *xoServer) *smtp.Client {
	t.Helper()
	srv := smtp.NewServer(s)
	srv.Domain = "localhost"
	srv.AllowInsecureAuth = true
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	c, err := smtp.Dial(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Hello("relay.test"); err != nil {
		t.Fatal(err)
	}
	return c
}

var (
	exchange535 = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3},
		Message: "Authentication unsuccessful [SN4PR0501CA0123.namprd05.prod.outlook.com]"}
	google535 = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8},
		Message: "Username and Password not accepted. For more information, go to https://support.google.com/mail/?p=BadCredentials"}
	googleChallenge = []byte(`{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}`)
)

func TestXOAUTH2ExchangeStyleRejection(t *testing.T) {
	s := &xoServer{step: func(n int, _ []byte) ([]byte, bool, error) { return nil, false, exchange535 }}
	c := startXOServer(t, s)
	err := c.Auth(NewXOAUTH2Client(xoUser, xoToken))
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 535 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 3}) {
		t.Fatalf("Auth = %v, want 535 5.7.3", err)
	}
	got := s.got()
	if len(got) != 1 || string(got[0]) != xoWant {
		t.Fatalf("server received %q, want [%q]", got, xoWant)
	}
}

func TestXOAUTH2GoogleStyleRejection(t *testing.T) {
	s := &xoServer{step: func(n int, _ []byte) ([]byte, bool, error) {
		if n == 1 {
			return googleChallenge, false, nil
		}
		return nil, false, google535
	}}
	c := startXOServer(t, s)
	err := c.Auth(NewXOAUTH2Client(xoUser, xoToken))
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 535 {
		t.Fatalf("Auth = %v, want the 535 sent after the empty response", err)
	}
	got := s.got()
	if len(got) != 2 || string(got[0]) != xoWant || got[1] == nil || len(got[1]) != 0 {
		t.Fatalf("server received %q, want [%q, empty]", got, xoWant)
	}
}

func TestXOAUTH2SecondChallengeAborts(t *testing.T) {
	s := &xoServer{step: func(n int, _ []byte) ([]byte, bool, error) {
		if n <= 2 {
			return googleChallenge, false, nil
		}
		return nil, true, nil // a server that would accept anything after this
	}}
	c := startXOServer(t, s)
	err := c.Auth(NewXOAUTH2Client(xoUser, xoToken))
	if !errors.Is(err, ErrXOAUTH2Rejected) {
		t.Fatalf("Auth = %v, want ErrXOAUTH2Rejected", err)
	}
	if got := s.got(); len(got) != 2 {
		t.Fatalf("server received %d responses, want 2 (the abort is not a response)", len(got))
	}
}

func TestXOAUTH2Success(t *testing.T) {
	s := &xoServer{step: func(n int, _ []byte) ([]byte, bool, error) { return nil, true, nil }}
	c := startXOServer(t, s)
	if err := c.Auth(NewXOAUTH2Client(xoUser, xoToken)); err != nil {
		t.Fatalf("Auth = %v", err)
	}
	got := s.got()
	if len(got) != 1 || string(got[0]) != xoWant {
		t.Fatalf("server received %q, want [%q]", got, xoWant)
	}
	if err := c.Mail(xoUser, nil); err != nil {
		t.Fatalf("MAIL after AUTH: %v", err)
	}
}

func TestXOAUTH2ClientNeverReturnsNilNil(t *testing.T) {
	c := NewXOAUTH2Client(xoUser, xoToken)
	mech, ir, err := c.Start()
	if err != nil || mech != "XOAUTH2" || string(ir) != xoWant {
		t.Fatalf("Start = %q, %q, %v", mech, ir, err)
	}
	for i := range 3 {
		resp, err := c.Next(googleChallenge)
		if resp == nil && err == nil {
			t.Fatalf("Next #%d returned (nil, nil)", i+1)
		}
		if i == 0 && (resp == nil || len(resp) != 0 || err != nil) {
			t.Fatalf("first Next = %q, %v; want empty response", resp, err)
		}
		if i > 0 && err == nil {
			t.Fatalf("Next #%d = %q, nil; want an error", i+1, resp)
		}
	}
}

func TestXOAUTH2StartRejectsBadInput(t *testing.T) {
	for _, tt := range []struct{ user, token string }{
		{"", xoToken},
		{xoUser, ""},
		{"a\x01b@contoso.com", xoToken},
		{xoUser, "tok\r\nQUIT"},
	} {
		if _, _, err := NewXOAUTH2Client(tt.user, tt.token).Start(); err == nil {
			t.Errorf("Start(%q, %q) succeeded", tt.user, tt.token)
		}
	}
}
