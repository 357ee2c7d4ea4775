package binding

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
)

// Providers under example.com, which the httptest server's certificate
// covers.
const (
	aliceRemote = "mimi://a.example.com/d/alice/phone"
	bobRemote   = "mimi://b.example.com/d/bob/phone"
)

// remoteSetup is provider a.example.com (a key ring, checking) and provider
// b.example.com (one key, served over TLS by a peer), with an issuer for each.
type remoteSetup struct {
	now        time.Time
	ring       *provider.KeyRing
	bKey       *provider.PrivateKey
	peer       *peer
	fetcher    *provider.KeyFetcher
	issA, issB *Issuer
	checker    *Checker
}

func newRemoteSetup(t testing.TB) *remoteSetup {
	t.Helper()
	now := time.Now().Truncate(time.Second)
	s := &remoteSetup{now: now, ring: openRing(t, moh.SchemeEd25519, now.Add(-time.Hour))}
	var err error
	if s.bKey, err = provider.GenerateKey(moh.SchemeEd25519, now.Add(-time.Hour), now.Add(24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	s.peer = newPeer(t, s.bKey)
	// a.example.com resolves to the peer too, so a fetch of the local
	// provider's keys would be counted.
	s.fetcher = s.peer.fetcher(t, "b.example.com", "a.example.com")
	clock := func() time.Time { return now }
	s.issA = &Issuer{Domains: []string{"a.example.com"}, Keys: s.ring, Now: clock}
	s.issB = &Issuer{Domains: []string{"b.example.com"}, Keys: oneKey{s.bKey}, Now: clock}
	s.checker = &Checker{Domains: []string{"a.example.com"}, Local: s.ring, Remote: s.fetcher}
	return s
}

// bind returns a bind function for newClient issuing with iss until
// notAfter.
func bind(t testing.TB, iss *Issuer, notAfter time.Time) func(*mls.LeafNode) *ClientBinding {
	return func(l *mls.LeafNode) *ClientBinding {
		b, err := iss.Issue(l.Credential.Identity, l.SignatureKey, notAfter)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
}

// TestRemoteProviderKeys checks bindings of another provider's clients with
// keys fetched over real TLS through the KeyFetcher, in order, counting the
// fetches: one fetch, then the cache; no fetch for an expired binding, for
// the local provider, or for a key id just found missing.
func TestRemoteProviderKeys(t *testing.T) {
	s := newRemoteSetup(t)
	notAfter := s.now.Add(time.Hour)
	bob := newClient(t, bobRemote, bind(t, s.issB, notAfter))
	alice := newClient(t, aliceRemote, bind(t, s.issA, notAfter))
	forged := newClient(t, bobRemote, func(l *mls.LeafNode) *ClientBinding {
		b := bind(t, s.issB, notAfter)(l)
		b.KeyID = []byte("not a key of b.example.com")
		return b
	})
	tampered := newClient(t, bobRemote, func(l *mls.LeafNode) *ClientBinding {
		b := bind(t, s.issB, notAfter)(l)
		b.NotAfter--
		return b
	})
	for _, tc := range []struct {
		name    string
		leaf    *mls.LeafNode
		at      time.Time
		want    error
		code    moh.Code
		fetches int32
	}{
		{name: "fetched over TLS", leaf: bob.leaf, at: s.now, fetches: 1},
		{name: "cached", leaf: bob.leaf, at: s.now, fetches: 1},
		{name: "expired without a fetch", leaf: bob.leaf, at: notAfter.Add(time.Second), want: ErrExpired, code: moh.CodeForbidden, fetches: 1},
		{name: "local provider without a fetch", leaf: alice.leaf, at: s.now, fetches: 1},
		{name: "unknown key id", leaf: forged.leaf, at: s.now, want: ErrUnknownKey, code: moh.CodeUnknownKey, fetches: 1},
		{name: "bad signature", leaf: tampered.leaf, at: s.now, want: ErrBadSignature, code: moh.CodeBadSignature, fetches: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.checker.CheckLeafNode(t.Context(), tc.leaf, tc.at, provider.LookupOptions{})
			wantRefusal(t, err, tc.want, tc.code)
			if tc.want == nil && got.ClientURI != string(tc.leaf.Credential.Identity) {
				t.Fatalf("Bound = %+v", got)
			}
			if n := s.peer.fetches.Load(); n != tc.fetches {
				t.Fatalf("%d key fetches, want %d", n, tc.fetches)
			}
		})
	}
}

// TestRemoteKeysUnavailable checks the refusals when a provider's keys
// cannot be had: unreachable (unknown_key) or a closed fetcher
// (backend_unavailable, retry later).
func TestRemoteKeysUnavailable(t *testing.T) {
	s := newRemoteSetup(t)
	notAfter := s.now.Add(time.Hour)
	issC := &Issuer{Domains: []string{"c.example.com"}, Keys: oneKey{s.bKey}, Now: s.issB.Now}
	carol := newClient(t, "mimi://c.example.com/d/carol/phone", bind(t, issC, notAfter))
	bob := newClient(t, bobRemote, bind(t, s.issB, notAfter))

	// c.example.com resolves to a port the fetch policy does not allow.
	unreachable := provider.NewKeyFetcher(provider.FetchPolicy{AllowPrivate: true,
		Resolve: map[string]string{"c.example.com": "127.0.0.1:1"}})
	t.Cleanup(unreachable.Close)
	chk := &Checker{Domains: []string{"a.example.com"}, Local: s.ring, Remote: unreachable}
	_, err := chk.CheckLeafNode(t.Context(), carol.leaf, s.now, provider.LookupOptions{})
	wantRefusal(t, err, ErrUnknownKey, moh.CodeUnknownKey)

	closed := s.peer.fetcher(t, "b.example.com")
	closed.Close()
	chk = &Checker{Domains: []string{"a.example.com"}, Local: s.ring, Remote: closed}
	_, err = chk.CheckLeafNode(t.Context(), bob.leaf, s.now, provider.LookupOptions{})
	wantRefusal(t, err, ErrKeysUnavailable, moh.CodeBackendUnavailable)
	if !errors.Is(err, provider.ErrFetcherClosed) {
		t.Fatalf("cause lost: %v", err)
	}
	if n := s.peer.fetches.Load(); n != 0 {
		t.Fatalf("%d fetches", n)
	}
}

// sourcedKeys is a SourcedKeySource that records the lookup options and
// answers with err or key.
type sourcedKeys struct {
	key    *moh.VerificationKey
	err    error
	source netip.Addr
}

func (s *sourcedKeys) VerificationKey(context.Context, string, []byte, time.Time) (*moh.VerificationKey, error) {
	panic("the Checker must pass the request's source")
}

func (s *sourcedKeys) VerificationKeyFrom(_ context.Context, _ string, _ []byte, _ time.Time, opts provider.LookupOptions) (*moh.VerificationKey, error) {
	s.source = opts.Source
	return s.key, s.err
}

// TestRemoteLookupOptions checks that fetches are charged to the request's
// source and that a spent fetch budget is backend_unavailable.
func TestRemoteLookupOptions(t *testing.T) {
	s := newRemoteSetup(t)
	bob := newClient(t, bobRemote, bind(t, s.issB, s.now.Add(time.Hour)))
	src := netip.MustParseAddr("192.0.2.7")
	pub := s.bKey.Public()
	keys := &sourcedKeys{key: &pub}
	chk := &Checker{Remote: keys}
	if _, err := chk.CheckLeafNode(t.Context(), bob.leaf, s.now, provider.LookupOptions{Source: src}); err != nil {
		t.Fatal(err)
	}
	if keys.source != src {
		t.Fatalf("lookup source = %v, want %v", keys.source, src)
	}
	keys.err = provider.ErrFetchBudget
	_, err := chk.CheckLeafNode(t.Context(), bob.leaf, s.now, provider.LookupOptions{Source: src})
	wantRefusal(t, err, ErrKeysUnavailable, moh.CodeBackendUnavailable)
}

// TestCheckCommit runs the DS's view of a real group: alice (a.example.com)
// creates it and commits adding bob (b.example.com, keys fetched over TLS) and
// carol (no binding). The public group state applies the commit, and
// CheckCommit refuses carol's leaf, naming it; the same commit without
// carol passes, committer's UpdatePath leaf included.
func TestCheckCommit(t *testing.T) {
	s := newRemoteSetup(t)
	notAfter := s.now.Add(time.Hour)
	alice := newClient(t, aliceRemote, bind(t, s.issA, notAfter))
	bob := newClient(t, bobRemote, bind(t, s.issB, notAfter))
	carol := newClient(t, "mimi://b.example.com/d/carol/phone", nil)

	m, _, ds := newGroup(t, alice, []byte("binding test group"))
	creator, _ := ds.Member(0)
	if _, err := s.checker.CheckLeaf(t.Context(), creator, s.now, provider.LookupOptions{}); err != nil {
		t.Fatalf("creator's leaf: %v", err)
	}

	for _, tc := range []struct {
		name string
		add  []*client
		want error
		leaf uint32
	}{
		{name: "every added leaf bound", add: []*client{bob}},
		{name: "an added leaf without binding", add: []*client{bob, carol}, want: ErrMissing, leaf: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var props []*mls.Proposal
			for _, c := range tc.add {
				props = append(props, &mls.Proposal{Type: mls.ProposalAdd, KeyPackage: c.keyPackage(t)})
			}
			res, err := m.Commit(props, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			next, info, err := ds.ApplyCommit(res.Commit, nil)
			if err != nil {
				t.Fatal(err)
			}
			if info.Path == nil {
				t.Fatal("commit has no UpdatePath: the committer's leaf is not exercised")
			}
			err = s.checker.CheckCommit(t.Context(), next, info, s.now, provider.LookupOptions{})
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				for i := range uint32(len(tc.add) + 1) {
					v, _ := next.Member(i)
					if _, err := s.checker.CheckLeaf(t.Context(), v, s.now, provider.LookupOptions{}); err != nil {
						t.Fatalf("leaf %d: %v", i, err)
					}
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) || e.Kind != tc.want || e.ClientURI == "" {
				t.Fatalf("CheckCommit = %v, want kind %v", err, tc.want)
			}
			if want := fmt.Sprintf("leaf %d: ", tc.leaf); !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("CheckCommit = %q, does not name leaf %d", err, tc.leaf)
			}
		})
	}
	if s.peer.fetches.Load() != 1 {
		t.Fatalf("%d fetches of b.example.com's keys, want 1", s.peer.fetches.Load())
	}
	blank := mls.LeafView{}
	if _, err := s.checker.CheckLeaf(t.Context(), blank, s.now, provider.LookupOptions{}); !errors.Is(err, ErrMissing) {
		t.Fatalf("blank leaf: %v", err)
	}
}

// TestCheckExternalJoin checks the joiner's leaf of an external commit
// (external_join), built by mls.JoinExternal from a leaf template that
// carries the binding: the DS state applies the commit, and CheckCommit
// passes a bound joiner and refuses an unbound one.
func TestCheckExternalJoin(t *testing.T) {
	s := newRemoteSetup(t)
	notAfter := s.now.Add(time.Hour)
	alice := newClient(t, aliceRemote, bind(t, s.issA, notAfter))
	_, gi, ds := newGroup(t, alice, []byte("external join group"))
	for _, tc := range []struct {
		name string
		bind func(*mls.LeafNode) *ClientBinding
		want error
	}{
		{name: "bound joiner", bind: bind(t, s.issB, notAfter)},
		{name: "unbound joiner", want: ErrMissing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bob := newClient(t, bobRemote, tc.bind)
			commit, _, err := mls.JoinExternal(gi, mls.ExternalJoinOptions{Leaf: *bob.leaf, Signer: bob.signer})
			if err != nil {
				t.Fatal(err)
			}
			next, info, err := ds.ApplyCommit(commit, nil)
			if err != nil {
				t.Fatal(err)
			}
			if info.Committer.Type != mls.SenderNewMemberCommit {
				t.Fatalf("committer %+v is not a new member", info.Committer)
			}
			err = s.checker.CheckCommit(t.Context(), next, info, s.now, provider.LookupOptions{})
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("CheckCommit = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestCheckCommitUpdate checks the leaf of an Update proposal that a
// commit covers by reference: bob (joined externally) proposes an update,
// alice commits it, and the DS state applies the commit. An update made by
// mls (Member.ProposeUpdate, which keeps the leaf's extensions) passes; an
// update leaf without the binding is refused, naming bob's leaf.
func TestCheckCommitUpdate(t *testing.T) {
	s := newRemoteSetup(t)
	notAfter := s.now.Add(time.Hour)
	alice := newClient(t, aliceRemote, bind(t, s.issA, notAfter))
	bob := newClient(t, bobRemote, bind(t, s.issB, notAfter))
	groupID := []byte("update group")
	m, gi, ds := newGroup(t, alice, groupID)
	join, bobMember, err := mls.JoinExternal(gi, mls.ExternalJoinOptions{Leaf: *bob.leaf, Signer: bob.signer})
	if err != nil {
		t.Fatal(err)
	}
	if ds, _, err = ds.ApplyCommit(join, nil); err != nil {
		t.Fatal(err)
	}
	if m, err = m.ApplyCommit(join, nil); err != nil {
		t.Fatal(err)
	}
	bobIndex := bobMember.LeafIndex()

	for _, tc := range []struct {
		name    string
		propose func(t *testing.T) *mls.MLSMessage
		want    error
	}{
		{name: "update keeping the binding", propose: func(t *testing.T) *mls.MLSMessage {
			msg, _, err := bobMember.ProposeUpdate()
			if err != nil {
				t.Fatal(err)
			}
			return msg
		}},
		{name: "update dropping the binding", want: ErrMissing, propose: func(t *testing.T) *mls.MLSMessage {
			v, _ := ds.Member(bobIndex)
			l := v.LeafNode()
			l.Extensions = nil
			_, encPub, err := suite.DeriveKeyPair(random(t, 32))
			if err != nil {
				t.Fatal(err)
			}
			l.EncryptionKey, l.Source, l.Lifetime, l.ParentHash = encPub, mls.SourceUpdate, mls.Lifetime{}, nil
			if err := l.Sign(suite, bob.signer, groupID, bobIndex); err != nil {
				t.Fatal(err)
			}
			msg, err := bobMember.Propose(&mls.Proposal{Type: mls.ProposalUpdate, LeafNode: l})
			if err != nil {
				t.Fatal(err)
			}
			return msg
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ac, ref, err := ds.VerifyProposal(tc.propose(t))
			if err != nil {
				t.Fatal(err)
			}
			resolve := func(r []byte) (*mls.AuthenticatedContent, error) {
				if !bytes.Equal(r, ref) {
					return nil, errors.New("unknown proposal")
				}
				return ac, nil
			}
			res, err := m.Commit(nil, [][]byte{ref}, resolve)
			if err != nil {
				t.Fatal(err)
			}
			next, info, err := ds.ApplyCommit(res.Commit, resolve)
			if err != nil {
				t.Fatal(err)
			}
			err = s.checker.CheckCommit(t.Context(), next, info, s.now, provider.LookupOptions{})
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if want := fmt.Sprintf("leaf %d: ", bobIndex); !errors.Is(err, tc.want) || !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("CheckCommit = %v, want %v at leaf %d", err, tc.want, bobIndex)
			}
		})
	}
}

// newGroup makes a group of which c is the only member, and the Delivery
// Service's public state of it, built from its GroupInfo.
func newGroup(t *testing.T, c *client, groupID []byte) (*mls.Member, *mls.GroupInfo, *mls.GroupState) {
	t.Helper()
	m, err := mls.NewGroup(mls.GroupOptions{CipherSuite: suite, GroupID: groupID,
		Leaf: c.leaf, LeafKey: c.encPriv, Signer: c.signer})
	if err != nil {
		t.Fatal(err)
	}
	gi, err := m.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	ds, err := mls.NewGroupState(gi, nil)
	if err != nil {
		t.Fatal(err)
	}
	return m, gi, ds
}
