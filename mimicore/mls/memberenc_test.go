package mls

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
)

// memberSuites are the suites the Member encoding is tested in.
var memberSuites = []CipherSuite{1, 2, 3, 5, 7}

// reload stores m and restores it, checking that the encoding is stable
// and that the restored Member does not alias the stored bytes.
func reload(tb testing.TB, m *Member) *Member {
	tb.Helper()
	enc, err := m.MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	data := bytes.Clone(enc)
	r, err := DecodeMember(data, MemberOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	clear(data)
	again, err := r.MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	if !bytes.Equal(again, enc) {
		tb.Fatal("a restored member encodes differently")
	}
	return r
}

// sameSecrets checks that members agree on the epoch and its secrets.
func sameSecrets(tb testing.TB, members ...*Member) {
	tb.Helper()
	want, err := members[0].Export("test", []byte("ctx"), 32)
	if err != nil {
		tb.Fatal(err)
	}
	for i, m := range members[1:] {
		got, err := m.Export("test", []byte("ctx"), 32)
		if err != nil || !bytes.Equal(got, want) {
			tb.Fatalf("member %d: exporter differs (%v)", i+1, err)
		}
		if m.State().Epoch() != members[0].State().Epoch() ||
			!bytes.Equal(m.EpochAuthenticator(), members[0].EpochAuthenticator()) {
			tb.Fatalf("member %d: epoch differs", i+1)
		}
	}
}

// exchange has from protect a message and to unprotect it.
func exchange(tb testing.TB, from, to *Member, text string) {
	tb.Helper()
	msg, err := from.Protect([]byte(text), nil)
	if err != nil {
		tb.Fatal(err)
	}
	sender, data, err := to.Unprotect(reencode(tb, msg))
	if err != nil || sender != from.LeafIndex() || string(data) != text {
		tb.Fatalf("unprotect: %d %q %v", sender, data, err)
	}
}

// addPeer has m commit the addition of a new client and returns m and the
// new member in the next epoch.
func addPeer(tb testing.TB, cs CipherSuite, m *Member, name string) (*Member, *Member) {
	tb.Helper()
	c := newTestClient(tb, cs, name)
	res, err := m.Commit([]*Proposal{{Type: ProposalAdd, KeyPackage: c.kp}}, nil, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return res.Next, c.join(tb, res.Welcome)
}

// memberCase builds a member the way a client gets one, and a peer in the
// same epoch (nil when the member is alone). then, when set, continues
// from the restored member to the pair the common checks run on.
type memberCase struct {
	name  string
	build func(t *testing.T, cs CipherSuite) (m, peer *Member, then func(t *testing.T, r *Member) (*Member, *Member))
}

var memberCases = []memberCase{
	{"NewGroup", func(t *testing.T, cs CipherSuite) (*Member, *Member, func(*testing.T, *Member) (*Member, *Member)) {
		alice, err := NewGroup(newTestClient(t, cs, "A").groupOptions(cs, "enc group"))
		if err != nil {
			t.Fatal(err)
		}
		return alice, nil, func(t *testing.T, r *Member) (*Member, *Member) {
			return addPeer(t, cs, r, "B")
		}
	}},
	{"Commit", func(t *testing.T, cs CipherSuite) (*Member, *Member, func(*testing.T, *Member) (*Member, *Member)) {
		alice, err := NewGroup(newTestClient(t, cs, "A").groupOptions(cs, "enc group"))
		if err != nil {
			t.Fatal(err)
		}
		alice, bob := addPeer(t, cs, alice, "B")
		return alice, bob, nil
	}},
	{"JoinFromWelcome", func(t *testing.T, cs CipherSuite) (*Member, *Member, func(*testing.T, *Member) (*Member, *Member)) {
		alice, err := NewGroup(newTestClient(t, cs, "A").groupOptions(cs, "enc group"))
		if err != nil {
			t.Fatal(err)
		}
		alice, _ = addPeer(t, cs, alice, "B")
		// A second joiner gets a path secret in its Welcome.
		c := newTestClient(t, cs, "C")
		res, err := alice.Commit([]*Proposal{{Type: ProposalAdd, KeyPackage: c.kp}}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return c.join(t, res.Welcome), res.Next, nil
	}},
	{"JoinExternal", func(t *testing.T, cs CipherSuite) (*Member, *Member, func(*testing.T, *Member) (*Member, *Member)) {
		alice, err := NewGroup(newTestClient(t, cs, "A").groupOptions(cs, "enc group"))
		if err != nil {
			t.Fatal(err)
		}
		gi, err := alice.GroupInfo()
		if err != nil {
			t.Fatal(err)
		}
		d := newTestClient(t, cs, "D")
		tmpl := d.kp.LeafNode
		tmpl.Lifetime = Lifetime{}
		commit, dave, err := JoinExternal(reencode(t, &MLSMessage{Version: MLS10, WireFormat: WireFormatGroupInfo, GroupInfo: gi}).GroupInfo,
			ExternalJoinOptions{Leaf: tmpl, Signer: d.signer})
		if err != nil {
			t.Fatal(err)
		}
		return dave, follow(t, alice, commit, nil), nil
	}},
	{"ApplyCommit", func(t *testing.T, cs CipherSuite) (*Member, *Member, func(*testing.T, *Member) (*Member, *Member)) {
		alice, err := NewGroup(newTestClient(t, cs, "A").groupOptions(cs, "enc group"))
		if err != nil {
			t.Fatal(err)
		}
		alice, bob := addPeer(t, cs, alice, "B")
		res, err := alice.Commit(nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return follow(t, bob, res.Commit, nil), res.Next, nil
	}},
	{"ProposeUpdate", func(t *testing.T, cs CipherSuite) (*Member, *Member, func(*testing.T, *Member) (*Member, *Member)) {
		alice, err := NewGroup(newTestClient(t, cs, "A").groupOptions(cs, "enc group"))
		if err != nil {
			t.Fatal(err)
		}
		alice, bob := addPeer(t, cs, alice, "B")
		upd, bob, err := bob.ProposeUpdate()
		if err != nil {
			t.Fatal(err)
		}
		// The restored member holds the new leaf key and follows the
		// commit that covers its update.
		return bob, alice, func(t *testing.T, r *Member) (*Member, *Member) {
			ac, ref, err := alice.VerifyProposal(reencode(t, upd))
			if err != nil {
				t.Fatal(err)
			}
			store := map[string]*AuthenticatedContent{string(ref): ac}
			res, err := alice.Commit(nil, [][]byte{ref}, refsResolver(store))
			if err != nil {
				t.Fatal(err)
			}
			return follow(t, r, res.Commit, refsResolver(store)), res.Next
		}
	}},
}

// TestMemberEncodingContinues stores and restores members as each
// constructor and step leaves them, and checks that the restored member
// continues the group exactly as the original would: same secrets, its
// messages open at the peer and the peer's at it, its commits are
// followed and it follows the peer's.
func TestMemberEncodingContinues(t *testing.T) {
	for _, cs := range memberSuites {
		for _, tc := range memberCases {
			t.Run(fmt.Sprintf("suite=%d/%s", uint16(cs), tc.name), func(t *testing.T) {
				m, peer, then := tc.build(t, cs)
				r := reload(t, m)
				sameSecrets(t, m, r)
				if then != nil {
					r, peer = then(t, r)
				}
				sameSecrets(t, r, peer)
				checkContinues(t, r, peer)
			})
		}
	}
}

// checkContinues runs a restored member r with peer through messages and
// commits both ways.
func checkContinues(t *testing.T, r, peer *Member) {
	t.Helper()
	// A message sent by the peer after the save opens at the restored member.
	exchange(t, peer, r, "to restored")
	exchange(t, r, peer, "from restored")

	// The restored member commits; the peer follows.
	res, err := r.Commit(nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, peer = res.Next, follow(t, peer, res.Commit, nil)
	sameSecrets(t, r, peer)
	exchange(t, r, peer, "after own commit")

	// The peer commits; the restored member, stored once more, follows.
	res, err = peer.Commit(nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, peer = follow(t, reload(t, r), res.Commit, nil), res.Next
	sameSecrets(t, r, peer)
	exchange(t, peer, r, "after peer commit")
	gi, err := r.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	if err := peer.State().VerifyGroupInfo(gi); err != nil {
		t.Fatalf("group info of the restored member: %v", err)
	}
}

// pair returns two members of a fresh group in suite cs, both able to
// sign.
func pair(tb testing.TB, cs CipherSuite) (alice, bob *Member) {
	tb.Helper()
	alice, err := NewGroup(newTestClient(tb, cs, "A").groupOptions(cs, "enc group"))
	if err != nil {
		tb.Fatal(err)
	}
	return addPeer(tb, cs, alice, "B")
}

// protect has m protect text, failing the test on error.
func protect(tb testing.TB, m *Member, text string) *MLSMessage {
	tb.Helper()
	msg, err := m.Protect([]byte(text), nil)
	if err != nil {
		tb.Fatal(err)
	}
	return msg
}

// TestMemberEncodingConsumedKeys checks the deletion schedule across a
// reload: a message opened before the save does not open after it, in
// order or out of order, while messages not yet opened do, once; and the
// stored bytes hold neither the epoch's encryption_secret nor the other
// secrets the member no longer needs.
func TestMemberEncodingConsumedKeys(t *testing.T) {
	for _, cs := range memberSuites {
		t.Run(fmt.Sprint("suite=", uint16(cs)), func(t *testing.T) {
			alice, bob := pair(t, cs)
			msgs := make([]*MLSMessage, 5)
			for i := range msgs {
				msgs[i] = protect(t, bob, fmt.Sprint("message ", i))
			}
			// Open 0 and 3 (skipping 1 and 2, whose keys are kept), then save.
			for _, i := range []int{0, 3} {
				if _, _, err := alice.Unprotect(reencode(t, msgs[i])); err != nil {
					t.Fatal(err)
				}
			}
			enc, err := alice.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			sec := alice.secrets
			for name, secret := range map[string][]byte{"encryption_secret": sec.EncryptionSecret,
				"epoch_secret": sec.EpochSecret, "joiner_secret": sec.JoinerSecret,
				"welcome_secret": sec.WelcomeSecret, "confirmation_key": sec.ConfirmationKey} {
				if bytes.Contains(enc, secret) {
					t.Errorf("the stored member holds the %s", name)
				}
			}
			restored, err := DecodeMember(enc, MemberOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for _, i := range []int{0, 3} {
				if _, _, err := restored.Unprotect(reencode(t, msgs[i])); !errors.Is(err, ErrSecretTree) {
					t.Errorf("message %d opened before the save opens again after it: %v", i, err)
				}
			}
			for _, i := range []int{2, 1, 4} {
				_, data, err := restored.Unprotect(reencode(t, msgs[i]))
				if err != nil || string(data) != fmt.Sprint("message ", i) {
					t.Fatalf("message %d: %q %v", i, data, err)
				}
				if _, _, err := restored.Unprotect(reencode(t, msgs[i])); !errors.Is(err, ErrSecretTree) {
					t.Errorf("message %d opened twice after the reload: %v", i, err)
				}
			}
			// The member's own sending ratchet continues where it was: the
			// restored member's messages use fresh generations.
			exchange(t, alice, bob, "before the save")
			exchange(t, reload(t, alice), bob, "after the save")
		})
	}
}

// TestMemberEncodingSnapshot checks that a member's encoding is the state
// of the moment: keys consumed later are still in an earlier encoding
// (the reason to store after every Unprotect), and not in a later one.
func TestMemberEncodingSnapshot(t *testing.T) {
	alice, bob := pair(t, X25519AES128GCMSHA256Ed25519)
	msg := protect(t, bob, "hello")
	before, err := alice.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := alice.Unprotect(reencode(t, msg)); err != nil {
		t.Fatal(err)
	}
	after := reload(t, alice)
	if _, _, err := after.Unprotect(reencode(t, msg)); !errors.Is(err, ErrSecretTree) {
		t.Fatalf("later encoding: %v", err)
	}
	early, err := DecodeMember(before, MemberOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, data, err := early.Unprotect(reencode(t, msg)); err != nil || string(data) != "hello" {
		t.Fatalf("earlier encoding: %q %v", data, err)
	}
}

// TestMemberEncodingConcurrent encodes a member while other goroutines
// protect and open messages in the same epoch (run with -race): every
// encoding decodes.
func TestMemberEncodingConcurrent(t *testing.T) {
	alice, bob := pair(t, X25519AES128GCMSHA256Ed25519)
	msgs := make([]*MLSMessage, 40)
	for i := range msgs {
		msgs[i] = reencode(t, protect(t, bob, fmt.Sprint(i)))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 3*len(msgs))
	for i := range msgs {
		wg.Go(func() {
			if _, _, err := alice.Unprotect(msgs[i]); err != nil {
				errs <- err
			}
		})
		wg.Go(func() {
			if _, err := alice.Protect([]byte("x"), nil); err != nil {
				errs <- err
			}
		})
		wg.Go(func() {
			enc, err := alice.MarshalBinary()
			if err == nil {
				_, err = DecodeMember(enc, MemberOptions{})
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	r := reload(t, alice)
	for i, msg := range msgs {
		if _, _, err := r.Unprotect(msg); !errors.Is(err, ErrSecretTree) {
			t.Errorf("message %d opens again: %v", i, err)
		}
	}
}

// TestMemberEncodingNoSigner stores a member that only follows the group.
func TestMemberEncodingNoSigner(t *testing.T) {
	for _, cs := range []CipherSuite{1, 2} {
		t.Run(fmt.Sprint("suite=", uint16(cs)), func(t *testing.T) {
			alice, err := NewGroup(newTestClient(t, cs, "A").groupOptions(cs, "enc group"))
			if err != nil {
				t.Fatal(err)
			}
			b := newTestClient(t, cs, "B")
			res, err := alice.Commit([]*Proposal{{Type: ProposalAdd, KeyPackage: b.kp}}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			follower, err := JoinFromWelcome(reencode(t, res.Welcome).Welcome,
				WelcomeOptions{KeyPackage: b.kp, InitKey: b.initPriv, LeafKey: b.leafPriv})
			if err != nil {
				t.Fatal(err)
			}
			r := reload(t, follower)
			exchange(t, res.Next, r, "to a follower")
			if _, err := r.Protect([]byte("x"), nil); err == nil {
				t.Fatal("a follower without a signer protected a message")
			}
		})
	}
}

// opaqueSigner hides the private key behind the crypto.Signer interface,
// as a hardware key would.
type opaqueSigner struct{ crypto.Signer }

// TestMemberEncodingSignerNotExportable refuses to store a member whose
// signer cannot give out its private key.
func TestMemberEncodingSignerNotExportable(t *testing.T) {
	cs := X25519AES128GCMSHA256Ed25519
	c := newTestClient(t, cs, "A")
	opts := c.groupOptions(cs, "enc group")
	opts.Signer = opaqueSigner{c.signer}
	m, err := NewGroup(opts)
	if err != nil {
		t.Fatal(err)
	}
	// Hidden keys, keys of another suite's scheme and nil keys are
	// refused.
	p256, _, err := P256AES128GCMSHA256P256.GenerateSignatureKey()
	if err != nil {
		t.Fatal(err)
	}
	ed, _, err := X25519AES128GCMSHA256Ed25519.GenerateSignatureKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		signer crypto.Signer
	}{
		{"opaque", opaqueSigner{c.signer}},
		{"p256 key in an ed25519 suite", p256},
		{"nil ecdsa key", (*ecdsa.PrivateKey)(nil)},
		{"nil ed25519 key", (*ed25519.PrivateKey)(nil)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m.signer = tc.signer
			if _, err := m.MarshalBinary(); !errors.Is(err, ErrSignerNotExportable) {
				t.Fatalf("got %v, want ErrSignerNotExportable", err)
			}
		})
	}
	// A pointer to an Ed25519 key is exported like the key.
	pk := ed.(ed25519.PrivateKey)
	m.signer = &pk
	if _, err := m.MarshalBinary(); err != nil {
		t.Fatal(err)
	}
}

// TestMemberEncodingMalformed refuses every truncation, trailing bytes and
// another format version, cleanly.
func TestMemberEncodingMalformed(t *testing.T) {
	for _, cs := range []CipherSuite{1, 2} {
		t.Run(fmt.Sprint("suite=", uint16(cs)), func(t *testing.T) {
			alice, bob := pair(t, cs)
			openSome(t, alice, bob)
			enc, err := alice.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			for n := range len(enc) {
				if _, err := DecodeMember(enc[:n], MemberOptions{}); !errors.Is(err, ErrMemberEncoding) {
					t.Fatalf("truncated to %d of %d bytes: %v", n, len(enc), err)
				}
			}
			for _, tail := range [][]byte{{0}, {1}, enc} {
				if _, err := DecodeMember(append(bytes.Clone(enc), tail...), MemberOptions{}); !errors.Is(err, ErrMemberEncoding) {
					t.Fatalf("%d trailing bytes: %v", len(tail), err)
				}
			}
			for _, v := range []byte{0, 3, 0xff} {
				bad := bytes.Clone(enc)
				bad[0] = v
				if _, err := DecodeMember(bad, MemberOptions{}); !errors.Is(err, ErrMemberEncoding) {
					t.Fatalf("format %d: %v", v, err)
				}
			}
			// The group state inside has its own version byte.
			bad := bytes.Clone(enc)
			bad[1+varintLen(t, enc[1:])]++
			if _, err := DecodeMember(bad, MemberOptions{}); !errors.Is(err, ErrMemberEncoding) {
				t.Fatalf("group state format: %v", err)
			}
		})
	}
}

// openSome has peer send three messages and m open the first and the
// last, so that m's secret tree holds ratchets and a skipped key.
func openSome(tb testing.TB, m, peer *Member) {
	tb.Helper()
	msgs := []*MLSMessage{protect(tb, peer, "0"), protect(tb, peer, "1"), protect(tb, peer, "2")}
	for _, i := range []int{0, 2} {
		if _, _, err := m.Unprotect(reencode(tb, msgs[i])); err != nil {
			tb.Fatal(err)
		}
	}
}

// varintLen returns the length of the MLS varint at the start of b.
func varintLen(tb testing.TB, b []byte) int {
	tb.Helper()
	if len(b) == 0 {
		tb.Fatal("empty varint")
	}
	return 1 << (b[0] >> 6)
}

// FuzzDecodeMember checks that decoding never panics and that whatever
// decodes encodes back to the same bytes.
func FuzzDecodeMember(f *testing.F) {
	for _, cs := range []CipherSuite{1, 2} {
		alice, bob := pair(f, cs)
		openSome(f, alice, bob)
		res, err := alice.Commit([]*Proposal{{Type: ProposalReInit, ReInit: &ReInit{GroupID: []byte("successor"),
			Version: MLS10, CipherSuite: cs}}}, nil, nil)
		if err != nil {
			f.Fatal(err)
		}
		for _, m := range []*Member{alice, bob, res.Next} {
			enc, err := m.MarshalBinary()
			if err != nil {
				f.Fatal(err)
			}
			f.Add(enc)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeMember(data, MemberOptions{})
		if err != nil {
			if !errors.Is(err, ErrMemberEncoding) {
				t.Fatalf("error not wrapping ErrMemberEncoding: %v", err)
			}
			return
		}
		out, err := m.MarshalBinary()
		if err != nil {
			t.Fatalf("re-encoding: %v", err)
		}
		if !bytes.Equal(out, data) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", out, data)
		}
	})
}

// TestMemberDropsReplacedKeys checks that a member moving to a new epoch
// deletes the private keys of the nodes the commit replaced, so that a
// stored member holds only those of its leaf and direct path.
func TestMemberDropsReplacedKeys(t *testing.T) {
	for _, cs := range []CipherSuite{1, 2} {
		t.Run(fmt.Sprint("suite=", uint16(cs)), func(t *testing.T) {
			alice, bob := pair(t, cs)
			var old [][]byte
			for range 4 {
				// bob's update is committed by alice, then alice commits a path.
				upd, next, err := bob.ProposeUpdate()
				if err != nil {
					t.Fatal(err)
				}
				ac, ref, err := alice.VerifyProposal(reencode(t, upd))
				if err != nil {
					t.Fatal(err)
				}
				store := map[string]*AuthenticatedContent{string(ref): ac}
				res, err := alice.Commit(nil, [][]byte{ref}, refsResolver(store))
				if err != nil {
					t.Fatal(err)
				}
				for _, k := range bob.keys {
					raw, err := k.Bytes()
					if err != nil {
						t.Fatal(err)
					}
					old = append(old, raw)
				}
				alice, bob = res.Next, follow(t, next, res.Commit, refsResolver(store))
				res, err = alice.Commit(nil, nil, nil)
				if err != nil {
					t.Fatal(err)
				}
				alice, bob = res.Next, follow(t, bob, res.Commit, nil)
			}
			// Two leaves: bob's leaf and the root.
			if len(bob.keys) != 2 || len(alice.keys) != 2 {
				t.Fatalf("members hold %d and %d path keys, want 2", len(alice.keys), len(bob.keys))
			}
			enc, err := bob.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			for i, raw := range old {
				if bytes.Contains(enc, raw) {
					t.Fatalf("old private key %d is stored", i)
				}
			}
			exchange(t, reload(t, bob), alice, "still works")
		})
	}
}

// TestMemberEncodingFormat1 decodes Members that the code before format 2
// stored (testdata/member_format1_*.bin: alice and bob of pair in suite 1,
// alice having opened bob's first and third message), which have no
// ReInit: they encode back to the same bytes, still in format 1, and
// continue the group together.
func TestMemberEncodingFormat1(t *testing.T) {
	var members [2]*Member
	for i, name := range []string{"alice", "bob"} {
		enc, err := os.ReadFile(filepath.Join("testdata", "member_format1_"+name+".bin"))
		if err != nil {
			t.Fatal(err)
		}
		if enc[0] != memberFormat {
			t.Fatalf("%s: the fixture is in format %d", name, enc[0])
		}
		if members[i], err = DecodeMember(enc, MemberOptions{}); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		again, err := members[i].MarshalBinary()
		if err != nil || !bytes.Equal(again, enc) {
			t.Fatalf("%s: encodes back differently (%v)", name, err)
		}
		if members[i].ReInit() != nil {
			t.Fatalf("%s: a ReInit from format 1", name)
		}
	}
	alice, bob := members[0], members[1]
	sameSecrets(t, alice, bob)
	exchange(t, alice, bob, "after the restore")
	exchange(t, bob, alice, "and back")
	res, err := alice.Commit(nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	sameSecrets(t, res.Next, follow(t, bob, res.Commit, nil))
}

// TestMemberEncodingReInit checks the encoding of a Member with a ReInit:
// format 2, which decodes to the same ReInit and encodes back to the same
// bytes (reload), and refuses every truncation, the ReInit under format
// 1's byte (trailing bytes), format 2's byte without a ReInit, and
// trailing bytes after it.
func TestMemberEncodingReInit(t *testing.T) {
	for _, cs := range []CipherSuite{1, 2} {
		t.Run(fmt.Sprint("suite=", uint16(cs)), func(t *testing.T) {
			_, oldB, creator, _ := reinitGroups(t, cs)
			enc, err := oldB.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if enc[0] != memberFormatReInit {
				t.Fatalf("a member with a ReInit is stored in format %d", enc[0])
			}
			if r := reload(t, oldB); !reflect.DeepEqual(r.ReInit(), oldB.ReInit()) {
				t.Fatalf("restored ReInit %+v, want %+v", r.ReInit(), oldB.ReInit())
			}
			for n := range len(enc) {
				if _, err := DecodeMember(enc[:n], MemberOptions{}); !errors.Is(err, ErrMemberEncoding) {
					t.Fatalf("truncated to %d of %d bytes: %v", n, len(enc), err)
				}
			}
			asFormat1 := bytes.Clone(enc)
			asFormat1[0] = memberFormat
			if _, err := DecodeMember(asFormat1, MemberOptions{}); !errors.Is(err, ErrMemberEncoding) {
				t.Fatalf("the ReInit under format 1: %v", err)
			}
			if _, err := DecodeMember(append(bytes.Clone(enc), 0), MemberOptions{}); !errors.Is(err, ErrMemberEncoding) {
				t.Fatalf("a trailing byte: %v", err)
			}
			// The new group's creator has no ReInit: format 1, and under
			// format 2's byte its ReInit is missing.
			plain, err := creator.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if plain[0] != memberFormat {
				t.Fatalf("a member without a ReInit is stored in format %d", plain[0])
			}
			plain[0] = memberFormatReInit
			if _, err := DecodeMember(plain, MemberOptions{}); !errors.Is(err, ErrMemberEncoding) {
				t.Fatalf("format 2 without a ReInit: %v", err)
			}
		})
	}
}
