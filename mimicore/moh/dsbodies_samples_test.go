package moh

import (
	"bytes"
	"crypto/ed25519"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
)

// The MLS values below lay out the MLS-carrying bodies of docs/protocol.md
// §5.2 deterministically: the examples of §5.5 are built from them. Their
// structure is what the decoders require; signatures, tags and keys are
// fixed fill bytes (the creator's LeafNode and the GroupInfo carry real
// Ed25519 signatures by dsVectorKey), so the DS would refuse most of them
// on validation, which is not what they illustrate.

// docGroupID is the group id of the examples: 16 bytes of aa.
func docGroupID() []byte { return bytes.Repeat([]byte{0xaa}, 16) }

// fill returns n bytes of b.
func fill(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

// sampleCommit is an empty commit (no proposals, no path) in epoch 3 from
// sender, with a zero signature and zero tags; a member sender gets a
// membership tag, a new_member_commit sender none.
func sampleCommit(sender mls.Sender) mls.MLSMessage {
	pm := &mls.PublicMessage{
		Content: mls.FramedContent{GroupID: docGroupID(), Epoch: 3, Sender: sender,
			ContentType: mls.ContentCommit, Commit: &mls.Commit{}},
		Auth: mls.FramedContentAuthData{Signature: fill(0, 64), ConfirmationTag: fill(0, 32)},
	}
	if sender.Type == mls.SenderMember {
		pm.MembershipTag = fill(0, 32)
	}
	return mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatPublicMessage, PublicMessage: pm}
}

// sampleSelfRemove is member 1's proposal to remove its own leaf.
func sampleSelfRemove() mls.MLSMessage {
	pm := &mls.PublicMessage{
		Content: mls.FramedContent{GroupID: docGroupID(), Epoch: 3, Sender: mls.Sender{Type: mls.SenderMember, Index: 1},
			ContentType: mls.ContentProposal, Proposal: &mls.Proposal{Type: mls.ProposalRemove, Removed: 1}},
		Auth:          mls.FramedContentAuthData{Signature: fill(0, 64)},
		MembershipTag: fill(0, 32),
	}
	return mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatPublicMessage, PublicMessage: pm}
}

// samplePartialGroupInfo has no extensions and a zero signature.
func samplePartialGroupInfo() PartialGroupInfo {
	return PartialGroupInfo{Signature: fill(0, 64)}
}

// sampleGroupUpdate is sampleCommit from sender with samplePartialGroupInfo.
func sampleGroupUpdate(sender mls.Sender) MLSGroupUpdate {
	return MLSGroupUpdate{Commit: sampleCommit(sender), PartialGroupInfo: samplePartialGroupInfo()}
}

// sampleWelcomePackage is a Welcome of suite 1 for one new member: a
// KeyPackageRef of 32 bytes of 44, a KEM output of 32 bytes of 55, 48
// bytes of encrypted GroupSecrets and 64 bytes of encrypted GroupInfo.
func sampleWelcomePackage() WelcomePackage {
	return WelcomePackage{Welcome: mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatWelcome, Welcome: &mls.Welcome{
		CipherSuite: mls.X25519AES128GCMSHA256Ed25519,
		Secrets: []mls.EncryptedGroupSecrets{{NewMember: fill(0x44, 32),
			EncryptedGroupSecrets: mls.HPKECiphertext{KEMOutput: fill(0x55, 32), Ciphertext: fill(0x66, 48)}}},
		EncryptedGroupInfo: fill(0x77, 64),
	}}}
}

// sampleCreateGroup is the create_group body of alice's group: her leaf
// (encryption key 32 bytes of 11, signature key dsVectorKey's, a basic
// credential, suite 1, a lifetime, no extensions) and the epoch-0
// GroupInfo (tree hash 32 bytes of 22, confirmation tag 32 bytes of 33),
// both signed by dsVectorKey.
func sampleCreateGroup() CreateGroupRequest {
	cs := mls.X25519AES128GCMSHA256Ed25519
	key := dsVectorKey()
	leaf := mls.LeafNode{
		EncryptionKey: fill(0x11, 32),
		SignatureKey:  key.Public().(ed25519.PublicKey),
		Credential:    mls.Credential{Type: mls.CredentialBasic, Identity: []byte("mimi://a.example/d/alice/phone")},
		Capabilities: mls.Capabilities{Versions: []mls.ProtocolVersion{mls.MLS10},
			CipherSuites: []mls.CipherSuite{cs}, Credentials: []mls.CredentialType{mls.CredentialBasic}},
		Source:   mls.SourceKeyPackage,
		Lifetime: mls.Lifetime{NotBefore: 1_790_000_000, NotAfter: 1_797_776_000},
	}
	if err := leaf.Sign(cs, key, nil, 0); err != nil {
		panic(err)
	}
	gi := &mls.GroupInfo{
		GroupContext: mls.GroupContext{Version: mls.MLS10, CipherSuite: cs, GroupID: docGroupID(),
			TreeHash: fill(0x22, 32), ConfirmedTranscriptHash: []byte{}},
		ConfirmationTag: fill(0x33, 32),
	}
	if err := gi.Sign(key); err != nil {
		panic(err)
	}
	return CreateGroupRequest{GroupID: docGroupID(), LeafNode: leaf,
		GroupInfo: mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}}
}

// sampleSendMessage is samplePrivateMessage in the examples' group.
func sampleSendMessage() mls.MLSMessage {
	m := samplePrivateMessage()
	m.PrivateMessage.GroupID = docGroupID()
	return m
}

// sampleMLSBodies returns one body of every MLS-carrying request type.
func sampleMLSBodies() map[RequestType]RequestBody {
	member := mls.Sender{Type: mls.SenderMember, Index: 1}
	joiner := mls.Sender{Type: mls.SenderNewMemberCommit}
	update := func(typ RequestType) RequestBody {
		return RequestBody{Type: typ, GroupUpdate: sampleGroupUpdate(member)}
	}
	add := func(typ RequestType) RequestBody {
		b := update(typ)
		b.WelcomePackages = []WelcomePackage{sampleWelcomePackage()}
		return b
	}
	return map[RequestType]RequestBody{
		CreateGroup:       {Type: CreateGroup, CreateGroup: sampleCreateGroup()},
		DeleteGroup:       update(DeleteGroup),
		AddUsers:          add(AddUsers),
		RemoveUsers:       update(RemoveUsers),
		AddClients:        add(AddClients),
		RemoveClients:     update(RemoveClients),
		SelfRemoveClient:  {Type: SelfRemoveClient, Message: sampleSelfRemove()},
		UpdateClient:      update(UpdateClient),
		ExternalJoin:      {Type: ExternalJoin, GroupUpdate: sampleGroupUpdate(joiner)},
		SendMessage:       {Type: SendMessage, Message: sampleSendMessage()},
		ReInitializeGroup: update(ReInitializeGroup),
	}
}

// mlsBodySamples returns, for sampleMessages, a signed DSRequest of every
// MLS-carrying type and each body struct on its own.
func mlsBodySamples() map[string]sample {
	out := map[string]sample{}
	for typ, body := range sampleMLSBodies() {
		auth := AuthData{Type: AuthClientSignature, SenderIndex: 1, Timestamp: 1_790_000_060, Signature: fill(9, 64)}
		if typ == ExternalJoin {
			auth = AuthData{}
		}
		out["DSRequest/"+typ.String()] = sample{&DSRequest{Body: body, Auth: auth}, func() codec { return new(DSRequest) }}
	}
	cg := sampleCreateGroup()
	out["CreateGroupRequest"] = sample{&cg, func() codec { return new(CreateGroupRequest) }}
	gu := sampleGroupUpdate(mls.Sender{Type: mls.SenderMember, Index: 1})
	out["MLSGroupUpdate"] = sample{&gu, func() codec { return new(MLSGroupUpdate) }}
	pgi := PartialGroupInfo{Extensions: mls.Extensions{{Type: 0xf0a2, Data: []byte("x")}}, Signature: fill(0, 64)}
	out["PartialGroupInfo"] = sample{&pgi, func() codec { return new(PartialGroupInfo) }}
	wp := sampleWelcomePackage()
	out["WelcomePackage"] = sample{&wp, func() codec { return new(WelcomePackage) }}
	return out
}
