package ds

import (
	"bytes"
	"context"
	"errors"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// reinitializing reports whether a commit of request type typ on base may
// be the first commit of a group that reinitializes another (RFC 9420
// §11.2), whose PreSharedKey proposal names the old group's reinit PSK:
// an add_users or add_clients commit of a group at epoch 0 (made with
// create_group). RFC 9420 validation then admits resumption PSKs of usage
// reinit (mls.ApplyOptions.ReInitialization), which are invalid_mls in any
// other commit, and checkReInitPSK checks which PSK it is.
func reinitializing(typ moh.RequestType, base *mls.GroupState) bool {
	return (typ == moh.AddUsers || typ == moh.AddClients) && base.Epoch() == 0
}

// checkReInitPSK checks the PreSharedKey proposals of an add_users or
// add_clients commit (docs/protocol.md §5.4.1 step 3). Only the first
// commit of a group (reinitializing) may carry one, and only one: the
// reinit PSK of a group hosted here that a re_initialize_group closed with
// a ReInit naming this group (psktype resumption, usage reinit,
// psk_group_id that group, psk_epoch the epoch its ReInit commit started,
// store.GroupStore.ReInitOf); this group must then be what the ReInit
// describes: its version, cipher suite and GroupContext extensions equal
// the ReInit's (RFC 9420 §11.2). Any other PSK, and a group that does not
// match, is forbidden: the commit is valid MLS, the sender authenticated,
// and the operation not allowed. The nonce's length, and usage reinit
// outside a group's first commit, are RFC 9420 validation's
// (invalid_mls). One lookup by the old group's id, for a commit that
// carries the PSK only. The PSKs of other request types are checkRules'
// to allow or refuse: an external_join may carry any (RFC 9420
// §12.4.3.2), but for usage reinit, which RFC 9420 validation refused.
func (s *Service) checkReInitPSK(ctx context.Context, typ moh.RequestType, base *mls.GroupState, info *mls.CommitInfo) error {
	if len(info.PSKs) == 0 || typ != moh.AddUsers && typ != moh.AddClients {
		return nil
	}
	forbid := func(format string, args ...any) error {
		return moh.Errorf(moh.CodeForbidden, "%s: "+format, append([]any{typ}, args...)...)
	}
	if !reinitializing(typ, base) {
		return forbid("the commit carries a PreSharedKey proposal, which only the first commit of a group may, for the reinit PSK")
	}
	if len(info.PSKs) > 1 {
		return forbid("the commit carries %d PreSharedKey proposals: at most one, the reinit PSK", len(info.PSKs))
	}
	id := &info.PSKs[0]
	if id.Type != mls.PSKResumption || id.Usage != mls.ResumptionReInit {
		return forbid("the PreSharedKey proposal is not a reinit PSK (psktype resumption, usage reinit)")
	}
	rec, err := s.Store.ReInitOf(ctx, id.PSKGroupID)
	switch {
	case errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrInvalid):
		return forbid("the reinit PSK names no group that this provider hosts and that a ReInit closed")
	case err != nil:
		return moh.Errorf(moh.CodeBackendUnavailable, "%s: looking up the reinit PSK's group: %w", typ, err)
	}
	r := rec.ReInit
	if !bytes.Equal(r.GroupID, base.GroupID()) {
		return forbid("the reinit PSK's group was reinitialized into another group")
	}
	if id.PSKEpoch != rec.Epoch {
		return forbid("the reinit PSK names epoch %d of its group, whose ReInit started epoch %d", id.PSKEpoch, rec.Epoch)
	}
	gc := base.GroupContext()
	if gc.Version != r.Version || gc.CipherSuite != r.CipherSuite {
		return forbid("the group has version %d and cipher suite %d, but the ReInit names version %d and cipher suite %d",
			uint16(gc.Version), uint16(gc.CipherSuite), uint16(r.Version), uint16(r.CipherSuite))
	}
	got, err := wire.Marshal(&gc.Extensions)
	if err != nil {
		return moh.Errorf(moh.CodeInvalidMLS, "%s: encoding the group's extensions: %w", typ, err)
	}
	want, err := wire.Marshal(&r.Extensions)
	if err != nil {
		return moh.Errorf(moh.CodeInvalidMLS, "%s: encoding the ReInit's extensions: %w", typ, err)
	}
	if !bytes.Equal(got, want) {
		return forbid("the group's GroupContext extensions are not those the ReInit names")
	}
	return nil
}

// checkReInitSize refuses a commit whose ReInit proposal encodes to more
// than the store keeps of it (store.MaxReInitSize, for the reinit PSK of
// the group it names): too_large, as a GroupInfo over MaxGroupInfoSize,
// rather than a write the store refuses.
func checkReInitSize(typ moh.RequestType, info *mls.CommitInfo) error {
	if info.ReInit == nil {
		return nil
	}
	enc, err := wire.Marshal(info.ReInit)
	if err != nil {
		return moh.Errorf(moh.CodeInvalidMLS, "%s: encoding the ReInit proposal: %w", typ, err)
	}
	if len(enc) > store.MaxReInitSize {
		return moh.Errorf(moh.CodeTooLarge, "%s: the ReInit proposal takes %d bytes, more than %d", typ, len(enc), store.MaxReInitSize)
	}
	return nil
}
