// Package moh holds the messages of MIMI over HTTPS as profiled by caddy-mimi
// (docs/protocol.md): the DSRequest framing and its authentication data, the
// DS request bodies (the MLS-carrying ones of §5.2 on package mls's types),
// the DSResponse union and DSError, provider-signed requests and their
// payloads, verification keys, the queueing service and the attachment
// request bodies.
//
// Every type implements wire.Marshaler and wire.Unmarshaler; decoding is
// strict (minimal varints, no trailing bytes, bounded lengths, unknown enum
// values refused). Decoded byte slices alias the input buffer.
package moh
