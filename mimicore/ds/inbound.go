package ds

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// DeliverDedupWindow is how long a message that a peer delivered is
// remembered, so that the same message delivered again (a retry re-signed
// under a new request_id after the replay window) reaches each queue once
// (docs/protocol.md §9). A sending provider gives up on a message before
// this age.
const DeliverDedupWindow = 7 * 24 * time.Hour

// deliverDedupLabel separates the digests of delivered messages from the
// client-signature digests they share their records with.
const deliverDedupLabel = "MIMI deliver_message dedup"

// deliverMessage serves deliver_message (docs/protocol.md §9, receiving
// side) on a verified provider request: the payload decodes strictly; the
// group's hub is the sender (a Welcome for a group this provider does not
// know records the sender as its hub; any other message for an unknown
// group is not_found, one for a group of another hub or hosted here
// forbidden); the client ids that are client URIs of the providers served
// here get the message in their queues, once (DeliverDedupWindow), and
// the others are answered as unknown.
func (s *Service) deliverMessage(ctx context.Context, v *provider.Verified) (*moh.DSResponse, error) {
	if s.Store == nil {
		return nil, moh.Errorf(moh.CodeNotImplemented, "deliver_message: this gateway keeps no queues")
	}
	// The message is appended at most once per (sender, group, message,
	// local recipients), in the write that appends it, and the answer is
	// a function of the request: no replay entry is needed.
	v.Idempotent()
	var q moh.QueueingServiceRequest
	if err := wire.Unmarshal(v.Request.Payload, &q, "QueueingServiceRequest"); err != nil {
		return nil, moh.Errorf(moh.CodeMalformed, "deliver_message: %v", err)
	}
	sender := string(v.Request.Sender)
	if err := s.checkHub(ctx, "deliver_message", sender, q.GroupID, q.Message.WireFormat == mls.WireFormatWelcome); err != nil {
		return nil, err
	}
	var local []string
	var unknown [][]byte
	for _, id := range q.ClientIDs {
		prov, _, _, err := moh.ParseClientURI(id)
		if err != nil || !containsBytes(s.Providers, prov) || len(id) > store.MaxClientURISize ||
			containsBytes(local, id) {
			unknown = append(unknown, id)
			continue
		}
		local = append(local, string(id))
	}
	answer := &moh.DSResponse{Type: moh.ResponseQueueing, Queueing: moh.QueueingServiceResponse{Status: moh.QueueingOK}}
	if len(unknown) > 0 {
		answer.Queueing = moh.QueueingServiceResponse{Status: moh.QueueingInvalidClientQueueInfo, Unknown: unknown}
	}
	if len(local) == 0 {
		return answer, nil
	}
	// The bytes the hub sent: the decoder accepts only the one encoding
	// of each value, so they are the message's encoding.
	return s.queueFromPeer(ctx, v, "deliver_message", q.GroupID, local, q.RawMessage, answer)
}

// queueFromPeer appends msg, which the verified request v from a group's
// hub carries for group gid, to the queues of the local clients, once
// (DeliverDedupWindow), with v's answer recorded in the same write, and
// returns answer.
func (s *Service) queueFromPeer(ctx context.Context, v *provider.Verified, what string, gid []byte, local []string, msg []byte, answer *moh.DSResponse) (*moh.DSResponse, error) {
	sender := string(v.Request.Sender)
	if s.DeliverToBackend {
		return s.forwardToBackend(ctx, v, what, gid, local, msg, answer)
	}
	d := store.Delivery{Recipients: local, GroupID: gid, Sender: sender, Message: msg,
		Limits: s.QueueLimits, Dedup: deliverDigest(sender, gid, msg, local), DedupExpires: s.now().Add(DeliverDedupWindow)}
	// The answer is recorded in the same write as the queue entries.
	if v.WantsInlineReplay() {
		if enc, err := wire.Marshal(answer); err == nil {
			d.Replay = v.InlineReplay(enc)
		}
	}
	outs, err := s.Store.Append(ctx, d)
	switch {
	case errors.Is(err, store.ErrDuplicate):
		// Delivered before: the retry is answered like the first (and
		// its answer recorded on its own: the Append wrote nothing).
		return answer, nil
	case err != nil:
		return nil, moh.Errorf(moh.CodeBackendUnavailable, "%s: queueing: %w", what, err)
	}
	if d.Replay != nil {
		v.ReplayRecorded()
	}
	for i, a := range outs {
		if errors.Is(a.Err, store.ErrQueueFull) {
			s.logger().Warn("a local queue is full: its client missed a message from a peer",
				zap.String("sender", sender), zap.String("group_id", hex.EncodeToString(gid)),
				zap.String("client", local[i]), zap.Error(a.Err))
		}
	}
	return answer, nil
}

// MaxConnectionWelcomeMembers bounds the new members of a connection
// request's Welcome, each looked up in the KeyPackage directory: a
// connection group starts with the two users' clients.
const MaxConnectionWelcomeMembers = 256

// connectionRequest serves connection_request (docs/protocol.md §9): a
// Welcome into a connection group that the sender hosts, for a local
// user who is being connected to one of the sender's users. The payload
// decodes strictly (a Welcome); user_id must be a user of a provider
// served here; the Welcome's new_member references name the KeyPackages
// it adds, and each of user_id's clients whose KeyPackage (handed out by
// connection_key_packages or group_key_packages, KeyPackageByRef) is
// among them gets the Welcome in its queue, once, like a delivered
// message. A Welcome that adds none of the user's clients is not_found,
// exactly as for a user unknown here, so the answer enumerates no users.
// The sender becomes the group's hub, by checkHub's rules for a Welcome.
func (s *Service) connectionRequest(ctx context.Context, v *provider.Verified) (*moh.DSResponse, error) {
	if s.Store == nil {
		return nil, moh.Errorf(moh.CodeNotImplemented, "connection_request: this gateway keeps no queues")
	}
	var c moh.ConnectionRequestPayload
	if err := wire.Unmarshal(v.Request.Payload, &c, "ConnectionRequest"); err != nil {
		return nil, moh.Errorf(moh.CodeMalformed, "connection_request: %v", err)
	}
	prov, user, err := moh.ParseUserURI(c.UserID)
	if err != nil {
		return nil, moh.Errorf(moh.CodeMalformed, "connection_request: user_id is not a user URI")
	}
	if !slices.Contains(s.Providers, string(prov)) {
		return nil, moh.Errorf(moh.CodeNotFound, "connection_request: user_id is not a user of this provider")
	}
	if n := len(c.Welcome.Welcome.Secrets); n > MaxConnectionWelcomeMembers {
		return nil, moh.Errorf(moh.CodeMalformed, "connection_request: the Welcome adds %d members, over %d", n, MaxConnectionWelcomeMembers)
	}
	prefix := moh.ClientURI(string(prov), string(user), "")
	var local []string
	for _, sec := range c.Welcome.Welcome.Secrets {
		kp, err := s.Store.KeyPackageByRef(ctx, sec.NewMember)
		switch {
		case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrInvalid):
			continue
		case err != nil:
			return nil, moh.Errorf(moh.CodeBackendUnavailable, "connection_request: looking up a KeyPackage: %w", err)
		}
		if strings.HasPrefix(kp.Client, prefix) && !slices.Contains(local, kp.Client) {
			local = append(local, kp.Client)
		}
	}
	if len(local) == 0 {
		return nil, moh.Errorf(moh.CodeNotFound, "connection_request: the Welcome adds no client of this user")
	}
	if err := s.checkHub(ctx, "connection_request", string(v.Request.Sender), c.GroupID, true); err != nil {
		return nil, err
	}
	// The Welcome is queued as the sender encoded it, as deliver_message
	// queues its message.
	answer := &moh.DSResponse{Type: moh.ResponseQueueing, Queueing: moh.QueueingServiceResponse{Status: moh.QueueingOK}}
	return s.queueFromPeer(ctx, v, "connection_request", c.GroupID, local, c.RawWelcome, answer)
}

// HubCache remembers the hubs of groups hosted by other providers, so that
// a peer's stream of messages does not read the store for each. A recorded
// hub changes only when the operator forgets it (store ForgetGroupHub,
// the admin route DELETE /mimi/hubs): Forget drops the entry of this
// process's caches, the gateways of other processes drop it when their
// store tells them (store.HubForgetWatcher, which calls Forget or
// ForgetAll), and an entry is used for at most HubCacheTTL, which bounds
// how long a gateway whose store does not tell keeps using a forgotten
// hub. A hub read from the store before a Forget is not
// cached after it (see begin), so that a request being handled while the
// operator forgets cannot bring the forgotten hub back. It holds at most
// MaxHubCache groups and forgets all of them when full: a miss costs one
// read. The zero value is ready; it is safe for concurrent use.
type HubCache struct {
	mu  sync.Mutex
	hub map[string]cachedHub
	// forgets counts the calls of Forget: a read that began under an
	// older count may name a forgotten hub.
	forgets uint64
}

// cachedHub is a HubCache entry: the hub and when it stops being used.
type cachedHub struct {
	hub   string
	until time.Time
}

// MaxHubCache bounds a HubCache.
const MaxHubCache = 1 << 16

// HubCacheTTL is how long a HubCache uses a hub it read from the store
// before reading it again.
const HubCacheTTL = time.Minute

func (r *HubCache) get(gid []byte) (string, bool) {
	if r == nil {
		return "", false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	h, ok := r.hub[string(gid)]
	if !ok || !time.Now().Before(h.until) {
		return "", false
	}
	return h.hub, true
}

// begin is called before the store is read for a hub that put may then
// cache: it returns the token that put needs.
func (r *HubCache) begin() uint64 {
	if r == nil {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.forgets
}

// put caches hub as the hub of group gid, read from the store after
// begin returned since; a Forget since then (of any group) drops it.
func (r *HubCache) put(gid []byte, hub string, since uint64) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.forgets != since {
		return
	}
	if r.hub == nil || len(r.hub) >= MaxHubCache {
		r.hub = make(map[string]cachedHub)
	}
	r.hub[string(gid)] = cachedHub{hub: hub, until: time.Now().Add(HubCacheTTL)}
}

// Forget drops the entry of group gid, whose hub record the operator
// deleted, so that the next message for the group reads the store.
func (r *HubCache) Forget(gid []byte) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.hub, string(gid))
	r.forgets++
}

// ForgetAll drops every entry: a record may have been deleted without
// Forget being told (store.HubForgetWatcher's nil).
func (r *HubCache) ForgetAll() {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.hub)
	r.forgets++
}

// checkHub checks that sender is the hub of group gid: the hub recorded
// for it, or, for a Welcome of a group not known here, the sender, which
// is then recorded (docs/protocol.md §9: the first Welcome names the hub).
// what names the request, for errors, the log and HubConflict.
func (s *Service) checkHub(ctx context.Context, what, sender string, gid []byte, welcome bool) error {
	// A Welcome reads the record, and records its sender when there is
	// none: the cache may still name a hub whose record another gateway
	// of the provider deleted (DELETE /mimi/hubs forgets its own
	// process's caches at once, the others' when their store tells them,
	// a moment later), and a Welcome passed on the cache would then leave
	// the group without a record, refusing its hub's later messages.
	if hub, ok := s.Hubs.get(gid); ok && hub == sender && !welcome {
		return nil
	}
	since := s.Hubs.begin()
	hub, err := s.Store.GroupHub(ctx, gid)
	switch {
	case errors.Is(err, store.ErrInvalid):
		return moh.Errorf(moh.CodeMalformed, "%s: the group id is too long", what)
	case errors.Is(err, store.ErrNotFound) && welcome:
		err := s.Store.RecordGroupHub(ctx, gid, sender)
		switch {
		case errors.Is(err, store.ErrGroupExists):
			// Recorded meanwhile with another hub, or created here.
			if hub, err := s.Store.GroupHub(ctx, gid); err == nil {
				s.hubConflict(what, sender, hub, gid)
			}
			return moh.Errorf(moh.CodeForbidden, "%s: the sender is not the group's hub", what)
		case err != nil:
			return moh.Errorf(moh.CodeBackendUnavailable, "%s: recording the group's hub: %w", what, err)
		}
		s.Hubs.put(gid, sender, since)
		return nil
	case errors.Is(err, store.ErrNotFound):
		return moh.Errorf(moh.CodeNotFound, "%s: no group known with this id (a Welcome introduces one)", what)
	case err != nil:
		return moh.Errorf(moh.CodeBackendUnavailable, "%s: looking up the group's hub: %w", what, err)
	case hub != sender:
		s.hubConflict(what, sender, hub, gid)
		return moh.Errorf(moh.CodeForbidden, "%s: the sender is not the group's hub", what)
	}
	if !slices.Contains(s.Providers, hub) {
		s.Hubs.put(gid, hub, since)
	}
	return nil
}

// hubConflict reports that sender delivered a message for group gid whose
// recorded hub is hub, another provider: either sender is not a hub of
// the group, or hub is not, having sent the first Welcome for a group
// hosted by sender (docs/protocol.md §4.2, security considerations), which
// only the operator can tell and undo (DELETE /mimi/hubs). A group hosted
// here is no conflict: no peer hosts it. It is logged at warn level (the
// gateway's logger is sampled, so a peer's flood cannot flood the log) and
// told to HubConflict.
func (s *Service) hubConflict(what, sender, hub string, gid []byte) {
	if slices.Contains(s.Providers, hub) {
		return
	}
	s.logger().Warn("refused a peer's message for a group whose recorded hub is another provider",
		zap.String("request", what), zap.String("group_id", hex.EncodeToString(gid)),
		zap.String("recorded_hub", hub), zap.String("sender_provider", sender))
	if s.HubConflict != nil {
		s.HubConflict(what)
	}
}

// deliverDigest names a delivered message for duplicate suppression:
// SHA-256 of the label, then the sender, the group id, the message and
// each local recipient in request order, each with a 4-byte length. The
// recipients are part of the name because a hub sends one message to many
// clients of one provider in several requests of at most 64 recipients:
// each is a delivery of its own, and a retry of one repeats its
// recipients.
func deliverDigest(sender string, gid, msg []byte, recipients []string) []byte {
	h := sha256.New()
	h.Write([]byte(deliverDedupLabel))
	var n [4]byte
	part := func(b []byte) {
		binary.BigEndian.PutUint32(n[:], uint32(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	part([]byte(sender))
	part(gid)
	part(msg)
	for _, r := range recipients {
		part([]byte(r))
	}
	return h.Sum(nil)
}

// containsBytes reports whether list holds b, without converting b to a
// string (a conversion in a comparison does not allocate).
func containsBytes(list []string, b []byte) bool {
	for _, s := range list {
		if s == string(b) {
			return true
		}
	}
	return false
}
