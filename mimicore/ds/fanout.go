package ds

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"

	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// fanoutBuilder collects the delivery of the messages one accepted request
// produces (docs/protocol.md §9, fan-out): a message to a group's members
// goes to the group's log once for all its local members (a
// store.GroupPost), a personal message (a Welcome) to its local
// recipients' queues, and either to the outbox of the provider each
// remote recipient's client URI names, one message per destination and at
// most store.MaxOutboxRecipients client ids each. The store writes it
// together with the state change (store.Fanout).
type fanoutBuilder struct {
	s       *Service
	groupID []byte
	out     store.Fanout
	// skipped counts recipients whose identity is not a client URI: a
	// leaf only the binding check's off switch lets in, which no queue or
	// provider can be named for.
	skipped int
}

// add delivers msg, sent by the client sender, to the personal queues of
// recipients (the BasicCredential identities of members, in leaf order).
func (b *fanoutBuilder) add(msg []byte, sender []byte, recipients [][]byte) {
	local := b.addRemote(msg, recipients)
	if b.s.DeliverToBackend {
		b.toBackend(msg, local)
		return
	}
	for part := range slices.Chunk(local, store.MaxAppendRecipients) {
		b.out.Local = append(b.out.Local, store.Delivery{Recipients: part, GroupID: b.groupID, Sender: clientSender(sender),
			Message: msg, Limits: b.s.QueueLimits})
	}
}

// post delivers msg, sent by the client sender, to the members of g but
// the one at leaf skip (none when skip is negative): once to the group's
// log for the local ones, whom the store knows (store.GroupPost: except
// does not get it, join become members after it, leave after it), and
// through the outbox to the remote ones. A local member is told by its
// identity's prefix, without a copy, so a post costs O(1) rows and no
// allocation per local member; a remote member's identity is copied and
// parsed for its destination. A post that no local client sees or joins
// after is not written.
func (b *fanoutBuilder) post(msg, sender []byte, g *mls.GroupState, skip int64, m membership) {
	v := b.s.memberView(g)
	locals := v.local
	remote := make([][]byte, 0, len(v.remote))
	skipRemote := false
	for _, r := range v.remote {
		if int64(r.leaf) == skip {
			skipRemote = true
			continue
		}
		remote = append(remote, r.id)
	}
	if skip >= 0 && !skipRemote {
		if _, ok := g.Member(uint32(skip)); ok {
			locals-- // the sender is a local client
		}
	}
	local := locals > 0
	// A member the prefix missed whose URI still names a provider served
	// here is one of the store's members all the same.
	if len(b.addRemote(msg, remote)) > 0 {
		local = true
	}
	if b.s.DeliverToBackend {
		if local {
			b.postToBackend(msg, g, m.except)
		}
		return
	}
	if !local && len(m.join) == 0 {
		return
	}
	b.out.Group = &store.GroupPost{GroupID: b.groupID, Sender: clientSender(sender), Message: msg,
		Except: m.except, Join: m.join, Leave: m.leave}
}

// seedMembers sets the group post's Members to the local members of base,
// the epoch the post is delivered in, for a group whose local members the
// store does not know (store.ErrGroupMembersUnknown: a group created
// before the store recorded them). It reports whether there was a post to
// complete, which the caller then writes again: once per such group, the
// only pass over its members that copies each one.
func (b *fanoutBuilder) seedMembers(base *mls.GroupState) bool {
	if b.out.Group == nil || b.out.Group.Members != nil {
		return false
	}
	b.out.Group.Members = append([]string{}, b.s.localMembers(base)...)
	return true
}

// postFrom delivers msg, sent by the member at leaf self of g, to the
// other members (post), the sender excepted.
func (b *fanoutBuilder) postFrom(msg []byte, g *mls.GroupState, self uint32) {
	var sender []byte
	var m membership
	if leaf, ok := g.Member(self); ok {
		sender = leaf.Credential().Identity
		if b.s.localClient(sender) {
			m.except = string(sender)
		}
	}
	b.post(msg, sender, g, int64(self), m)
}

// membership is what a group post changes of the local members.
type membership struct {
	except      string
	join, leave []string
}

// commitMembership is what an accepted commit changes of the group's
// local members: the local clients it added (and an external commit's
// joiner) join, the local members it removed leave, and a member
// committer is excepted. Client URIs are unique among a group's members
// (checkUniqueClients), so a client in both, the joiner of an external
// commit that removes its own old leaf, stays a member. It costs
// O(added + removed), not a pass over the members.
func (s *Service) commitMembership(base, next *mls.GroupState, info *mls.CommitInfo) membership {
	var m membership
	var added, removed []string
	localOf := func(g *mls.GroupState, i uint32) (string, bool) {
		leaf, ok := g.Member(i)
		if !ok {
			return "", false
		}
		id := leaf.Credential().Identity
		return string(id), s.localClient(id)
	}
	for _, a := range info.Added {
		if id, ok := localOf(next, a.Leaf); ok {
			added = append(added, id)
		}
	}
	switch info.Committer.Type {
	case mls.SenderNewMemberCommit:
		if id, ok := localOf(next, info.CommitterLeaf); ok {
			added = append(added, id)
		}
	case mls.SenderMember:
		if id, ok := localOf(base, info.Committer.Index); ok {
			m.except = id
		}
	}
	for _, i := range info.Removed {
		if id, ok := localOf(base, i); ok {
			removed = append(removed, id)
		}
	}
	m.join, m.leave = missing(added, removed), missing(removed, added)
	return m
}

// clientSender is sender as a queued message names it: empty when it is
// too long to store.
func clientSender(sender []byte) string {
	if len(sender) <= store.MaxClientURISize {
		return string(sender)
	}
	return ""
}

// localClient reports whether identity is a client URI of a provider this
// Delivery Service serves: a member whose messages it queues here.
func (s *Service) localClient(identity []byte) bool {
	prov, _, _, err := moh.ParseClientURI(identity)
	return err == nil && len(identity) <= store.MaxClientURISize && slices.Contains(s.Providers, string(prov))
}

// localPrefixes are the prefixes of the client URIs of the providers this
// Delivery Service serves, "mimi://<provider>/d/".
func (s *Service) localPrefixes() [][]byte {
	out := make([][]byte, len(s.Providers))
	for i, p := range s.Providers {
		out[i] = []byte("mimi://" + p + "/d/")
	}
	return out
}

// localMembers lists the distinct local clients among g's members, in leaf
// order: the group's local members when it is created.
func (s *Service) localMembers(g *mls.GroupState) []string {
	var out []string
	for _, i := range g.Tree().Members() {
		leaf, _ := g.Member(i)
		if id := leaf.Credential().Identity; s.localClient(id) && !slices.Contains(out, string(id)) {
			out = append(out, string(id))
		}
	}
	return out
}

// missing returns, in order, the clients of a that b lacks.
func missing(a, b []string) []string {
	in := make(map[string]bool, len(b))
	for _, c := range b {
		in[c] = true
	}
	var out []string
	for _, c := range a {
		if !in[c] {
			out = append(out, c)
		}
	}
	return out
}

// addRemote queues msg in the outbox for the remote ones among
// recipients, and returns the local ones.
func (b *fanoutBuilder) addRemote(msg []byte, recipients [][]byte) (local []string) {
	var remote []store.OutboxMessage // one per destination, in first-seen order
	for _, r := range recipients {
		prov, _, _, err := moh.ParseClientURI(r)
		if err != nil || len(r) > store.MaxClientURISize {
			b.skipped++
			continue
		}
		if slices.Contains(b.s.Providers, string(prov)) {
			local = append(local, string(r))
			continue
		}
		i := slices.IndexFunc(remote, func(m store.OutboxMessage) bool { return m.Destination == string(prov) })
		if i < 0 {
			remote = append(remote, store.OutboxMessage{Destination: string(prov), GroupID: b.groupID, Message: msg})
			i = len(remote) - 1
		}
		remote[i].Recipients = append(remote[i].Recipients, string(r))
	}
	for _, m := range remote {
		for part := range slices.Chunk(m.Recipients, store.MaxOutboxRecipients) {
			m.Recipients = part
			b.out.Remote = append(b.out.Remote, m)
		}
	}
	return local
}

// checkSize refuses a fan-out of more messages than one write of the
// store carries (store.MaxFanoutMessages): a message for members at more
// destination providers than that (each also split by
// store.MaxOutboxRecipients), or Welcomes for as many. The refusal is
// too_large, a permanent answer; the store's own refusal of the write
// would be a failure of the store.
func (b *fanoutBuilder) checkSize(what string) error {
	if n := len(b.out.Local) + len(b.out.Remote); n > store.MaxFanoutMessages {
		return moh.Errorf(moh.CodeTooLarge, "%s: delivering it takes %d messages (one per destination provider and %d of its recipients), more than the %d one request may make",
			what, n, store.MaxOutboxRecipients, store.MaxFanoutMessages)
	}
	return nil
}

// resolveSender names the group's hub as the sender of the messages for
// other providers: the provider domain that signs their deliver_message.
// Only a fan-out with such messages looks it up.
func (b *fanoutBuilder) resolveSender(ctx context.Context) error {
	if len(b.out.Remote) == 0 {
		return nil
	}
	hub, err := b.s.Store.GroupHub(ctx, b.groupID)
	if err != nil {
		return fmt.Errorf("looking up the group's hub: %w", err)
	}
	for i := range b.out.Remote {
		b.out.Remote[i].Sender = hub
	}
	return nil
}

// notify tells s.Outbound of the destinations the written fan-out left
// messages for. ids, when not nil, are the outbox ids the write gave
// b.out.Remote (store.Delivered.Outbox): a message with id 0 was dropped
// at its destination's backlog bound, and a destination that got none of
// the write's messages is not woken, so a dead peer past its bound is not
// retried at every message.
func (b *fanoutBuilder) notify(ids []uint64) {
	if b.s.Outbound == nil {
		return
	}
	var seen []string
	for i, m := range b.out.Remote {
		if ids != nil && i < len(ids) && ids[i] == 0 {
			continue
		}
		if !slices.Contains(seen, m.Destination) {
			seen = append(seen, m.Destination)
			b.s.Outbound(m.Destination)
		}
	}
}

// report logs what the delivery could not do: recipients skipped for want
// of a client URI, and local queues that were full. Neither undoes the
// accepted request; a member whose queue was full has missed a message
// and must resynchronise (external join), as after any state loss.
func (b *fanoutBuilder) report(what string, d store.Delivered) {
	log := b.s.logger()
	if b.skipped > 0 {
		log.Warn("recipients without a client URI were not delivered to",
			zap.String("request", what), zap.String("group_id", hex.EncodeToString(b.groupID)),
			zap.Int("recipients", b.skipped))
	}
	for i, outs := range d.Local {
		for j, a := range outs {
			if errors.Is(a.Err, store.ErrQueueFull) {
				log.Warn("a local queue is full: its client missed a message",
					zap.String("request", what), zap.String("group_id", hex.EncodeToString(b.groupID)),
					zap.String("client", b.out.Local[i].Recipients[j]), zap.Error(a.Err))
			}
		}
	}
}

// MaxDeliveredMessage is the largest MLSMessage the DS stores and
// delivers (a commit, each of its Welcomes, an application message, a
// self-remove proposal): one that fits, with a length prefix of its own,
// in a deliver_message payload (moh.MaxPayloadLen) beside the largest
// group_id and 64 client ids of 255 bytes (queueingOverhead), and so in
// a local queue too (store.MaxQueuedMessageSize). A larger one is 413
// too_large.
const MaxDeliveredMessage = moh.MaxPayloadLen - queueingOverhead

// queueingOverhead is the most a QueueingServiceRequest holds besides its
// message: group_id<V> of 255 bytes (a 2-byte length) and client_ids<V>
// of 64 ids of 255 bytes (2-byte lengths each; a 4-byte length for the
// 16,448 bytes of the list).
const queueingOverhead = (2 + moh.MaxGroupIDLen) + (4 + moh.MaxClientIDs*(2+moh.MaxURILen))

// checkDelivered refuses msg, encoded, when it is larger than the DS
// delivers (MaxDeliveredMessage).
func checkDelivered(what, part string, msg []byte) error {
	if len(msg) > MaxDeliveredMessage {
		return moh.Errorf(moh.CodeTooLarge, "%s: %s is %d bytes; a message the DS delivers is at most %d",
			what, part, len(msg), MaxDeliveredMessage)
	}
	return nil
}

// encodeCommitFanout encodes an accepted commit and its Welcomes and
// builds their delivery (commitFanout); a message larger than the DS
// delivers, or a delivery of too many messages (checkSize), is 413
// too_large.
func (s *Service) encodeCommitFanout(what string, base, next *mls.GroupState, info *mls.CommitInfo, commit *mls.MLSMessage, welcomes []moh.WelcomePackage) (*fanoutBuilder, error) {
	enc, err := wire.Marshal(commit)
	if err != nil {
		return nil, fmt.Errorf("%s: encoding the commit: %w", what, err)
	}
	if err := checkDelivered(what, "the commit", enc); err != nil {
		return nil, err
	}
	welcomeEnc := make([][]byte, len(welcomes))
	for i := range welcomes {
		if welcomeEnc[i], err = wire.Marshal(&welcomes[i].Welcome); err != nil {
			return nil, fmt.Errorf("%s: encoding Welcome %d: %w", what, i, err)
		}
		if err := checkDelivered(what, fmt.Sprintf("Welcome %d", i), welcomeEnc[i]); err != nil {
			return nil, err
		}
	}
	fan := s.commitFanout(base, next, info, enc, welcomes, welcomeEnc)
	if err := fan.checkSize(what); err != nil {
		return nil, err
	}
	return fan, nil
}

// commitFanout is the delivery of an accepted commit: the commit to every
// member of the base epoch but its sender (removed members included, so
// they learn of it), then each Welcome to the clients whose KeyPackages it
// names. For the local members the commit is a group post whose Join and
// Leave are the local clients the commit added and removed.
func (s *Service) commitFanout(base, next *mls.GroupState, info *mls.CommitInfo, commit []byte, welcomes []moh.WelcomePackage, welcomeEnc [][]byte) *fanoutBuilder {
	b := &fanoutBuilder{s: s, groupID: base.GroupID()}
	var sender []byte
	if leaf, ok := next.Member(info.CommitterLeaf); ok {
		sender = leaf.Credential().Identity
	}
	skip := int64(-1)
	if info.Committer.Type == mls.SenderMember {
		skip = int64(info.Committer.Index)
	}
	b.post(commit, sender, base, skip, s.commitMembership(base, next, info))
	joiner := make(map[string][]byte, len(info.Added))
	for _, a := range info.Added {
		if leaf, ok := next.Member(a.Leaf); ok {
			joiner[string(a.KeyPackageRef)] = leaf.Credential().Identity
		}
	}
	for k, wp := range welcomes {
		var to [][]byte
		for _, sec := range wp.Welcome.Welcome.Secrets {
			if id, ok := joiner[string(sec.NewMember)]; ok && !slices.ContainsFunc(to, func(x []byte) bool { return string(x) == string(id) }) {
				to = append(to, id)
			}
		}
		b.add(welcomeEnc[k], sender, to)
	}
	return b
}
