package ds

import (
	"context"
	"errors"
	"slices"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// forwardToBackend is the delivery to the legacy backend (docs/protocol.md
// §11) of what a peer hub sends (what names the request: deliver_message
// or connection_request), in place of the local queues: the message for
// the local clients goes to the outbox under store.BackendDestination, in
// one write with the record that suppresses its duplicates, and is
// answered as a queued one would be.
func (s *Service) forwardToBackend(ctx context.Context, v *provider.Verified, what string, gid []byte, local []string, msg []byte, answer *moh.DSResponse) (*moh.DSResponse, error) {
	sender := string(v.Request.Sender)
	var w store.OutboxWrite
	for part := range slices.Chunk(local, store.MaxOutboxRecipients) {
		w.Messages = append(w.Messages, store.OutboxMessage{Sender: sender, Destination: store.BackendDestination,
			GroupID: gid, Recipients: part, Message: msg})
	}
	w.Dedup, w.DedupExpires = deliverDigest(sender, gid, msg, local), s.now().Add(DeliverDedupWindow)
	// The answer is recorded in the same write as the outbox rows.
	if v.WantsInlineReplay() {
		if enc, err := wire.Marshal(answer); err == nil {
			w.Replay = v.InlineReplay(enc)
		}
	}
	_, err := s.Store.OutboxAdd(ctx, w)
	switch {
	case errors.Is(err, store.ErrDuplicate):
		// Delivered before: the retry is answered like the first.
		return answer, nil
	case err != nil:
		return nil, moh.Errorf(moh.CodeBackendUnavailable, "%s: writing to the backend's outbox: %w", what, err)
	}
	if w.Replay != nil {
		v.ReplayRecorded()
	}
	if s.Outbound != nil {
		s.Outbound(store.BackendDestination)
	}
	return answer, nil
}

// toBackend delivers msg to local recipients through the outbox of the
// legacy backend (DeliverToBackend), at most store.MaxOutboxRecipients a
// message; resolveSender names the hub as their sender.
func (b *fanoutBuilder) toBackend(msg []byte, recipients []string) {
	for part := range slices.Chunk(recipients, store.MaxOutboxRecipients) {
		b.out.Remote = append(b.out.Remote, store.OutboxMessage{Destination: store.BackendDestination, GroupID: b.groupID,
			Recipients: part, Message: msg})
	}
}

// postToBackend is post's delivery to the local members of g but except
// (the sender, when local), in leaf order, through the legacy backend: a
// pass over g's members, since the backend gets the recipients named.
func (b *fanoutBuilder) postToBackend(msg []byte, g *mls.GroupState, except string) {
	local := b.s.localMembers(g)
	if i := slices.Index(local, except); except != "" && i >= 0 {
		local = slices.Delete(slices.Clone(local), i, i+1)
	}
	b.toBackend(msg, local)
}
