package relay

import (
	"bytes"
	"encoding/json"

	"github.com/emersion/go-smtp"
)

// bodyFault is why a submitted message is refused: the same verdict, and
// the same reason text, over SMTP and HTTP.
type bodyFault struct {
	smtp *smtp.SMTPError // the SMTP reply; its Message is the reason text
	code string          // the HTTP API's error code; the status is 400
	fix  string          // what to do, after the reason in the HTTP message
}

// httpMessage is the HTTP error message: the SMTP reason text, then what
// to do.
func (f *bodyFault) httpMessage() string { return f.smtp.Message + ". " + f.fix }

var (
	faultNUL = &bodyFault{errSMTPNULBytes, "nul_in_body",
		"Encode binary content as MIME parts (base64)."}
	faultBareCR = &bodyFault{errSMTPBareCR, "bare_cr",
		"End every line with CRLF, or every line with LF; a CR alone is refused."}
	faultBareLF = &bodyFault{errSMTPBareLF, "bare_lf",
		"The message uses CRLF, so every line must end with CRLF; or end every line with LF."}
	faultLongLine = &bodyFault{errSMTPLineTooLong, "line_too_long",
		"Wrap long lines, or encode the content as quoted-printable or base64."}
	faultBadHeader = &bodyFault{errSMTPBadHeader, "not_a_message",
		"Send a raw RFC 5322 message: header lines such as \"Subject: hello\", an empty line, then the body."}
	faultJSON = &bodyFault{errSMTPJSON, "not_a_message",
		"Send the raw RFC 5322 message as the body: header lines such as \"Subject: hello\", an empty line, then the body; the envelope goes in the query string."}
)

// checkMessage is the one validator of both ingresses. A message is
// refused when it holds a NUL byte, a CR or LF other than in CRLF, a line
// longer than maxLine bytes with its CRLF (Exchange Online refuses those
// after acceptance, which would dead-letter mail already acknowledged), or
// when it does not start with a well-formed header section: a line that is
// neither a "Name: value" field nor the continuation of one is how headers
// are injected or a body is mistaken for headers.
func checkMessage(body []byte, maxLine int) *bodyFault {
	if bytes.IndexByte(body, 0) >= 0 {
		return faultNUL
	}
	start := 0
	for i := 0; i < len(body); i++ {
		switch body[i] {
		case '\n':
			if i == 0 || body[i-1] != '\r' {
				return faultBareLF
			}
			if i+1-start > maxLine {
				return faultLongLine
			}
			start = i + 1
		case '\r':
			if i+1 == len(body) || body[i+1] != '\n' {
				return faultBareCR
			}
		}
	}
	if len(body)-start > maxLine {
		return faultLongLine
	}
	if isJSON(body) {
		return faultJSON
	}
	if !hasHeaderSection(body) {
		return faultBadHeader
	}
	return nil
}

// isJSON reports whether the message is a JSON object or array: sent by
// mistake, a line such as {"a":1} reads as a header field named {"a" and
// the message would go out empty.
func isJSON(body []byte) bool {
	return len(body) > 0 && (body[0] == '{' || body[0] == '[') && json.Valid(body)
}

// hasHeaderSection reports whether a CRLF message starts with a header
// section (RFC 5322 section 2.2): at least one line, up to the first empty
// line or the end, each either a field "Name: value" whose name is
// printable ASCII without spaces, or a continuation starting with a space
// or tab after a field.
func hasHeaderSection(msg []byte) bool {
	fields := 0
	rest := msg
	for len(rest) > 0 {
		var line []byte
		line, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			if fields == 0 {
				return false
			}
			continue
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return false
		}
		for _, c := range line[:colon] {
			if c <= ' ' || c > '~' {
				return false
			}
		}
		fields++
	}
	return fields > 0
}
