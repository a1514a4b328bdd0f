// Package sim simulates the parts of Microsoft Entra ID and Exchange
// Online that Holdfast talks to, on loopback, with the status codes and
// reply texts those services send (the same replies relay/o365's
// classification table is tested with). It is for local runs, demos and the
// tests of other packages; it owns no production code path.
//
// One Sim serves three listeners:
//
//   - HTTPS (AuthorityURL, GraphURL; one server, told apart by path):
//     POST /{tenant}/oauth2/v2.0/token (client_credentials with a client
//     secret in the form or a private_key_jwt assertion; refresh_token for
//     delegated grants, which rotates the refresh token), POST
//     /v1.0/users/{id|upn}/sendMail (the MIME form only), GET
//     /v1.0/users/{id|upn}/mailFolders/SentItems/messages filtered by
//     internetMessageId eq '…' (needs Mail.ReadBasic.All, Mail.Read.All
//     or delegated Mail.ReadBasic/Mail.Read; Sent Items hold every
//     message the mailbox sent since the last reset), and GET
//     /v1.0/applications(appId='…') with $select, which needs the role
//     Application.Read.All (or Application.ReadWrite.OwnedBy on an app
//     that owns itself) and answers 403 Authorization_RequestDenied
//     without it.
//   - SMTP submission (SMTPAddr): STARTTLS, then AUTH XOAUTH2 only. A
//     mailbox sends to at most Config.RecipientQuota (10,000) recipients
//     in a rolling 24 hours; the message that would go over gets 554 5.2.0
//     SubmissionQuotaExceededException.
//     Before STARTTLS the simulator answers as Exchange does; after it a
//     go-smtp server runs the session (see smtp.go).
//   - The admin API (AdminURL), plain HTTP and JSON.
//
// Access tokens are HS256 JWTs signed with a per-instance key: they are
// valid only at the Sim that issued them. A token's audience decides where
// it works: https://outlook.office365.com or https://outlook.office.com for
// SMTP, https://graph.microsoft.com for Graph. Revoking a grant or expiring
// a secret does not end access tokens already issued, as in Entra.
//
// # Admin API
//
// Every POST takes a JSON object, rejects unknown fields with 400, and
// answers 204 unless stated; an unknown tenant, app or mailbox gets 404.
// Errors are {"error": "text"}.
//
//	GET  /admin                    this list, in short
//	POST /admin/secrets/expire     {"tenant", "client_id"}             200 {"secrets"}: the app's secrets expire now (AADSTS7000222)
//	POST /admin/secrets/rotate     {"tenant", "client_id", "secret"}   200 {"secrets"}: one new secret, valid 180 days, replaces them
//	POST /admin/secrets/end        {"tenant", "client_id", "key_id" or "secret", "end_date_time"}
//	                               move one secret's end date (RFC 3339; "" never expires)
//	POST /admin/secrets/add        {"tenant", "client_id", "secret", "end_date_time", "display_name", "propagation",
//	                               "propagation_answer"} 200 {"key_id"}: one more secret beside the others;
//	                               with "propagation" ("20s") it is refused that long, as unknown
//	                               (AADSTS7000215) or, with "propagation_answer": "expired", as expired
//	                               (AADSTS7000222)
//	POST /admin/apps/graph-roles   {"tenant", "client_id", "roles", "owns_itself"} the app's Graph
//	                               permissions, for tokens issued from now on (see App.GraphRoles)
//	POST /admin/apps/disabled      {"tenant", "client_id", "disabled"} the app's service principal off or on:
//	                               token requests get AADSTS7000112; tokens issued before stay valid
//	POST /admin/apps/send-as       {"tenant", "client_id", "mailbox", "allowed"} the app's app-only tokens may
//	                               send as the mailbox, or not (Graph 403 ErrorAccessDenied, 535 5.7.3),
//	                               as an application access policy that takes the mailbox in or leaves it out
//	POST /admin/grants/issue       {"tenant", "client_id", "mailbox"}  200 {"refresh_token"}: a new delegated grant
//	POST /admin/grants/revoke      {"mailbox"} or {"refresh_token"}    revoke grants (AADSTS50173)
//	POST /admin/mailboxes/smtp-auth {"mailbox", "disabled"}            SMTP AUTH off or on (535 5.7.139)
//	POST /admin/tokens/expiring-margin {"margin": "10m"}  SMTP AUTH answers 501 5.5.127 for
//	                               tokens this close to expiry; "0s" turns it off
//	POST /admin/fault              Fault, e.g. {"token_throttle": "30s", "token_unavailable": true,
//	                               "smtp_transient": "421"|"451", "smtp_down": true,
//	                               "smtp_stall": "greeting"|"data",
//	                               "smtp_stall_mailbox": "a@b" (stall that mailbox's messages only),
//	                               "graph_throttle": "10s", "graph_throttle_mailbox": "a@b" (that mailbox only),
//	                               "graph_after_send": "500"|"504"|"hang",
//	                               "graph_fail": "500"|"503",
//	                               "graph_accepted_retry_after": "30s",
//	                               "smtp_mail_refusal": "sender_not_permitted" (550 5.7.60 to MAIL FROM),
//	                               "smtp_data_refusal": "thread_limit" (432 4.3.2 sender thread limit)
//	                               or "sender_throttled" (550 5.2.251 sender throttled),
//	                               "smtp_data_refusal_mailbox": "a@b" (that mailbox only)};
//	                               replaces the current faults, {} clears them
//	GET  /admin/fault              the current faults
//	GET  /admin/received           200 [Received…], data as text
//	GET  /admin/counters           200 Counters
//	POST /admin/reset              clear received messages, counters, faults and quotas
//
// # Choices where Microsoft's answer is not known first-hand
//
//   - A throttled token request (Fault.TokenThrottle) is a 429 with
//     Retry-After and an empty body.
//   - Fault.TokenUnavailable is a 503 with error temporarily_unavailable and
//     AADSTS90033.
//   - Client assertions: an unknown certificate, a bad signature or a
//     wrong aud is AADSTS700027; a time outside nbf/exp is AADSTS700024; iss
//     or sub not the client id is AADSTS700021. All are 401 invalid_client.
//   - A client-credentials scope without /.default is AADSTS1002012, a
//     .default scope of an unknown resource AADSTS500011 (invalid_resource),
//     a missing or malformed scope AADSTS70011; all 400.
//   - A sendMail request over 4 MB is 413 RequestEntityTooLarge.
//   - Fault.SMTPTransient "451" answers the end of DATA; "421" greets new
//     connections and closes them.
//   - Fault.SMTPStall is a server that hangs, so that the client times
//     out: "greeting" accepts new connections and never greets them;
//     "data" never answers the end of DATA and does not record the
//     message.
//   - Fault.GraphAfterSend records the message, as a send that went out,
//     and then answers 500 ErrorInternalServerError or 504, or hangs;
//     Fault.GraphFail answers 500 or 503 ServiceUnavailable without
//     recording it.
package sim
