package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/ds"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// ErrUnknownGroup is returned for a group the client is not in (or no
// longer is).
var ErrUnknownGroup = errors.New("client: not a member of the group")

// group is what the client keeps of a group it is in: its Member of the
// current epoch and, after its own commit moved the group on, its Member
// of the epoch before, which opens the application messages other members
// sent in that epoch before the commit was accepted (they are queued ahead
// of anything of the new epoch). The previous epoch's Member is dropped as
// soon as the queue shows a message of the new epoch, or another member's
// commit moves the group on, so its keys live no longer than needed.
// After several own commits in a row, the Members of the epochs before
// prev are in older (oldest first, consecutive epochs, at most
// maxOlderEpochs): a message of each may still be queued. Opening a
// message of an epoch drops the Members of the epochs before it.
//
// pending are the proposals of the current epoch the client received (a
// member's self-remove, which the Delivery Service keeps until a commit
// covers it), each an encoded MLSMessage: the next commit the client
// makes covers them by reference, and a commit it receives resolves its
// references with them. They go when the epoch does.
//
// attachments are the secrets of the attachments whose references the
// application messages the client opened carried (keepAttachments), and of
// those the client sealed itself (PutAttachment: the DS does not send a
// member its own messages), so that GetAttachment opens them in the epoch
// of their message after the group moved on; the last maxKeptAttachments
// are kept, across epochs, and the last maxKeptPerSender of one sender.
//
// next is the Member of the epoch the client's own commit starts, while
// the Delivery Service's answer to it is not known: it is on disk before
// the commit leaves, goes when the DS refuses the commit (a 4xx DSError)
// and is kept when the answer is lost (a 504, a connection reset after the
// DS's write), since the DS does not send the committer its commit. The
// client adopts it when the queue shows a message of its epoch, or the DS's
// GroupInfo does (settle); a commit of another member in the current epoch
// drops it.
//
// joining marks a group the client joined with an external commit, or
// created (create_group), whose answer was lost: it is on disk before the
// request leaves, and is
// confirmed by a message of its epoch or later, or by the DS's GroupInfo
// (settle); a refusal of the join (a 4xx DSError), or an answer to that
// question that says the leaf is not the client's (notMember), forgets the
// group.
type group struct {
	cur, prev   *mls.Member
	older       []*mls.Member
	pending     [][]byte
	attachments []keptAttachment
	next        *mls.Member
	joining     bool
}

// maxOlderEpochs bounds group.older: with prev, the Members of the last
// maxOlderEpochs+1 epochs before the current one are kept after the
// client's own commits in a row.
const maxOlderEpochs = 3

// advance returns g moved to next, the Member of the epoch after g.cur
// that the client's own commit started: g.cur becomes prev, and g.prev
// joins older (the oldest going beyond maxOlderEpochs). The pending
// proposals and the pending next epoch go with the epoch.
func (g *group) advance(next *mls.Member) *group {
	older := slices.Clone(g.older)
	if g.prev != nil {
		older = append(older, g.prev)
	}
	if len(older) > maxOlderEpochs {
		older = slices.Delete(older, 0, len(older)-maxOlderEpochs)
	}
	return &group{cur: next, prev: g.cur, older: older, attachments: g.attachments}
}

// previous returns the client's Member of epoch e among g.prev and
// g.older, with the Members of e and the epochs after it (the ones to keep
// once a message of e is opened), or nil.
func (g *group) previous(e uint64) (m *mls.Member, prev *mls.Member, older []*mls.Member) {
	if g.prev != nil && g.prev.State().Epoch() == e {
		return g.prev, g.prev, nil
	}
	for i, o := range g.older {
		if o.State().Epoch() == e {
			return o, g.prev, slices.Clone(g.older[i:])
		}
	}
	return nil, nil, nil
}

// keptAttachment is the attachment_exporter_secret (docs/protocol.md
// §6.1) of one reference an application message carried, in the epoch
// of that message: it opens that attachment, and only that one.
type keptAttachment struct {
	sender              uint32
	nonce, hash, secret []byte
}

// resolver resolves proposal references from g's pending proposals,
// verified against m (the Member of their epoch).
func (g *group) resolver(m *mls.Member) (refs [][]byte, resolve mls.ProposalResolver) {
	byRef := map[string]*mls.AuthenticatedContent{}
	for _, p := range g.pending {
		msg, err := mls.DecodeMLSMessage(p)
		if err != nil {
			continue
		}
		ac, ref, err := m.VerifyProposal(msg)
		if err != nil {
			continue
		}
		if _, dup := byRef[string(ref)]; !dup {
			byRef[string(ref)] = ac
			refs = append(refs, ref)
		}
	}
	return refs, func(ref []byte) (*mls.AuthenticatedContent, error) {
		if ac, ok := byRef[string(ref)]; ok {
			return ac, nil
		}
		return nil, fmt.Errorf("proposal %x is not among the pending ones", ref)
	}
}

// loadGroup returns what the client keeps of group groupID, from memory or
// from its file. c.mu is held.
func (c *Client) loadGroup(groupID []byte) (*group, error) {
	if c.closed {
		return nil, errors.New("client: closed")
	}
	if g, ok := c.members[string(groupID)]; ok {
		return g, nil
	}
	i := c.rec.group(groupID)
	if i < 0 {
		return nil, fmt.Errorf("%w %x", ErrUnknownGroup, groupID)
	}
	data, err := os.ReadFile(groupPath(c.dir, c.rec.groups[i].file))
	if err != nil {
		return nil, fmt.Errorf("loading group %x: %w", groupID, err)
	}
	g, err := decodeGroup(data)
	if err != nil {
		return nil, fmt.Errorf("loading group %x: %w", groupID, err)
	}
	if !bytes.Equal(g.cur.State().GroupID(), groupID) {
		return nil, fmt.Errorf("loading group %x: %w: the file holds another group", groupID, ErrStateEncoding)
	}
	c.members[string(groupID)] = g
	return g, nil
}

// member returns the client's current Member of group groupID. c.mu is
// held.
func (c *Client) member(groupID []byte) (*mls.Member, error) {
	g, err := c.loadGroup(groupID)
	if err != nil {
		return nil, err
	}
	return g.cur, nil
}

// storeMember stores m as the client's current Member of its group,
// keeping the previous epochs' Members only while m is of the same epoch
// as the one it replaces (a message protected or opened). c.mu is held.
func (c *Client) storeMember(m *mls.Member) error {
	g := &group{cur: m}
	if old, ok := c.members[string(m.State().GroupID())]; ok && old.cur.State().Epoch() == m.State().Epoch() {
		g.prev, g.older = old.prev, old.older
	}
	return c.storeGroup(g)
}

// storeGroup writes g to its group's file: a known group's file is
// replaced, a new group gets a new file and then a record that names it.
// A g without pending proposals, or without a pending next epoch, keeps
// those of the group it replaces while the epoch is the same; a g without
// kept attachment secrets keeps those of the group it replaces. c.mu is
// held.
func (c *Client) storeGroup(g *group) error {
	groupID := g.cur.State().GroupID()
	if old, ok := c.members[string(groupID)]; ok && old.cur.State().Epoch() == g.cur.State().Epoch() {
		if g.pending == nil {
			g.pending = old.pending
		}
		if g.next == nil {
			g.next = old.next
		}
		g.joining = g.joining || old.joining
	}
	if old, ok := c.members[string(groupID)]; ok && g.attachments == nil {
		g.attachments = old.attachments
	}
	return c.writeGroup(g)
}

// writeGroup writes g as it is to its group's file (storeGroup). c.mu is
// held.
func (c *Client) writeGroup(g *group) error {
	groupID := g.cur.State().GroupID()
	data, err := encodeGroup(g)
	if err != nil {
		return fmt.Errorf("storing group %x: %w", groupID, err)
	}
	if i := c.rec.group(groupID); i >= 0 {
		if err := writeFileAtomic(groupPath(c.dir, c.rec.groups[i].file), data); err != nil {
			// The cached Members may be ahead of the file (Protect and
			// Unprotect use keys up in place): the next use reads the
			// file again, so that a message whose key the failed write
			// would have erased is still opened.
			delete(c.members, string(groupID))
			return fmt.Errorf("storing group %x: %w", groupID, err)
		}
	} else {
		rec := c.rec.clone()
		sg := storedGroup{groupID: groupID, file: rec.nextFile}
		rec.nextFile++
		rec.groups = append(rec.groups, sg)
		if err := writeFileAtomic(groupPath(c.dir, sg.file), data); err != nil {
			return fmt.Errorf("storing group %x: %w", groupID, err)
		}
		if err := c.saveRecord(rec); err != nil {
			return fmt.Errorf("storing group %x: %w", groupID, err)
		}
	}
	c.members[string(groupID)] = g
	return nil
}

// forget drops group groupID from the client's state: the record first,
// then the file and the group's kept message (a crash between leaves
// orphan files that Open removes).
// c.mu is held.
func (c *Client) forget(groupID []byte) error {
	i := c.rec.group(groupID)
	if i < 0 {
		return nil
	}
	file := c.rec.groups[i].file
	rec := c.rec.clone()
	rec.groups = slices.Delete(rec.groups, i, i+1)
	if err := c.saveRecord(rec); err != nil {
		return fmt.Errorf("forgetting group %x: %w", groupID, err)
	}
	delete(c.members, string(groupID))
	if err := os.Remove(groupPath(c.dir, file)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("forgetting group %x: %w", groupID, err)
	}
	// A message kept for the group goes with it (an orphan otherwise,
	// which Open removes).
	if err := os.Remove(filepath.Join(c.dir, outboxDir, strconv.FormatUint(file, 10))); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("forgetting group %x: %w", groupID, err)
	}
	return nil
}

// sign encodes body as a DSRequest signed by the client as leaf index.
func (c *Client) sign(body moh.RequestBody, index uint32) ([]byte, error) {
	return c.signAt(body, index, c.now())
}

// signAt is sign under the timestamp of at.
func (c *Client) signAt(body moh.RequestBody, index uint32, at time.Time) ([]byte, error) {
	req, err := ds.SignRequest(c.rec.suite, c.signer, body, ds.ClientSignature(index, at))
	if err != nil {
		return nil, err
	}
	return req, nil
}

// partialGroupInfo returns the PartialGroupInfo of gi for the Delivery
// Service: its extensions without ratchet_tree (the DS serves the tree),
// signed again by the client, the GroupInfo's signer, when gi carried one.
func (c *Client) partialGroupInfo(gi *mls.GroupInfo) (moh.PartialGroupInfo, error) {
	if _, ok := gi.Extensions.Find(mls.ExtRatchetTree); !ok {
		return moh.PartialGroupInfo{Extensions: gi.Extensions, Signature: gi.Signature}, nil
	}
	out := *gi
	out.Extensions = slices.DeleteFunc(slices.Clone(gi.Extensions), func(e mls.Extension) bool { return e.Type == mls.ExtRatchetTree })
	if err := out.Sign(c.signer); err != nil {
		return moh.PartialGroupInfo{}, fmt.Errorf("signing the GroupInfo: %w", err)
	}
	return moh.PartialGroupInfo{Extensions: out.Extensions, Signature: out.Signature}, nil
}

// CreateGroup creates a group of which the client is the only member,
// hosted by its gateway, and returns its id (16 random bytes). When the
// answer is lost, the group is kept, pending (Groups lists it, and the
// error names it): its next use asks the Delivery Service whether it
// created it, and forgets it when not.
func (c *Client) CreateGroup(ctx context.Context) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("creating group: client closed")
	}
	if err := c.freshBinding(ctx); err != nil {
		return nil, fmt.Errorf("creating group: %w", err)
	}
	gid, err := newSeed()
	if err != nil {
		return nil, fmt.Errorf("creating group: %w", err)
	}
	gid = gid[:16]
	leafSeed, err := newSeed()
	if err != nil {
		return nil, fmt.Errorf("creating group: %w", err)
	}
	leafKey, encPub, err := c.deriveKey(leafSeed)
	if err != nil {
		return nil, fmt.Errorf("creating group: %w", err)
	}
	leaf, err := c.leafTemplate()
	if err != nil {
		return nil, fmt.Errorf("creating group: %w", err)
	}
	leaf.EncryptionKey, leaf.Source = encPub, mls.SourceKeyPackage
	leaf.Lifetime = mls.Lifetime{NotBefore: uint64(max(c.now().Unix()-3600, 0)), NotAfter: c.binding.NotAfter}
	if err := leaf.Sign(c.rec.suite, c.signer, nil, 0); err != nil {
		return nil, fmt.Errorf("creating group: %w", err)
	}
	m, err := mls.NewGroup(mls.GroupOptions{CipherSuite: c.rec.suite, GroupID: gid, Leaf: &leaf, LeafKey: leafKey, Signer: c.signer})
	if err != nil {
		return nil, fmt.Errorf("creating group: %w", err)
	}
	gi, err := m.GroupInfo()
	if err != nil {
		return nil, fmt.Errorf("creating group: %w", err)
	}
	pgi, err := c.partialGroupInfo(gi)
	if err != nil {
		return nil, fmt.Errorf("creating group: %w", err)
	}
	gi.Extensions, gi.Signature = pgi.Extensions, pgi.Signature
	req, err := c.sign(moh.RequestBody{Type: moh.CreateGroup, CreateGroup: moh.CreateGroupRequest{GroupID: gid, LeafNode: leaf,
		GroupInfo: mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}}}, 0)
	if err != nil {
		return nil, fmt.Errorf("creating group: %w", err)
	}
	// The group is on disk before the request leaves, marked joining:
	// when the answer is lost, the DS may have created it, and the next
	// use of the group asks (settle). A retry of CreateGroup makes another
	// group.
	if err := c.storeGroup(&group{cur: m, joining: true}); err != nil {
		return nil, fmt.Errorf("creating group: %w", err)
	}
	if _, err := c.postDS(ctx, "/group_operation", "create_group", req); err != nil {
		if refused(err) {
			if ferr := c.forget(gid); ferr != nil {
				return nil, fmt.Errorf("creating group: %w (and forgetting the group: %v)", err, ferr)
			}
			return nil, fmt.Errorf("creating group: %w", err)
		}
		return nil, fmt.Errorf("creating group %x: %w (kept, pending: its next use asks the Delivery Service whether it exists)", gid, err)
	}
	if err := c.writeGroup(&group{cur: m}); err != nil {
		return nil, fmt.Errorf("creating group: %w", err)
	}
	return gid, nil
}

// commit has the client commit proposals as a request of type typ; once
// the Delivery Service accepted it, the client moves to the new epoch.
// A refusal (409 stale_epoch or commit_conflict when another commit came
// first: Receive, then try again) changes nothing. When the answer is
// lost, the new epoch is kept pending (group.next) until the client learns
// whether the DS took the commit. c.mu is held.
func (c *Client) commit(ctx context.Context, groupID []byte, typ moh.RequestType, props []*mls.Proposal) error {
	g, err := c.settle(ctx, groupID)
	if err != nil {
		return err
	}
	m := g.cur
	// Every commit has an UpdatePath, whose new leaf of the client the DS
	// checks the binding of: it carries the client's current binding.
	if err := c.freshBinding(ctx); err != nil {
		return err
	}
	leaf, err := c.leafTemplate()
	if err != nil {
		return err
	}
	// The pending proposals (a member's self-remove) are covered by
	// reference: the Delivery Service refuses a commit that leaves them
	// out. The tree stays out of the GroupInfo and the Welcome: the DS
	// serves it (welcome_info), so a commit's messages do not grow with
	// the group.
	refs, resolve := g.resolver(m)
	res, err := m.CommitWith(mls.CommitOptions{ByValue: props, ByRef: refs, Resolve: resolve, OmitRatchetTree: true,
		LeafExtensions: leaf.Extensions})
	if err != nil {
		return err
	}
	pgi, err := c.partialGroupInfo(res.GroupInfo.GroupInfo)
	if err != nil {
		return err
	}
	body := moh.RequestBody{Type: typ, GroupUpdate: moh.MLSGroupUpdate{Commit: *res.Commit, PartialGroupInfo: pgi}}
	if res.Welcome != nil {
		body.WelcomePackages = []moh.WelcomePackage{{Welcome: *res.Welcome}}
	}
	req, err := c.sign(body, m.LeafIndex())
	if err != nil {
		return err
	}
	// The new epoch is on disk before the commit leaves: when the answer
	// is lost, the DS may have taken it.
	if err := c.writeGroup(&group{cur: m, prev: g.prev, older: g.older, pending: g.pending, attachments: g.attachments, next: res.Next}); err != nil {
		return err
	}
	if _, err := c.postDS(ctx, "/group_operation", typ.String(), req); err != nil {
		if refused(err) {
			if serr := c.writeGroup(&group{cur: m, prev: g.prev, older: g.older, pending: g.pending, attachments: g.attachments}); serr != nil {
				return fmt.Errorf("%w (and dropping the refused epoch: %v)", err, serr)
			}
		}
		return err
	}
	return c.writeGroup(g.advance(res.Next))
}

// settle returns group groupID, first resending a message whose answer
// was lost (resend), then resolving a pending next epoch
// (group.next) by asking the Delivery Service for the group's GroupInfo
// (external_commit_info): the DS in the next epoch, with its confirmed
// transcript hash, took the client's commit, which is adopted; the DS in
// the current epoch did not, and the pending epoch goes. A DS further on
// is an error: Receive brings what happened. c.mu is held.
func (c *Client) settle(ctx context.Context, groupID []byte) (*group, error) {
	// A message whose answer was lost goes first, as it was: nothing new
	// leaves for the group before it (ErrMessagePending).
	if _, err := c.resend(ctx, groupID); err != nil && !errors.Is(err, ErrUnknownGroup) {
		return nil, err
	}
	g, err := c.loadGroup(groupID)
	if err != nil || (g.next == nil && !g.joining) {
		return g, err
	}
	r, err := c.externalCommitInfo(ctx, g.cur)
	if g.joining && notMember(err) {
		// The DS does not take the client for a member: the join was lost.
		if ferr := c.forget(groupID); ferr != nil {
			return nil, ferr
		}
		return nil, fmt.Errorf("%w %x: the external join or create_group whose answer was lost was not taken: %w", ErrUnknownGroup, groupID, err)
	}
	if err != nil {
		return nil, fmt.Errorf("the answer to the client's last commit was lost, and asking for the group's state: %w", err)
	}
	msg, err := mls.DecodeMLSMessage(r.GroupInfo)
	if err != nil || msg.GroupInfo == nil {
		return nil, fmt.Errorf("external_commit_info: the answer holds no GroupInfo: %v", err)
	}
	gc := msg.GroupInfo.GroupContext
	if g.joining {
		if gc.Epoch != g.cur.State().Epoch() {
			return nil, fmt.Errorf("the answer to the client's external join or create_group was lost and the group is in epoch %d: receive first", gc.Epoch)
		}
		if !bytes.Equal(gc.ConfirmedTranscriptHash, g.cur.State().ConfirmedTranscriptHash()) {
			// Another commit of that epoch was taken instead.
			if err := c.forget(groupID); err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("%w %x: the external join or create_group whose answer was lost was not taken", ErrUnknownGroup, groupID)
		}
		joined := &group{cur: g.cur, attachments: g.attachments}
		if err := c.writeGroup(joined); err != nil {
			return nil, err
		}
		return joined, nil
	}
	switch {
	case gc.Epoch == g.next.State().Epoch() && bytes.Equal(gc.ConfirmedTranscriptHash, g.next.State().ConfirmedTranscriptHash()):
		adopted := g.advance(g.next)
		if err := c.writeGroup(adopted); err != nil {
			return nil, err
		}
		return adopted, nil
	case gc.Epoch == g.cur.State().Epoch():
		kept := &group{cur: g.cur, prev: g.prev, older: g.older, pending: g.pending, attachments: g.attachments}
		if err := c.writeGroup(kept); err != nil {
			return nil, err
		}
		return kept, nil
	}
	return nil, fmt.Errorf("the answer to the client's last commit was lost and the group is in epoch %d: receive first", gc.Epoch)
}

// notMember reports whether err, from a request the client signed as
// its leaf of a group, is a refusal that says the leaf is not the
// client's at the DS (docs/protocol.md §5.4 steps 6 and 7): 404 not_found
// (an unknown group, a blank leaf or one outside the tree) or 401
// bad_signature (another member's leaf). Other refusals (a rate limit, a
// token required, a stale timestamp, a peer policy) say nothing of the
// client's membership.
func notMember(err error) bool {
	var e *Error
	return errors.As(err, &e) && (e.Status == http.StatusNotFound && e.Code == moh.CodeNotFound ||
		e.Status == http.StatusUnauthorized && e.Code == moh.CodeBadSignature)
}

// Add adds users or clients to the group: each target is a user URI
// (mimi://<provider>/u/<user>: every client of the user that has a
// KeyPackage) of a user not in the group, or a client URI
// (mimi://<provider>/d/<user>/<device>) of a client not in the group. The
// KeyPackages are claimed through the local API. New users go in one
// add_users commit; new clients of users already in the group in one
// add_clients commit, named by client URI; a mix is refused. Every target
// is checked before any KeyPackage is claimed, since a claim uses up the
// single-use KeyPackages it answers: a target already in the group, a
// user already in it named by user URI (a claim for a user answers a
// KeyPackage of each of its clients, those in the group too), a target
// given twice or a client of a user also given by user URI is refused
// and claims nothing.
func (c *Client) Add(ctx context.Context, groupID []byte, targets ...string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.add(ctx, groupID, targets); err != nil {
		return fmt.Errorf("adding to group %x: %w", groupID, err)
	}
	return nil
}

func (c *Client) add(ctx context.Context, groupID []byte, targets []string) error {
	if len(targets) == 0 {
		return errors.New("nothing to add")
	}
	// The members are those of the settled group: after a commit whose
	// answer was lost, those of the epoch the DS is in.
	g, err := c.settle(ctx, groupID)
	if err != nil {
		return err
	}
	m := g.cur
	present := usersOf(m.State())
	newUsers, oldUsers := 0, 0
	users, clients := make(map[string]bool), make(map[string]bool)
	for _, t := range targets {
		if _, _, err := moh.ParseUserURI([]byte(t)); err == nil {
			if present[t] {
				return fmt.Errorf("%s is in the group: add its new clients by client URI (a claim for a user takes a KeyPackage of each of its clients, those in the group too)", t)
			}
			if users[t] {
				return fmt.Errorf("%s is named twice", t)
			}
			users[t] = true
			newUsers++
			continue
		}
		user := userOf([]byte(t))
		switch {
		case user == "":
			return fmt.Errorf("%q is neither a user nor a client URI", t)
		case isMember(m.State(), []byte(t)):
			return fmt.Errorf("%s is in the group", t)
		case clients[t]:
			return fmt.Errorf("%s is named twice", t)
		}
		clients[t] = true
		if present[user] {
			oldUsers++
		} else {
			newUsers++
		}
	}
	for t := range clients {
		if users[userOf([]byte(t))] {
			return fmt.Errorf("%s is named, and its user too", t)
		}
	}
	typ := moh.AddUsers
	switch {
	case newUsers > 0 && oldUsers > 0:
		return errors.New("new users and clients of present users are added by separate commits")
	case oldUsers > 0:
		typ = moh.AddClients
	}
	var props []*mls.Proposal
	for _, t := range targets {
		kps, err := c.claim(ctx, t)
		if err != nil {
			return err
		}
		for _, kp := range kps {
			if isMember(m.State(), kp.LeafNode.Credential.Identity) {
				continue // none after the checks above; a member needs no KeyPackage
			}
			props = append(props, &mls.Proposal{Type: mls.ProposalAdd, KeyPackage: kp})
		}
	}
	if len(props) == 0 {
		return errors.New("every client claimed is already in the group")
	}
	return c.commit(ctx, groupID, typ, props)
}

// isMember reports whether a leaf of g holds identity.
func isMember(g *mls.GroupState, identity []byte) bool {
	for _, i := range g.Tree().Members() {
		if l, ok := g.Member(i); ok && l.HasIdentity(identity) {
			return true
		}
	}
	return false
}

// usersOf returns the user URIs of g's members.
func usersOf(g *mls.GroupState) map[string]bool {
	out := make(map[string]bool)
	for _, i := range g.Tree().Members() {
		if l, ok := g.Member(i); ok && !l.IsBlank() {
			out[userOf(l.Credential().Identity)] = true
		}
	}
	return out
}

// Remove removes users or clients from the group: a user URI removes
// every client of the user, a client URI that one client. Removing only
// clients of the client's own user is a remove_clients commit; anything
// else a remove_users commit, which the Delivery Service accepts only when
// it removes every client of each user it touches.
func (c *Client) Remove(ctx context.Context, groupID []byte, targets ...string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.remove(ctx, groupID, targets); err != nil {
		return fmt.Errorf("removing from group %x: %w", groupID, err)
	}
	return nil
}

func (c *Client) remove(ctx context.Context, groupID []byte, targets []string) error {
	if len(targets) == 0 {
		return errors.New("nothing to remove")
	}
	// The leaves are those of the settled group (add).
	sg, err := c.settle(ctx, groupID)
	if err != nil {
		return err
	}
	m := sg.cur
	g := m.State()
	own := c.userURI()
	var props []*mls.Proposal
	allOwn := true
	for _, t := range targets {
		found := false
		for _, i := range g.Tree().Members() {
			l, _ := g.Member(i)
			id := l.Credential().Identity
			if string(id) != t && userOf(id) != t {
				continue
			}
			if i == m.LeafIndex() {
				return errors.New("a client cannot remove itself with a commit")
			}
			found = true
			allOwn = allOwn && userOf(id) == own
			props = append(props, &mls.Proposal{Type: mls.ProposalRemove, Removed: i})
		}
		if !found {
			return fmt.Errorf("%s is not in the group", t)
		}
	}
	typ := moh.RemoveUsers
	if allOwn {
		typ = moh.RemoveClients
	}
	return c.commit(ctx, groupID, typ, props)
}

// Update gives the client's leaf in the group fresh keys with an
// update_client commit (an UpdatePath), which also covers the pending
// proposals the client received (a member's self-remove).
func (c *Client) Update(ctx context.Context, groupID []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.commit(ctx, groupID, moh.UpdateClient, nil); err != nil {
		return fmt.Errorf("updating in group %x: %w", groupID, err)
	}
	return nil
}

// JoinInfo is what an external joiner needs: the group's GroupInfo (an
// encoded MLSMessage, with external_pub) and ratchet tree (the encoded
// optional<Node> vector), as external_commit_info answers them. A member
// gets it with ExternalCommitInfo and hands it to the joiner out of band.
type JoinInfo struct {
	// GroupInfo is the encoded MLSMessage of wire format mls_group_info.
	GroupInfo []byte
	// RatchetTree is the encoded ratchet tree (optional<Node> vector).
	RatchetTree []byte
}

// MarshalBinary encodes j as struct { opaque group_info<V>; opaque
// ratchet_tree<V>; }.
func (j *JoinInfo) MarshalBinary() ([]byte, error) {
	var b cryptobyte.Builder
	wire.AddOpaque(&b, j.GroupInfo)
	wire.AddOpaque(&b, j.RatchetTree)
	return b.Bytes()
}

// UnmarshalBinary decodes what MarshalBinary encoded.
func (j *JoinInfo) UnmarshalBinary(data []byte) error {
	s := cryptobyte.String(data)
	var gi, rt []byte
	if !wire.ReadOpaque(&s, &gi) || !wire.ReadOpaque(&s, &rt) || !s.Empty() {
		return fmt.Errorf("decoding join info: %w", wire.ErrMalformed)
	}
	j.GroupInfo, j.RatchetTree = bytes.Clone(gi), bytes.Clone(rt)
	return nil
}

// ExternalCommitInfo asks the Delivery Service, as a member, for the
// group's current GroupInfo and ratchet tree.
func (c *Client) ExternalCommitInfo(ctx context.Context, groupID []byte) (*JoinInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, err := c.member(groupID)
	if err != nil {
		return nil, fmt.Errorf("external_commit_info: %w", err)
	}
	r, err := c.externalCommitInfo(ctx, m)
	if err != nil {
		return nil, err
	}
	return &JoinInfo{GroupInfo: r.GroupInfo, RatchetTree: r.RatchetTree}, nil
}

// externalCommitInfo asks the Delivery Service, as member m, for its
// group's GroupInfo and tree. c.mu is held.
func (c *Client) externalCommitInfo(ctx context.Context, m *mls.Member) (*moh.DSResponse, error) {
	// A read: sent again, signed afresh, after a refusal whose
	// Retry-After the client waits out.
	var r *moh.DSResponse
	err := c.repeatable(ctx, func() error {
		req, err := c.sign(moh.RequestBody{Type: moh.ExternalCommitInfo, ExternalCommitInfo: moh.ExternalCommitInfoRequest{GroupID: m.State().GroupID()}}, m.LeafIndex())
		if err != nil {
			return fmt.Errorf("external_commit_info: %w", err)
		}
		r, err = c.postDS(ctx, "/external_commit_information", "external_commit_info", req)
		return err
	})
	if err != nil {
		return nil, err
	}
	if r.Type != moh.ResponseExternalCommitInfo {
		return nil, fmt.Errorf("external_commit_info: answer of type %d", r.Type)
	}
	return r, nil
}

// JoinExternal joins the group info describes with an external commit
// (external_join), as a new client of a user already in the group; it
// returns the group id. When the answer is lost, the group is kept,
// pending: the next Receive or operation on it settles whether the DS took
// the join, and JoinExternal may be called again.
func (c *Client) JoinExternal(ctx context.Context, info *JoinInfo) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	gid, err := c.joinExternal(ctx, info)
	if err != nil {
		return nil, fmt.Errorf("joining externally: %w", err)
	}
	return gid, nil
}

func (c *Client) joinExternal(ctx context.Context, info *JoinInfo) ([]byte, error) {
	if c.closed {
		return nil, errors.New("client closed")
	}
	msg, err := mls.DecodeMLSMessage(info.GroupInfo)
	if err != nil || msg.GroupInfo == nil {
		return nil, fmt.Errorf("the group info is not a GroupInfo message: %w", err)
	}
	var rt mls.RatchetTree
	if err := wire.Unmarshal(info.RatchetTree, &rt, "ratchet tree"); err != nil {
		return nil, err
	}
	gid := msg.GroupInfo.GroupContext.GroupID
	if c.rec.group(gid) >= 0 {
		// A join whose answer was lost is settled first: when the DS did
		// not take it, the client joins again.
		if _, err := c.settle(ctx, gid); !errors.Is(err, ErrUnknownGroup) || c.rec.group(gid) >= 0 {
			if err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("already in group %x", gid)
		}
	}
	if msg.GroupInfo.GroupContext.CipherSuite != c.rec.suite {
		return nil, fmt.Errorf("the group's cipher suite %d is not the client's", uint16(msg.GroupInfo.GroupContext.CipherSuite))
	}
	if err := c.freshBinding(ctx); err != nil {
		return nil, err
	}
	leaf, err := c.leafTemplate()
	if err != nil {
		return nil, err
	}
	commit, m, err := mls.JoinExternal(msg.GroupInfo, mls.ExternalJoinOptions{Leaf: leaf, Signer: c.signer, RatchetTree: rt})
	if err != nil {
		return nil, err
	}
	gi, err := m.GroupInfo()
	if err != nil {
		return nil, err
	}
	pgi, err := c.partialGroupInfo(gi)
	if err != nil {
		return nil, err
	}
	req, err := wire.Marshal(&moh.DSRequest{Body: moh.RequestBody{Type: moh.ExternalJoin,
		GroupUpdate: moh.MLSGroupUpdate{Commit: *commit, PartialGroupInfo: pgi}}})
	if err != nil {
		return nil, err
	}
	// The group is on disk before the commit leaves, marked joining: when
	// the answer is lost, the DS may have taken it.
	if err := c.storeGroup(&group{cur: m, joining: true}); err != nil {
		return nil, err
	}
	if _, err := c.postDS(ctx, "/group_operation", "external_join", req); err != nil {
		if refused(err) {
			if ferr := c.forget(gid); ferr != nil {
				return nil, fmt.Errorf("%w (and forgetting the group: %v)", err, ferr)
			}
		}
		return nil, err
	}
	if err := c.writeGroup(&group{cur: m}); err != nil {
		return nil, err
	}
	return bytes.Clone(gid), nil
}

// GroupMember is one member of a group as the client's state sees it.
type GroupMember struct {
	// Leaf is the member's leaf index.
	Leaf uint32
	// ClientURI is the member's credential identity.
	ClientURI string
}

// GroupSummary describes a group the client is in, from its own state.
type GroupSummary struct {
	// GroupID is the group's id.
	GroupID []byte
	// Epoch is the client's current epoch of the group.
	Epoch uint64
	// CipherSuite is the group's suite.
	CipherSuite mls.CipherSuite
	// Self is the client's leaf index.
	Self uint32
	// Members are the group's members in leaf order.
	Members []GroupMember
}

// Group describes group groupID from the client's state, without asking
// the gateway.
func (c *Client) Group(groupID []byte) (*GroupSummary, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, err := c.member(groupID)
	if err != nil {
		return nil, fmt.Errorf("describing group: %w", err)
	}
	g := m.State()
	s := &GroupSummary{GroupID: g.GroupID(), Epoch: g.Epoch(), CipherSuite: g.CipherSuite(), Self: m.LeafIndex()}
	for _, i := range g.Tree().Members() {
		l, _ := g.Member(i)
		s.Members = append(s.Members, GroupMember{Leaf: i, ClientURI: string(l.Credential().Identity)})
	}
	return s, nil
}

// Groups returns the ids of the groups the client is in.
func (c *Client) Groups() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([][]byte, 0, len(c.rec.groups))
	for _, g := range c.rec.groups {
		out = append(out, bytes.Clone(g.groupID))
	}
	return out
}

// Leave asks to leave the group: the client proposes its own removal
// (self_remove_client), which the Delivery Service keeps and delivers to
// the other members. The next commit of another member covers it (the
// DS refuses a commit that leaves it out); receiving that commit, the
// client forgets the group (EventRemoved). Until then the client is still
// a member and receives the group's messages. The client keeps its
// proposal before posting it, so that the commit is resolved even when the
// DS kept the proposal but its answer was lost; a refusal (a 4xx DSError)
// drops it, and the proposal goes with the epoch in any case.
func (c *Client) Leave(ctx context.Context, groupID []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.leave(ctx, groupID); err != nil {
		return fmt.Errorf("leaving group %x: %w", groupID, err)
	}
	return nil
}

func (c *Client) leave(ctx context.Context, groupID []byte) error {
	g, err := c.settle(ctx, groupID)
	if err != nil {
		return err
	}
	m := g.cur
	prop, err := m.Propose(&mls.Proposal{Type: mls.ProposalRemove, Removed: m.LeafIndex()})
	if err != nil {
		return err
	}
	req, err := c.sign(moh.RequestBody{Type: moh.SelfRemoveClient, Message: *prop}, m.LeafIndex())
	if err != nil {
		return err
	}
	// The commit that removes the client covers the proposal by
	// reference; the DS does not send a proposal back to its sender, so
	// the client keeps its own to resolve that commit. It keeps it before
	// posting: when the answer is lost (a 504, a connection reset after
	// the DS's write) the DS may have kept and delivered the proposal.
	enc, err := wire.Marshal(prop)
	if err != nil {
		return err
	}
	if len(g.pending) >= maxPendingProposals {
		return errors.New("too many pending proposals")
	}
	before := append([][]byte{}, g.pending...) // not nil: storeGroup keeps nil's predecessor
	if err := c.storeGroup(&group{cur: g.cur, prev: g.prev, older: g.older, pending: append(slices.Clone(g.pending), enc)}); err != nil {
		return err
	}
	_, err = c.postDS(ctx, "/group_operation", "self_remove_client", req)
	if refused(err) {
		// The DS refused it and kept nothing: the proposal goes.
		if serr := c.storeGroup(&group{cur: g.cur, prev: g.prev, older: g.older, pending: before}); serr != nil {
			return fmt.Errorf("%w (and dropping the refused proposal: %v)", err, serr)
		}
	}
	return err
}
