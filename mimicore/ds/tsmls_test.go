package ds

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/internal/testdir"
	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// The ts-mls transcripts (testdata/mls/README.md, last section) submitted
// to the Delivery Service as /group_operation requests: create_group from
// epoch 0, then each commit as the request type it is, each accepted epoch
// by epoch; after each, the GroupInfo external_commit_info serves is the
// peer's, byte for byte, and so are the tree it serves and the tree
// welcome_info serves a Welcome's joiners.
//
// The requests go to Handle without Authenticate: the transcripts carry
// the members' signature public keys but not their private keys, so a
// client_signature (this project's own envelope, not MLS) cannot be made
// for them, and the scenario program that wrote them is not in the
// repository to be run again with the keys. Everything of MLS is checked
// as for any request: the FramedContent signatures of ts-mls's commits and
// proposals, the GroupInfo signatures, parent hashes, transcript hashes.
// The DS runs with the client binding check off (binding.Checker.Unchecked,
// the gateway's unchecked_client_bindings), the switch that exists for
// such transcripts: their leaves carry no client binding. Nor does it
// bound the leaves' total lifetime (MaxKeyPackageLifetime -1, the
// gateway's max_key_package_lifetime unlimited): ts-mls's default
// lifetime, which the transcripts' KeyPackages have, is 0 to 2^63-1.

// tsHex is a hex string of the transcripts.
type tsHex []byte

func (h *tsHex) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	d, err := hex.DecodeString(s)
	*h = d
	return err
}

// tsScenario is the part of a transcript the DS test reads.
type tsScenario struct {
	Format              string          `json:"format"`
	CipherSuite         mls.CipherSuite `json:"cipher_suite"`
	HandshakeWireFormat string          `json:"handshake_wire_format"`
	GroupID             tsHex           `json:"group_id"`
	Clients             []struct {
		Name          string `json:"name"`
		SignatureKey  tsHex  `json:"signature_public_key"`
		KeyPackageRef tsHex  `json:"key_package_ref"`
		LeafIndex     uint32 `json:"leaf_index"`
	} `json:"clients"`
	Messages []struct {
		Seq        int     `json:"seq"`
		Kind       string  `json:"kind"`
		From       string  `json:"from"`
		Epoch      *uint64 `json:"epoch"`
		EpochAfter uint64  `json:"epoch_after"`
		Proposals  []string
		Message    tsHex `json:"message"`
	} `json:"messages"`
	Epochs []struct {
		Epoch        uint64 `json:"epoch"`
		CausedBySeq  *int   `json:"caused_by_seq"`
		RatchetTree  tsHex  `json:"ratchet_tree"`
		GroupContext tsHex  `json:"group_context"`
		GroupInfo    tsHex  `json:"group_info"`
		SignerLeaf   uint32 `json:"group_info_signer_leaf_index"`
	} `json:"epochs"`
}

func loadTSScenario(t *testing.T, name string) *tsScenario {
	t.Helper()
	path, err := testdir.Path("mls", "ts-mls-peer", name)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var sc tsScenario
	if err := json.Unmarshal(data, &sc); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if sc.Format != "mls-peer-scenario/1" {
		t.Fatalf("%s: format %q", name, sc.Format)
	}
	return &sc
}

// tsReplay is the Delivery Service a transcript is submitted to.
type tsReplay struct {
	t   *testing.T
	sc  *tsScenario
	st  *sqlitestore.Store
	svc *Service
}

func newTSReplay(t *testing.T, sc *tsScenario) *tsReplay {
	st, err := sqlitestore.Open(t.Context(), filepath.Join(t.TempDir(), "mimi.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	r := &tsReplay{t: t, sc: sc, st: st}
	r.svc = &Service{Groups: StoreGroups{st}, Joiners: StoreJoiners{st}, Seen: st, Store: st,
		Providers: []string{testProvider}, Bindings: &binding.Checker{Domains: []string{testProvider}, Unchecked: true},
		MaxKeyPackageLifetime: -1}
	return r
}

// leafOf returns the leaf index of the transcript's client name in the
// group's current state, found by its signature key.
func (r *tsReplay) leafOf(name string) uint32 {
	r.t.Helper()
	g := r.load()
	for _, c := range r.sc.Clients {
		if c.Name == name {
			if i, ok := g.LeafBySignatureKey(c.SignatureKey); ok {
				return i
			}
		}
	}
	r.t.Fatalf("client %s is not a member", name)
	return 0
}

func (r *tsReplay) load() *mls.GroupState {
	r.t.Helper()
	g, err := r.st.LoadGroup(r.t.Context(), r.sc.GroupID)
	if err != nil {
		r.t.Fatal(err)
	}
	return g
}

// handle submits a request body from leaf sender: encoded and decoded as
// the DS receives it (strictly), then handled.
func (r *tsReplay) handle(body moh.RequestBody, sender uint32) (*moh.DSResponse, error) {
	r.t.Helper()
	// The signature is not checked (see above); the encoding needs one of
	// the suite's size.
	auth := ClientSignature(sender, time.Now())
	auth.Signature = make([]byte, 64)
	enc, err := wire.Marshal(&moh.DSRequest{Body: body, Auth: auth})
	if err != nil {
		r.t.Fatalf("encoding %s: %v", body.Type, err)
	}
	req, err := moh.DecodeDSRequest(enc)
	if err != nil {
		r.t.Fatalf("decoding %s: %v", body.Type, err)
	}
	return r.svc.Handle(r.t.Context(), &Request{Body: req})
}

// message decodes an MLSMessage of the transcript.
func (r *tsReplay) message(data []byte) mls.MLSMessage {
	r.t.Helper()
	m, err := mls.DecodeMLSMessage(data)
	if err != nil {
		r.t.Fatal(err)
	}
	return *m
}

// epochOf returns the index in Epochs of the epoch commit seq started.
func (r *tsReplay) epochOf(seq int) int {
	for k, e := range r.sc.Epochs {
		if e.CausedBySeq != nil && *e.CausedBySeq == seq {
			return k
		}
	}
	r.t.Fatalf("seq %d: no epoch caused by it", seq)
	return 0
}

// checkServed compares what the DS serves for epoch k with the peer's:
// the stored GroupContext, external_commit_info's GroupInfo and tree,
// and, when the epoch's commit had Welcomes, welcome_info's tree and the
// joiners' keys.
func (r *tsReplay) checkServed(k int, joiners []string) {
	r.t.Helper()
	want := r.sc.Epochs[k]
	g := r.load()
	gc := g.GroupContext()
	enc, err := wire.Marshal(&gc)
	if err != nil {
		r.t.Fatal(err)
	}
	if g.Epoch() != want.Epoch || !bytes.Equal(enc, want.GroupContext) {
		r.t.Errorf("epoch %d: stored group context differs from the peer's", want.Epoch)
	}
	resp, err := r.handle(moh.RequestBody{Type: moh.ExternalCommitInfo,
		ExternalCommitInfo: moh.ExternalCommitInfoRequest{GroupID: r.sc.GroupID}}, 0)
	if err != nil {
		r.t.Fatalf("epoch %d: external_commit_info: %v", want.Epoch, err)
	}
	if !bytes.Equal(resp.GroupInfo, want.GroupInfo) {
		r.t.Errorf("epoch %d: external_commit_info GroupInfo\n got %x\nwant %x", want.Epoch, resp.GroupInfo, []byte(want.GroupInfo))
	}
	if !bytes.Equal(resp.RatchetTree, want.RatchetTree) {
		r.t.Errorf("epoch %d: external_commit_info tree differs from the peer's", want.Epoch)
	}
	if len(joiners) == 0 {
		return
	}
	resp, err = r.handle(moh.RequestBody{Type: moh.WelcomeInfo,
		WelcomeInfo: moh.WelcomeInfoRequest{GroupID: r.sc.GroupID, Epoch: want.Epoch}}, 0)
	if err != nil {
		r.t.Fatalf("epoch %d: welcome_info: %v", want.Epoch, err)
	}
	if !bytes.Equal(resp.RatchetTree, want.RatchetTree) {
		r.t.Errorf("epoch %d: welcome_info tree differs from the peer's", want.Epoch)
	}
	for _, name := range joiners {
		for _, c := range r.sc.Clients {
			if c.Name != name {
				continue
			}
			_, key, err := r.svc.Joiners.JoinerKey(r.t.Context(), r.sc.GroupID, want.Epoch, c.KeyPackageRef)
			if err != nil || !bytes.Equal(key, c.SignatureKey) {
				r.t.Errorf("epoch %d: joiner %s: key %x, %v", want.Epoch, name, key, err)
			}
		}
	}
}

// requestType maps a commit of the transcript to the DS request type a
// client sends it as: Adds of new users are add_users, Removes of a whole
// user remove_users, and a commit with a path and no proposal by value
// (an empty commit, or one covering pending proposals by reference)
// update_client.
func requestType(proposals []string) moh.RequestType {
	switch {
	case len(proposals) > 0 && !slices.ContainsFunc(proposals, func(p string) bool { return !strings.HasPrefix(p, "add(") }):
		return moh.AddUsers
	case len(proposals) > 0 && !slices.ContainsFunc(proposals, func(p string) bool { return !strings.HasPrefix(p, "remove(") }):
		return moh.RemoveUsers
	default:
		return moh.UpdateClient
	}
}

// TestTSMLSTranscriptsThroughDS submits each public-handshake transcript
// to the Delivery Service.
func TestTSMLSTranscriptsThroughDS(t *testing.T) {
	for _, name := range []string{"scenario-cs1.json", "scenario-cs2.json", "scenario-cs1-extended.json", "scenario-cs2-extended.json"} {
		t.Run(name, func(t *testing.T) {
			sc := loadTSScenario(t, name)
			if sc.HandshakeWireFormat != "mls_public_message" {
				t.Fatalf("handshakes are %s", sc.HandshakeWireFormat)
			}
			r := newTSReplay(t, sc)
			r.create()
			for i, m := range sc.Messages {
				switch m.Kind {
				case "key_package", "welcome":
					// KeyPackages travel outside the group operations;
					// Welcomes go with their commit.
				case "application":
					r.send(m.From, m.Message)
				case "proposal":
					r.propose(m.Seq, m.From, m.Message)
				case "commit":
					r.commit(m.Seq, m.From, requestType(m.Proposals), m.Message, r.welcomesAfter(i))
				default:
					t.Fatalf("seq %d: kind %q", m.Seq, m.Kind)
				}
			}
			if g := r.load(); g.Epoch() != sc.Epochs[len(sc.Epochs)-1].Epoch {
				t.Fatalf("the group ended at epoch %d", g.Epoch())
			}
		})
	}
}

// create submits create_group with the creator's leaf and the GroupInfo
// of epoch 0.
func (r *tsReplay) create() {
	r.t.Helper()
	e0 := r.sc.Epochs[0]
	gi := r.message(e0.GroupInfo)
	var rt mls.RatchetTree
	if err := wire.Unmarshal(e0.RatchetTree, &rt, "ratchet tree"); err != nil {
		r.t.Fatal(err)
	}
	if len(rt) != 1 || rt[0] == nil || rt[0].Leaf == nil {
		r.t.Fatalf("epoch 0's tree has %d nodes, not the creator's leaf alone", len(rt))
	}
	if _, err := r.handle(moh.RequestBody{Type: moh.CreateGroup, CreateGroup: moh.CreateGroupRequest{
		GroupID: r.sc.GroupID, LeafNode: *rt[0].Leaf, GroupInfo: gi}}, 0); err != nil {
		r.t.Fatalf("create_group: %v", err)
	}
	r.checkServed(0, nil)
}

// commit submits the commit of seq as a request of type typ with the
// PartialGroupInfo of the peer's GroupInfo of the new epoch (signed by the
// committer), and checks that it is accepted and what the DS serves
// afterwards; a commit replayed after it is refused, and the state stays.
func (r *tsReplay) commit(seq int, from string, typ moh.RequestType, data []byte, welcomes []moh.WelcomePackage) {
	r.t.Helper()
	k := r.epochOf(seq)
	gi := r.message(r.sc.Epochs[k].GroupInfo).GroupInfo
	sender := r.leafOf(from)
	if gi.Signer != sender {
		r.t.Fatalf("seq %d: the peer's GroupInfo is signed by leaf %d, not the committer's %d", seq, gi.Signer, sender)
	}
	body := moh.RequestBody{Type: typ, GroupUpdate: moh.MLSGroupUpdate{Commit: r.message(data),
		PartialGroupInfo: moh.PartialGroupInfo{Extensions: gi.Extensions, Signature: gi.Signature}},
		WelcomePackages: welcomes}
	if _, err := r.handle(body, sender); err != nil {
		r.t.Fatalf("seq %d: %s from %s: %v", seq, typ, from, err)
	}
	var joiners []string
	for _, w := range welcomes {
		for _, sec := range w.Welcome.Welcome.Secrets {
			for _, c := range r.sc.Clients {
				if bytes.Equal(c.KeyPackageRef, sec.NewMember) {
					joiners = append(joiners, c.Name)
				}
			}
		}
	}
	r.checkServed(k, joiners)
	// The same commit again is for an epoch the group has left.
	if _, err := r.handle(body, sender); codeOf(err) != moh.CodeStaleEpoch && codeOf(err) != moh.CodeCommitConflict {
		r.t.Errorf("seq %d: replayed commit: %v", seq, err)
	}
	r.checkServed(k, joiners)
}

// send submits an application message as send_message, which the DS
// accepts unread. (The transcripts' identities are not client URIs, so no
// queue or provider can be named for its recipients: the DS logs them as
// not delivered to.)
func (r *tsReplay) send(from string, data []byte) {
	r.t.Helper()
	if _, err := r.handle(moh.RequestBody{Type: moh.SendMessage, Message: r.message(data)}, r.leafOf(from)); err != nil {
		r.t.Fatalf("send_message from %s: %v", from, err)
	}
}

// propose handles a by-reference proposal. The Delivery Service keeps
// proposals a member sends through self_remove_client only, a Remove of
// the sender's own leaf (DS -03 has no request for another member's
// proposal): such a proposal is submitted; any other is refused there
// (forbidden), and is then kept as a DS that took it would keep it, after
// the DS's own verification (mls.GroupState.VerifyProposal), so that the
// commit covering it by reference can be submitted.
func (r *tsReplay) propose(seq int, from string, data []byte) {
	r.t.Helper()
	sender := r.leafOf(from)
	msg := r.message(data)
	_, err := r.handle(moh.RequestBody{Type: moh.SelfRemoveClient, Message: msg}, sender)
	p := msg.PublicMessage.Content.Proposal
	if p.Type == mls.ProposalRemove && p.Removed == sender {
		if err != nil {
			r.t.Fatalf("seq %d: self_remove_client: %v", seq, err)
		}
		return
	}
	if codeOf(err) != moh.CodeForbidden {
		r.t.Fatalf("seq %d: a proposal other than a self-remove through self_remove_client: %v", seq, err)
	}
	g := r.load()
	_, ref, err := g.VerifyProposal(&msg)
	if err != nil {
		r.t.Fatalf("seq %d: %v", seq, err)
	}
	if err := r.st.AddProposal(r.t.Context(), g.GroupID(), g.Epoch(), store.PendingProposal{Ref: ref, Message: data}); err != nil {
		r.t.Fatal(err)
	}
}

// TestTSMLSPrivateHandshakeThroughDS submits the transcript whose commits
// are PrivateMessages: the DS cannot validate them against the public
// state, so it refuses each (invalid_mls) and the group stays at epoch 0.
func TestTSMLSPrivateHandshakeThroughDS(t *testing.T) {
	sc := loadTSScenario(t, "scenario-cs1-private-handshake.json")
	r := newTSReplay(t, sc)
	r.create()
	for _, m := range sc.Messages {
		if m.Kind != "commit" {
			continue
		}
		k := r.epochOf(m.Seq)
		gi := r.message(sc.Epochs[k].GroupInfo).GroupInfo
		body := moh.RequestBody{Type: requestType(m.Proposals), GroupUpdate: moh.MLSGroupUpdate{Commit: r.message(m.Message),
			PartialGroupInfo: moh.PartialGroupInfo{Extensions: gi.Extensions, Signature: gi.Signature}}}
		auth := ClientSignature(0, time.Now())
		auth.Signature = make([]byte, 64)
		enc, err := wire.Marshal(&moh.DSRequest{Body: body, Auth: auth})
		if err != nil {
			t.Fatal(err)
		}
		// A commit in a DSRequest must be a PublicMessage: the request
		// does not even decode.
		if _, err := moh.DecodeDSRequest(enc); codeOf(err) != moh.CodeMalformed {
			t.Errorf("seq %d: private commit: %v", m.Seq, err)
		}
	}
	if g := r.load(); g.Epoch() != 0 {
		t.Fatalf("the group moved to epoch %d", g.Epoch())
	}
	r.checkServed(0, nil)
}

// TestTSMLSRefusals submits the first commits of a transcript altered or
// mislabelled: each is refused with its DSError, and nothing changes.
func TestTSMLSRefusals(t *testing.T) {
	sc := loadTSScenario(t, "scenario-cs1.json")
	var add, update int // indexes in Messages of the Add commit and C's empty commit
	for i, m := range sc.Messages {
		switch {
		case m.Kind == "commit" && requestType(m.Proposals) == moh.AddUsers && add == 0:
			add = i
		case m.Kind == "commit" && len(m.Proposals) == 0 && update == 0:
			update = i
		}
	}
	for _, tc := range []struct {
		name string
		at   int // the commit, submitted after those before it
		edit func(body *moh.RequestBody, sender *uint32)
		want moh.Code
	}{
		{"partial GroupInfo signature tampered", add, func(b *moh.RequestBody, _ *uint32) {
			b.GroupUpdate.PartialGroupInfo.Signature = flipLast(b.GroupUpdate.PartialGroupInfo.Signature)
		}, moh.CodeInvalidMLS},
		{"a joiner missing from the Welcome", add, func(b *moh.RequestBody, _ *uint32) {
			w := *b.WelcomePackages[0].Welcome.Welcome
			w.Secrets = w.Secrets[:len(w.Secrets)-1]
			b.WelcomePackages[0].Welcome.Welcome = &w
		}, moh.CodeInvalidMLS},
		{"add as update_client", add, func(b *moh.RequestBody, _ *uint32) { b.Type = moh.UpdateClient }, moh.CodeForbidden},
		{"update as remove_users", update, func(b *moh.RequestBody, _ *uint32) { b.Type = moh.RemoveUsers }, moh.CodeForbidden},
		{"signed by another leaf", update, func(_ *moh.RequestBody, sender *uint32) { *sender = 0 }, moh.CodeForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newTSReplay(t, sc)
			r.create()
			for i, m := range sc.Messages[:tc.at] {
				if m.Kind == "commit" {
					r.commit(m.Seq, m.From, requestType(m.Proposals), m.Message, r.welcomesAfter(i))
				}
			}
			m := sc.Messages[tc.at]
			k := r.epochOf(m.Seq)
			gi := r.message(sc.Epochs[k].GroupInfo).GroupInfo
			body := moh.RequestBody{Type: requestType(m.Proposals), GroupUpdate: moh.MLSGroupUpdate{Commit: r.message(m.Message),
				PartialGroupInfo: moh.PartialGroupInfo{Extensions: gi.Extensions, Signature: gi.Signature}},
				WelcomePackages: r.welcomesAfter(tc.at)}
			sender := r.leafOf(m.From)
			tc.edit(&body, &sender)
			if _, err := r.handle(body, sender); codeOf(err) != tc.want {
				t.Fatalf("got %v, want %s", err, tc.want)
			}
			r.checkServed(k-1, nil)
		})
	}
}

// welcomesAfter returns the Welcomes of the commit at Messages[i].
func (r *tsReplay) welcomesAfter(i int) []moh.WelcomePackage {
	m := r.sc.Messages[i]
	var ws []moh.WelcomePackage
	for _, w := range r.sc.Messages[i+1:] {
		if w.Kind == "welcome" && w.Epoch != nil && *w.Epoch == m.EpochAfter {
			ws = append(ws, moh.WelcomePackage{Welcome: r.message(w.Message)})
		}
	}
	return ws
}
