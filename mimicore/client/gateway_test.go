package client

import (
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment"
	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// These tests run the client against a fake gateway: an httptest server
// whose handlers answer as a gateway would, or fail as one can.

// writeDSError answers a DSError of code with status.
func writeDSError(w http.ResponseWriter, status int, code moh.Code) {
	b, _ := wire.Marshal(&moh.DSResponse{Type: moh.ResponseError, Error: moh.DSError{Code: code, Message: []byte("refused")}})
	w.WriteHeader(status)
	w.Write(b)
}

// writeOK answers r as a 200 DSResponse.
func writeOK(w http.ResponseWriter, r *moh.DSResponse) {
	b, _ := wire.Marshal(r)
	w.Write(b)
}

// fakeGateway serves mux over TLS and points c at it (gateway and local
// API on the same server, the local API under /local).
func fakeGateway(t *testing.T, c *Client, mux *http.ServeMux) *httptest.Server {
	t.Helper()
	srv := httptest.NewTLSServer(mux)
	t.Cleanup(srv.Close)
	c.cfg = Config{Gateway: srv.URL, Local: srv.URL + "/local", HTTPClient: srv.Client()}
	c.http = srv.Client()
	return srv
}

// fakeQueue is a client's queue at a fake gateway: /local/messages lists
// what is after the cursor, /local/messages/ack records the acknowledgement.
type fakeQueue struct {
	mu    sync.Mutex
	msgs  []localapi.Message
	acked uint64
}

func (q *fakeQueue) register(mux *http.ServeMux) {
	mux.HandleFunc("/local/messages", func(w http.ResponseWriter, r *http.Request) {
		q.mu.Lock()
		defer q.mu.Unlock()
		var l localapi.MessageList
		for _, m := range q.msgs {
			if m.Seq > q.acked {
				l.Messages = append(l.Messages, m)
			}
		}
		b, _ := wire.Marshal(&l)
		w.Write(b)
	})
	mux.HandleFunc("/local/messages/ack", func(w http.ResponseWriter, r *http.Request) {
		var req localapi.AckRequest
		body := make([]byte, r.ContentLength)
		if _, err := r.Body.Read(body); err != nil && len(body) == 0 {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := wire.Unmarshal(body, &req, "AckRequest"); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		q.mu.Lock()
		q.acked = max(q.acked, req.UpTo)
		q.mu.Unlock()
		b, _ := wire.Marshal(&localapi.AckAnswer{})
		w.Write(b)
	})
}

// TestWelcomeKeptOnTransientWelcomeInfoFailure: a welcome_info that fails
// for a reason that can pass (a 503 from the hub; a 401 that is not about
// the KeyPackage: a token required by an admission zone, the client's
// clock off) stops Receive before the cursor moves past the Welcome; the
// next Receive joins.
func TestWelcomeKeptOnTransientWelcomeInfoFailure(t *testing.T) {
	for _, tc := range []struct {
		status int
		code   moh.Code
	}{
		{http.StatusServiceUnavailable, moh.CodeBackendUnavailable},
		{http.StatusUnauthorized, moh.CodeTokenRequired},
		{http.StatusUnauthorized, moh.CodeStaleTimestamp},
		{http.StatusTooManyRequests, moh.CodeRateLimited},
	} {
		t.Run(tc.code.String(), func(t *testing.T) { welcomeKeptOnFailure(t, tc.status, tc.code) })
	}
}

// welcomeQueued makes alice's group with bob added, without the ratchet
// tree in the Welcome: it returns bob, a queue holding the Welcome for
// him, and the tree that welcome_info serves.
func welcomeQueued(t *testing.T) (bob *Client, q *fakeQueue, tree []byte) {
	t.Helper()
	alice, bob := newOffline(t, "alice"), newOffline(t, "bob")
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
	res, err := m.CommitWith(mls.CommitOptions{ByValue: []*mls.Proposal{{Type: mls.ProposalAdd, KeyPackage: keyPackage(t, bob)}}, OmitRatchetTree: true})
	if err != nil {
		t.Fatal(err)
	}
	welcome, err := wire.Marshal(res.Welcome)
	if err != nil {
		t.Fatal(err)
	}
	rt := res.Next.State().Tree().RatchetTree()
	tree, err = wire.Marshal(&rt)
	if err != nil {
		t.Fatal(err)
	}
	q = &fakeQueue{msgs: []localapi.Message{{Seq: 1, GroupID: gid, Sender: []byte(alice.URI()), Message: welcome}}}
	return bob, q, tree
}

func welcomeKeptOnFailure(t *testing.T, status int, code moh.Code) {
	bob, q, tree := welcomeQueued(t)
	mux := http.NewServeMux()
	q.register(mux)
	var down sync.Mutex
	outage := true
	mux.HandleFunc("/welcome_information", func(w http.ResponseWriter, r *http.Request) {
		down.Lock()
		defer down.Unlock()
		if outage {
			writeDSError(w, status, code)
			return
		}
		writeOK(w, &moh.DSResponse{Type: moh.ResponseWelcomeInfo, RatchetTree: tree})
	})
	fakeGateway(t, bob, mux)

	if _, err := bob.Receive(t.Context(), 0); err == nil {
		t.Fatalf("Receive succeeded while welcome_info answered %d %s", status, code)
	}
	if bob.rec.cursor != 0 || q.acked != 0 {
		t.Fatalf("after a %d from welcome_info: cursor %d, acked %d; want 0, 0", status, bob.rec.cursor, q.acked)
	}
	if len(bob.Groups()) != 0 {
		t.Fatal("bob is in a group without its tree")
	}
	down.Lock()
	outage = false
	down.Unlock()
	evs, err := bob.Receive(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].Kind != EventJoined {
		t.Fatalf("Receive after the hub recovered: %+v; want one joined", evs)
	}
	if bob.rec.cursor != 1 || q.acked != 1 {
		t.Fatalf("after joining: cursor %d, acked %d; want 1, 1", bob.rec.cursor, q.acked)
	}
}

// TestWelcomeAfterCrashDeletesKeyPackage: a kill -9 after the Welcome's
// group was written but before the record that drops the single-use
// KeyPackage's private keys (and moves the cursor) leaves the group and the
// keys on disk, the Welcome still queued. Processing it again finds the
// group joined and skips it: the keys of the KeyPackage the Welcome used
// must go then (RFC 9420: deleted once used to join), not stay until the
// binding expires.
func TestWelcomeAfterCrashDeletesKeyPackage(t *testing.T) {
	bob, q, tree := welcomeQueued(t)
	mux := http.NewServeMux()
	q.register(mux)
	mux.HandleFunc("/welcome_information", func(w http.ResponseWriter, r *http.Request) {
		writeOK(w, &moh.DSResponse{Type: moh.ResponseWelcomeInfo, RatchetTree: tree})
	})
	fakeGateway(t, bob, mux)
	keys := slices.Clone(bob.rec.keyPackages)
	if len(keys) != 1 || keys[0].lastResort {
		t.Fatalf("bob keeps %d KeyPackages; want one single-use", len(keys))
	}

	evs, err := bob.Receive(t.Context(), 0)
	if err != nil || len(evs) != 1 || evs[0].Kind != EventJoined {
		t.Fatalf("Receive: %+v, %v; want one joined", evs, err)
	}
	// The state a kill -9 leaves between the group's record write and the
	// next one: the group joined, the KeyPackage's keys kept, the cursor
	// before the Welcome, which the gateway still holds.
	crashed := bob.rec.clone()
	crashed.keyPackages, crashed.cursor = keys, 0
	if err := bob.saveRecord(crashed); err != nil {
		t.Fatal(err)
	}
	q.mu.Lock()
	q.acked = 0
	q.mu.Unlock()
	bob = reopen(t, bob)
	fakeGateway(t, bob, mux)

	evs, err = bob.Receive(t.Context(), 0)
	if err != nil || len(evs) != 1 || evs[0].Kind != EventSkipped {
		t.Fatalf("Receive after the crash: %+v, %v; want the Welcome skipped", evs, err)
	}
	if len(bob.Groups()) != 1 || bob.rec.cursor != 1 {
		t.Fatalf("after the crash: %d groups, cursor %d; want 1, 1", len(bob.Groups()), bob.rec.cursor)
	}
	if n := len(bob.rec.keyPackages); n != 0 {
		t.Fatalf("after the Welcome was processed again: %d KeyPackage private keys kept; want the used one deleted", n)
	}
	on, err := os.ReadFile(filepath.Join(bob.dir, stateFile))
	if err != nil {
		t.Fatal(err)
	}
	if rec, err := decodeRecord(on); err != nil || len(rec.keyPackages) != 0 {
		t.Fatalf("the record on disk: %v; want no KeyPackage kept", err)
	}
}

// TestMessageKeptWhenGroupWriteFails: when the group file cannot be
// written after a message was opened (a full disk, an I/O error), Receive
// stops before the cursor moves, and the next Receive, once the disk is
// writable again, opens the message: the key the failed write would have
// erased is still on disk, so it must not be gone in memory either.
func TestMessageKeptWhenGroupWriteFails(t *testing.T) {
	alice, bob, gid, _ := pair(t)
	msg := protect(t, bob, gid, "hello alice")
	q := &fakeQueue{msgs: []localapi.Message{{Seq: 1, GroupID: gid, Sender: []byte(bob.URI()), Message: msg}}}
	mux := http.NewServeMux()
	q.register(mux)
	fakeGateway(t, alice, mux)

	// A directory in the group file's place: the rename over it fails.
	file := groupPath(alice.dir, alice.rec.groups[alice.rec.group(gid)].file)
	saved, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(file, "blocker"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Receive(t.Context(), 0); err == nil {
		t.Fatal("Receive succeeded while the group file could not be written")
	}
	if alice.rec.cursor != 0 || q.acked != 0 {
		t.Fatalf("after the failed write: cursor %d, acked %d; want 0, 0", alice.rec.cursor, q.acked)
	}
	if err := os.RemoveAll(file); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, saved, 0o600); err != nil {
		t.Fatal(err)
	}
	evs, err := alice.Receive(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].Kind != EventMessage || string(evs[0].Data) != "hello alice" {
		t.Fatalf("Receive once the disk is writable: %+v; want bob's message", evs)
	}
}

// readDSRequest decodes the DSRequest r carries.
func readDSRequest(t *testing.T, r *http.Request) *moh.DSRequest {
	t.Helper()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		t.Error(err)
	}
	var req moh.DSRequest
	if err := wire.Unmarshal(b, &req, "DSRequest"); err != nil {
		t.Error(err)
	}
	return &req
}

// TestLeaveAnswerLost: the DS keeps bob's self-remove but its answer is
// lost (or refused); another member's commit covers the proposal by
// reference, and bob, who kept his proposal before posting it, learns of
// his removal. A refusal (a 4xx DSError) drops the kept proposal again.
func TestLeaveAnswerLost(t *testing.T) {
	for _, tc := range []struct {
		name    string
		answer  func(w http.ResponseWriter)
		pending int // bob's pending proposals after Leave
	}{
		{"504 from a proxy", func(w http.ResponseWriter) { w.WriteHeader(http.StatusGatewayTimeout) }, 1},
		{"503 DSError from a relaying follower", func(w http.ResponseWriter) {
			writeDSError(w, http.StatusServiceUnavailable, moh.CodeBackendUnavailable)
		}, 1},
		{"409 DSError", func(w http.ResponseWriter) { writeDSError(w, http.StatusConflict, moh.CodeStaleEpoch) }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			alice, bob, gid, _ := pair(t)
			var prop, commit []byte
			mux := http.NewServeMux()
			mux.HandleFunc("/group_operation", func(w http.ResponseWriter, r *http.Request) {
				req := readDSRequest(t, r)
				switch req.Body.Type {
				case moh.SelfRemoveClient:
					prop, _ = wire.Marshal(&req.Body.Message)
					tc.answer(w)
					return
				case moh.UpdateClient:
					commit, _ = wire.Marshal(&req.Body.GroupUpdate.Commit)
				}
				writeOK(w, &moh.DSResponse{Type: moh.ResponseOK})
			})
			fakeGateway(t, bob, mux)
			fakeGateway(t, alice, mux)
			if err := bob.Leave(t.Context(), gid); err == nil {
				t.Fatal("Leave succeeded without a 200")
			}
			g, err := bob.loadGroup(gid)
			if err != nil {
				t.Fatal(err)
			}
			if len(g.pending) != tc.pending {
				t.Fatalf("bob keeps %d pending proposals after Leave; want %d", len(g.pending), tc.pending)
			}
			if tc.pending == 0 {
				return // refused: the DS keeps nothing
			}
			if ev, err := alice.process(t.Context(), queued(1, gid, bob.URI(), prop)); err != nil || ev.Kind != EventProposal {
				t.Fatalf("alice given bob's self-remove: %+v, %v", ev, err)
			}
			if err := alice.Update(t.Context(), gid); err != nil {
				t.Fatal(err)
			}
			bob = reopen(t, bob)
			if ev, err := bob.process(t.Context(), queued(2, gid, alice.URI(), commit)); err != nil || ev.Kind != EventRemoved {
				t.Fatalf("bob given the commit that covers his self-remove: %+v, %v; want removed", ev, err)
			}
		})
	}
}

// TestAttachmentOfAnEarlierEpoch: alice seals an attachment in epoch 1
// and sends its reference; bob opens her message, then her commit, and
// GetAttachment still opens the attachment with the keys of epoch 1.
func TestAttachmentOfAnEarlierEpoch(t *testing.T) {
	for _, tc := range []struct {
		name string
		text func(ref attachment.Reference) string // the message that carries ref, "" for none
		// commit: alice commits after the message, bob processes it
		commit bool
	}{
		{"reference alone, commit after", func(r attachment.Reference) string { return r.String() }, true},
		{"reference ending a line, commit after", func(r attachment.Reference) string { return "a photo\n0\t" + r.String() + "\nbye" }, true},
		{"no message, current epoch", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			alice, bob, gid, _ := pair(t)
			am, err := alice.member(gid)
			if err != nil {
				t.Fatal(err)
			}
			sealed, err := attachment.Seal(am, am.State().CipherSuite(), am.LeafIndex(), []byte("photo"), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			ref := attachment.Reference{Token: []byte{1}, Nonce: sealed.Nonce, Hash: sealed.Hash}
			seq := uint64(0)
			if tc.text != nil {
				seq++
				msg := protect(t, alice, gid, tc.text(ref))
				if ev, err := bob.process(t.Context(), queued(seq, gid, alice.URI(), msg)); err != nil || ev.Kind != EventMessage {
					t.Fatalf("bob opening alice's message: %+v, %v", ev, err)
				}
			}
			if tc.commit {
				seq++
				followEmptyCommit(t, alice, bob, gid, seq)
			}
			bob = reopen(t, bob)
			mux := http.NewServeMux()
			mux.HandleFunc("/attachment_download", func(w http.ResponseWriter, r *http.Request) {
				writeOK(w, &moh.DSResponse{Type: moh.ResponseAttachmentContent, Content: sealed.Ciphertext})
			})
			fakeGateway(t, bob, mux)
			got, err := bob.GetAttachment(t.Context(), gid, am.LeafIndex(), ref)
			if err != nil || string(got) != "photo" {
				t.Fatalf("GetAttachment = %q, %v; want photo", got, err)
			}
			// The wrong sender does not open it.
			if _, err := bob.GetAttachment(t.Context(), gid, am.LeafIndex()+1, ref); err == nil {
				t.Fatal("GetAttachment opened the attachment as sent by another leaf")
			}
		})
	}
}

// oneAttachmentGateway scripts a gateway's attachment endpoints for one
// attachment: /attachment_upload keeps the ciphertext that follows the
// DSRequest (which must be an upload of that many bytes) and answers a
// token; /attachment_download answers what was kept.
func oneAttachmentGateway() *http.ServeMux {
	var mu sync.Mutex
	var stored []byte
	mux := http.NewServeMux()
	mux.HandleFunc("/attachment_upload", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		// The DSRequest, then the ciphertext.
		rest := cryptobyte.String(body)
		var req moh.DSRequest
		if !req.UnmarshalWire(&rest) || req.Body.Type != moh.AttachmentUpload || uint64(len(rest)) != req.Body.Upload.ContentLength {
			http.Error(w, "not an upload", http.StatusBadRequest)
			return
		}
		mu.Lock()
		stored = []byte(rest)
		mu.Unlock()
		writeOK(w, &moh.DSResponse{Type: moh.ResponseAttachmentToken, Token: []byte("token")})
	})
	mux.HandleFunc("/attachment_download", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		content := stored
		mu.Unlock()
		writeOK(w, &moh.DSResponse{Type: moh.ResponseAttachmentContent, Content: content})
	})
	return mux
}

// TestOwnAttachmentAfterCommit: alice uploads an attachment with
// PutAttachment (and sends its reference: the DS does not queue her own
// message for her), bob's commit moves the group on, alice restarts from
// her state on disk, and GetAttachment still opens her own attachment with
// the keys of the epoch she sealed it in. Only references read by Receive
// used to be kept: alice's own attachment was taken for the current epoch
// and could not be opened.
func TestOwnAttachmentAfterCommit(t *testing.T) {
	alice, bob, gid, _ := pair(t)
	mux := oneAttachmentGateway()
	fakeGateway(t, alice, mux)
	ref, leaf, err := alice.PutAttachment(t.Context(), gid, []byte("alice's photo"))
	if err != nil {
		t.Fatal(err)
	}
	followEmptyCommit(t, bob, alice, gid, 1)
	alice = reopen(t, alice)
	fakeGateway(t, alice, mux)
	got, err := alice.GetAttachment(t.Context(), gid, leaf, ref)
	if err != nil || string(got) != "alice's photo" {
		t.Fatalf("alice's GetAttachment of her own attachment after a commit and a restart = %q, %v", got, err)
	}
}

// TestPublishKeepsKeys: the keys of a publish whose answer is not a
// DSError (a proxy's 502, a connection failure) are kept, as the gateway
// may have published the KeyPackages; a DSError refusal forgets them. The
// previous last-resort keys stay when a new one is published.
func TestPublishKeepsKeys(t *testing.T) {
	c := newOffline(t, "alice")
	var answer func(w http.ResponseWriter)
	mux := http.NewServeMux()
	mux.HandleFunc("/local/key_packages", func(w http.ResponseWriter, r *http.Request) { answer(w) })
	srv := fakeGateway(t, c, mux)
	ok := func(w http.ResponseWriter) { b, _ := wire.Marshal(&localapi.KeyPackageList{}); w.Write(b) }
	lastResorts := func() (refs []string) {
		for _, k := range c.rec.keyPackages {
			if k.lastResort {
				refs = append(refs, string(k.ref))
			}
		}
		return refs
	}
	answer = ok
	if err := c.Publish(t.Context(), 1, true); err != nil {
		t.Fatal(err)
	}
	first := lastResorts()
	for _, tc := range []struct {
		name        string
		answer      func(w http.ResponseWriter)
		keys        int // the client's KeyPackage keys after the publish
		lastResorts int
	}{
		{"502 from a proxy", func(w http.ResponseWriter) { http.Error(w, "bad gateway", http.StatusBadGateway) }, 4, 2},
		{"DSError refusal", func(w http.ResponseWriter) { writeDSError(w, http.StatusBadRequest, moh.CodeMalformed) }, 4, 2},
		{"connection failure", nil, 6, 3},
		{"published", ok, 8, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			answer = tc.answer
			if tc.answer == nil {
				srv.CloseClientConnections()
				c.cfg.Local = "https://127.0.0.1:1/local" // nothing listens on port 1
			} else {
				c.cfg.Local = srv.URL + "/local"
			}
			// The connections the server closed leave the client's pool:
			// a POST on one of them fails (EOF) before any answer.
			c.http.CloseIdleConnections()
			err := c.Publish(t.Context(), 1, true)
			if (err == nil) != (tc.answer != nil && tc.name == "published") {
				t.Fatalf("Publish = %v", err)
			}
			if got := len(c.rec.keyPackages); got != tc.keys || len(lastResorts()) != tc.lastResorts {
				t.Fatalf("after the publish: %d keys, %d last-resort; want %d, %d", got, len(lastResorts()), tc.keys, tc.lastResorts)
			}
			if !slices.Contains(lastResorts(), first[0]) {
				t.Fatal("the first last-resort keys are gone")
			}
		})
	}
}

// TestCommitAnswerLost: the DS takes alice's update but its answer is
// lost (a 504 from the proxy in front). Her new epoch stays pending, on
// disk: a message of that epoch adopts it; so does the DS's GroupInfo,
// asked before her next operation; a refusal drops it.
func TestCommitAnswerLost(t *testing.T) {
	for _, tc := range []struct {
		name string
		// answer answers alice's update; then is what follows
		answer func(w http.ResponseWriter)
		then   string // "message": bob's message of epoch 2; "settle": alice sends, the DS's GroupInfo is of epoch 2
		epoch  uint64 // alice's epoch at the end
	}{
		{"504, then a message of the new epoch", func(w http.ResponseWriter) { w.WriteHeader(http.StatusGatewayTimeout) }, "message", 2},
		{"504, then a send settles it", func(w http.ResponseWriter) { w.WriteHeader(http.StatusGatewayTimeout) }, "settle", 2},
		{"409 stale_epoch", func(w http.ResponseWriter) { writeDSError(w, http.StatusConflict, moh.CodeStaleEpoch) }, "", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			alice, bob, gid, _ := pair(t)
			var commit, groupInfo, sent []byte
			mux := http.NewServeMux()
			mux.HandleFunc("/group_operation", func(w http.ResponseWriter, r *http.Request) {
				req := readDSRequest(t, r)
				switch req.Body.Type {
				case moh.UpdateClient:
					commit, _ = wire.Marshal(&req.Body.GroupUpdate.Commit)
					tc.answer(w)
					return
				case moh.SendMessage:
					sent, _ = wire.Marshal(&req.Body.Message)
				}
				writeOK(w, &moh.DSResponse{Type: moh.ResponseOK})
			})
			mux.HandleFunc("/external_commit_information", func(w http.ResponseWriter, r *http.Request) {
				writeOK(w, &moh.DSResponse{Type: moh.ResponseExternalCommitInfo, GroupInfo: groupInfo, RatchetTree: []byte{0}})
			})
			fakeGateway(t, alice, mux)
			if err := alice.Update(t.Context(), gid); err == nil {
				t.Fatal("Update succeeded without a 200")
			}
			alice = reopen(t, alice)
			fakeGateway(t, alice, mux)
			if tc.then != "" {
				if ev, err := bob.process(t.Context(), queued(1, gid, alice.URI(), commit)); err != nil || ev.Kind != EventCommit {
					t.Fatalf("bob applying alice's commit: %+v, %v", ev, err)
				}
			}
			switch tc.then {
			case "message":
				msg := protect(t, bob, gid, "epoch 2")
				if ev, err := alice.process(t.Context(), queued(1, gid, bob.URI(), msg)); err != nil || ev.Kind != EventMessage || string(ev.Data) != "epoch 2" {
					t.Fatalf("alice given bob's message of epoch 2: %+v, %v", ev, err)
				}
			case "settle":
				bm, err := bob.member(gid)
				if err != nil {
					t.Fatal(err)
				}
				groupInfo = groupInfoMessage(t, bm)
				if err := alice.Send(t.Context(), gid, []byte("after the lost answer")); err != nil {
					t.Fatalf("alice sending after the lost answer: %v", err)
				}
				if ev, err := bob.process(t.Context(), queued(2, gid, alice.URI(), sent)); err != nil || string(ev.Data) != "after the lost answer" {
					t.Fatalf("bob given alice's message sent after she settled: %+v, %v", ev, err)
				}
			}
			m, err := alice.member(gid)
			if err != nil {
				t.Fatal(err)
			}
			if got := m.State().Epoch(); got != tc.epoch {
				t.Fatalf("alice is in epoch %d; want %d", got, tc.epoch)
			}
			if g, _ := alice.loadGroup(gid); g.next != nil {
				t.Fatal("alice still keeps a pending next epoch")
			}
		})
	}
}

// TestRemoveAfterAddAnswerLost: alice adds carol, the DS takes the commit
// but its answer is lost; alice then removes carol. The remove must be
// worked out on the settled group, where carol is a member, not on the
// epoch before the add, where she is not.
func TestRemoveAfterAddAnswerLost(t *testing.T) {
	alice, _, gid, _ := pair(t)
	carol := newOffline(t, "carol")
	kp, err := wire.Marshal(keyPackage(t, carol))
	if err != nil {
		t.Fatal(err)
	}
	var groupInfo []byte
	var removed []moh.RequestType
	mux := http.NewServeMux()
	mux.HandleFunc("/local/claim_key_packages", func(w http.ResponseWriter, r *http.Request) {
		b, _ := wire.Marshal(&localapi.KeyPackageList{KeyPackages: []localapi.KeyPackageEntry{{KeyPackage: kp}}})
		w.Write(b)
	})
	mux.HandleFunc("/group_operation", func(w http.ResponseWriter, r *http.Request) {
		req := readDSRequest(t, r)
		if req.Body.Type == moh.AddUsers {
			w.WriteHeader(http.StatusGatewayTimeout) // taken, the answer lost
			return
		}
		removed = append(removed, req.Body.Type)
		writeOK(w, &moh.DSResponse{Type: moh.ResponseOK})
	})
	mux.HandleFunc("/external_commit_information", func(w http.ResponseWriter, r *http.Request) {
		writeOK(w, &moh.DSResponse{Type: moh.ResponseExternalCommitInfo, GroupInfo: groupInfo, RatchetTree: []byte{0}})
	})
	fakeGateway(t, alice, mux)
	if err := alice.Add(t.Context(), gid, carol.URI()); err == nil {
		t.Fatal("Add succeeded without a 200")
	}
	g, err := alice.loadGroup(gid)
	if err != nil || g.next == nil {
		t.Fatalf("alice keeps no pending epoch after the lost answer: %v", err)
	}
	groupInfo = groupInfoMessage(t, g.next) // the DS's GroupInfo: it took the add
	if err := alice.Remove(t.Context(), gid, carol.URI()); err != nil {
		t.Fatalf("alice removing carol, whom the DS added: %v", err)
	}
	if len(removed) != 1 || removed[0] != moh.RemoveUsers {
		t.Fatalf("requests after the add: %v; want one remove_users", removed)
	}
	if s, err := alice.Group(gid); err != nil || s.Epoch != 3 || len(s.Members) != 2 {
		t.Fatalf("alice's group after the remove: %+v, %v; want epoch 3, alice and bob", s, err)
	}
}

// TestOwnCommitsInARow: alice commits twice before receiving; bob's
// messages of each epoch before her commits, queued ahead of anything
// newer, still open. Beyond maxOlderEpochs+1 commits the oldest epoch is
// gone.
func TestOwnCommitsInARow(t *testing.T) {
	alice, bob, gid, _ := pair(t)
	var commits [][]byte
	mux := http.NewServeMux()
	mux.HandleFunc("/group_operation", func(w http.ResponseWriter, r *http.Request) {
		req := readDSRequest(t, r)
		c, _ := wire.Marshal(&req.Body.GroupUpdate.Commit)
		commits = append(commits, c)
		writeOK(w, &moh.DSResponse{Type: moh.ResponseOK})
	})
	fakeGateway(t, alice, mux)
	early := protect(t, bob, gid, "epoch 1")
	for range 2 {
		if err := alice.Update(t.Context(), gid); err != nil {
			t.Fatal(err)
		}
	}
	alice = reopen(t, alice)
	// bob follows alice's first commit and sends in epoch 2, as if the DS
	// took his message between her two commits.
	if ev, err := bob.process(t.Context(), queued(1, gid, alice.URI(), commits[0])); err != nil || ev.Kind != EventCommit {
		t.Fatalf("bob applying alice's first commit: %+v, %v", ev, err)
	}
	second := protect(t, bob, gid, "epoch 2")
	for i, tc := range []struct {
		msg  []byte
		want string
	}{{early, "epoch 1"}, {second, "epoch 2"}} {
		if ev, err := alice.process(t.Context(), queued(uint64(i+1), gid, bob.URI(), tc.msg)); err != nil || ev.Kind != EventMessage || string(ev.Data) != tc.want {
			t.Fatalf("alice given bob's message of %s after her two commits: %+v, %v", tc.want, ev, err)
		}
	}
	g, err := alice.loadGroup(gid)
	if err != nil {
		t.Fatal(err)
	}
	if g.prev == nil || g.prev.State().Epoch() != 2 || len(g.older) != 0 {
		t.Fatalf("after a message of epoch 2, alice keeps prev %v and %d older; want epoch 2's and none", g.prev != nil, len(g.older))
	}

	// Beyond the bound the oldest epoch goes.
	alice2, bob2, gid2, _ := pair(t)
	fakeGateway(t, alice2, mux)
	tooOld := protect(t, bob2, gid2, "epoch 1")
	for range maxOlderEpochs + 2 {
		if err := alice2.Update(t.Context(), gid2); err != nil {
			t.Fatal(err)
		}
	}
	if ev, err := alice2.process(t.Context(), queued(1, gid2, bob2.URI(), tooOld)); err != nil || ev.Kind != EventSkipped {
		t.Fatalf("alice given a message of epoch 1 after %d commits: %+v, %v; want skipped", maxOlderEpochs+2, ev, err)
	}
}

// pairJoinInfo makes alice and bob's group (pair) and returns, besides,
// alice's GroupInfo of it as an MLSMessage and its ratchet tree, encoded:
// what an external joiner fetches.
func pairJoinInfo(t *testing.T) (alice, bob *Client, gid, groupInfo, tree []byte) {
	t.Helper()
	alice, bob, gid, _ = pair(t)
	am, err := alice.member(gid)
	if err != nil {
		t.Fatal(err)
	}
	groupInfo = groupInfoMessage(t, am)
	rt := am.State().Tree().RatchetTree()
	if tree, err = wire.Marshal(&rt); err != nil {
		t.Fatal(err)
	}
	return alice, bob, gid, groupInfo, tree
}

// groupInfoMessage returns m's GroupInfo as an encoded MLSMessage, as the
// DS serves it.
func groupInfoMessage(t *testing.T, m *mls.Member) []byte {
	t.Helper()
	gi, err := m.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	b, err := wire.Marshal(&mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestExternalJoinAnswerLost: carol's external join is answered 504. Her
// group stays, marked joining: a message of its epoch confirms it, the
// DS's GroupInfo of her epoch confirms it, a 404 to her question forgets
// it, and she joins again.
func TestExternalJoinAnswerLost(t *testing.T) {
	for _, tc := range []struct {
		name    string
		then    string // "message", "groupinfo" or "refused"
		member  bool   // carol is in the group at the end
		rejoins bool
	}{
		{"a message of her epoch", "message", true, false},
		{"the DS's GroupInfo of her epoch", "groupinfo", true, false},
		{"the DS does not know her", "refused", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, bob, gid, giEnc, rtEnc := pairJoinInfo(t)
			carol := newOffline(t, "carol")
			info := &JoinInfo{GroupInfo: giEnc, RatchetTree: rtEnc}
			var joins int
			var commit, dsGroupInfo []byte
			mux := http.NewServeMux()
			mux.HandleFunc("/group_operation", func(w http.ResponseWriter, r *http.Request) {
				req := readDSRequest(t, r)
				if req.Body.Type == moh.ExternalJoin {
					joins++
					commit, _ = wire.Marshal(&req.Body.GroupUpdate.Commit)
					if joins == 1 {
						w.WriteHeader(http.StatusGatewayTimeout)
						return
					}
				}
				writeOK(w, &moh.DSResponse{Type: moh.ResponseOK})
			})
			mux.HandleFunc("/external_commit_information", func(w http.ResponseWriter, r *http.Request) {
				if tc.then == "refused" {
					writeDSError(w, http.StatusNotFound, moh.CodeNotFound)
					return
				}
				writeOK(w, &moh.DSResponse{Type: moh.ResponseExternalCommitInfo, GroupInfo: dsGroupInfo, RatchetTree: []byte{0}})
			})
			fakeGateway(t, carol, mux)
			if _, err := carol.JoinExternal(t.Context(), info); err == nil {
				t.Fatal("JoinExternal succeeded without a 200")
			}
			carol = reopen(t, carol)
			fakeGateway(t, carol, mux)
			if g, err := carol.loadGroup(gid); err != nil || !g.joining {
				t.Fatalf("carol after the lost answer: %+v, %v; want the group, joining", g, err)
			}
			switch tc.then {
			case "message":
				if ev, err := bob.process(t.Context(), queued(1, gid, carol.URI(), commit)); err != nil || ev.Kind != EventCommit {
					t.Fatalf("bob applying carol's join: %+v, %v", ev, err)
				}
				msg := protect(t, bob, gid, "welcome carol")
				if ev, err := carol.process(t.Context(), queued(1, gid, bob.URI(), msg)); err != nil || string(ev.Data) != "welcome carol" {
					t.Fatalf("carol given bob's message of her epoch: %+v, %v", ev, err)
				}
			case "groupinfo":
				if ev, err := bob.process(t.Context(), queued(1, gid, carol.URI(), commit)); err != nil || ev.Kind != EventCommit {
					t.Fatalf("bob applying carol's join: %+v, %v", ev, err)
				}
				bm, err := bob.member(gid)
				if err != nil {
					t.Fatal(err)
				}
				dsGroupInfo = groupInfoMessage(t, bm)
				if err := carol.Send(t.Context(), gid, []byte("hello")); err != nil {
					t.Fatalf("carol sending after the lost answer: %v", err)
				}
			case "refused":
				if err := carol.Send(t.Context(), gid, []byte("hello")); !errors.Is(err, ErrUnknownGroup) {
					t.Fatalf("carol sending after a join the DS did not take: %v; want ErrUnknownGroup", err)
				}
				if len(carol.Groups()) != 0 {
					t.Fatal("carol keeps a group the DS did not let her into")
				}
				if _, err := carol.JoinExternal(t.Context(), info); err != nil {
					t.Fatalf("carol joining again: %v", err)
				}
			}
			g, err := carol.loadGroup(gid)
			if (err == nil) != tc.member || (err == nil && g.joining) {
				t.Fatalf("carol at the end: %+v, %v; want member %v, not joining", g, err, tc.member)
			}
			if tc.rejoins != (joins == 2) {
				t.Fatalf("%d external joins; want a second one: %v", joins, tc.rejoins)
			}
		})
	}
}

// TestExternalJoinSettleRefusedForOtherReasons: carol's external join is
// taken but its answer lost; settling it, the DS refuses external_commit_info
// for a reason that says nothing of her membership (a rate limit, a token
// required, her clock off). She must keep the group, still joining, and
// settle it once the DS answers: forgetting it would leave her a member at
// the DS without the group's keys. Only a refusal that says the leaf is not
// hers (404 not_found, 401 bad_signature) forgets it.
func TestExternalJoinSettleRefusedForOtherReasons(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		code   moh.Code
		forget bool
	}{
		{"429 rate_limited", http.StatusTooManyRequests, moh.CodeRateLimited, false},
		{"401 token_required", http.StatusUnauthorized, moh.CodeTokenRequired, false},
		{"401 stale_timestamp", http.StatusUnauthorized, moh.CodeStaleTimestamp, false},
		{"403 forbidden", http.StatusForbidden, moh.CodeForbidden, false},
		{"401 bad_signature", http.StatusUnauthorized, moh.CodeBadSignature, true},
		{"404 not_found", http.StatusNotFound, moh.CodeNotFound, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, bob, gid, giEnc, rtEnc := pairJoinInfo(t)
			carol := newOffline(t, "carol")
			var commit, dsGroupInfo []byte
			refusing := true
			mux := http.NewServeMux()
			mux.HandleFunc("/group_operation", func(w http.ResponseWriter, r *http.Request) {
				req := readDSRequest(t, r)
				if req.Body.Type == moh.ExternalJoin {
					commit, _ = wire.Marshal(&req.Body.GroupUpdate.Commit)
					w.WriteHeader(http.StatusGatewayTimeout) // taken, the answer lost
					return
				}
				writeOK(w, &moh.DSResponse{Type: moh.ResponseOK})
			})
			mux.HandleFunc("/external_commit_information", func(w http.ResponseWriter, r *http.Request) {
				if refusing {
					writeDSError(w, tc.status, tc.code)
					return
				}
				writeOK(w, &moh.DSResponse{Type: moh.ResponseExternalCommitInfo, GroupInfo: dsGroupInfo, RatchetTree: []byte{0}})
			})
			fakeGateway(t, carol, mux)
			if _, err := carol.JoinExternal(t.Context(), &JoinInfo{GroupInfo: giEnc, RatchetTree: rtEnc}); err == nil {
				t.Fatal("JoinExternal succeeded without a 200")
			}
			if ev, err := bob.process(t.Context(), queued(1, gid, carol.URI(), commit)); err != nil || ev.Kind != EventCommit {
				t.Fatalf("bob applying carol's join: %+v, %v", ev, err)
			}
			err := carol.Send(t.Context(), gid, []byte("hello"))
			if err == nil {
				t.Fatal("Send succeeded while external_commit_info was refused")
			}
			if got := errors.Is(err, ErrUnknownGroup); got != tc.forget || (len(carol.Groups()) == 0) != tc.forget {
				t.Fatalf("after %s: %v, %d groups; want the group forgotten: %v", tc.name, err, len(carol.Groups()), tc.forget)
			}
			if tc.forget {
				return
			}
			bm, err := bob.member(gid)
			if err != nil {
				t.Fatal(err)
			}
			dsGroupInfo = groupInfoMessage(t, bm)
			refusing = false
			if err := carol.Send(t.Context(), gid, []byte("hello")); err != nil {
				t.Fatalf("carol sending once the DS answers: %v", err)
			}
			if g, err := carol.loadGroup(gid); err != nil || g.joining {
				t.Fatalf("carol at the end: %+v, %v; want a member, not joining", g, err)
			}
		})
	}
}

// TestCreateGroupAnswerLost: alice's create_group is answered 504 (the
// DS may have created the group). The group is kept, pending, so that it
// is not left at the hub without the client that can use it: when the DS
// has it (its GroupInfo of the client's epoch), the next use keeps it;
// when the DS answers 404 not_found, the group is forgotten. A refusal
// forgets it at once.
func TestCreateGroupAnswerLost(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer func(w http.ResponseWriter) // to create_group
		exists bool                        // the DS has the group: external_commit_info answers its GroupInfo, else 404
		kept   bool                        // alice keeps the group in the end
	}{
		{"504, created", func(w http.ResponseWriter) { w.WriteHeader(http.StatusGatewayTimeout) }, true, true},
		{"504, not created", func(w http.ResponseWriter) { w.WriteHeader(http.StatusGatewayTimeout) }, false, false},
		{"refused", func(w http.ResponseWriter) { writeDSError(w, http.StatusForbidden, moh.CodeForbidden) }, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			alice := newOffline(t, "alice")
			var mu sync.Mutex
			var groupInfo, tree []byte
			mux := http.NewServeMux()
			mux.HandleFunc("/group_operation", func(w http.ResponseWriter, r *http.Request) {
				req := readDSRequest(t, r)
				switch req.Body.Type {
				case moh.CreateGroup:
					gi, _ := wire.Marshal(&req.Body.CreateGroup.GroupInfo)
					mu.Lock()
					groupInfo = gi
					mu.Unlock()
					tc.answer(w)
				default:
					writeOK(w, &moh.DSResponse{Type: moh.ResponseOK})
				}
			})
			mux.HandleFunc("/external_commit_information", func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				if !tc.exists {
					writeDSError(w, http.StatusNotFound, moh.CodeNotFound)
					return
				}
				writeOK(w, &moh.DSResponse{Type: moh.ResponseExternalCommitInfo, GroupInfo: groupInfo, RatchetTree: tree})
			})
			fakeGateway(t, alice, mux)
			if _, err := alice.CreateGroup(t.Context()); err == nil {
				t.Fatal("CreateGroup succeeded")
			}
			groups := alice.Groups()
			if tc.name == "refused" {
				if len(groups) != 0 {
					t.Fatalf("after a refused create_group alice keeps %d groups", len(groups))
				}
				return
			}
			if len(groups) != 1 {
				t.Fatalf("after a lost create_group answer alice keeps %d groups; want the group, pending", len(groups))
			}
			m, err := alice.member(groups[0])
			if err != nil {
				t.Fatal(err)
			}
			rt := m.State().Tree().RatchetTree()
			mu.Lock()
			tree, err = wire.Marshal(&rt)
			mu.Unlock()
			if err != nil {
				t.Fatal(err)
			}
			alice = reopen(t, alice)
			fakeGateway(t, alice, mux)
			err = alice.Update(t.Context(), groups[0])
			if tc.kept != (err == nil) || tc.kept != (len(alice.Groups()) == 1) {
				t.Fatalf("the next use of the group: %v, alice keeps %d groups; want kept %v", err, len(alice.Groups()), tc.kept)
			}
			if !tc.kept && !errors.Is(err, ErrUnknownGroup) {
				t.Fatalf("the next use of a group the DS did not create: %v, want ErrUnknownGroup", err)
			}
		})
	}
}
