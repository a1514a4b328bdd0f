package relay

import (
	"fmt"
	"time"

	"github.com/emersion/go-smtp"

	"holdfast/queue"
)

// The replies of SMTP ingress. Basic codes are from RFC 5321 section 4.2.3,
// enhanced codes from RFC 3463 and the IANA "SMTP Enhanced Status Codes"
// registry unless noted. Session methods return these values unwrapped:
// go-smtp finds them by type assertion and answers 451 4.0.0 for anything
// else.
var (
	// errSMTPShuttingDown: 421 service closing (RFC 5321), X.3.2 system
	// not accepting network messages.
	errSMTPShuttingDown = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Service shutting down"}

	// errSMTPTooManyConnections: 421 service not available (RFC 5321),
	// X.7.0 other security or policy status.
	errSMTPTooManyConnections = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many connections, try again later"}
	// errSMTPTooManyAppConnections: the same, to the AUTH of an
	// application that holds smtp.max_connections_per_app sessions; the
	// connection is closed after it.
	errSMTPTooManyAppConnections = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many connections for this application, try again later"}
	// errSMTPEvicted: the same, to an unauthenticated connection closed to
	// make room for a new one.
	errSMTPEvicted = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many connections, unauthenticated sessions are closed first"}

	// errSMTPTooManyErrors: the same, to a connection that got
	// smtp.max_errors permanent refusals with no message queued between.
	errSMTPTooManyErrors = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many errors; closing the connection"}

	// errSMTPLineStuck: the session's last reply after a message line
	// past smtp.max_line_length, which go-smtp reads no further.
	errSMTPLineStuck = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 5, 0},
		Message: "The rest of the message with a line too long was not read; closing the connection, send the next message on a new one"}

	// errSMTPAuthRequired: 530 authentication required (RFC 4954 section 6).
	errSMTPAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}

	// errSMTPAuthFailed: 535 authentication credentials invalid (RFC 4954
	// section 6).
	errSMTPAuthFailed = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}

	// errSMTPAuthTemporary: 454 temporary authentication failure (RFC 4954
	// section 6), X.7.0, when the password could not be checked now (every
	// bcrypt worker busy), in RFC 4954's own words. A client that failed
	// too often gets the same code from authThrottled.
	errSMTPAuthTemporary = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Temporary authentication failure, try again later"}

	// errSMTPAuthMalformed: 501 syntax error in a SASL response (RFC 4954
	// section 4), X.5.2 syntax error.
	errSMTPAuthMalformed = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "Malformed authentication response"}

	// errSMTPSenderNotAllowed: 550 with X.7.60, the reply Exchange Online
	// gives when a client may not send as an address (SendAs).
	errSMTPSenderNotAllowed = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 60}, Message: "Client does not have permissions to send as this sender"}

	// errSMTPBadSender: 501 syntax error in parameters (RFC 5321), X.1.7
	// bad sender's mailbox address syntax.
	errSMTPBadSender = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 7}, Message: "Bad sender address syntax"}

	// errSMTPBadRecipient: 501 syntax error in parameters (RFC 5321), X.1.3
	// bad destination mailbox address syntax.
	errSMTPBadRecipient = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "Bad recipient address syntax"}

	// errSMTPNeedsUTF8: 553 mailbox name not allowed, X.6.7 non-ASCII
	// addresses not permitted (RFC 6531): a UTF-8 address needs the
	// SMTPUTF8 parameter on MAIL.
	errSMTPNeedsUTF8 = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 6, 7}, Message: "Non-ASCII addresses require SMTPUTF8"}

	// errSMTPTooManyRecipients: 452 too many recipients (RFC 5321 section
	// 4.5.3.1.10), X.5.3 too many recipients.
	errSMTPTooManyRecipients = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "Too many recipients"}

	// errSMTPMessageTooBig: 552 exceeded storage allocation (RFC 1870),
	// X.3.4 message too big for system.
	errSMTPMessageTooBig = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Message size exceeds fixed maximum message size"}

	// errSMTPLineTooLong: 500 line too long (RFC 5321 section 4.5.3.1),
	// X.5.2 syntax error.
	errSMTPLineTooLong = &smtp.SMTPError{Code: 500, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "Line too long"}

	// errSMTPBareLF and errSMTPBareCR refuse a line break that is not CRLF
	// (RFC 5321 section 2.3.8, RFC 5322 section 2.3): SMTP smuggling hides
	// a second message behind one. X.6.11 is Exchange Online's code for the
	// same refusal.
	errSMTPBareLF = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 11}, Message: "Bare LF is not allowed; use CRLF"}
	errSMTPBareCR = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 11}, Message: "Bare CR is not allowed; use CRLF"}

	// errSMTPNULBytes: 550, X.6.0 other or undefined media error; RFC 5322
	// section 3.5 has no NUL in message text.
	errSMTPNULBytes = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "NUL bytes are not allowed in messages"}

	// errSMTPBadHeader: 550, X.6.0 other or undefined media error: the
	// message does not start with a header section (RFC 5322 section 2.2).
	errSMTPBadHeader = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Malformed header section"}

	// errSMTPJSON: 550, X.6.0 other or undefined media error: the message
	// is a JSON document, not an RFC 5322 message.
	errSMTPJSON = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "The message is JSON, not an RFC 5322 message"}

	// errSMTPInsufficientStorage: 452 insufficient system storage (RFC
	// 5321), X.3.1 mail system full: the memory budget for messages in
	// flight has no room for this one now; the client retries later.
	errSMTPInsufficientStorage = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Insufficient system storage"}

	// errSMTPRouteFull: 452 and X.3.1 as errSMTPInsufficientStorage: the
	// sender's mailbox (the message's route) already has
	// queue.max_messages_per_route messages waiting for delivery.
	errSMTPRouteFull = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Too many messages from this sender are waiting for delivery, try again later"}

	// errSMTPStoreFailed: 451 local error in processing (RFC 5321), X.3.0
	// other mail system status. The queue could not store the message.
	errSMTPStoreFailed = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Temporary failure storing the message, try again later"}

	// errSMTPReadFailed: 451 local error in processing (RFC 5321), X.4.2
	// bad connection. The message could not be read to its end.
	errSMTPReadFailed = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Error reading the message"}

	// errSMTPDataTimeout: as errSMTPReadFailed, for a message that
	// stopped arriving until the read timeout.
	errSMTPDataTimeout = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Timed out waiting for the message data; nothing was queued"}

	// errSMTPChunkCut: as errSMTPReadFailed, for a connection that ended
	// inside a BDAT chunk (go-smtp hands over the bytes that came as if
	// they were the whole chunk).
	errSMTPChunkCut = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "The connection ended inside a BDAT chunk; nothing was queued"}

	// errSMTPNestedMail: 503 bad sequence of commands (RFC 5321 section
	// 4.1.1.2: MAIL inside a transaction). The transaction goes on; RSET
	// ends it.
	errSMTPNestedMail = &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "Nested MAIL command: a transaction is open; send RSET first"}
)

// smtpQueued is the reply to a stored message: 250 requested action
// completed (RFC 5321), X.0.0 other undefined status, with the queue id.
func smtpQueued(id string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Queued as " + id}
}

// authThrottled is the 454 for a client the failed-authentication count
// blocks: it says for how long and how an operator lifts the block. A
// blocked user name is not echoed: clients sometimes put the password
// there.
func authThrottled(b *queue.Block) *smtp.SMTPError {
	what, lift := "for this user name", "holdfast creds unblock --user NAME"
	if b.Kind == "ip" {
		what, lift = "from this address", "holdfast creds unblock --ip "+b.Name
	}
	return &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: fmt.Sprintf("Too many failed authentications %s; try again in %s, or have an operator run: %s",
			what, max(b.Until.Round(time.Second), time.Second), lift)}
}
