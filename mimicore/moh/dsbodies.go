package moh

import (
	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// MaxWelcomePackages bounds the welcome_packages of one add_users or
// add_clients body (docs/protocol.md §1.2): one Welcome per destination
// provider.
const MaxWelcomePackages = 64

// The MLS-carrying DS request bodies of docs/protocol.md §5.2 (types 1-10
// and 14). Their MLS values are decoded strictly by package mls; on top of
// that the decoders check what §5.2 fixes about them: the wire format and
// content type of every embedded MLSMessage, the sender type of commits
// and proposals, and group ids of 1-255 bytes. Whether the messages are
// valid for the group (signatures, epochs, proposal rules) is the Delivery
// Service's business.

// CreateGroupRequest is the body of create_group (type 1).
type CreateGroupRequest struct {
	// GroupID is the id request_group_id handed out, 1-255 bytes.
	GroupID []byte
	// LeafNode is the creator's leaf, which becomes leaf 0.
	LeafNode mls.LeafNode
	// GroupInfo is an MLSMessage of wire format mls_group_info whose
	// group_id is GroupID.
	GroupInfo mls.MLSMessage
}

// MarshalWire implements wire.Marshaler.
func (c *CreateGroupRequest) MarshalWire(b *cryptobyte.Builder) {
	wire.AddOpaque(b, c.GroupID)
	c.LeafNode.MarshalWire(b)
	c.GroupInfo.MarshalWire(b)
}

// UnmarshalWire implements wire.Unmarshaler.
func (c *CreateGroupRequest) UnmarshalWire(s *cryptobyte.String) bool {
	if !readGroupID(s, &c.GroupID) || !c.LeafNode.UnmarshalWire(s) || !c.GroupInfo.UnmarshalWire(s) {
		return false
	}
	return c.GroupInfo.WireFormat == mls.WireFormatGroupInfo &&
		string(c.GroupInfo.GroupInfo.GroupContext.GroupID) == string(c.GroupID)
}

// PartialGroupInfo holds the fields of the new epoch's GroupInfo that the
// Delivery Service cannot compute: its extensions and the committer's
// signature over the assembled GroupInfo.
type PartialGroupInfo struct {
	Extensions mls.Extensions
	Signature  []byte // 1-256 bytes
}

// MarshalWire implements wire.Marshaler.
func (p *PartialGroupInfo) MarshalWire(b *cryptobyte.Builder) {
	p.Extensions.MarshalWire(b)
	wire.AddOpaque(b, p.Signature)
}

// UnmarshalWire implements wire.Unmarshaler.
func (p *PartialGroupInfo) UnmarshalWire(s *cryptobyte.String) bool {
	return p.Extensions.UnmarshalWire(s) && readSignature(s, &p.Signature)
}

// MLSGroupUpdate is a commit and the partial GroupInfo of the epoch it
// starts: the body of delete_group, remove_users, remove_clients,
// update_client, external_join and re_initialize_group, and the first
// field of add_users and add_clients.
type MLSGroupUpdate struct {
	// Commit is a PublicMessage of content type commit whose sender is a
	// member, or a new_member_commit for external_join.
	Commit           mls.MLSMessage
	PartialGroupInfo PartialGroupInfo
}

// MarshalWire implements wire.Marshaler.
func (u *MLSGroupUpdate) MarshalWire(b *cryptobyte.Builder) {
	u.Commit.MarshalWire(b)
	u.PartialGroupInfo.MarshalWire(b)
}

// UnmarshalWire implements wire.Unmarshaler. It accepts a commit from a
// member or a new member; unmarshalFor checks which one the request type
// requires.
func (u *MLSGroupUpdate) UnmarshalWire(s *cryptobyte.String) bool {
	return u.Commit.UnmarshalWire(s) &&
		(isHandshake(&u.Commit, mls.ContentCommit, mls.SenderMember) ||
			isHandshake(&u.Commit, mls.ContentCommit, mls.SenderNewMemberCommit)) &&
		u.PartialGroupInfo.UnmarshalWire(s)
}

// unmarshalFor reads an MLSGroupUpdate whose commit has the given sender
// type.
func (u *MLSGroupUpdate) unmarshalFor(s *cryptobyte.String, sender mls.SenderType) bool {
	return u.UnmarshalWire(s) && u.Commit.PublicMessage.Content.Sender.Type == sender
}

// WelcomePackage carries the Welcome of one destination of an add_users or
// add_clients commit.
type WelcomePackage struct {
	Welcome mls.MLSMessage // wire format mls_welcome
}

// MarshalWire implements wire.Marshaler.
func (w *WelcomePackage) MarshalWire(b *cryptobyte.Builder) { w.Welcome.MarshalWire(b) }

// UnmarshalWire implements wire.Unmarshaler.
func (w *WelcomePackage) UnmarshalWire(s *cryptobyte.String) bool {
	return w.Welcome.UnmarshalWire(s) && w.Welcome.WireFormat == mls.WireFormatWelcome
}

// addWelcomePackages writes a WelcomePackage<V> vector.
func addWelcomePackages(b *cryptobyte.Builder, list []WelcomePackage) {
	wire.AddVector(b, func(b *cryptobyte.Builder) {
		for i := range list {
			list[i].MarshalWire(b)
		}
	})
}

// readWelcomePackages reads a WelcomePackage<V> vector of 1 to
// MaxWelcomePackages items.
func readWelcomePackages(s *cryptobyte.String, out *[]WelcomePackage) bool {
	var list cryptobyte.String
	if !wire.ReadVector(s, &list) || list.Empty() {
		return false
	}
	*out = nil
	for !list.Empty() {
		if len(*out) == MaxWelcomePackages {
			return false
		}
		var w WelcomePackage
		if !w.UnmarshalWire(&list) {
			return false
		}
		*out = append(*out, w)
	}
	return true
}

// isHandshake reports whether m is a PublicMessage of content type ct from
// a sender of type st, for a group id of 1-255 bytes.
func isHandshake(m *mls.MLSMessage, ct mls.ContentType, st mls.SenderType) bool {
	if m.WireFormat != mls.WireFormatPublicMessage {
		return false
	}
	c := &m.PublicMessage.Content
	return c.ContentType == ct && c.Sender.Type == st && validGroupID(c.GroupID)
}

// isSelfRemove reports whether m is what self_remove_client carries: a
// member's PublicMessage proposal of type Remove.
func isSelfRemove(m *mls.MLSMessage) bool {
	return isHandshake(m, mls.ContentProposal, mls.SenderMember) &&
		m.PublicMessage.Content.Proposal.Type == mls.ProposalRemove
}

// isApplication reports whether m is what send_message carries: an
// application PrivateMessage.
func isApplication(m *mls.MLSMessage) bool {
	return m.WireFormat == mls.WireFormatPrivateMessage &&
		m.PrivateMessage.ContentType == mls.ContentApplication && validGroupID(m.PrivateMessage.GroupID)
}

// validGroupID reports whether id has the length of a group id.
func validGroupID(id []byte) bool { return len(id) > 0 && len(id) <= MaxGroupIDLen }

// readSignature reads a signature<V> of 1 to MaxSignatureLen bytes.
func readSignature(s *cryptobyte.String, out *[]byte) bool {
	return wire.ReadOpaqueMax(s, out, MaxSignatureLen) && len(*out) > 0
}

// marshalMLSBody writes the fields of an MLS-carrying body (after the type
// byte); it reports false for the other types.
func (r *RequestBody) marshalMLSBody(b *cryptobyte.Builder) bool {
	switch r.Type {
	case CreateGroup:
		r.CreateGroup.MarshalWire(b)
	case DeleteGroup, RemoveUsers, RemoveClients, UpdateClient, ExternalJoin, ReInitializeGroup:
		r.GroupUpdate.MarshalWire(b)
	case AddUsers, AddClients:
		r.GroupUpdate.MarshalWire(b)
		addWelcomePackages(b, r.WelcomePackages)
	case SelfRemoveClient, SendMessage:
		r.Message.MarshalWire(b)
	default:
		return false
	}
	return true
}

// unmarshalMLSBody reads the fields of an MLS-carrying body of r.Type, the
// type byte already read.
func (r *RequestBody) unmarshalMLSBody(s *cryptobyte.String) bool {
	switch r.Type {
	case CreateGroup:
		return r.CreateGroup.UnmarshalWire(s)
	case DeleteGroup, RemoveUsers, RemoveClients, UpdateClient, ReInitializeGroup:
		return r.GroupUpdate.unmarshalFor(s, mls.SenderMember)
	case ExternalJoin:
		return r.GroupUpdate.unmarshalFor(s, mls.SenderNewMemberCommit)
	case AddUsers, AddClients:
		return r.GroupUpdate.unmarshalFor(s, mls.SenderMember) && readWelcomePackages(s, &r.WelcomePackages)
	case SelfRemoveClient:
		return r.Message.UnmarshalWire(s) && isSelfRemove(&r.Message)
	case SendMessage:
		return r.Message.UnmarshalWire(s) && isApplication(&r.Message)
	}
	return false
}

// GroupID returns the group a request body is about: the group_id field of
// the non-MLS bodies (for attachment_copy the source group), the body's
// group_id for create_group, and the group_id of the embedded commit,
// proposal or application message otherwise. It is nil for
// request_group_id and for types without a client body.
func (r *RequestBody) GroupID() []byte {
	switch r.Type {
	case CreateGroup:
		return r.CreateGroup.GroupID
	case DeleteGroup, AddUsers, RemoveUsers, AddClients, RemoveClients, UpdateClient, ExternalJoin, ReInitializeGroup:
		return r.GroupUpdate.Commit.GroupID()
	case SelfRemoveClient, SendMessage:
		return r.Message.GroupID()
	case WelcomeInfo:
		return r.WelcomeInfo.GroupID
	case ExternalCommitInfo:
		return r.ExternalCommitInfo.GroupID
	case AttachmentUpload:
		return r.Upload.GroupID
	case AttachmentDownload, AttachmentDelete:
		return r.Attachment.GroupID
	case AttachmentCopy:
		return r.Copy.GroupID
	}
	return nil
}
