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
	for part := range slices.Chunk(local, store.MaxAppendRecipients) {
		b.out.Local = append(b.out.Local, store.Delivery{Recipients: part, GroupID: b.groupID, Sender: clientSender(sender),
			Message: msg, Limits: b.s.QueueLimits})
	}
}

// post delivers msg, sent by the client sender, to the group's members:
// once to the group's log for the local ones, who are the store's
// (store.GroupPost: except does not get it, join become members after it,
// leave after it), and through the outbox to the remote ones among
// recipients. A post no local client sees or joins after is not written.
func (b *fanoutBuilder) post(msg []byte, sender []byte, recipients [][]byte, m membership) {
	local := b.addRemote(msg, recipients)
	if len(local) == 0 && len(m.join) == 0 {
		return
	}
	b.out.Group = &store.GroupPost{GroupID: b.groupID, Sender: clientSender(sender), Message: msg,
		Except: m.except, Join: m.join, Leave: m.leave}
}

// membership is what a group post changes of the local members.
type membership struct {
	except      string
	join, leave []string
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

// localMembers lists the distinct local clients among g's members, in leaf
// order: the group's local members as the store records them.
func (s *Service) localMembers(g *mls.GroupState) []string {
	var out []string
	seen := map[string]bool{}
	for _, i := range g.Tree().Members() {
		leaf, _ := g.Member(i)
		id := leaf.Credential().Identity
		if !seen[string(id)] && s.localClient(id) {
			seen[string(id)] = true
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

// othersOf returns the identity of the member at leaf self, the sender,
// and those of the other members in leaf order, the recipients; except
// is the sender's identity when no other leaf has it, the member a group
// post to the others leaves out ("" when another leaf of the same client
// gets it).
func othersOf(g *mls.GroupState, self uint32) (sender []byte, others [][]byte, except string) {
	for _, i := range g.Tree().Members() {
		leaf, _ := g.Member(i)
		if i == self {
			sender = leaf.Credential().Identity
			continue
		}
		others = append(others, leaf.Credential().Identity)
	}
	if sender != nil && !slices.ContainsFunc(others, func(o []byte) bool { return string(o) == string(sender) }) {
		except = string(sender)
	}
	return sender, others, except
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
// messages for.
func (b *fanoutBuilder) notify() {
	if b.s.Outbound == nil {
		return
	}
	var seen []string
	for _, m := range b.out.Remote {
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

// encodeCommitFanout encodes an accepted commit and its Welcomes and
// builds their delivery (commitFanout).
func (s *Service) encodeCommitFanout(what string, base, next *mls.GroupState, info *mls.CommitInfo, commit *mls.MLSMessage, welcomes []moh.WelcomePackage) (*fanoutBuilder, error) {
	enc, err := wire.Marshal(commit)
	if err != nil {
		return nil, fmt.Errorf("%s: encoding the commit: %w", what, err)
	}
	welcomeEnc := make([][]byte, len(welcomes))
	for i := range welcomes {
		if welcomeEnc[i], err = wire.Marshal(&welcomes[i].Welcome); err != nil {
			return nil, fmt.Errorf("%s: encoding Welcome %d: %w", what, i, err)
		}
	}
	return s.commitFanout(base, next, info, enc, welcomes, welcomeEnc), nil
}

// commitFanout is the delivery of an accepted commit: the commit to every
// member of the base epoch but its sender (removed members included, so
// they learn of it), then each Welcome to the clients whose KeyPackages it
// names. For the local members the commit is a group post whose Join and
// Leave are the local clients the commit made members and non-members.
func (s *Service) commitFanout(base, next *mls.GroupState, info *mls.CommitInfo, commit []byte, welcomes []moh.WelcomePackage, welcomeEnc [][]byte) *fanoutBuilder {
	b := &fanoutBuilder{s: s, groupID: base.GroupID()}
	var sender []byte
	if leaf, ok := next.Member(info.CommitterLeaf); ok {
		sender = leaf.Credential().Identity
	}
	var members [][]byte
	var m membership
	if info.Committer.Type == mls.SenderMember {
		_, members, m.except = othersOf(base, info.Committer.Index)
		if !s.localClient([]byte(m.except)) {
			m.except = ""
		}
	} else {
		for _, i := range base.Tree().Members() {
			leaf, _ := base.Member(i)
			members = append(members, leaf.Credential().Identity)
		}
	}
	before, after := s.localMembers(base), s.localMembers(next)
	m.join, m.leave = missing(after, before), missing(before, after)
	b.post(commit, sender, members, m)
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
