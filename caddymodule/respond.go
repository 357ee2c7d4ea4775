package caddymodule

import (
	"net/http"
	"strconv"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// contentType is the media type of every MoH request and answer.
const contentType = "application/octet-stream"

// statusOf maps a DSError code to its HTTP status (docs/protocol.md §3),
// and 0, the code of a success, to 200. This table is the only place where
// codes become statuses.
func statusOf(c moh.Code) int {
	switch c {
	case 0:
		return http.StatusOK
	case moh.CodeMalformed, moh.CodeWrongRequestType, moh.CodeUnsupportedVersion, moh.CodeInvalidMLS,
		moh.CodeContentMismatch:
		return http.StatusBadRequest
	case moh.CodeBadSignature, moh.CodeUnknownKey, moh.CodeStaleTimestamp, moh.CodeTokenRequired,
		moh.CodeCertRequired, moh.CodeBadCertificate:
		return http.StatusUnauthorized
	case moh.CodeForbidden:
		return http.StatusForbidden
	case moh.CodeNotFound:
		return http.StatusNotFound
	case moh.CodeMethodNotAllowed:
		return http.StatusMethodNotAllowed
	case moh.CodeBodyTimeout:
		return http.StatusRequestTimeout
	case moh.CodeStaleEpoch, moh.CodeCommitConflict, moh.CodeReplay, moh.CodeInProgress, moh.CodeGroupExists:
		return http.StatusConflict
	case moh.CodeQuotaExceeded, moh.CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case moh.CodeUnsupportedMedia:
		return http.StatusUnsupportedMediaType
	case moh.CodeRecipientMismatch:
		return http.StatusMisdirectedRequest
	case moh.CodeTooEarly:
		return http.StatusTooEarly
	case moh.CodeRateLimited:
		return http.StatusTooManyRequests
	case moh.CodeNotImplemented:
		return http.StatusNotImplemented
	default:
		return http.StatusServiceUnavailable
	}
}

// setAnswerHeaders sets the Content-Type and Cache-Control every MoH
// answer carries. Each answer gets values of its own: Caddy's header
// handler rewrites an answer's header values in place (a deferred
// replace), which on package-level values would change every later
// answer, and race with them. One allocation holds both.
func setAnswerHeaders(h http.Header) {
	v := []string{contentType, "no-store"}
	h["Content-Type"] = v[0:1:1]
	h["Cache-Control"] = v[1:2:2]
}

// writeAnswer writes an encoded DSResponse with status and the headers
// every MoH answer carries.
func writeAnswer(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	setAnswerHeaders(h)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body) //nolint:errcheck // the client went away; nothing to do
}
