package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment"
	"github.com/caddy-mimi/caddy-mimi/mimicore/ds"
	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// Send encrypts data as an application message of the group's current
// epoch and sends it (send_message). The client's state, whose message key
// the encryption used up, is on disk before the message leaves, and so is
// the signed request itself: when its answer is lost (a connection reset,
// a timeout, a 5xx), the Delivery Service may have taken it, so the
// message is kept and Send returns an error wrapping ErrMessagePending.
// The next Send, commit, Leave or PutAttachment on the group first resends
// the kept request byte for byte (after a 401 stale_timestamp, the same
// MLS message signed again): a recipient gets that MLS message once, or a
// copy its MLS client drops as a replay, never a second encryption of the
// text. A Send of the same data as the kept message is its retry: it
// resends the kept message and encrypts nothing. A resend that fails
// again keeps the message and sends nothing new (ErrMessagePending); one
// refused for good drops it (ErrMessageUnknown). A refusal of the first
// attempt (a 4xx DSError) drops the message: it was not sent. A 409
// stale_epoch means a commit moved the group on: Receive, then send
// again. A 429 rate_limited, and a resend's 429 or 503, whose
// Retry-After the client waits out (Config.MaxRetryWait) is followed by
// the same MLS message, signed again; a first attempt's 503 that asks
// for a wait is waited out, then the message is resent as the next Send
// would. A Send waits at most twice in all (maxRetries), then returns
// the last refusal.
func (c *Client) Send(ctx context.Context, groupID []byte, data []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.send(ctx, groupID, data); err != nil {
		return fmt.Errorf("sending to group %x: %w", groupID, err)
	}
	return nil
}

func (c *Client) send(ctx context.Context, groupID []byte, data []byte) error {
	if c.closed {
		return errors.New("client: closed")
	}
	// The waits for Retry-After this Send may take, in all.
	waits := maxRetries
	digest, err := c.resendWaiting(ctx, groupID, &waits)
	if err != nil {
		return err
	}
	if digest != nil && sameText(digest, data) {
		// The kept message was this text: this Send is its retry, and the
		// Delivery Service has it now.
		return nil
	}
	g, err := c.settle(ctx, groupID)
	if err != nil {
		return err
	}
	m := g.cur
	msg, err := m.Protect(data, nil)
	if err != nil {
		return err
	}
	if err := c.storeMember(m); err != nil {
		return err
	}
	req, err := c.sign(moh.RequestBody{Type: moh.SendMessage, Message: *msg}, m.LeafIndex())
	if err != nil {
		return err
	}
	// The request is on disk before it leaves: a retry sends these bytes,
	// never a new encryption of data. The message key is used up on disk
	// already, so a crash between the two writes loses a message that
	// never left, and nothing else.
	k := &keptMessage{groupID: bytes.Clone(groupID), digest: textDigest(data), request: req}
	if err := c.writeKept(k); err != nil {
		return err
	}
	// A rate limit delivered nothing: the message is sent again once
	// the wait it asked for is over, if the client waits it out.
	_, err = c.postKept(ctx, k, func(err error) bool {
		code, _ := CodeOf(err)
		return refused(err) && code == moh.CodeRateLimited
	}, &waits)
	switch {
	case err == nil:
		if derr := c.dropKept(groupID); derr != nil {
			return fmt.Errorf("the message was sent, but: %w", derr)
		}
		return nil
	case refused(err):
		// The Delivery Service refused it and delivered nothing.
		if derr := c.dropKept(groupID); derr != nil {
			return fmt.Errorf("%w (and %v)", err, derr)
		}
		return err
	}
	// The answer is not known: the message stays kept. A 503 that asks
	// for a wait (a gateway being reloaded) is waited out, and the kept
	// message resent, as the next Send would.
	if d, ok := c.retryWait(ctx, err); ok && waits > 0 && sleep(ctx, d) {
		waits--
		_, err := c.resendWaiting(ctx, groupID, &waits)
		return err
	}
	return fmt.Errorf("%w: %w", ErrMessagePending, err)
}

// EventKind says what a queued message did.
type EventKind uint8

// The kinds of Event.
const (
	// EventMessage is an application message, decrypted.
	EventMessage EventKind = iota + 1
	// EventCommit is another member's commit, applied: the group is in a
	// new epoch.
	EventCommit
	// EventJoined is a Welcome: the client joined the group.
	EventJoined
	// EventRemoved is a commit that removed the client: the group is
	// forgotten.
	EventRemoved
	// EventSkipped is a message the client could not use; Err says why.
	EventSkipped
	// EventProposal is a member's proposal (a self-remove), kept: the
	// client's next commit covers it, or another member's does.
	EventProposal
)

// String returns the kind's name.
func (k EventKind) String() string {
	switch k {
	case EventMessage:
		return "message"
	case EventCommit:
		return "commit"
	case EventJoined:
		return "joined"
	case EventRemoved:
		return "removed"
	case EventSkipped:
		return "skipped"
	case EventProposal:
		return "proposal"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Event is what processing one queued message did.
type Event struct {
	// Seq is the message's sequence number in the client's queue.
	Seq uint64
	// Kind says what it was.
	Kind EventKind
	// GroupID is the group it belongs to.
	GroupID []byte
	// Sender is the client URI of the member who sent it: for an
	// application message or a member's commit the identity of its
	// MLS-authenticated sender leaf, otherwise as the gateway queued it.
	Sender string
	// Epoch is the client's epoch of the group after the message.
	Epoch uint64
	// Data is an application message's plaintext.
	Data []byte
	// Err is why a message was skipped.
	Err error
}

// maxReceiveWait caps Receive's wait, as the gateway caps it at its
// max_wait (at most 10 minutes).
const maxReceiveWait = 10 * time.Minute

// Receive fetches the messages the gateway queued for the client, waiting
// up to wait (rounded up to whole seconds) for one to arrive when there is
// none (a long poll), processes
// them in order and acknowledges them: commits move groups to their next
// epoch, Welcomes join groups (with the tree that welcome_info serves),
// application messages are decrypted. The client's state, cursor
// included, is on disk before the messages are acknowledged. A message
// the client cannot use is an EventSkipped, not an error: the queue moves
// on. A Welcome whose ratchet tree welcome_info fails to serve for a
// reason that can pass (anything but a DSError 404 not_found or 401
// bad_signature: the hub unreachable, a 503, a 401 token_required, ctx
// done) is an error: Receive stops before the cursor moves past it, and
// the next Receive processes it again. The Client's other methods wait
// while Receive long-polls.
//
// What a crash can lose: a message opened, and its key erased on disk,
// before Receive returned it is not opened again (RFC 9420 §9.2 forbids
// keeping the key); the caller keeps what it needs of the events it got.
func (c *Client) Receive(ctx context.Context, wait time.Duration) ([]Event, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("receiving: client closed")
	}
	// A client that mostly receives keeps its binding fresh too, for its
	// next commit; receiving needs none, so a failure here is left to the
	// operations that do.
	_ = c.freshBinding(ctx)
	q := url.Values{"client": {string(c.rec.clientURI)}, "after": {strconv.FormatUint(c.rec.cursor, 10)}}
	if wait > 0 {
		// The API counts whole seconds: a wait under one second is one.
		q.Set("wait", strconv.FormatInt(int64((min(wait, maxReceiveWait)+time.Second-1)/time.Second), 10))
	}
	var list localapi.MessageList
	if err := c.localRequest(ctx, "GET", "/messages", q, nil, &list); err != nil {
		return nil, fmt.Errorf("receiving: %w", err)
	}
	if len(list.Messages) == 0 {
		return nil, nil
	}
	var events []Event
	for i := range list.Messages {
		qm := &list.Messages[i]
		if qm.Seq <= c.rec.cursor {
			continue
		}
		ev, err := c.process(ctx, qm)
		if err != nil {
			// The state could not be written, or a Welcome's tree
			// could not be fetched for now: stop before the cursor
			// moves past a message whose effect is not on disk.
			return events, fmt.Errorf("receiving: %w", err)
		}
		events = append(events, ev)
		rec := c.rec.clone()
		rec.cursor = qm.Seq
		if err := c.saveRecord(rec); err != nil {
			return events, fmt.Errorf("receiving: %w", err)
		}
	}
	var ack localapi.AckAnswer
	if err := c.postLocal(ctx, "/messages/ack", &localapi.AckRequest{ClientURI: c.rec.clientURI, UpTo: c.rec.cursor}, &ack); err != nil {
		return events, fmt.Errorf("receiving: acknowledging: %w", err)
	}
	return events, nil
}

// process applies one queued message. Only a failure to write the state,
// or to fetch a Welcome's tree for a reason that can pass, is an error;
// anything wrong with the message makes it skipped.
func (c *Client) process(ctx context.Context, qm *localapi.Message) (Event, error) {
	ev := Event{Seq: qm.Seq, GroupID: bytes.Clone(qm.GroupID), Sender: string(qm.Sender)}
	skip := func(err error) (Event, error) {
		ev.Kind, ev.Err = EventSkipped, err
		return ev, nil
	}
	msg, err := mls.DecodeMLSMessage(qm.Message)
	if err != nil {
		return skip(err)
	}
	switch msg.WireFormat {
	case mls.WireFormatWelcome:
		return c.processWelcome(ctx, ev, msg.Welcome)
	case mls.WireFormatPublicMessage, mls.WireFormatPrivateMessage:
	default:
		return skip(fmt.Errorf("a message of wire format %d", msg.WireFormat))
	}
	gid := msg.GroupID()
	if !bytes.Equal(gid, qm.GroupID) {
		return skip(errors.New("the message's group is not the one it was queued for"))
	}
	g, err := c.loadGroup(gid)
	if err != nil {
		return skip(err)
	}
	epoch, _ := msg.Epoch()
	if g.next != nil && epoch == g.next.State().Epoch() {
		// A message of the epoch the client's own commit started: the DS
		// took the commit whose answer was lost.
		adopted := g.advance(g.next)
		if err := c.writeGroup(adopted); err != nil {
			return ev, err
		}
		g = adopted
	}
	if g.joining && epoch >= g.cur.State().Epoch() {
		// A message of the epoch the client's external join started, or
		// later: the DS took the join whose answer was lost.
		joined := &group{cur: g.cur, pending: g.pending, attachments: g.attachments}
		if err := c.writeGroup(joined); err != nil {
			return ev, err
		}
		g = joined
	}
	m := g.cur
	ev.Epoch = m.State().Epoch()
	if pm, prev, older := g.previous(epoch); msg.PrivateMessage != nil && pm != nil {
		// Sent in an epoch one of the client's own commits ended, before
		// the commit was accepted. The epochs before it are over: their
		// messages are queued ahead of this one.
		sender, data, err := pm.Unprotect(msg)
		if err != nil {
			return skip(err)
		}
		kept := &group{cur: g.cur, prev: prev, older: older, pending: g.pending, attachments: keepAttachments(g, pm, sender, data)}
		if err := c.storeGroup(kept); err != nil { // the message key is used up
			return ev, err
		}
		ev.Kind, ev.Data, ev.Sender = EventMessage, data, identityOf(pm.State(), sender)
		return ev, nil
	}
	switch {
	case epoch < m.State().Epoch():
		return skip(fmt.Errorf("a message of epoch %d, the group is in epoch %d", epoch, m.State().Epoch()))
	case epoch > m.State().Epoch():
		return skip(fmt.Errorf("a message of epoch %d, the group is in epoch %d: a commit was missed", epoch, m.State().Epoch()))
	}
	if msg.PrivateMessage != nil {
		sender, data, err := m.Unprotect(msg)
		if err != nil {
			return skip(err)
		}
		// The message key is used up: keep the state that knows it. A
		// message of the current epoch comes after every message of the
		// previous one: that epoch's Member is no longer needed.
		if err := c.storeGroup(&group{cur: m, attachments: keepAttachments(g, m, sender, data)}); err != nil {
			return ev, err
		}
		ev.Kind, ev.Data, ev.Sender = EventMessage, data, identityOf(m.State(), sender)
		return ev, nil
	}
	pm := msg.PublicMessage
	if pm.Content.Sender.Type == mls.SenderMember {
		ev.Sender = identityOf(m.State(), pm.Content.Sender.Index)
	}
	switch pm.Content.ContentType {
	case mls.ContentProposal:
		if _, _, err := m.VerifyProposal(msg); err != nil {
			return skip(err)
		}
		if len(g.pending) >= maxPendingProposals {
			return skip(errors.New("too many pending proposals"))
		}
		kept := &group{cur: g.cur, prev: g.prev, older: g.older, pending: append(slices.Clone(g.pending), bytes.Clone(qm.Message))}
		if err := c.storeGroup(kept); err != nil {
			return ev, err
		}
		ev.Kind = EventProposal
		return ev, nil
	case mls.ContentCommit:
	default:
		return skip(fmt.Errorf("a public message of content type %d", pm.Content.ContentType))
	}
	_, resolve := g.resolver(m)
	next, err := m.ApplyCommit(msg, resolve)
	if errors.Is(err, mls.ErrRemoved) {
		if err := c.forget(gid); err != nil {
			return ev, err
		}
		ev.Kind = EventRemoved
		return ev, nil
	}
	if err != nil {
		return skip(err)
	}
	if err := c.storeMember(next); err != nil {
		return ev, err
	}
	ev.Kind, ev.Epoch = EventCommit, next.State().Epoch()
	return ev, nil
}

// maxReferencesPerMessage bounds the attachment references kept of one
// message.
const maxReferencesPerMessage = 16

// keepAttachments returns g's kept attachment secrets with those of the
// references data carries, as sent by the member at leaf sender in the
// epoch of m, or nil when data carries none. A reference is a line, or the
// end of a line, in the form attachment.Reference's String writes
// (docs/protocol.md §6.1): its keys derive from the epoch of the message
// that carries it, which the group may have left when GetAttachment runs.
// A reference with a key (a copy's) needs nothing kept: its key opens it.
func keepAttachments(g *group, m *mls.Member, sender uint32, data []byte) []keptAttachment {
	var add []keptAttachment
	for line := range bytes.Lines(data) {
		i := bytes.Index(line, []byte(attachment.MediaType))
		if i < 0 || len(add) == maxReferencesPerMessage {
			continue
		}
		ref, err := attachment.ParseReference(strings.TrimSpace(string(line[i:])))
		if err != nil || len(ref.Key) > 0 {
			continue
		}
		secret, err := attachment.ExporterSecret(m, m.State().CipherSuite(), ref.Hash, sender)
		if err != nil {
			continue
		}
		add = append(add, keptAttachment{sender: sender, nonce: ref.Nonce, hash: ref.Hash, secret: secret})
	}
	if add == nil {
		return nil
	}
	return appendKept(g.attachments, add...)
}

// appendKept returns a new list of kept attachment secrets: list and add,
// the oldest of a sender going beyond maxKeptPerSender of that sender's,
// then the oldest of all going beyond maxKeptAttachments. The bound per
// sender keeps one member, who may send any number of references, from
// pushing the others' secrets out.
func appendKept(list []keptAttachment, add ...keptAttachment) []keptAttachment {
	out := slices.Clone(list)
	for _, k := range add {
		n := 0
		for _, o := range out {
			if o.sender == k.sender {
				n++
			}
		}
		out = slices.DeleteFunc(out, func(o keptAttachment) bool {
			if o.sender != k.sender || n < maxKeptPerSender {
				return false
			}
			n--
			return true
		})
		out = append(out, k)
	}
	if len(out) > maxKeptAttachments {
		out = slices.Delete(out, 0, len(out)-maxKeptAttachments)
	}
	return out
}

// identityOf returns the identity of leaf i of g, "" when blank.
func identityOf(g *mls.GroupState, i uint32) string {
	l, ok := g.Member(i)
	if !ok || l.IsBlank() {
		return ""
	}
	return string(l.Credential().Identity)
}

// processWelcome joins a group with a Welcome for one of the client's
// KeyPackages: it decrypts the GroupInfo, asks the Delivery Service for
// the ratchet tree of that epoch (welcome_info, signed with the
// KeyPackage's key) and joins. A single-use KeyPackage's private keys are
// then deleted. A welcome_info refused for good (welcomeInfoRefused)
// skips the Welcome; any other failure of it is an error. A Welcome for one
// of the client's KeyPackages that is skipped (it does not decrypt, its
// tree is refused for good or does not fit it) is refused for good too: the
// cursor moves past it and it is never processed again, and the
// KeyPackage it names was claimed (a single-use one is handed out once), so
// the KeyPackage's private keys are deleted then as after a join.
func (c *Client) processWelcome(ctx context.Context, ev Event, w *mls.Welcome) (Event, error) {
	skip := func(err error) (Event, error) {
		ev.Kind, ev.Err = EventSkipped, err
		return ev, nil
	}
	var kpi = -1
	for _, ref := range w.NewMembers() {
		if i := slices.IndexFunc(c.rec.keyPackages, func(k storedKeyPackage) bool { return bytes.Equal(k.ref, ref) }); i >= 0 {
			kpi = i
			break
		}
	}
	if kpi < 0 {
		return skip(errors.New("a Welcome for none of the client's KeyPackages"))
	}
	skp := c.rec.keyPackages[kpi]
	refuse := func(err error) (Event, error) {
		if derr := c.dropKeyPackage(kpi); derr != nil {
			// Not skipped: the Welcome is processed again, and its
			// KeyPackage's keys deleted then.
			return ev, fmt.Errorf("deleting the keys of the KeyPackage of a refused Welcome: %w", derr)
		}
		return skip(err)
	}
	kp := new(mls.KeyPackage)
	if err := wire.Unmarshal(skp.keyPackage, kp, "stored KeyPackage"); err != nil {
		return ev, fmt.Errorf("%w: %w", ErrStateEncoding, err)
	}
	initKey, _, err := c.deriveKey(skp.initSeed)
	if err != nil {
		return ev, err
	}
	leafKey, _, err := c.deriveKey(skp.leafSeed)
	if err != nil {
		return ev, err
	}
	res, err := mls.ProcessWelcome(w, kp, initKey, nil)
	if err != nil {
		return refuse(err)
	}
	gid, epoch := res.GroupInfo.GroupContext.GroupID, res.GroupInfo.GroupContext.Epoch
	ev.GroupID, ev.Epoch = bytes.Clone(gid), epoch
	if c.rec.group(gid) >= 0 {
		// A Welcome processed again after a crash between the join's
		// writes, or a second one for the group: either way the
		// KeyPackage it is for was used, and its keys go.
		if err := c.dropKeyPackage(kpi); err != nil {
			return ev, err
		}
		return skip(fmt.Errorf("a Welcome to group %x, which the client is in", gid))
	}
	tree, err := c.welcomeInfo(ctx, gid, epoch, skp.ref)
	if err != nil {
		if welcomeInfoRefused(err) {
			return refuse(err)
		}
		// The hub unreachable, a 503, the context done: the Welcome is
		// processed again by the next Receive, the cursor stays before it.
		return ev, err
	}
	m, err := mls.JoinFromWelcome(w, mls.WelcomeOptions{KeyPackage: kp, InitKey: initKey, LeafKey: leafKey, Signer: c.signer, RatchetTree: tree})
	if err != nil {
		return refuse(err)
	}
	if err := c.storeMember(m); err != nil {
		return ev, err
	}
	if err := c.dropKeyPackage(kpi); err != nil {
		return ev, err
	}
	ev.Kind = EventJoined
	return ev, nil
}

// dropKeyPackage deletes the private keys of the client's KeyPackage i
// once a Welcome used it, unless it is a last-resort one. c.mu is held.
func (c *Client) dropKeyPackage(i int) error {
	if c.rec.keyPackages[i].lastResort {
		return nil
	}
	rec := c.rec.clone()
	rec.keyPackages = slices.Delete(rec.keyPackages, i, i+1)
	return c.saveRecord(rec)
}

// welcomeInfoRefused reports whether err, from welcomeInfo, is a refusal
// that asking again cannot change (docs/protocol.md §5.4 steps 6 and 7):
// 404 not_found (the epoch's tree is no longer kept, or the KeyPackage is
// not one the commit added) or 401 bad_signature (the KeyPackage the DS
// knows is not the client's). Anything else may pass, a 401 among them: a
// token an admission zone requires, a stale timestamp of a clock put
// right since.
func welcomeInfoRefused(err error) bool {
	return notMember(err)
}

// welcomeInfo asks the Delivery Service for the ratchet tree of group gid
// at epoch, with a key_package_signature of KeyPackage ref.
func (c *Client) welcomeInfo(ctx context.Context, gid []byte, epoch uint64, ref []byte) (mls.RatchetTree, error) {
	// A read: sent again, signed afresh, after a refusal whose
	// Retry-After the client waits out.
	var r *moh.DSResponse
	err := c.repeatable(ctx, func() error {
		req, err := ds.SignRequest(c.rec.suite, c.signer, moh.RequestBody{Type: moh.WelcomeInfo,
			WelcomeInfo: moh.WelcomeInfoRequest{GroupID: gid, Epoch: epoch}}, ds.KeyPackageSignature(ref, c.now()))
		if err != nil {
			return fmt.Errorf("welcome_info: %w", err)
		}
		r, err = c.postDS(ctx, "/welcome_information", "welcome_info", req)
		return err
	})
	if err != nil {
		return nil, err
	}
	if r.Type != moh.ResponseWelcomeInfo {
		return nil, fmt.Errorf("welcome_info: answer of type %d", r.Type)
	}
	var rt mls.RatchetTree
	if err := wire.Unmarshal(r.RatchetTree, &rt, "ratchet tree"); err != nil {
		return nil, fmt.Errorf("welcome_info: %w", err)
	}
	return rt, nil
}
