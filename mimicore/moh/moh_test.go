package moh

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// codec is a top-level message type under test.
type codec interface {
	wire.Marshaler
	wire.Unmarshaler
}

// sampleMessages returns one valid value of every top-level message, with a
// constructor for an empty value of the same type.
func sampleMessages() map[string]sample {
	type entry = sample
	out := map[string]entry{
		"DSError": {&DSError{Code: CodeReplay, Message: []byte("request_id reused")}, func() codec { return new(DSError) }},
		"ProviderRequest": {&ProviderRequest{
			RequestType: GroupKeyPackages, Sender: []byte("a.example"), Recipient: []byte("b.example"),
			Timestamp: 1_790_000_000, RequestID: bytes.Repeat([]byte{1}, 16), KeyID: []byte("k1"),
			Payload: []byte{1, 2, 3}, Signature: bytes.Repeat([]byte{9}, 64),
		}, func() codec { return new(ProviderRequest) }},
		"VerificationKeyRequest": {&VerificationKeyRequest{ProtocolVersion: 1}, func() codec { return new(VerificationKeyRequest) }},
		"QueueingServiceRequest": {&QueueingServiceRequest{
			GroupID: []byte("g"), ClientIDs: [][]byte{[]byte("mimi://b.example/d/bob/phone")}, Message: samplePrivateMessage(),
		}, func() codec { return new(QueueingServiceRequest) }},
		"QueueingServiceResponse": {&QueueingServiceResponse{Status: QueueingInvalidClientQueueInfo,
			Unknown: [][]byte{[]byte("mimi://b.example/d/eve/x")}}, func() codec { return new(QueueingServiceResponse) }},
		"ConnectionRequestPayload": {&ConnectionRequestPayload{UserID: []byte("mimi://b.example/u/bob"),
			GroupID: []byte("gid"), Welcome: sampleWelcome()}, func() codec { return new(ConnectionRequestPayload) }},
		"ConnectionKeyPackagesRequest": {&ConnectionKeyPackagesRequest{Requester: []byte("mimi://a.example/u/al"),
			UserID: []byte("mimi://b.example/u/bob")}, func() codec { return new(ConnectionKeyPackagesRequest) }},
		"GroupKeyPackagesRequest": {&GroupKeyPackagesRequest{Requester: []byte("mimi://a.example/u/al"),
			ClientIDs: [][]byte{[]byte("mimi://b.example/d/bob/1"), []byte("mimi://b.example/d/bob/2")}},
			func() codec { return new(GroupKeyPackagesRequest) }},
		"DSResponse/keys": {&DSResponse{Type: ResponseVerificationKeys, VerificationKeys: []VerificationKey{
			{KeyID: []byte("k1"), Scheme: SchemeEd25519, PublicKey: bytes.Repeat([]byte{3}, 32), NotBefore: 10, NotAfter: 20},
			{KeyID: []byte("k0"), Scheme: SchemeECDSAP256SHA256, PublicKey: bytes.Repeat([]byte{4}, 65), NotBefore: 1, NotAfter: 15},
		}}, func() codec { return new(DSResponse) }},
		"DSResponse/error": {&DSResponse{Type: ResponseError, Error: DSError{Code: CodeNotFound, Message: []byte("no such group")}}, func() codec { return new(DSResponse) }},
		"DSResponse/ok":    {&DSResponse{Type: ResponseOK}, func() codec { return new(DSResponse) }},
		"DSResponse/welcome_info": {&DSResponse{Type: ResponseWelcomeInfo, RatchetTree: mlsVector("ratchet_tree")},
			func() codec { return new(DSResponse) }},
		"DSResponse/external_commit_info": {&DSResponse{Type: ResponseExternalCommitInfo,
			GroupInfo: mlsVector("mls_group_info"), RatchetTree: mlsVector("ratchet_tree")}, func() codec { return new(DSResponse) }},
		"DSResponse/key_packages": {&DSResponse{Type: ResponseKeyPackages,
			KeyPackages: [][]byte{mlsVector("mls_key_package")[4:], mlsVector("mls_key_package")[4:]},
			Missing:     [][]byte{[]byte("mimi://b.example/d/bob/tablet")}}, func() codec { return new(DSResponse) }},
		"DSResponse/group_id": {&DSResponse{Type: ResponseGroupID, GroupID: bytes.Repeat([]byte{5}, 16)}, func() codec { return new(DSResponse) }},
		"DSResponse/token":    {&DSResponse{Type: ResponseAttachmentToken, Token: bytes.Repeat([]byte{6}, 32)}, func() codec { return new(DSResponse) }},
		"DSResponse/content":  {&DSResponse{Type: ResponseAttachmentContent, Content: []byte("ciphertext")}, func() codec { return new(DSResponse) }},
		"DSResponse/queueing": {&DSResponse{Type: ResponseQueueing, Queueing: QueueingServiceResponse{Status: QueueingOK}}, func() codec { return new(DSResponse) }},
		"DSRequest/group_id":  {&DSRequest{Body: RequestBody{Type: RequestGroupID}}, func() codec { return new(DSRequest) }},
		"DSRequest/welcome_info": {&DSRequest{
			Body: RequestBody{Type: WelcomeInfo, WelcomeInfo: WelcomeInfoRequest{GroupID: []byte("g1"), Epoch: 7}},
			Auth: AuthData{Type: AuthKeyPackageSignature, KeyPackageRef: bytes.Repeat([]byte{8}, 32), Timestamp: 99, Signature: []byte{1}},
		}, func() codec { return new(DSRequest) }},
		"DSRequest/external_commit_info": {&DSRequest{
			Body: RequestBody{Type: ExternalCommitInfo, ExternalCommitInfo: ExternalCommitInfoRequest{GroupID: []byte("g1")}},
		}, func() codec { return new(DSRequest) }},
		"DSRequest/upload": {&DSRequest{
			Body: RequestBody{Type: AttachmentUpload, Upload: UploadAttachmentHeader{GroupID: []byte("g"), ContentLength: 1 << 20, ContentHash: bytes.Repeat([]byte{2}, 32)}},
			Auth: AuthData{Type: AuthClientSignature, SenderIndex: 3, Timestamp: 5, Signature: bytes.Repeat([]byte{1}, 64)},
		}, func() codec { return new(DSRequest) }},
		"DSRequest/download": {&DSRequest{
			Body: RequestBody{Type: AttachmentDownload, Attachment: AttachmentRef{GroupID: []byte("g"), Token: bytes.Repeat([]byte{2}, 32)}},
			Auth: AuthData{Type: AuthClientSignature, SenderIndex: 0, Timestamp: 5, Signature: []byte{1}},
		}, func() codec { return new(DSRequest) }},
		"DSRequest/delete": {&DSRequest{
			Body: RequestBody{Type: AttachmentDelete, Attachment: AttachmentRef{GroupID: []byte("g"), Token: []byte{2}}},
			Auth: AuthData{Type: AuthClientSignature, SenderIndex: 0, Timestamp: 5, Signature: []byte{1}},
		}, func() codec { return new(DSRequest) }},
		"DSRequest/copy": {&DSRequest{
			Body: RequestBody{Type: AttachmentCopy, Copy: AttachmentCopyRequest{GroupID: []byte("g"), Token: []byte{2}, TargetGroupID: []byte("h"), TargetSenderIndex: 4}},
			Auth: AuthData{Type: AuthClientSignature, SenderIndex: 1, Timestamp: 5, Signature: []byte{1}},
		}, func() codec { return new(DSRequest) }},
	}
	for name, s := range mlsBodySamples() {
		out[name] = s
	}
	return out
}

// sample is a valid value of a message type and a constructor for an
// empty value of the same type.
type sample struct {
	msg   codec
	empty func() codec
}

// TestRoundTrip encodes every sample, decodes it, re-encodes it and requires
// the same bytes; then requires every strict prefix and the encoding plus a
// trailing byte to be refused.
func TestRoundTrip(t *testing.T) {
	for name, tc := range sampleMessages() {
		t.Run(name, func(t *testing.T) {
			enc, err := wire.Marshal(tc.msg)
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			got := tc.empty()
			if err := wire.Unmarshal(enc, got, name); err != nil {
				t.Fatalf("Unmarshal(%x): %v", enc, err)
			}
			again, err := wire.Marshal(got)
			if err != nil || !bytes.Equal(again, enc) {
				t.Fatalf("re-encoding differs:\n got %x\nwant %x (err %v)", again, enc, err)
			}
			for n := 0; n < len(enc); n++ {
				if err := wire.Unmarshal(enc[:n], tc.empty(), name); err == nil {
					t.Errorf("prefix of %d/%d bytes accepted", n, len(enc))
				}
			}
			if err := wire.Unmarshal(append(bytes.Clone(enc), 0), tc.empty(), name); err == nil {
				t.Error("trailing byte accepted")
			}
		})
	}
}

func TestMalformed(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  codec
		hex  []byte
	}{
		{"response bad version", new(DSResponse), []byte{0, 2, 0}},
		{"response unknown type", new(DSResponse), []byte{0, 1, 10}},
		{"response error non-minimal length", new(DSResponse), []byte{0, 1, 1, 0, 7, 0x40, 0x01, 'x'}},
		{"response welcome_info without tree", new(DSResponse), []byte{0, 1, 3}},
		{"response external_commit_info not a group info", new(DSResponse), append([]byte{0, 1, 4}, mustMarshal(sampleWelcome())...)},
		{"queueing request with a key package", new(QueueingServiceRequest), append([]byte{1, 'g', 2, 1, 'x'}, mlsVector("mls_key_package")...)},
		{"connection request with a private message", new(ConnectionRequestPayload), append([]byte{1, 'u', 1, 'g'}, mustMarshal(samplePrivateMessage())...)},
		{"request unknown type", new(DSRequest), []byte{0, 1, 21, 0}},
		{"request unknown auth", new(DSRequest), []byte{0, 1, 0, 3}},
		{"request empty group id", new(DSRequest), []byte{0, 1, 16, 0, 0}},
		{"request signature missing", new(DSRequest), []byte{0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
		{"request upload short hash", new(DSRequest), append([]byte{0, 1, 17, 1, 'g', 0, 0, 0, 0, 0, 0, 0, 1, 4}, 1, 2, 3, 4, 0)},
		{"queueing unknown status", new(QueueingServiceResponse), []byte{2, 0}},
		{"provider request unknown type", new(ProviderRequest), []byte{0, 1, 4}},
		{"provider request ip sender", new(ProviderRequest), append([]byte{0, 1, 0, 7}, "1.2.3.4"...)},
		{"provider request uppercase", new(ProviderRequest), append([]byte{0, 1, 0, 9}, "A.example"...)},
		{"group kp empty list", new(GroupKeyPackagesRequest), []byte{1, 'x', 0}},
	} {
		if err := wire.Unmarshal(tc.hex, tc.msg, tc.name); !errors.Is(err, wire.ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", tc.name, err)
		}
	}
}

// TestGroupKeyPackagesClientIDs checks the decoder's rules on
// client_ids: 1 to MaxClientIDs ids, no id named twice.
func TestGroupKeyPackagesClientIDs(t *testing.T) {
	ids := func(n int) [][]byte {
		out := make([][]byte, n)
		for i := range out {
			out[i] = fmt.Appendf(nil, "mimi://b.example/d/bob/%d", i)
		}
		return out
	}
	phone, laptop := []byte("mimi://b.example/d/bob/phone"), []byte("mimi://b.example/d/bob/laptop")
	for _, tc := range []struct {
		name string
		ids  [][]byte
		ok   bool
	}{
		{"one id", [][]byte{phone}, true},
		{"two ids", [][]byte{phone, laptop}, true},
		{"MaxClientIDs ids", ids(MaxClientIDs), true},
		{"MaxClientIDs+1 ids", ids(MaxClientIDs + 1), false},
		{"an id twice in a row", [][]byte{phone, phone}, false},
		{"an id twice apart", [][]byte{phone, laptop, []byte("mimi://b.example/d/bob/tablet"), phone}, false},
		{"the last of MaxClientIDs ids repeats the first", append(ids(MaxClientIDs-1), ids(1)...), false},
		{"ids that differ in the last byte", [][]byte{[]byte("mimi://b.example/d/bob/a"), []byte("mimi://b.example/d/bob/b")}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			enc, err := wire.Marshal(&GroupKeyPackagesRequest{Requester: []byte("mimi://a.example/u/al"), ClientIDs: tc.ids})
			if err != nil {
				t.Fatal(err)
			}
			var got GroupKeyPackagesRequest
			err = wire.Unmarshal(enc, &got, "GroupKeyPackagesRequest")
			switch {
			case tc.ok && (err != nil || len(got.ClientIDs) != len(tc.ids)):
				t.Fatalf("decoded %d of %d ids, %v; want all", len(got.ClientIDs), len(tc.ids), err)
			case !tc.ok && !errors.Is(err, wire.ErrMalformed):
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
		})
	}
}

func TestSignedBytesMatchEncoding(t *testing.T) {
	p := sampleMessages()["ProviderRequest"].msg.(*ProviderRequest)
	fresh, err := p.SignedBytes()
	if err != nil {
		t.Fatal(err)
	}
	enc, _ := wire.Marshal(p)
	var d ProviderRequest
	if err := wire.Unmarshal(enc, &d, "p"); err != nil {
		t.Fatal(err)
	}
	decoded, _ := d.SignedBytes()
	if !bytes.Equal(fresh, decoded) || !bytes.HasPrefix(enc, fresh) {
		t.Fatal("signed bytes of a decoded request differ from the encoder's")
	}

	r := sampleMessages()["DSRequest/upload"].msg.(*DSRequest)
	fresh, _ = r.SignedBytes()
	enc, _ = wire.Marshal(r)
	var dr DSRequest
	if err := wire.Unmarshal(enc, &dr, "r"); err != nil {
		t.Fatal(err)
	}
	decoded, _ = dr.SignedBytes()
	if !bytes.Equal(fresh, decoded) || !bytes.Equal(enc[:len(fresh)], fresh) {
		t.Fatal("DSRequestTBS of a decoded request differs from the encoder's")
	}
	if !reflect.DeepEqual(dr.Body.Upload, r.Body.Upload) {
		t.Fatal("upload header changed in the round trip")
	}
}

func TestPeekHeaderType(t *testing.T) {
	h, err := PeekHeader([]byte{0, 1, 5, 0xff})
	typ := RequestType(h.Type)
	if err != nil || typ != AddClients || !typ.CarriesMLS() || typ.ProviderOnly() {
		t.Fatalf("PeekHeader = %v, %v", h, err)
	}
	if _, err := PeekHeader([]byte{0, 1}); err == nil {
		t.Fatal("peeked a type from a truncated request")
	}
	if !SignaturePublicKey.ProviderOnly() || WelcomeInfo.CarriesMLS() || RequestType(21).Known() {
		t.Fatal("request type classification is wrong")
	}
}

func TestDSErrorOf(t *testing.T) {
	e := DSErrorOf(Errorf(CodeStaleEpoch, "epoch %d is stale", 3))
	if e.Code != CodeStaleEpoch || string(e.Message) != "epoch 3 is stale" {
		t.Fatalf("DSErrorOf = %+v", e)
	}
	e = DSErrorOf(wire.Unmarshal([]byte{1}, new(DSError), "DSError"))
	if e.Code != CodeMalformed {
		t.Fatalf("malformed mapped to %v", e.Code)
	}
	e = DSErrorOf(errors.New("disk I/O error at /secret/path"))
	if e.Code != CodeBackendUnavailable || bytes.Contains(e.Message, []byte("secret")) {
		t.Fatalf("internal error leaked: %+v", e)
	}
	long := DSError{Code: CodeMalformed, Message: bytes.Repeat([]byte("é"), 200)}
	enc, _ := wire.Marshal(&long)
	var d DSError
	if err := wire.Unmarshal(enc, &d, "DSError"); err != nil || len(d.Message) > MaxMessageLen {
		t.Fatalf("long message not truncated to a decodable length: %v", err)
	}
}

func TestCodeNames(t *testing.T) {
	seen := map[string]bool{}
	for c := Code(1); c.Known(); c++ {
		n := c.String()
		if seen[n] {
			t.Fatalf("duplicate code name %q", n)
		}
		seen[n] = true
	}
	if Code(999).Known() || Code(999).String() != "code_999" {
		t.Fatal("unknown code reported as known")
	}
}
