package moh

import (
	"bytes"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestMLSBodiesRefused encodes MLS-carrying bodies that break a rule of
// docs/protocol.md §5.2 and requires each to decode as malformed (never
// unsupported_version), inside a DSRequest.
func TestMLSBodiesRefused(t *testing.T) {
	member := mls.Sender{Type: mls.SenderMember, Index: 1}
	joiner := mls.Sender{Type: mls.SenderNewMemberCommit}
	bodies := sampleMLSBodies()
	with := func(typ RequestType, edit func(b *RequestBody)) RequestBody {
		b := bodies[typ]
		edit(&b)
		return b
	}
	proposal := sampleSelfRemove()
	gce := sampleSelfRemove()
	gce.PublicMessage.Content.Proposal = &mls.Proposal{Type: mls.ProposalGroupContextExtensions}
	private := sampleSendMessage()
	privateCommit := sampleSendMessage()
	privateCommit.PrivateMessage.ContentType = mls.ContentCommit
	longID := sampleCommit(member)
	longID.PublicMessage.Content.GroupID = fill(1, MaxGroupIDLen+1)
	emptyID := sampleCommit(member)
	emptyID.PublicMessage.Content.GroupID = nil
	emptyAppID := sampleSendMessage()
	emptyAppID.PrivateMessage.GroupID = nil
	manyWelcomes := make([]WelcomePackage, MaxWelcomePackages+1)
	for i := range manyWelcomes {
		manyWelcomes[i] = sampleWelcomePackage()
	}
	groupInfo := sampleCreateGroup().GroupInfo

	for _, tc := range []struct {
		name string
		body RequestBody
	}{
		{"create_group group_info of another group", with(CreateGroup, func(b *RequestBody) { b.CreateGroup.GroupID = []byte("other") })},
		{"create_group welcome as group_info", with(CreateGroup, func(b *RequestBody) { b.CreateGroup.GroupInfo = sampleWelcomePackage().Welcome })},
		{"create_group empty group id", with(CreateGroup, func(b *RequestBody) {
			b.CreateGroup.GroupID = nil
			b.CreateGroup.GroupInfo.GroupInfo.GroupContext.GroupID = nil
		})},
		{"delete_group commit from a new member", with(DeleteGroup, func(b *RequestBody) { b.GroupUpdate.Commit = sampleCommit(joiner) })},
		{"external_join commit from a member", with(ExternalJoin, func(b *RequestBody) { b.GroupUpdate.Commit = sampleCommit(member) })},
		{"update_client proposal as commit", with(UpdateClient, func(b *RequestBody) { b.GroupUpdate.Commit = proposal })},
		{"update_client private message as commit", with(UpdateClient, func(b *RequestBody) { b.GroupUpdate.Commit = privateCommit })},
		{"remove_users commit group id too long", with(RemoveUsers, func(b *RequestBody) { b.GroupUpdate.Commit = longID })},
		{"remove_clients commit group id empty", with(RemoveClients, func(b *RequestBody) { b.GroupUpdate.Commit = emptyID })},
		{"re_initialize_group empty partial signature", with(ReInitializeGroup, func(b *RequestBody) { b.GroupUpdate.PartialGroupInfo.Signature = nil })},
		{"re_initialize_group partial signature too long", with(ReInitializeGroup, func(b *RequestBody) {
			b.GroupUpdate.PartialGroupInfo.Signature = fill(1, MaxSignatureLen+1)
		})},
		{"add_users no welcome", with(AddUsers, func(b *RequestBody) { b.WelcomePackages = nil })},
		{"add_clients too many welcomes", with(AddClients, func(b *RequestBody) { b.WelcomePackages = manyWelcomes })},
		{"add_users group info as welcome", with(AddUsers, func(b *RequestBody) { b.WelcomePackages = []WelcomePackage{{Welcome: groupInfo}} })},
		{"self_remove_client not a remove", with(SelfRemoveClient, func(b *RequestBody) { b.Message = gce })},
		{"self_remove_client a commit", with(SelfRemoveClient, func(b *RequestBody) { b.Message = sampleCommit(member) })},
		{"self_remove_client private", with(SelfRemoveClient, func(b *RequestBody) { b.Message = private })},
		{"send_message public", with(SendMessage, func(b *RequestBody) { b.Message = proposal })},
		{"send_message private commit", with(SendMessage, func(b *RequestBody) { b.Message = privateCommit })},
		{"send_message empty group id", with(SendMessage, func(b *RequestBody) { b.Message = emptyAppID })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			enc, err := wire.Marshal(&DSRequest{Body: tc.body})
			if err != nil {
				t.Fatalf("encoding: %v", err)
			}
			if _, err := DecodeDSRequest(enc); DSErrorOf(err).Code != CodeMalformed {
				t.Fatalf("DecodeDSRequest = %v, want malformed", err)
			}
		})
	}
	t.Run("provider-only type", func(t *testing.T) {
		for _, typ := range []RequestType{SignaturePublicKey, AddPackages, ConnectionAddPackages} {
			if _, err := DecodeDSRequest([]byte{0, 1, byte(typ), 0}); DSErrorOf(err).Code != CodeMalformed {
				t.Errorf("%s: %v, want malformed", typ, err)
			}
			if _, err := wire.Marshal(&DSRequest{Body: RequestBody{Type: typ}}); err == nil {
				t.Errorf("%s encoded", typ)
			}
		}
	})
}

// TestMLSBodiesVersion requires an MLS-carrying request with another
// protocol_version to be unsupported_version, whatever its body.
func TestMLSBodiesVersion(t *testing.T) {
	for typ, body := range sampleMLSBodies() {
		t.Run(typ.String(), func(t *testing.T) {
			enc, err := wire.Marshal(&DSRequest{Body: body})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := DecodeDSRequest(withVersion(enc, 2)); DSErrorOf(err).Code != CodeUnsupportedVersion {
				t.Fatalf("version 2: %v", err)
			}
			if _, err := DecodeDSRequest(enc[:len(enc)-1]); DSErrorOf(err).Code != CodeMalformed {
				t.Fatalf("truncated: %v", err)
			}
		})
	}
}

// TestMLSBodyAccessors checks RequestBody.GroupID for every type and that
// a decoded body keeps its MLS values.
func TestMLSBodyAccessors(t *testing.T) {
	for typ, body := range sampleMLSBodies() {
		t.Run(typ.String(), func(t *testing.T) {
			if !typ.CarriesMLS() || typ.ProviderOnly() {
				t.Fatalf("%s not classified as MLS-carrying", typ)
			}
			enc, err := wire.Marshal(&DSRequest{Body: body})
			if err != nil {
				t.Fatal(err)
			}
			req, err := DecodeDSRequest(enc)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(req.Body.GroupID(), docGroupID()) {
				t.Fatalf("GroupID = %x", req.Body.GroupID())
			}
		})
	}
	for _, typ := range []RequestType{SignaturePublicKey, AddPackages, ConnectionAddPackages, WelcomeInfo, AttachmentCopy} {
		if typ.CarriesMLS() {
			t.Errorf("%s classified as MLS-carrying", typ)
		}
	}
}
