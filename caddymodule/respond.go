package caddymodule

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// contentType is the media type of every MoH request and answer.
const contentType = "application/octet-stream"

// statusOf maps a DSError code to its HTTP status (docs/protocol.md §3).
// This table is the only place where codes become statuses.
func statusOf(c moh.Code) int {
	switch c {
	case moh.CodeMalformed, moh.CodeWrongRequestType, moh.CodeUnsupportedVersion:
		return http.StatusBadRequest
	case moh.CodeBadSignature, moh.CodeUnknownKey, moh.CodeStaleTimestamp, moh.CodeTokenRequired:
		return http.StatusUnauthorized
	case moh.CodeForbidden:
		return http.StatusForbidden
	case moh.CodeNotFound:
		return http.StatusNotFound
	case moh.CodeMethodNotAllowed:
		return http.StatusMethodNotAllowed
	case moh.CodeStaleEpoch, moh.CodeCommitConflict, moh.CodeReplay, moh.CodeInProgress:
		return http.StatusConflict
	case moh.CodeQuotaExceeded, moh.CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case moh.CodeUnsupportedMedia:
		return http.StatusUnsupportedMediaType
	case moh.CodeRecipientMismatch:
		return http.StatusMisdirectedRequest
	case moh.CodeRateLimited:
		return http.StatusTooManyRequests
	case moh.CodeNotImplemented:
		return http.StatusNotImplemented
	default:
		return http.StatusServiceUnavailable
	}
}

// setAnswerHeaders sets the headers every MoH answer carries.
func setAnswerHeaders(h http.Header, n int) {
	h.Set("Content-Type", contentType)
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(n))
}

// writeResponse encodes resp and writes it with status.
func writeResponse(w http.ResponseWriter, status int, resp *moh.DSResponse) error {
	body, err := wire.Marshal(resp)
	if err != nil {
		return err
	}
	writeRaw(w, status, body)
	return nil
}

// writeRaw writes an already encoded answer.
func writeRaw(w http.ResponseWriter, status int, body []byte) {
	setAnswerHeaders(w.Header(), len(body))
	w.WriteHeader(status)
	w.Write(body) //nolint:errcheck // the client went away; nothing to do
}

// errorAnswer encodes the DSError answer for err and returns its status and
// body. Errors without a code become backend_unavailable without leaking
// their text.
func errorAnswer(err error) (int, []byte) {
	dsErr := moh.DSErrorOf(err)
	body, encErr := wire.Marshal(&moh.DSResponse{Type: moh.ResponseError, Error: dsErr})
	if encErr != nil {
		// A DSError always encodes; this is unreachable short of a bug.
		return http.StatusServiceUnavailable, nil
	}
	return statusOf(dsErr.Code), body
}

// isCoded reports whether err carries a DSError code (as opposed to an
// internal failure that must be logged).
func isCoded(err error) bool {
	var e *moh.Error
	return errors.As(err, &e) || errors.Is(err, wire.ErrMalformed)
}
