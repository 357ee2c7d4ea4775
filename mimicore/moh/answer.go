package moh

import "github.com/caddy-mimi/caddy-mimi/mimicore/wire"

// ErrorAnswer returns the encoded DSResponse that answers a request refused
// with err: the DSError of DSErrorOf(err), so an error that carries no code
// becomes a backend_unavailable answer that does not reveal its cause.
func ErrorAnswer(err error) []byte {
	return EncodeError(DSErrorOf(err))
}

// EncodeError returns the encoded DSResponse carrying e.
func EncodeError(e DSError) []byte {
	body, encErr := wire.Marshal(&DSResponse{Type: ResponseError, Error: e})
	if encErr != nil {
		// A DSError always encodes (its message is truncated to fit);
		// this is unreachable short of a bug.
		panic("moh: encoding a DSError: " + encErr.Error())
	}
	return body
}

// AnswerCode reports the outcome an encoded DSResponse names: 0 for an
// answer of any success type, the DSError code for an error answer. It reads
// only the header and the code, so the HTTP layer can choose the status of a
// recorded answer without decoding it; an answer too short to hold them
// reports CodeBackendUnavailable.
func AnswerCode(answer []byte) Code {
	// uint16 protocol_version, uint8 type, then for an error uint16 code.
	if len(answer) < 3 {
		return CodeBackendUnavailable
	}
	if ResponseType(answer[2]) != ResponseError {
		return 0
	}
	if len(answer) < 5 {
		return CodeBackendUnavailable
	}
	return Code(uint16(answer[3])<<8 | uint16(answer[4]))
}
