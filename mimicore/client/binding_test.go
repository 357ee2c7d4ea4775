package client

import (
	"bytes"
	"io"
	"net/http"
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
	mu        sync.Mutex
	issued    []uint64 // the not_after of each binding issued
	published []uint64 // the bindings' not_after in each published KeyPackage
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
		g.issued = append(g.issued, na)
		g.mu.Unlock()
		b, _ := wire.Marshal(&localapi.BindingAnswer{Binding: binding.ClientBinding{NotAfter: na, KeyID: []byte{1}, Signature: []byte{3}}})
		w.Write(b)
	})
	mux.HandleFunc("/local/key_packages", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req localapi.PublishRequest
		if err := wire.Unmarshal(body, &req, "PublishRequest"); err != nil {
			t.Error(err)
		}
		g.mu.Lock()
		for _, e := range req.KeyPackages {
			var kp mls.KeyPackage
			if err := wire.Unmarshal(e.KeyPackage, &kp, "KeyPackage"); err != nil {
				t.Error(err)
				continue
			}
			g.published = append(g.published, notAfterOf(t, &kp.LeafNode))
		}
		g.mu.Unlock()
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
			want := old
			if tc.renewed {
				if len(gw.issued) != 1 {
					t.Fatalf("%d bindings issued, want 1", len(gw.issued))
				}
				want = gw.issued[0]
			} else if len(gw.issued) != 0 {
				t.Fatalf("%d bindings issued, want none", len(gw.issued))
			}
			if len(gw.published) != 1 || gw.published[0] != want || len(gw.committed) != 1 || gw.committed[0] != want {
				t.Fatalf("published %v and committed %v, want the binding until %d", gw.published, gw.committed, want)
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

// TestRecordFormat1: a record written before binding_issued was stored
// decodes, its binding's issue unknown, so the next operation renews it.
func TestRecordFormat1(t *testing.T) {
	r := &record{clientURI: []byte("mimi://a.example/d/bob/phone"), suite: mls.X25519AES128GCMSHA256Ed25519, sigKey: []byte{1}, binding: []byte{1}, cursor: 7}
	enc, err := wire.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	// Format 1 is format 2 without binding_issued, which follows the
	// binding (here its last byte).
	i := 1 + 1 + len(r.clientURI) + 2 + 1 + len(r.sigKey) + 1 + len(r.binding)
	v1 := append(append([]byte{1}, enc[1:i]...), enc[i+8:]...)
	got, err := decodeRecord(v1)
	if err != nil {
		t.Fatal(err)
	}
	if got.bindingIssued != 0 || got.cursor != 7 || !bytes.Equal(got.binding, r.binding) {
		t.Fatalf("decoded %+v", got)
	}
}
