package client

import (
	"bytes"
	"io"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// bindingGateway is a fake gateway's local API that issues bindings of
// c's signature key valid for 30 days, and records the not_after of the
// bindings in what c publishes and commits.
type bindingGateway struct {
	mu         sync.Mutex
	issued     []uint64                   // the not_after of each binding issued
	published  []uint64                   // the bindings' not_after in each published KeyPackage
	lastResort int                        // how many published KeyPackages were last-resort ones
	refuse     int                        // how many publishes to refuse (400) before taking them
	lose       int                        // how many publishes to take but answer 503, as when the answer is lost
	down       bool                       // key_packages answers 503 to all: the gateway's store is unavailable
	taken      []localapi.KeyPackageEntry // what GET key_packages answers: all published
	// capped, when not 0, is the not_after of every binding issued: the
	// end of the provider's signing key, which caps the bindings it signs.
	capped    uint64
	committed []uint64 // the binding's not_after of each commit's UpdatePath leaf
	commits   [][]byte
}

// notAfterOf returns the not_after of leaf's client binding.
func notAfterOf(t *testing.T, leaf *mls.LeafNode) uint64 {
	t.Helper()
	data, ok := leaf.Extensions.Find(binding.ExtensionType)
	if !ok {
		t.Error("a leaf without a client binding")
		return 0
	}
	b, err := binding.Decode(data)
	if err != nil {
		t.Error(err)
		return 0
	}
	return b.NotAfter
}

func (g *bindingGateway) register(t *testing.T, c *Client, mux *http.ServeMux) {
	uri, key := c.URI(), c.sigPub // read here: the handlers run while c is locked
	mux.HandleFunc("/local/binding", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req localapi.BindingRequest
		if err := wire.Unmarshal(body, &req, "BindingRequest"); err != nil || !bytes.Equal(req.SignatureKey, key) || string(req.ClientURI) != uri {
			t.Errorf("binding request %x: %v", body, err)
			writeDSError(w, http.StatusBadRequest, moh.CodeMalformed)
			return
		}
		na := uint64(time.Now().Add(30 * 24 * time.Hour).Unix())
		g.mu.Lock()
		if g.capped != 0 {
			na = g.capped
		}
		g.issued = append(g.issued, na)
		g.mu.Unlock()
		b, _ := wire.Marshal(&localapi.BindingAnswer{Binding: binding.ClientBinding{NotAfter: na, KeyID: []byte{1}, Signature: []byte{3}}})
		w.Write(b)
	})
	mux.HandleFunc("/local/key_packages", func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		down := g.down
		g.mu.Unlock()
		if down {
			writeDSError(w, http.StatusServiceUnavailable, moh.CodeBackendUnavailable)
			return
		}
		if r.Method == http.MethodGet {
			g.mu.Lock()
			b, _ := wire.Marshal(&localapi.KeyPackageList{KeyPackages: g.taken})
			g.mu.Unlock()
			w.Write(b)
			return
		}
		body, _ := io.ReadAll(r.Body)
		var req localapi.PublishRequest
		if err := wire.Unmarshal(body, &req, "PublishRequest"); err != nil {
			t.Error(err)
		}
		g.mu.Lock()
		if g.refuse > 0 {
			g.refuse--
			g.mu.Unlock()
			writeDSError(w, http.StatusBadRequest, moh.CodeQuotaExceeded)
			return
		}
		for _, e := range req.KeyPackages {
			if e.LastResort {
				g.lastResort++
			}
			var kp mls.KeyPackage
			if err := wire.Unmarshal(e.KeyPackage, &kp, "KeyPackage"); err != nil {
				t.Error(err)
				continue
			}
			g.published = append(g.published, notAfterOf(t, &kp.LeafNode))
		}
		g.taken = append(g.taken, req.KeyPackages...)
		lose := g.lose > 0
		if lose {
			g.lose--
		}
		g.mu.Unlock()
		if lose {
			writeDSError(w, http.StatusServiceUnavailable, moh.CodeBackendUnavailable)
			return
		}
		b, _ := wire.Marshal(&localapi.KeyPackageList{})
		w.Write(b)
	})
	mux.HandleFunc("/group_operation", func(w http.ResponseWriter, r *http.Request) {
		req := readDSRequest(t, r)
		msg := req.Body.GroupUpdate.Commit
		enc, _ := wire.Marshal(&msg)
		g.mu.Lock()
		g.commits = append(g.commits, enc)
		if msg.PublicMessage != nil && msg.PublicMessage.Content.Commit != nil && msg.PublicMessage.Content.Commit.Path != nil {
			g.committed = append(g.committed, notAfterOf(t, &msg.PublicMessage.Content.Commit.Path.LeafNode))
		} else {
			t.Error("a commit without an UpdatePath")
		}
		g.mu.Unlock()
		writeOK(w, &moh.DSResponse{Type: moh.ResponseOK})
	})
}

// setBinding gives c a binding issued issuedAgo before now and valid for
// 30 days from then.
func setBinding(t *testing.T, c *Client, issuedAgo time.Duration) uint64 {
	t.Helper()
	issued := time.Now().Add(-issuedAgo)
	na := uint64(issued.Add(30 * 24 * time.Hour).Unix())
	b, err := wire.Marshal(&binding.ClientBinding{NotAfter: na, KeyID: []byte{1}, Signature: []byte{2}})
	if err != nil {
		t.Fatal(err)
	}
	rec := c.rec.clone()
	rec.binding, rec.bindingIssued = b, uint64(issued.Unix())
	if err := c.adopt(rec); err != nil {
		t.Fatal(err)
	}
	if err := c.saveRecord(rec); err != nil {
		t.Fatal(err)
	}
	return na
}

// TestBindingRenewal: alice's binding, valid for 30 days, has less than a
// third of them left: before she publishes KeyPackages and before she
// commits she gets a new one from the local API and stores it; the
// KeyPackages and her commit's UpdatePath leaf carry it, and bob applies
// the commit. With more than a third left, she asks for none. Without the
// renewal, a client's KeyPackages and commits are refused by the gateway
// once its first binding expires.
func TestBindingRenewal(t *testing.T) {
	for _, tc := range []struct {
		name    string
		age     time.Duration
		renewed bool
	}{
		{"19 days old", 19 * 24 * time.Hour, false},
		{"21 days old", 21 * 24 * time.Hour, true},
		{"expired", 31 * 24 * time.Hour, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			alice, bob, gid, _ := pair(t)
			gw := new(bindingGateway)
			mux := http.NewServeMux()
			gw.register(t, alice, mux)
			fakeGateway(t, alice, mux)
			old := setBinding(t, alice, tc.age)
			if err := alice.Publish(t.Context(), 1, false); err != nil {
				t.Fatal(err)
			}
			if err := alice.Update(t.Context(), gid); err != nil {
				t.Fatal(err)
			}
			gw.mu.Lock()
			defer gw.mu.Unlock()
			want, published := old, 1
			if tc.renewed {
				if len(gw.issued) != 1 {
					t.Fatalf("%d bindings issued, want 1", len(gw.issued))
				}
				// The renewal replaced alice's KeyPackage of the group's
				// creation (DefaultKeyPackages at least) before the
				// one she asked for.
				want, published = gw.issued[0], DefaultKeyPackages+1
			} else if len(gw.issued) != 0 {
				t.Fatalf("%d bindings issued, want none", len(gw.issued))
			}
			if len(gw.published) != published || slices.ContainsFunc(gw.published, func(na uint64) bool { return na != want }) ||
				len(gw.committed) != 1 || gw.committed[0] != want {
				t.Fatalf("published %v and committed %v, want %d KeyPackages and a commit with the binding until %d", gw.published, gw.committed, published, want)
			}
			if got := uint64(reopen(t, alice).BindingNotAfter().Unix()); got != want {
				t.Fatalf("the stored binding is until %d, want %d", got, want)
			}
			if ev, err := bob.process(t.Context(), queued(1, gid, alice.URI(), gw.commits[0])); err != nil || ev.Kind != EventCommit {
				t.Fatalf("bob applying alice's commit: %+v, %v", ev, err)
			}
			m, err := bob.member(gid)
			if err != nil {
				t.Fatal(err)
			}
			leaf, _ := m.State().Tree().Leaf(0)
			if got := notAfterOf(t, leaf.LeafNode()); got != want {
				t.Fatalf("alice's leaf at bob has the binding until %d, want %d", got, want)
			}
		})
	}
}

// TestRenewalRepublishes: bob, who only receives, has published 12
// single-use KeyPackages and a last-resort one under a binding with less
// than a third of its validity left. Receive renews the binding and
// publishes 12 single-use KeyPackages and a last-resort one carrying the
// new binding, keeping the keys of the old ones: a Welcome for an old one
// still joins. When the gateway refuses the publish, the renewal is kept
// and the publish is retried at the next Receive. Without the
// republishing, bob's KeyPackages all expire with his old binding and he
// can no longer be added to a group.
func TestRenewalRepublishes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		refuse int
	}{
		{"published", 0},
		{"publish refused once", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			alice, bob := newOffline(t, "alice"), newOffline(t, "bob")
			old := setBinding(t, bob, 21*24*time.Hour)
			var kps []*mls.KeyPackage
			for range 12 {
				kps = append(kps, keyPackage(t, bob))
			}
			_, st, err := bob.newKeyPackage(true)
			if err != nil {
				t.Fatal(err)
			}
			rec := bob.rec.clone()
			rec.keyPackages = append(rec.keyPackages, st)
			if err := bob.saveRecord(rec); err != nil {
				t.Fatal(err)
			}

			// alice adds bob with one of his old KeyPackages.
			gid := []byte("0123456789abcdef")
			creator := keyPackage(t, alice)
			leafKey, _, err := alice.deriveKey(alice.rec.keyPackages[0].leafSeed)
			if err != nil {
				t.Fatal(err)
			}
			m, err := mls.NewGroup(mls.GroupOptions{CipherSuite: DefaultCipherSuite, GroupID: gid, Leaf: &creator.LeafNode, LeafKey: leafKey, Signer: alice.signer})
			if err != nil {
				t.Fatal(err)
			}
			res, err := m.CommitWith(mls.CommitOptions{ByValue: []*mls.Proposal{{Type: mls.ProposalAdd, KeyPackage: kps[5]}}, OmitRatchetTree: true})
			if err != nil {
				t.Fatal(err)
			}
			welcome, err := wire.Marshal(res.Welcome)
			if err != nil {
				t.Fatal(err)
			}
			rt := res.Next.State().Tree().RatchetTree()
			tree, err := wire.Marshal(&rt)
			if err != nil {
				t.Fatal(err)
			}

			gw := &bindingGateway{refuse: tc.refuse}
			q := new(fakeQueue)
			mux := http.NewServeMux()
			gw.register(t, bob, mux)
			q.register(mux)
			mux.HandleFunc("/welcome_information", func(w http.ResponseWriter, r *http.Request) {
				writeOK(w, &moh.DSResponse{Type: moh.ResponseWelcomeInfo, RatchetTree: tree})
			})
			fakeGateway(t, bob, mux)

			if _, err := bob.Receive(t.Context(), 0); err != nil {
				t.Fatal(err)
			}
			if tc.refuse > 0 {
				gw.mu.Lock()
				n := len(gw.published)
				gw.mu.Unlock()
				if n != 0 || !bob.rec.republishDue {
					t.Fatalf("after a refused publish: %d published, republish due %v; want none, due", n, bob.rec.republishDue)
				}
				bob = reopen(t, bob)
				fakeGateway(t, bob, mux)
				if bob.BindingNotAfter().Unix() == int64(old) || !bob.rec.republishDue {
					t.Fatalf("reopened after a refused publish: binding until %v, republish due %v; want the renewed one, due", bob.BindingNotAfter(), bob.rec.republishDue)
				}
			}

			// The Welcome for an old KeyPackage arrives.
			q.mu.Lock()
			q.msgs = append(q.msgs, localapi.Message{Seq: 1, GroupID: gid, Sender: []byte(alice.URI()), Message: welcome})
			q.mu.Unlock()
			evs, err := bob.Receive(t.Context(), 0)
			if err != nil || len(evs) != 1 || evs[0].Kind != EventJoined {
				t.Fatalf("Receive: %+v, %v; want one joined", evs, err)
			}

			gw.mu.Lock()
			defer gw.mu.Unlock()
			if len(gw.issued) != 1 {
				t.Fatalf("%d bindings issued, want 1", len(gw.issued))
			}
			if len(gw.published) != 13 || gw.lastResort != 1 || slices.ContainsFunc(gw.published, func(na uint64) bool { return na != gw.issued[0] }) {
				t.Fatalf("published %v (%d last-resort); want 13, one last-resort, all with the binding until %d", gw.published, gw.lastResort, gw.issued[0])
			}
			// The old KeyPackages' keys are kept, but the used one's.
			if r := reopen(t, bob).rec; r.republishDue || len(r.keyPackages) != 13+12 {
				t.Fatalf("stored: republish due %v, %d KeyPackages; want not due, 25", r.republishDue, len(r.keyPackages))
			}
		})
	}
}

// TestRenewalNotExtended: alice's binding has less than a third of its
// validity left, but the gateway's signing key ends when it does (a
// gateway caps a binding at its key's end: with the default 30-day key
// rotation and 48h overlap, every binding issued after a key's second day
// ends with the key), so the renewal answers a binding that ends when the
// old one does. Her KeyPackages carrying the old binding last as long as
// new ones would: publishing one KeyPackage publishes that one alone, and
// no republish is left due. Before, every such renewal (twice a key
// period with the defaults) published DefaultKeyPackages KeyPackages more
// that replaced nothing.
func TestRenewalNotExtended(t *testing.T) {
	alice, _, _, _ := pair(t)
	gw := new(bindingGateway)
	mux := http.NewServeMux()
	gw.register(t, alice, mux)
	fakeGateway(t, alice, mux)
	gw.capped = setBinding(t, alice, 21*24*time.Hour)
	if err := alice.Publish(t.Context(), 1, false); err != nil {
		t.Fatal(err)
	}
	gw.mu.Lock()
	issued, published := len(gw.issued), len(gw.published)
	gw.mu.Unlock()
	if issued != 1 || published != 1 {
		t.Fatalf("%d bindings issued, %d KeyPackages published; want 1 (renewed), 1 (the one asked for)", issued, published)
	}
	if r := reopen(t, alice).rec; r.republishDue {
		t.Fatal("a republish is due after a renewal that did not extend the binding")
	}
}

// TestRepublishRetried: bob's binding was renewed with 12 single-use
// KeyPackages and a last-resort one of the old binding stored, and the
// republish that replaces them fails in a way that leaves its outcome
// unknown, so it is retried at each operation. When the gateway took the
// KeyPackages but the answer was lost, the retry finds them available
// and publishes none (before: 13 more each time the answer was lost).
// When the gateway's store was down for 25 operations, nothing piles up
// and the retry once it is back publishes the 12 and the last-resort one
// (before: each operation kept the keys of 13 more, and once 255 were
// kept the retry published the last-resort one alone, so bob had no
// single-use KeyPackage left when his old binding expired).
func TestRepublishRetried(t *testing.T) {
	for _, tc := range []struct {
		name       string
		lose, down int
	}{
		{"answer lost", 1, 0},
		{"store down", 0, 25},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bob := newOffline(t, "bob")
			setBinding(t, bob, 21*24*time.Hour)
			for range 12 {
				keyPackage(t, bob)
			}
			_, st, err := bob.newKeyPackage(true)
			if err != nil {
				t.Fatal(err)
			}
			rec := bob.rec.clone()
			rec.keyPackages = append(rec.keyPackages, st)
			if err := bob.saveRecord(rec); err != nil {
				t.Fatal(err)
			}
			gw := &bindingGateway{lose: tc.lose, down: tc.down > 0}
			mux := http.NewServeMux()
			gw.register(t, bob, mux)
			new(fakeQueue).register(mux)
			fakeGateway(t, bob, mux)
			for range max(tc.lose, tc.down) {
				if _, err := bob.Receive(t.Context(), 0); err != nil {
					t.Fatal(err)
				}
			}
			if !bob.rec.republishDue {
				t.Fatal("no republish due after it failed")
			}
			gw.mu.Lock()
			gw.down = false
			gw.mu.Unlock()
			if _, err := bob.Receive(t.Context(), 0); err != nil {
				t.Fatal(err)
			}
			gw.mu.Lock()
			published, lastResort := len(gw.published), gw.lastResort
			gw.mu.Unlock()
			if published != 13 || lastResort != 1 || bob.rec.republishDue {
				t.Fatalf("published %d KeyPackages (%d last-resort), republish due %v; want 13 (1), not due", published, lastResort, bob.rec.republishDue)
			}
			if n := len(bob.rec.keyPackages); n != 13+13 {
				t.Fatalf("%d KeyPackages' keys kept; want 26 (the 13 old ones, the 13 new)", n)
			}
		})
	}
}

// TestRecordFormat1: a record written before binding_issued was stored
// decodes, its binding's issue unknown, so the next operation renews it.
func TestRecordFormat1(t *testing.T) {
	r := &record{clientURI: []byte("mimi://a.example/d/bob/phone"), suite: mls.X25519AES128GCMSHA256Ed25519, sigKey: []byte{1}, binding: []byte{1}, cursor: 7}
	enc, err := wire.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	// Format 1 is format 4 without binding_issued, which follows the
	// binding (here its last byte), and without republish_due and
	// republish_after, the last 9 bytes.
	i := 1 + 1 + len(r.clientURI) + 2 + 1 + len(r.sigKey) + 1 + len(r.binding)
	v1 := append(append([]byte{1}, enc[1:i]...), enc[i+8:len(enc)-9]...)
	got, err := decodeRecord(v1)
	if err != nil {
		t.Fatal(err)
	}
	if got.bindingIssued != 0 || got.cursor != 7 || !bytes.Equal(got.binding, r.binding) {
		t.Fatalf("decoded %+v", got)
	}
}
