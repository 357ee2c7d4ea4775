package moh

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// fuzzCanonical decodes data as a fresh value and, when that succeeds,
// requires the re-encoding to reproduce data exactly: a strict decoder
// accepts only canonical encodings.
// Each check, if any, then runs on the decoded value.
func fuzzCanonical(f *testing.F, name string, empty func() codec, checks ...func(t *testing.T, v codec, data []byte)) {
	want := reflect.TypeOf(empty())
	for _, tc := range sampleMessages() {
		if enc, err := wire.Marshal(tc.msg); err == nil && reflect.TypeOf(tc.msg) == want {
			f.Add(enc)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v := empty()
		if wire.Unmarshal(data, v, name) != nil {
			return
		}
		enc, err := wire.Marshal(v)
		if err != nil {
			t.Fatalf("decoded value does not encode: %v", err)
		}
		if !bytes.Equal(enc, data) {
			t.Fatalf("non-canonical input accepted:\n  in %x\n out %x", data, enc)
		}
		for _, check := range checks {
			check(t, v, data)
		}
	})
}

func FuzzDSRequest(f *testing.F) {
	fuzzCanonical(f, "DSRequest", func() codec { return new(DSRequest) })
}

func FuzzDSResponse(f *testing.F) {
	fuzzCanonical(f, "DSResponse", func() codec { return new(DSResponse) })
}

func FuzzProviderRequest(f *testing.F) {
	fuzzCanonical(f, "ProviderRequest", func() codec { return new(ProviderRequest) })
}

func FuzzDSError(f *testing.F) {
	fuzzCanonical(f, "DSError", func() codec { return new(DSError) })
}

func FuzzQueueingServiceRequest(f *testing.F) {
	fuzzCanonical(f, "QueueingServiceRequest", func() codec { return new(QueueingServiceRequest) },
		func(t *testing.T, v codec, data []byte) {
			// Receivers queue RawMessage as it is: it must be the
			// message's encoding, and the end of the request.
			q := v.(*QueueingServiceRequest)
			enc, err := wire.Marshal(&q.Message)
			if err != nil || !bytes.Equal(enc, q.RawMessage) || !bytes.HasSuffix(data, q.RawMessage) {
				t.Fatalf("RawMessage %x is not the message's encoding %x at the end of the input (%v)", q.RawMessage, enc, err)
			}
		})
}

func FuzzQueueingServiceResponse(f *testing.F) {
	fuzzCanonical(f, "QueueingServiceResponse", func() codec { return new(QueueingServiceResponse) })
}

func FuzzConnectionRequestPayload(f *testing.F) {
	fuzzCanonical(f, "ConnectionRequestPayload", func() codec { return new(ConnectionRequestPayload) },
		func(t *testing.T, v codec, data []byte) {
			// Receivers queue RawWelcome as it is: it must be the
			// Welcome's encoding, and the end of the payload.
			c := v.(*ConnectionRequestPayload)
			enc, err := wire.Marshal(&c.Welcome)
			if err != nil || !bytes.Equal(enc, c.RawWelcome) || !bytes.HasSuffix(data, c.RawWelcome) {
				t.Fatalf("RawWelcome %x is not the Welcome's encoding %x at the end of the input (%v)", c.RawWelcome, enc, err)
			}
		})
}

func FuzzConnectionKeyPackagesRequest(f *testing.F) {
	fuzzCanonical(f, "ConnectionKeyPackagesRequest", func() codec { return new(ConnectionKeyPackagesRequest) })
}

func FuzzGroupKeyPackagesRequest(f *testing.F) {
	fuzzCanonical(f, "GroupKeyPackagesRequest", func() codec { return new(GroupKeyPackagesRequest) })
}

func FuzzVerificationKeyRequest(f *testing.F) {
	fuzzCanonical(f, "VerificationKeyRequest", func() codec { return new(VerificationKeyRequest) })
}

func FuzzCreateGroupRequest(f *testing.F) {
	fuzzCanonical(f, "CreateGroupRequest", func() codec { return new(CreateGroupRequest) })
}

func FuzzMLSGroupUpdate(f *testing.F) {
	fuzzCanonical(f, "MLSGroupUpdate", func() codec { return new(MLSGroupUpdate) })
}

func FuzzPartialGroupInfo(f *testing.F) {
	fuzzCanonical(f, "PartialGroupInfo", func() codec { return new(PartialGroupInfo) })
}

func FuzzWelcomePackage(f *testing.F) {
	fuzzCanonical(f, "WelcomePackage", func() codec { return new(WelcomePackage) })
}

func FuzzVerificationKey(f *testing.F) {
	for _, k := range []VerificationKey{
		{KeyID: []byte("k1"), Scheme: SchemeEd25519, PublicKey: bytes.Repeat([]byte{3}, 32), NotBefore: 10, NotAfter: 20},
		{KeyID: bytes.Repeat([]byte{1}, MaxKeyIDLen), Scheme: 0xffff, PublicKey: bytes.Repeat([]byte{4}, MaxPublicKeyLen)},
	} {
		if enc, err := wire.Marshal(&k); err == nil {
			f.Add(enc)
		}
	}
	fuzzCanonical(f, "VerificationKey", func() codec { return new(VerificationKey) })
}

// FuzzDecodeDSRequestPrefix checks that the prefix decoder of uploads
// agrees with the whole-body decoder: the prefix it takes decodes as a
// complete DSRequest with the same type, a body the whole-body decoder
// accepts is one prefix with nothing after it, and its errors carry the
// codes of DecodeDSRequest.
func FuzzDecodeDSRequestPrefix(f *testing.F) {
	for _, tc := range sampleMessages() {
		if r, ok := tc.msg.(*DSRequest); ok {
			if enc, err := wire.Marshal(r); err == nil {
				f.Add(enc)
				f.Add(append(enc, "content"...))
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		whole, werr := DecodeDSRequest(data)
		req, n, perr := DecodeDSRequestPrefix(data)
		if perr != nil {
			if werr == nil {
				t.Fatalf("the prefix decoder refuses a body the whole decoder accepts: %v", perr)
			}
			if DSErrorOf(perr).Code != DSErrorOf(werr).Code && DSErrorOf(werr).Code != CodeMalformed {
				t.Fatalf("prefix error %v, whole-body error %v", perr, werr)
			}
			return
		}
		if n <= 0 || n > len(data) {
			t.Fatalf("prefix length %d of %d bytes", n, len(data))
		}
		again, err := DecodeDSRequest(data[:n])
		if err != nil || again.Body.Type != req.Body.Type {
			t.Fatalf("prefix %x does not decode alone: %v", data[:n], err)
		}
		if werr == nil && (n != len(data) || whole.Body.Type != req.Body.Type) {
			t.Fatalf("whole body accepted but the prefix is %d of %d bytes", n, len(data))
		}
		h, err := PeekHeader(data)
		if err != nil || RequestType(h.Type) != req.Body.Type {
			t.Fatalf("PeekHeader = %+v, %v; the request has type %d", h, err, req.Body.Type)
		}
	})
}

// FuzzErrorAnswer is the round trip of the error answers the gateway sends:
// any code and message encode into a DSResponse that decodes strictly, with
// the code AnswerCode reads, and a message that is a prefix of the one
// given, at most MaxMessageLen bytes, and cut only at a UTF-8 boundary of a
// valid message.
func FuzzErrorAnswer(f *testing.F) {
	f.Add(uint16(CodeMalformed), "decoding DSRequest: malformed")
	f.Add(uint16(0xffff), strings.Repeat("é", 200))
	f.Add(uint16(0), strings.Repeat("x", 300))
	f.Fuzz(func(t *testing.T, code uint16, msg string) {
		answer := EncodeError(DSError{Code: Code(code), Message: []byte(msg)})
		var resp DSResponse
		if err := wire.Unmarshal(answer, &resp, "DSResponse"); err != nil {
			t.Fatalf("error answer does not decode: %v", err)
		}
		if resp.Type != ResponseError || resp.Error.Code != Code(code) || AnswerCode(answer) != Code(code) {
			t.Fatalf("answer %x: type %d code %d, AnswerCode %d; want code %d", answer, resp.Type, resp.Error.Code, AnswerCode(answer), code)
		}
		got := resp.Error.Message
		if len(got) > MaxMessageLen || !strings.HasPrefix(msg, string(got)) {
			t.Fatalf("message %q is not a prefix of %q within %d bytes", got, msg, MaxMessageLen)
		}
		if utf8.ValidString(msg) && !utf8.Valid(got) {
			t.Fatalf("valid message %q cut inside a character: %q", msg, got)
		}
	})
}

// FuzzDecodeCodes checks the version rule of docs/protocol.md §1 on the two
// request decoders the HTTP layer calls: a body of two bytes or more that
// does not start with 0001 is unsupported_version whatever follows, and
// any other refusal is malformed, so no input reaches the peer as another
// code (or a panic).
func FuzzDecodeCodes(f *testing.F) {
	for _, tc := range sampleMessages() {
		switch tc.msg.(type) {
		case *DSRequest, *ProviderRequest:
			if enc, err := wire.Marshal(tc.msg); err == nil {
				f.Add(enc)
			}
		}
	}
	f.Add([]byte{0})
	f.Add([]byte{0, 2, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		want := CodeMalformed
		if len(data) >= 2 && (data[0] != 0 || data[1] != 1) {
			want = CodeUnsupportedVersion
		}
		_, perr := DecodeProviderRequest(data)
		_, derr := DecodeDSRequest(data)
		for name, err := range map[string]error{"ProviderRequest": perr, "DSRequest": derr} {
			if err == nil {
				if want != CodeMalformed {
					t.Fatalf("%s: version %x accepted", name, data[:2])
				}
				continue
			}
			var e *Error
			if !errors.As(err, &e) || e.Code != want {
				t.Fatalf("%s: err = %v, want code %s", name, err, want)
			}
		}
	})
}
