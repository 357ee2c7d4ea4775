package moh

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// withVersion returns a copy of enc whose first two bytes are v.
func withVersion(enc []byte, v uint16) []byte {
	out := bytes.Clone(enc)
	out[0], out[1] = byte(v>>8), byte(v)
	return out
}

// requireCode checks that err is an *Error with code want that DSErrorOf
// maps to want, and that it wraps sentinel.
func requireCode(t *testing.T, err error, want Code, sentinel error) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) || e.Code != want {
		t.Fatalf("err = %v, want an *Error with code %s", err, want)
	}
	if got := DSErrorOf(err).Code; got != want {
		t.Fatalf("DSErrorOf = %s, want %s", got, want)
	}
	if !errors.Is(err, sentinel) {
		t.Fatalf("err = %v does not wrap %v", err, sentinel)
	}
}

// TestUnsupportedVersion requires every request decoder to tell a version
// other than 1 (unsupported_version) from a body that does not decode
// (malformed), for complete requests and bare two-byte prefixes alike.
func TestUnsupportedVersion(t *testing.T) {
	samples := sampleMessages()
	provider, err := wire.Marshal(samples["ProviderRequest"].msg)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := wire.Marshal(samples["DSRequest/upload"].msg)
	if err != nil {
		t.Fatal(err)
	}
	decoders := map[string]struct {
		enc    []byte
		decode func([]byte) error
	}{
		"ProviderRequest": {provider, func(b []byte) error { _, err := DecodeProviderRequest(b); return err }},
		"DSRequest":       {ds, func(b []byte) error { _, err := DecodeDSRequest(b); return err }},
		"DSRequestPrefix": {ds, func(b []byte) error { _, _, err := DecodeDSRequestPrefix(b); return err }},
		"PeekHeader":      {ds, func(b []byte) error { _, err := PeekHeader(b); return err }},
		"CheckVersion":    {ds, CheckVersion},
	}
	for name, d := range decoders {
		t.Run(name, func(t *testing.T) {
			if err := d.decode(d.enc); err != nil {
				t.Fatalf("version 1: %v", err)
			}
			for _, v := range []uint16{0, 2, 0xffff} {
				t.Run(fmt.Sprintf("version %d", v), func(t *testing.T) {
					requireCode(t, d.decode(withVersion(d.enc, v)), CodeUnsupportedVersion, ErrUnsupportedVersion)
					requireCode(t, d.decode(withVersion(d.enc[:2], v)), CodeUnsupportedVersion, ErrUnsupportedVersion)
				})
			}
			for _, n := range []int{0, 1} {
				t.Run(fmt.Sprintf("truncated to %d", n), func(t *testing.T) {
					requireCode(t, d.decode(d.enc[:n]), CodeMalformed, wire.ErrMalformed)
				})
			}
		})
	}
}

// TestDecodeMalformed requires version-1 input that does not decode to be
// malformed, never unsupported_version.
func TestDecodeMalformed(t *testing.T) {
	samples := sampleMessages()
	provider, _ := wire.Marshal(samples["ProviderRequest"].msg)
	ds, _ := wire.Marshal(samples["DSRequest/copy"].msg)
	for _, n := range []int{2, 3, len(provider) - 1} {
		_, err := DecodeProviderRequest(provider[:n])
		requireCode(t, err, CodeMalformed, wire.ErrMalformed)
	}
	_, err := DecodeProviderRequest(append(bytes.Clone(provider), 0))
	requireCode(t, err, CodeMalformed, wire.ErrMalformed)
	for _, n := range []int{2, 3, len(ds) - 1} {
		_, err := DecodeDSRequest(ds[:n])
		requireCode(t, err, CodeMalformed, wire.ErrMalformed)
		_, _, err = DecodeDSRequestPrefix(ds[:n])
		requireCode(t, err, CodeMalformed, wire.ErrMalformed)
	}
	_, err = DecodeDSRequest(append(bytes.Clone(ds), 0))
	requireCode(t, err, CodeMalformed, wire.ErrMalformed)
	_, err = PeekHeader([]byte{0, 1})
	requireCode(t, err, CodeMalformed, wire.ErrMalformed)
}

func TestDecodeAccepts(t *testing.T) {
	samples := sampleMessages()
	provider, _ := wire.Marshal(samples["ProviderRequest"].msg)
	p, err := DecodeProviderRequest(provider)
	if err != nil || p.RequestType != GroupKeyPackages || string(p.Sender) != "a.example" {
		t.Fatalf("DecodeProviderRequest = %+v, %v", p, err)
	}
	ds, _ := wire.Marshal(samples["DSRequest/upload"].msg)
	content := []byte("content after the header")
	r, n, err := DecodeDSRequestPrefix(append(bytes.Clone(ds), content...))
	if err != nil || n != len(ds) || r.Body.Type != AttachmentUpload {
		t.Fatalf("DecodeDSRequestPrefix = %+v, %d, %v (want %d bytes)", r, n, err, len(ds))
	}
	h, err := PeekHeader(ds)
	if err != nil || h != (Header{Version: 1, Type: uint8(AttachmentUpload)}) {
		t.Fatalf("PeekHeader = %+v, %v", h, err)
	}
	h, err = PeekHeader([]byte{0x12, 0x34, 0})
	if h.Version != 0x1234 || !errors.Is(err, ErrUnsupportedVersion) {
		t.Fatalf("PeekHeader of version 0x1234 = %+v, %v", h, err)
	}
}

// TestMaxProviderRequestOverhead builds a ProviderRequest with every field
// at its limit and requires the envelope to add exactly the documented
// overhead to the payload, and the result to decode.
func TestMaxProviderRequestOverhead(t *testing.T) {
	label := bytes.Repeat([]byte("a"), 63)
	fqdn := bytes.Join([][]byte{label, label, label, bytes.Repeat([]byte("a"), 61)}, []byte("."))
	if len(fqdn) != MaxFQDNLen || !ValidFQDN(fqdn) {
		t.Fatalf("test FQDN is %d bytes, valid %v", len(fqdn), ValidFQDN(fqdn))
	}
	p := &ProviderRequest{
		RequestType: DeliverMessage, Sender: fqdn, Recipient: fqdn, Timestamp: 1,
		RequestID: bytes.Repeat([]byte{1}, MaxRequestIDLen), KeyID: bytes.Repeat([]byte{2}, MaxKeyIDLen),
		Payload: make([]byte, MaxPayloadLen), Signature: bytes.Repeat([]byte{3}, MaxSignatureLen),
	}
	enc, err := wire.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(enc) - MaxPayloadLen; got != MaxProviderRequestOverhead {
		t.Fatalf("overhead = %d bytes, MaxProviderRequestOverhead says %d", got, MaxProviderRequestOverhead)
	}
	doc, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("at most %d bytes around its payload", MaxProviderRequestOverhead); !bytes.Contains(doc, []byte(want)) {
		t.Errorf("docs/protocol.md §1.2 does not say %q", want)
	}
	if _, err := DecodeProviderRequest(enc); err != nil {
		t.Fatalf("largest request does not decode: %v", err)
	}
	if len(enc) > 1<<20+64<<10 {
		t.Fatalf("largest request (%d bytes) exceeds the default max_body", len(enc))
	}
}
