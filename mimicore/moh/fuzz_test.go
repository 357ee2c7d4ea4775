package moh

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// fuzzCanonical decodes data as a fresh value and, when that succeeds,
// requires the re-encoding to reproduce data exactly: a strict decoder
// accepts only canonical encodings.
func fuzzCanonical(f *testing.F, name string, empty func() codec) {
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
	fuzzCanonical(f, "QueueingServiceRequest", func() codec { return new(QueueingServiceRequest) })
}

func FuzzQueueingServiceResponse(f *testing.F) {
	fuzzCanonical(f, "QueueingServiceResponse", func() codec { return new(QueueingServiceResponse) })
}

func FuzzConnectionRequestPayload(f *testing.F) {
	fuzzCanonical(f, "ConnectionRequestPayload", func() codec { return new(ConnectionRequestPayload) })
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
