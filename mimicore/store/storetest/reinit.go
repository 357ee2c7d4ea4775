package storetest

import (
	"bytes"
	"crypto/sha256"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// ReInit returns a ReInit proposal naming the successor group newID, of
// g's version and cipher suite.
func (g *Group) ReInit(newID []byte) *mls.Proposal {
	return &mls.Proposal{Type: mls.ProposalReInit, ReInit: &mls.ReInit{GroupID: newID,
		Version: g.State.GroupContext().Version, CipherSuite: g.State.CipherSuite()}}
}

// testGroupReInit checks that a commit stored with ReInit closes the
// group: every later commit (also one built on an earlier epoch),
// proposal and message is ErrReInitialized and writes and delivers
// nothing, and no GroupInfo is served for joiners; the state, its pending
// proposals (none) and the Welcome trees of earlier epochs are served as
// before, and the successor group named by the ReInit is created as any
// other.
func testGroupReInit(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	g := NewGroup(t, randBytes(t, 16), 1)
	gid := g.State.GroupID()
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State, GroupInfo: randBytes(t, 100)}))
	g, c := g.Commit(t, Adds(t, 2)...)
	commitEpoch(t, s, c)
	welcomeEpoch := g.State.Epoch()

	successor := randBytes(t, 16)
	_, rival := g.Commit(t) // built on the epoch the ReInit ends
	proposal := g.ReInit(successor)
	proposal.ReInit.Extensions = mls.Extensions{{Type: 0xff0a, Data: []byte("an extension of the successor")}}
	reinit, c := g.Commit(t, proposal)
	if c.ReInit == nil {
		t.Fatal("the commit of a ReInit proposal is not marked ReInit")
	}
	_, err := s.ReInitOf(ctx(), gid)
	wantErr(t, "ReInitOf before the ReInit", err, store.ErrNotFound)
	_, err = s.ReInitOf(ctx(), randBytes(t, 16))
	wantErr(t, "ReInitOf of an unknown group", err, store.ErrNotFound)
	huge := *c.ReInit
	huge.Extensions = mls.Extensions{{Type: 0xff0a, Data: make([]byte, store.MaxReInitSize)}}
	for _, tc := range []struct {
		name string
		c    store.EpochCommit
	}{
		{"with Welcome", store.EpochCommit{Base: c.Base, Next: c.Next, ReInit: c.ReInit, Welcome: true}},
		{"with Delete", store.EpochCommit{Base: c.Base, Next: c.Next, ReInit: c.ReInit, Delete: true}},
		{"over MaxReInitSize", store.EpochCommit{Base: c.Base, Next: c.Next, ReInit: &huge}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantErr(t, "CommitEpoch", commitErr(s.CommitEpoch(ctx(), tc.c)), store.ErrInvalid)
		})
	}
	wantLoad(t, s, "after the refused ReInit commits", g.State)
	_, err = s.ReInitOf(ctx(), gid)
	wantErr(t, "ReInitOf after the refused ReInit commits", err, store.ErrNotFound)
	c.GroupInfo = randBytes(t, 200)
	c.Fanout = fanoutOf(gid, "reinit", []string{fanBob}, nil)
	commitEpoch(t, s, c)
	wantLoad(t, s, "after the ReInit commit", reinit.State)
	epoch := reinit.State.Epoch()
	wantReInitOf(t, s, "after the ReInit commit", gid, proposal.ReInit, epoch)

	_, after := reinit.Commit(t)
	after.Fanout = fanoutOf(gid, "after", []string{fanBob}, map[string][]string{"c.example": {fanCarol}}, "c.example")
	rival.Fanout = fanoutOf(gid, "rival", []string{fanBob}, nil)
	key := digestOf([]byte("a message after the ReInit"))
	dedup := fanoutOf(gid, "dedup", []string{fanBob}, nil)
	dedup.Dedup, dedup.DedupExpires = key[:], time.Now().Add(time.Hour)
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"commit of the next epoch", commitErr(s.CommitEpoch(ctx(), after))},
		{"commit built on the epoch before", commitErr(s.CommitEpoch(ctx(), rival))},
		{"proposal", s.AddProposal(ctx(), gid, epoch, store.PendingProposal{Ref: randBytes(t, 32), Message: []byte("remove"),
			Fanout: fanoutOf(gid, "proposal", []string{fanBob}, nil)})},
		{"proposal for the epoch before", s.AddProposal(ctx(), gid, epoch-1, store.PendingProposal{Ref: randBytes(t, 32), Message: []byte("m")})},
		{"message", commitErr(s.Deliver(ctx(), gid, epoch, fanoutOf(gid, "message", []string{fanBob}, nil)))},
		{"message with dedup", commitErr(s.Deliver(ctx(), gid, epoch, dedup))},
		{"message for the epoch before", commitErr(s.Deliver(ctx(), gid, epoch-1, fanoutOf(gid, "old", []string{fanBob}, nil)))},
	} {
		t.Run(tc.name, func(t *testing.T) { wantErr(t, tc.name, tc.err, store.ErrReInitialized) })
	}
	_, _, err = s.GroupInfo(ctx(), gid)
	wantErr(t, "GroupInfo of a reinitialized group", err, store.ErrReInitialized)
	wantReInitOf(t, s, "after the refused requests", gid, proposal.ReInit, epoch)

	wantLoad(t, s, "after the refused requests", reinit.State)
	pending, err := s.PendingProposals(ctx(), gid, epoch)
	noErr(t, "PendingProposals", err)
	if len(pending) != 0 {
		t.Fatalf("%d proposals pending after the refused ones", len(pending))
	}
	wantRecorded(t, s, "the message refused after the ReInit", key, false)
	wantMsgs(t, "bob's queue", fetch(t, s, fanBob, 0, store.FetchLimit{}), 1, "reinit")
	wantOutbox(t, s, "c.example")
	if _, err := s.WelcomeTree(ctx(), gid, welcomeEpoch); err != nil {
		t.Fatalf("the Welcome tree of an epoch before the ReInit: %v", err)
	}
	noErr(t, "CreateGroup of the successor", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub,
		State: NewGroup(t, successor, 1).State}))
	_, err = s.ReInitOf(ctx(), successor)
	wantErr(t, "ReInitOf of the successor", err, store.ErrNotFound)
	noErr(t, "DeleteGroup of the reinitialized group", s.DeleteGroup(ctx(), gid))
	_, err = s.ReInitOf(ctx(), gid)
	wantErr(t, "ReInitOf of the deleted group", err, store.ErrNotFound)
}

// wantReInitOf checks that ReInitOf returns the ReInit proposal want (by
// its encoding) and epoch for the group gid.
func wantReInitOf(t *testing.T, s store.Store, what string, gid []byte, want *mls.ReInit, epoch uint64) {
	t.Helper()
	r, err := s.ReInitOf(ctx(), gid)
	if err != nil {
		t.Fatalf("ReInitOf %s: %v", what, err)
	}
	got, err := wire.Marshal(r.ReInit)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := wire.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, enc) || r.Epoch != epoch {
		t.Fatalf("ReInitOf %s: %+v at epoch %d, want %+v at epoch %d", what, r.ReInit, r.Epoch, want, epoch)
	}
}

// CheckReInitMigrated checks s, opened on a database migrated past the
// migration that records whether a group was reinitialized, which held
// g, stored before it: g is not reinitialized (it takes a commit and
// serves its GroupInfo), and a ReInit commit then closes it.
func CheckReInitMigrated(t *testing.T, s store.Store, g *Group, groupInfo []byte) {
	t.Helper()
	wantLoad(t, s, "the group stored before the migration", g.State)
	wantGroupInfo(t, s, "the group stored before the migration", g.State.GroupID(), g.State.Epoch(), groupInfo)
	g, c := g.Commit(t)
	commitEpoch(t, s, c)
	proposal := g.ReInit(randBytes(t, 16))
	g, c = g.Commit(t, proposal)
	commitEpoch(t, s, c)
	_, c = g.Commit(t)
	wantErr(t, "a commit after the ReInit", commitErr(s.CommitEpoch(ctx(), c)), store.ErrReInitialized)
	wantReInitOf(t, s, "of the group reinitialized after the migration", g.State.GroupID(), proposal.ReInit, g.State.Epoch())
}

// CheckReInitProposalMigrated checks s, opened on a database migrated past
// the migration that keeps the ReInit proposal of a reinitialized group,
// which held g, stored before it and marked reinitialized: g stays
// reinitialized (it takes no commit, and serves no GroupInfo), and
// ReInitOf does not find it, since no ReInit was kept.
func CheckReInitProposalMigrated(t *testing.T, s store.Store, g *Group) {
	t.Helper()
	wantLoad(t, s, "the group stored before the migration", g.State)
	_, c := g.Commit(t)
	wantErr(t, "a commit of the group reinitialized before the migration", commitErr(s.CommitEpoch(ctx(), c)), store.ErrReInitialized)
	_, _, err := s.GroupInfo(ctx(), g.State.GroupID())
	wantErr(t, "GroupInfo of the group reinitialized before the migration", err, store.ErrReInitialized)
	_, err = s.ReInitOf(ctx(), g.State.GroupID())
	wantErr(t, "ReInitOf of the group reinitialized before the migration", err, store.ErrNotFound)
}

// testAttachmentsReInit checks that a reinitialized group takes no
// attachment: a reservation in it and a copy into it are ErrReInitialized
// (before the quotas, and a copy before its source is looked up), and
// write nothing; its attachments are still looked up, copied out and
// deleted, and an upload reserved before the ReInit is committed.
func testAttachmentsReInit(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	none := store.AttachmentQuota{}
	g := NewGroup(t, randBytes(t, 16), 1)
	gid := g.State.GroupID()
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State}))
	other := []byte("attachment group of the successor")

	own := attachment(t, gid, uploaderA, 100)
	upload(t, s, own, none)
	pending := attachment(t, gid, uploaderA, 50)
	noErr(t, "ReserveAttachment", s.ReserveAttachment(ctx(), pending, none))
	elsewhere := attachment(t, other, uploaderB, 10)
	upload(t, s, elsewhere, none)
	_, c := g.Commit(t, g.ReInit(other))
	commitEpoch(t, s, c)

	for _, tc := range []struct {
		name string
		err  error
	}{
		{"ReserveAttachment", s.ReserveAttachment(ctx(), attachment(t, gid, uploaderA, 5), none)},
		{"ReserveAttachment over the group's quota", s.ReserveAttachment(ctx(), attachment(t, gid, uploaderA, 5),
			store.AttachmentQuota{GroupCount: 1})},
		{"CopyAttachment into it", copyErr(s.CopyAttachment(ctx(), other, elsewhere.TokenHash, attachment(t, gid, uploaderB, 0), none, store.SignatureAnswer{}))},
		{"CopyAttachment within it", copyErr(s.CopyAttachment(ctx(), gid, own.TokenHash, attachment(t, gid, uploaderA, 0), none, store.SignatureAnswer{}))},
		{"CopyAttachment of an unknown token into it", copyErr(s.CopyAttachment(ctx(), other, sha256.Sum256(randBytes(t, 32)),
			attachment(t, gid, uploaderB, 0), none, store.SignatureAnswer{}))},
	} {
		t.Run(tc.name, func(t *testing.T) { wantErr(t, tc.name, tc.err, store.ErrReInitialized) })
	}
	u, err := s.GroupAttachmentUsage(ctx(), gid)
	wantUsage(t, "the reinitialized group's usage after the refused writes", u, err, 150, 2)
	u, err = s.UploaderAttachmentUsage(ctx(), uploaderB)
	wantUsage(t, "the copier's usage after the refused copies", u, err, 10, 1)
	wantUnreferenced(t, s)

	noErr(t, "CommitAttachment of an upload reserved before the ReInit",
		s.CommitAttachment(ctx(), pending.TokenHash, time.Now().Add(future), store.SignatureAnswer{}))
	if _, err := s.LookupAttachment(ctx(), gid, own.TokenHash); err != nil {
		t.Fatalf("LookupAttachment in the reinitialized group: %v", err)
	}
	cp, err := s.CopyAttachment(ctx(), gid, own.TokenHash, attachment(t, other, uploaderB, 0), none, store.SignatureAnswer{})
	noErr(t, "CopyAttachment out of the reinitialized group", err)
	if cp.Object != own.Object {
		t.Fatalf("the copy out refers to %s, want %s", cp.Object, own.Object)
	}
	_, last, err := s.DeleteAttachment(ctx(), gid, own.TokenHash, "")
	noErr(t, "DeleteAttachment in the reinitialized group", err)
	if last {
		t.Fatal("deleting the original reported the last reference while its copy out holds it")
	}
}

// copyErr is the error of a CopyAttachment.
func copyErr(_ store.Attachment, err error) error { return err }
