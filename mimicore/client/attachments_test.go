package client

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// join makes group gid of creator and joiner with fresh KeyPackages of
// both, as pair does for a first group: the creator adds the joiner, who
// joins from the Welcome; both states are stored.
func join(t *testing.T, creator, joiner *Client, gid []byte) {
	t.Helper()
	kp := keyPackage(t, creator)
	st := creator.rec.keyPackages[len(creator.rec.keyPackages)-1]
	leafKey, _, err := creator.deriveKey(st.leafSeed)
	if err != nil {
		t.Fatal(err)
	}
	m, err := mls.NewGroup(mls.GroupOptions{CipherSuite: DefaultCipherSuite, GroupID: gid, Leaf: &kp.LeafNode, LeafKey: leafKey, Signer: creator.signer})
	if err != nil {
		t.Fatal(err)
	}
	jkp := keyPackage(t, joiner)
	res, err := m.Commit([]*mls.Proposal{{Type: mls.ProposalAdd, KeyPackage: jkp}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := creator.storeMember(res.Next); err != nil {
		t.Fatal(err)
	}
	jst := joiner.rec.keyPackages[len(joiner.rec.keyPackages)-1]
	initKey, _, _ := joiner.deriveKey(jst.initSeed)
	jLeaf, _, _ := joiner.deriveKey(jst.leafSeed)
	jm, err := mls.JoinFromWelcome(res.Welcome.Welcome, mls.WelcomeOptions{KeyPackage: jkp, InitKey: initKey, LeafKey: jLeaf, Signer: joiner.signer})
	if err != nil {
		t.Fatal(err)
	}
	if err := joiner.storeMember(jm); err != nil {
		t.Fatal(err)
	}
}

// attachmentStore serves /attachment_download and /attachment_copy as a
// Delivery Service would for tokens it holds by group, and records the
// copy requests.
type attachmentStore struct {
	t      *testing.T
	mu     sync.Mutex
	byKey  map[string][]byte // group id + token -> ciphertext
	copies []moh.DSRequest
}

func (s *attachmentStore) put(gid, token, ct []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.byKey[string(gid)+"/"+string(token)] = ct
}

func (s *attachmentStore) register(mux *http.ServeMux) {
	mux.HandleFunc("/attachment_download", func(w http.ResponseWriter, r *http.Request) {
		req := readDSRequest(s.t, r)
		s.mu.Lock()
		ct, ok := s.byKey[string(req.Body.Attachment.GroupID)+"/"+string(req.Body.Attachment.Token)]
		s.mu.Unlock()
		if !ok {
			writeDSError(w, http.StatusNotFound, moh.CodeNotFound)
			return
		}
		writeOK(w, &moh.DSResponse{Type: moh.ResponseAttachmentContent, Content: ct})
	})
	mux.HandleFunc("/attachment_copy", func(w http.ResponseWriter, r *http.Request) {
		req := readDSRequest(s.t, r)
		c := req.Body.Copy
		s.mu.Lock()
		defer s.mu.Unlock()
		s.copies = append(s.copies, *req)
		ct, ok := s.byKey[string(c.GroupID)+"/"+string(c.Token)]
		if req.Body.Type != moh.AttachmentCopy || !ok {
			writeDSError(w, http.StatusNotFound, moh.CodeNotFound)
			return
		}
		token := append([]byte("copy of "), c.Token...)
		s.byKey[string(c.TargetGroupID)+"/"+string(token)] = ct
		writeOK(w, &moh.DSResponse{Type: moh.ResponseAttachmentToken, Token: token})
	})
}

// TestCopyAttachment: bob sends alice an attachment in group 1; alice,
// also in group 2 with carol, copies it there. The reference she gets
// carries the copy's token, the same nonce and hash, and the attachment
// secret of group 1 as key, with which carol, a member of group 2 only,
// opens it; carol cannot open it without the key (her exporter is not
// group 1's), nor with another key. Alice's copy request names her leaf
// in each group. Before CopyAttachment and Reference.Key, nothing let a
// member of the target group open a copy.
func TestCopyAttachment(t *testing.T) {
	alice, bob, gid1, _ := pair(t)
	carol := newOffline(t, "carol")
	gid2 := []byte("fedcba9876543210")
	// carol creates group 2 so that alice sits at leaf 1 there, not at
	// her leaf 0 of group 1.
	join(t, carol, alice, gid2)

	bm, err := bob.member(gid1)
	if err != nil {
		t.Fatal(err)
	}
	plain := []byte("bob's photo, forwarded")
	sealed, err := attachment.Seal(bm, DefaultCipherSuite, bm.LeafIndex(), plain, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ref := attachment.Reference{Token: []byte("bob's token"), Nonce: sealed.Nonce, Hash: sealed.Hash}
	if ev, err := alice.process(t.Context(), queued(1, gid1, bob.URI(), protect(t, bob, gid1, ref.String()))); err != nil || ev.Kind != EventMessage {
		t.Fatalf("alice opening bob's message: %+v, %v", ev, err)
	}
	// Group 1 moves on: the copy's key comes from the secret alice kept
	// of the message's epoch.
	followEmptyCommit(t, bob, alice, gid1, 2)

	st := &attachmentStore{t: t, byKey: map[string][]byte{}}
	st.put(gid1, ref.Token, sealed.Ciphertext)
	mux := http.NewServeMux()
	st.register(mux)
	srv := fakeGateway(t, alice, mux)
	carol.cfg, carol.http = alice.cfg, srv.Client()

	copied, err := alice.CopyAttachment(t.Context(), gid1, bm.LeafIndex(), ref, gid2)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(copied.Token, []byte("copy of bob's token")) || !bytes.Equal(copied.Nonce, ref.Nonce) ||
		!bytes.Equal(copied.Hash, ref.Hash) || len(copied.Key) != DefaultCipherSuite.HashSize() {
		t.Fatalf("CopyAttachment returned %s", copied)
	}
	if len(st.copies) != 1 {
		t.Fatalf("%d copy requests, want 1", len(st.copies))
	}
	c := st.copies[0]
	a2, err := alice.member(gid2)
	if err != nil {
		t.Fatal(err)
	}
	if c.Auth.Type != moh.AuthClientSignature || c.Auth.SenderIndex != 0 || c.Body.Copy.TargetSenderIndex != a2.LeafIndex() ||
		a2.LeafIndex() != 1 || !bytes.Equal(c.Body.Copy.GroupID, gid1) || !bytes.Equal(c.Body.Copy.TargetGroupID, gid2) {
		t.Fatalf("the copy request: auth %+v, body %+v", c.Auth, c.Body.Copy)
	}
	// The reference goes to carol as text, in a message of group 2.
	parsed, err := attachment.ParseReference(copied.String())
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := carol.process(t.Context(), queued(1, gid2, alice.URI(), protect(t, alice, gid2, parsed.String()))); err != nil || ev.Kind != EventMessage {
		t.Fatalf("carol opening alice's message: %+v, %v", ev, err)
	}
	// The sender index plays no part with a key.
	for _, leaf := range []uint32{0, 1, 7} {
		if got, err := carol.GetAttachment(t.Context(), gid2, leaf, parsed); err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("carol's GetAttachment of the copy (leaf %d) = %q, %v", leaf, got, err)
		}
	}
	noKey := parsed
	noKey.Key = nil
	wrongKey := parsed
	wrongKey.Key = bytes.Clone(parsed.Key)
	wrongKey.Key[0] ^= 1
	for _, tc := range []struct {
		name string
		ref  attachment.Reference
		leaf uint32
		want string
	}{
		{"without key, as sent by alice", noKey, a2.LeafIndex(), "authentication"},
		{"without key, as sent by bob's leaf", noKey, bm.LeafIndex(), "authentication"},
		{"with another key", wrongKey, 0, "authentication"},
		{"with a short key", attachment.Reference{Token: parsed.Token, Nonce: parsed.Nonce, Hash: parsed.Hash, Key: parsed.Key[:31]}, 0, "bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, err := carol.GetAttachment(t.Context(), gid2, tc.leaf, tc.ref); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("GetAttachment = %q, %v; want an error about %s", got, err, tc.want)
			}
		})
	}
	// A copy of the copy passes the key on; a reference whose key does
	// not open the attachment is not copied.
	join(t, carol, bob, []byte("0000111122223333"))
	again, err := carol.CopyAttachment(t.Context(), gid2, 0, parsed, []byte("0000111122223333"))
	if err != nil || !bytes.Equal(again.Key, parsed.Key) {
		t.Fatalf("copying the copy: %s, %v", again, err)
	}
	if _, err := carol.CopyAttachment(t.Context(), gid2, 0, wrongKey, []byte("0000111122223333")); err == nil {
		t.Fatal("a reference with the wrong key was copied")
	}
	if len(st.copies) != 2 {
		t.Fatalf("%d copy requests, want 2: a reference that does not open is not copied", len(st.copies))
	}
}

// TestCopyAttachmentAnswerLost: the connection of a copy request is lost
// before its answer; the client sends the same bytes once more, which the
// Delivery Service answers with the first copy's token (docs/protocol.md
// §5.1), and CopyAttachment returns it. An HTTP answer, even a 503, is
// not sent again.
func TestCopyAttachmentAnswerLost(t *testing.T) {
	for _, tc := range []struct {
		name string
		// first answers the first copy request.
		first    func(w http.ResponseWriter)
		requests int
		wantErr  bool
	}{
		{"connection lost", func(w http.ResponseWriter) {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Errorf("hijack: %v", err)
				return
			}
			conn.Close()
		}, 2, false},
		{"503", func(w http.ResponseWriter) {
			writeDSError(w, http.StatusServiceUnavailable, moh.CodeBackendUnavailable)
		}, 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCopyFixture(t, []func(http.ResponseWriter){tc.first})
			alice, gid, ref := c.alice, c.gid, c.ref

			copied, err := alice.CopyAttachment(t.Context(), gid, c.leaf, ref, gid)
			bodies := c.requests()
			if len(bodies) != tc.requests {
				t.Fatalf("%d copy requests, want %d", len(bodies), tc.requests)
			}
			if tc.wantErr {
				var e *Error
				if !errors.As(err, &e) || e.Code != moh.CodeBackendUnavailable {
					t.Fatalf("CopyAttachment = %s, %v; want the 503", copied, err)
				}
				return
			}
			if err != nil || !bytes.Equal(copied.Token, []byte("copy of bob's token")) {
				t.Fatalf("CopyAttachment = %s, %v; want the copy's token", copied, err)
			}
			if !bytes.Equal(bodies[0], bodies[1]) {
				t.Fatal("the copy was sent again with other bytes: a new request, not a retry")
			}
		})
	}
}

// TestKeptAttachmentsPerSender: alice uploads an attachment (its secret
// kept), then bob sends 16 messages of 16 references each; after bob's
// commit alice still opens her own attachment. With only the bound on
// all secrets (256), bob's 256 pushed alice's out and her attachment was
// taken for the new epoch, which cannot open it.
func TestKeptAttachmentsPerSender(t *testing.T) {
	alice, bob, gid, _ := pair(t)
	mux := oneAttachmentGateway()
	fakeGateway(t, alice, mux)
	ref, leaf, err := alice.PutAttachment(t.Context(), gid, []byte("alice's photo"))
	if err != nil {
		t.Fatal(err)
	}
	seq := uint64(0)
	for range maxKeptAttachments / maxReferencesPerMessage {
		var text strings.Builder
		for range maxReferencesPerMessage {
			r := attachment.Reference{Token: []byte{1}, Nonce: make([]byte, 32), Hash: make([]byte, 32)}
			rand.Read(r.Nonce)
			rand.Read(r.Hash)
			text.WriteString(r.String() + "\n")
		}
		seq++
		if ev, err := alice.process(t.Context(), queued(seq, gid, bob.URI(), protect(t, bob, gid, text.String()))); err != nil || ev.Kind != EventMessage {
			t.Fatalf("alice opening bob's message %d: %+v, %v", seq, ev, err)
		}
	}
	g, err := alice.loadGroup(gid)
	if err != nil {
		t.Fatal(err)
	}
	count := map[uint32]int{}
	for _, k := range g.attachments {
		count[k.sender]++
	}
	if count[1] > maxKeptPerSender || count[0] != 1 {
		t.Fatalf("kept secrets by sender: %v; want alice's 1 and at most %d of bob's", count, maxKeptPerSender)
	}
	seq++
	followEmptyCommit(t, bob, alice, gid, seq)
	alice = reopen(t, alice)
	fakeGateway(t, alice, mux)
	if got, err := alice.GetAttachment(t.Context(), gid, leaf, ref); err != nil || string(got) != "alice's photo" {
		t.Fatalf("alice's GetAttachment of her own attachment after bob's 256 references = %q, %v", got, err)
	}
}

// TestAppendKept checks the bounds of the kept secrets: a sender's oldest
// go beyond maxKeptPerSender of its own, without touching the others';
// the oldest of all go beyond maxKeptAttachments.
func TestAppendKept(t *testing.T) {
	entry := func(sender uint32, i int) keptAttachment {
		return keptAttachment{sender: sender, nonce: []byte{byte(i), byte(i >> 8)}}
	}
	var list []keptAttachment
	for i := range 5 {
		list = appendKept(list, entry(0, i))
	}
	for i := range 3 * maxKeptPerSender {
		list = appendKept(list, entry(1, i))
	}
	if len(list) != 5+maxKeptPerSender {
		t.Fatalf("%d kept, want %d", len(list), 5+maxKeptPerSender)
	}
	for i, k := range list[:5] {
		if k.sender != 0 || k.nonce[0] != byte(i) {
			t.Fatalf("entry %d is %+v, want sender 0's entry %d", i, k, i)
		}
	}
	if first := list[5]; first.sender != 1 || int(first.nonce[0])|int(first.nonce[1])<<8 != 2*maxKeptPerSender {
		t.Fatalf("sender 1's oldest kept is %+v, want its entry %d", first, 2*maxKeptPerSender)
	}
	// Many senders: the total bound.
	for s := range uint32(maxKeptAttachments) {
		list = appendKept(list, entry(100+s, 0))
	}
	if len(list) != maxKeptAttachments || list[0].sender != 100 {
		t.Fatalf("%d kept, the oldest of sender %d; want %d, the oldest of sender 100", len(list), list[0].sender, maxKeptAttachments)
	}
}

// uploadGateway answers alice's /attachment_upload requests with answers
// in turn and, once they run out, stores the upload and answers its
// token, as a Delivery Service would: an upload whose signed bytes it saw
// already is 409 replay (docs/protocol.md §5.1). It records each upload's
// DSRequest and content, and serves the stored upload to
// /attachment_download.
type uploadGateway struct {
	t        *testing.T
	mu       sync.Mutex
	answers  []func(w http.ResponseWriter)
	requests []*moh.DSRequest
	contents [][]byte
	seen     map[string]bool // the signed bytes of every upload
	stored   []byte
}

func (g *uploadGateway) register(mux *http.ServeMux) {
	mux.HandleFunc("/attachment_upload", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			g.t.Error(err)
			return
		}
		req, n, err := moh.DecodeDSRequestPrefix(body)
		if err != nil || req.Body.Type != moh.AttachmentUpload {
			g.t.Errorf("an upload that is not one: %v", err)
			writeDSError(w, http.StatusBadRequest, moh.CodeMalformed)
			return
		}
		tbs, err := req.SignedBytes()
		if err != nil {
			g.t.Error(err)
		}
		g.mu.Lock()
		defer g.mu.Unlock()
		g.requests, g.contents = append(g.requests, req), append(g.contents, body[n:])
		if g.seen[string(tbs)] {
			writeDSError(w, http.StatusConflict, moh.CodeReplay)
			return
		}
		g.seen[string(tbs)] = true
		if len(g.answers) > 0 {
			answer := g.answers[0]
			g.answers = g.answers[1:]
			answer(w)
			return
		}
		g.stored = body[n:]
		writeOK(w, &moh.DSResponse{Type: moh.ResponseAttachmentToken, Token: []byte("token")})
	})
	mux.HandleFunc("/attachment_download", func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		defer g.mu.Unlock()
		writeOK(w, &moh.DSResponse{Type: moh.ResponseAttachmentContent, Content: g.stored})
	})
}

// TestPutAttachmentWaitsOutRateLimit: an upload refused 429 rate_limited
// (which stored nothing: a rate limit, or the uploader's uploads in
// progress) whose Retry-After the client waits out is uploaded again, at
// most twice, with the same ciphertext and hash, signed anew under a
// later timestamp (also when the clock stood still, else the Delivery
// Service would take it for a replay); the attachment's secret is kept
// once. A 503, whose upload may have been stored, and a 429 asking for
// longer than Config.MaxRetryWait are returned at once. Before, every
// refusal was returned at once.
func TestPutAttachmentWaitsOutRateLimit(t *testing.T) {
	withRetryAfter := func(status int, code moh.Code, after string) func(w http.ResponseWriter) {
		return func(w http.ResponseWriter) {
			w.Header().Set("Retry-After", after)
			writeDSError(w, status, code)
		}
	}
	rateLimited := refuseWithRetryAfter(http.StatusTooManyRequests, moh.CodeRateLimited)
	for _, tc := range []struct {
		name        string
		answers     []func(w http.ResponseWriter)
		clockStands bool     // alice's clock stands still
		code        moh.Code // of the error PutAttachment returns; 0: success
		uploads     int      // how many uploads the gateway got
	}{
		{"429, then ok", []func(http.ResponseWriter){rateLimited}, false, 0, 2},
		{"429 twice, then ok", []func(http.ResponseWriter){rateLimited, rateLimited}, false, 0, 3},
		{"429, then ok, the clock standing still", []func(http.ResponseWriter){rateLimited}, true, 0, 2},
		{"429 three times", []func(http.ResponseWriter){rateLimited, rateLimited, rateLimited}, false, moh.CodeRateLimited, 3},
		{"503 with Retry-After", []func(http.ResponseWriter){refuseWithRetryAfter(http.StatusServiceUnavailable, moh.CodeBackendUnavailable)},
			false, moh.CodeBackendUnavailable, 1},
		{"429 asking for longer than MaxRetryWait", []func(http.ResponseWriter){withRetryAfter(http.StatusTooManyRequests, moh.CodeRateLimited,
			strconv.Itoa(int((DefaultMaxRetryWait+time.Second)/time.Second)))}, false, moh.CodeRateLimited, 1},
		{"429 without Retry-After", []func(http.ResponseWriter){func(w http.ResponseWriter) {
			writeDSError(w, http.StatusTooManyRequests, moh.CodeRateLimited)
		}}, false, moh.CodeRateLimited, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			alice, _, gid, _ := pair(t)
			gw := &uploadGateway{t: t, answers: tc.answers, seen: map[string]bool{}}
			mux := http.NewServeMux()
			gw.register(mux)
			fakeGateway(t, alice, mux)
			if tc.clockStands {
				now := time.Now()
				alice.cfg.Now = func() time.Time { return now }
			}
			plain := []byte("alice's photo")
			ref, leaf, err := alice.PutAttachment(t.Context(), gid, plain)
			if code, _ := CodeOf(err); code != tc.code || (tc.code == 0 && err != nil) {
				t.Fatalf("PutAttachment: %v; want code %v", err, tc.code)
			}
			gw.mu.Lock()
			requests, contents := gw.requests, gw.contents
			gw.mu.Unlock()
			if len(requests) != tc.uploads {
				t.Fatalf("the gateway got %d uploads, want %d", len(requests), tc.uploads)
			}
			for i, req := range requests[1:] {
				first := requests[0]
				if !bytes.Equal(contents[i+1], contents[0]) || !bytes.Equal(req.Body.Upload.ContentHash, first.Body.Upload.ContentHash) ||
					req.Body.Upload.ContentLength != first.Body.Upload.ContentLength {
					t.Fatalf("upload %d carried other content than the first: sealed again", i+1)
				}
				if prev := requests[i]; req.Auth.Timestamp <= prev.Auth.Timestamp {
					t.Fatalf("upload %d signed under timestamp %d, not after the previous one's %d", i+1, req.Auth.Timestamp, prev.Auth.Timestamp)
				}
			}
			g, err := alice.loadGroup(gid)
			if err != nil {
				t.Fatal(err)
			}
			if len(g.attachments) != 1 {
				t.Fatalf("alice keeps %d attachment secrets, want the one of her upload", len(g.attachments))
			}
			if tc.code != 0 {
				return
			}
			if got, err := alice.GetAttachment(t.Context(), gid, leaf, ref); err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("GetAttachment of the uploaded attachment = %q, %v", got, err)
			}
		})
	}
}

// TestCopyAttachmentWaitsOutRateLimit: a copy refused 429 rate_limited
// (which made no copy) whose Retry-After the client waits out is
// requested again, at most twice, signed anew under a later timestamp
// (also when the clock stood still, else the Delivery Service would take
// it for a replay), as PutAttachment uploads again. A 503, whose copy may
// have been made, a 429 asking for longer than Config.MaxRetryWait, and a
// 429 to the byte-identical resend after a lost answer (the lost request
// may have made the copy) are returned at once. Before, every refusal was
// returned at once.
func TestCopyAttachmentWaitsOutRateLimit(t *testing.T) {
	rateLimited := refuseWithRetryAfter(http.StatusTooManyRequests, moh.CodeRateLimited)
	lost := func(w http.ResponseWriter) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		conn.Close()
	}
	type answers = []func(http.ResponseWriter)
	for _, tc := range []struct {
		name        string
		answers     answers // the first requests' answers, then copies are made
		clockStands bool    // alice's clock stands still
		code        moh.Code
		requests    int
		// resent lists the requests that are the previous one's bytes
		// again (after a lost answer); every other one is signed anew.
		resent []int
	}{
		{"429, then ok", answers{rateLimited}, false, 0, 2, nil},
		{"429 twice, then ok", answers{rateLimited, rateLimited}, false, 0, 3, nil},
		{"429, then ok, the clock standing still", answers{rateLimited}, true, 0, 2, nil},
		{"429 three times", answers{rateLimited, rateLimited, rateLimited}, false, moh.CodeRateLimited, 3, nil},
		{"429, then the answer lost, then ok", answers{rateLimited, lost}, false, 0, 3, []int{2}},
		{"503 with Retry-After", answers{refuseWithRetryAfter(http.StatusServiceUnavailable, moh.CodeBackendUnavailable)},
			false, moh.CodeBackendUnavailable, 1, nil},
		{"the answer lost, then 429", answers{lost, rateLimited}, false, moh.CodeRateLimited, 2, []int{1}},
		{"429 asking for longer than MaxRetryWait", answers{func(w http.ResponseWriter) {
			w.Header().Set("Retry-After", strconv.Itoa(int((DefaultMaxRetryWait+time.Second)/time.Second)))
			writeDSError(w, http.StatusTooManyRequests, moh.CodeRateLimited)
		}}, false, moh.CodeRateLimited, 1, nil},
		{"429 without Retry-After", answers{func(w http.ResponseWriter) {
			writeDSError(w, http.StatusTooManyRequests, moh.CodeRateLimited)
		}}, false, moh.CodeRateLimited, 1, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCopyFixture(t, tc.answers)
			alice, gid, ref := c.alice, c.gid, c.ref
			if tc.clockStands {
				now := time.Now()
				alice.cfg.Now = func() time.Time { return now }
			}

			copied, err := alice.CopyAttachment(t.Context(), gid, c.leaf, ref, gid)
			if code, _ := CodeOf(err); code != tc.code || (tc.code == 0 && err != nil) {
				t.Fatalf("CopyAttachment = %s, %v; want code %v", copied, err, tc.code)
			}
			if tc.code == 0 && !bytes.Equal(copied.Token, []byte("copy of bob's token")) {
				t.Fatalf("CopyAttachment = %s; want the copy's token", copied)
			}
			bodies := c.requests()
			if len(bodies) != tc.requests {
				t.Fatalf("%d copy requests, want %d", len(bodies), tc.requests)
			}
			for i := 1; i < len(bodies); i++ {
				if slices.Contains(tc.resent, i) {
					if !bytes.Equal(bodies[i], bodies[i-1]) {
						t.Fatalf("copy request %d, after a lost answer, is not the same bytes again", i)
					}
					continue
				}
				var prev, req moh.DSRequest
				if err := wire.Unmarshal(bodies[i-1], &prev, "DSRequest"); err != nil {
					t.Fatal(err)
				}
				if err := wire.Unmarshal(bodies[i], &req, "DSRequest"); err != nil {
					t.Fatal(err)
				}
				if req.Auth.Timestamp <= prev.Auth.Timestamp {
					t.Fatalf("copy request %d signed under timestamp %d, not after the previous one's %d", i, req.Auth.Timestamp, prev.Auth.Timestamp)
				}
				if !bytes.Equal(req.Body.Copy.Token, ref.Token) || !bytes.Equal(req.Body.Copy.TargetGroupID, gid) {
					t.Fatalf("copy request %d copies another attachment: %+v", i, req.Body.Copy)
				}
			}
		})
	}
}

// copyFixture is alice holding a message of bob's that references an
// attachment of his, behind a fake gateway whose first attachment_copy
// requests get scripted answers and the others the copy.
type copyFixture struct {
	alice *Client
	gid   []byte
	leaf  uint32 // bob's leaf, the reference's sender
	ref   attachment.Reference

	mu     sync.Mutex
	bodies [][]byte // every attachment_copy request, in arrival order
}

// newCopyFixture makes a copyFixture whose first len(answers) copy
// requests are answered by answers, in order.
func newCopyFixture(t *testing.T, answers []func(http.ResponseWriter)) *copyFixture {
	t.Helper()
	alice, bob, gid, _ := pair(t)
	bm, err := bob.member(gid)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := attachment.Seal(bm, DefaultCipherSuite, bm.LeafIndex(), []byte("bob's photo"), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ref := attachment.Reference{Token: []byte("bob's token"), Nonce: sealed.Nonce, Hash: sealed.Hash}
	if ev, err := alice.process(t.Context(), queued(1, gid, bob.URI(), protect(t, bob, gid, ref.String()))); err != nil || ev.Kind != EventMessage {
		t.Fatalf("alice opening bob's message: %+v, %v", ev, err)
	}
	st := &attachmentStore{t: t, byKey: map[string][]byte{}}
	st.put(gid, ref.Token, sealed.Ciphertext)
	inner := http.NewServeMux()
	st.register(inner)
	c := &copyFixture{alice: alice, gid: gid, leaf: bm.LeafIndex(), ref: ref}
	pending := answers
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/attachment_copy" {
			inner.ServeHTTP(w, r)
			return
		}
		raw, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("reading the copy request: %v", err)
			return
		}
		c.mu.Lock()
		c.bodies = append(c.bodies, raw)
		var answer func(http.ResponseWriter)
		if len(pending) > 0 {
			answer, pending = pending[0], pending[1:]
		}
		c.mu.Unlock()
		if answer != nil {
			answer(w)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(raw))
		inner.ServeHTTP(w, r)
	})
	fakeGateway(t, alice, mux)
	return c
}

// requests returns the copy requests received so far.
func (c *copyFixture) requests() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.bodies)
}
